"""Any OpenAI-compatible server (vLLM's, SGLang's, OpenAI's) as a generator and as a judge, both through the one
async `ChatClient`: bounded concurrency, request- and token-per-minute limits, retries that honour Retry-After,
a cost ledger with a budget cap, typed errors.

Generation: one chat-completions request per prompt with `n`, `seed` and `max_tokens`; samples are cached one
by one by `generate_cached`, so the client's own request cache is not used here. Options (`options:` / `extra:`):
`concurrency` (default 8), `timeout` (seconds, 600), `max_retries` (5), `requests_per_minute`,
`tokens_per_minute`, `budget_usd`, `prices`, `return_token_ids`, `model_id`. Token counts per response: the
server's own token ids where it returns them (vLLM with `return_token_ids: true`), else a re-tokenization with
`spec.tokenizer` where one is given, else the request's completion-token total shared among its n choices by
text length.

Judging: both presentation orders with a versioned template, parse retries, a request cache, a budget.

The API key is read from the environment variable the spec names, at call time, and is never stored on the
backend or in any identifier; the identity is the endpoint and the served model name.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from xwin_data.llm.calls import ChatCall, ClientSettings
from xwin_data.llm.client import ChatClient
from xwin_data.llm.generation import Completion, Generator, GeneratorSpec, Messages, SamplingConfig
from xwin_data.llm.judge import PairToJudge
from xwin_data.llm.judging import Judge, JudgeSpec, Track, Verdicts
from xwin_data.llm.registry import register_backend
from xwin_data.llm.spec import served_identity

# generator option -> ClientSettings field
_CLIENT_OPTIONS = {"concurrency": "concurrency", "timeout": "timeout_s", "max_retries": "max_retries",
                   "requests_per_minute": "requests_per_minute", "tokens_per_minute": "tokens_per_minute",
                   "budget_usd": "budget_usd", "prices": "prices", "transport": "transport"}
_OWN_OPTIONS = {"return_token_ids", "model_id"}


@register_backend("openai", kind="generator")
class OpenAIGenerator(Generator):
    def __init__(self, spec: GeneratorSpec):
        self.spec = spec
        unknown = set(spec.options) - set(_CLIENT_OPTIONS) - _OWN_OPTIONS
        if unknown:
            raise ValueError(f"openai generator: unknown option(s) {sorted(unknown)} (known: "
                             f"{', '.join(sorted(set(_CLIENT_OPTIONS) | _OWN_OPTIONS))})")
        settings = {"concurrency": 8, "timeout_s": 600.0, "max_retries": 5}
        settings.update({field: spec.options[name] for name, field in _CLIENT_OPTIONS.items()
                         if name in spec.options})
        self.client = ChatClient(ClientSettings(model=spec.model, base_url=spec.base_url,
                                                api_key_env=spec.api_key_env, **settings))
        self.return_token_ids = bool(spec.options.get("return_token_ids", False))
        self.model_id = self.identity(spec)
        self.tokenizer = None
        if spec.tokenizer:  # exact per-response token counts (the API reports one total for all n choices)
            from transformers import AutoTokenizer

            from xwin_data.llm.tiny import resolve_model
            self.tokenizer = AutoTokenizer.from_pretrained(resolve_model(spec.tokenizer))

    @classmethod
    def identity(cls, spec: GeneratorSpec) -> str:
        return served_identity(spec)

    def _call(self, messages: Messages, n: int, sampling: SamplingConfig, seed: int) -> ChatCall:
        params = {"n": n, "seed": seed, "temperature": sampling.temperature, "top_p": sampling.top_p,
                  "max_tokens": sampling.max_new_tokens}
        extra_body = {}
        if sampling.top_k > 0:
            extra_body["top_k"] = sampling.top_k
        if self.return_token_ids:
            extra_body["return_token_ids"] = True
        if extra_body:
            params["extra_body"] = extra_body
        return ChatCall(messages, params)

    def _generate(self, prompts: list[Messages], n: int, sampling: SamplingConfig,
                  seeds: list[int]) -> list[list[Completion]]:
        results = self.client.run([self._call(p, n, sampling, s) for p, s in zip(prompts, seeds)])
        out = []
        for i, res in enumerate(results):
            if res.error is not None:
                raise res.error
            if len(res.texts) != n:
                raise RuntimeError(f"prompt {i}: the server returned {len(res.texts)} choices for n={n}")
            counts = self._token_counts(res.texts, res.finish_reasons, res.choice_tokens, res.completion_tokens)
            out.append([Completion(text=t, tokens=k, finish_reason=_finish(f))
                        for t, k, f in zip(res.texts, counts, res.finish_reasons)])
        return out

    def _token_counts(self, texts: list[str], finish: list[str], choice_tokens: list[int] | None,
                      total: int) -> list[int]:
        if choice_tokens is not None:
            return list(choice_tokens)
        if self.tokenizer is not None:
            return [len(self.tokenizer(t, add_special_tokens=False)["input_ids"]) + (f == "stop")
                    for t, f in zip(texts, finish)]
        if len(texts) == 1:
            return [total]
        # One total for n choices: share it by text length, so the parts add up to what was billed.
        weights = [max(1, len(t)) for t in texts]
        parts = [total * w // sum(weights) for w in weights]
        parts[max(range(len(parts)), key=lambda i: weights[i])] += total - sum(parts)
        return parts


def _finish(reason: str | None) -> str:
    return "length" if reason == "length" else "stop" if reason in (None, "", "stop", "eos") else str(reason)


CLIENT_FIELDS = ("model", "base_url", "api_key_env", "concurrency", "requests_per_minute", "tokens_per_minute",
                 "timeout_s", "max_retries", "backoff_initial_s", "backoff_max_s", "retry_after_max_s", "budget_usd",
                 "prices", "transport")


@register_backend("openai", kind="judge")
class OpenAIJudge(Judge):
    @classmethod
    def fingerprint(cls, spec: JudgeSpec) -> dict:
        from xwin_data.llm.judge import load_template

        return {"judge": cls.identity(spec), "template": load_template(spec.template).version_id}

    def judge(self, pairs: Sequence[PairToJudge], cache_dir: Path, track: Track) -> Verdicts:
        from xwin_data.llm.cache import RequestCache
        from xwin_data.llm.costs import BudgetExceeded
        from xwin_data.llm.judge import judge_pairs, load_template

        j = self.spec
        template = load_template(j.template)
        cache = RequestCache(Path(cache_dir) / "judge.sqlite")
        client = ChatClient(ClientSettings(**{f: getattr(j, f) for f in CLIENT_FIELDS}), cache)
        orders = 2 if j.both_orders else 1
        try:
            with track(f"judge {j.model}", len(pairs) * orders, "calls") as bar:
                run = judge_pairs(pairs, template, client, params={"temperature": j.temperature,
                                                                   "max_tokens": j.max_tokens},
                                  both_orders=j.both_orders, parse_retries=j.parse_retries,
                                  retry_temperature=j.retry_temperature,
                                  on_call=lambda rec: bar.advance(1) if rec.attempt == 0 else None)
        finally:
            cache.close()
        failed = [c for c in run.calls if c.parse_status == "error"]
        if client.ledger.stopped:
            done = sum(1 for c in run.calls if c.parse_status != "error")
            raise BudgetExceeded(f"judge budget of ${j.budget_usd} reached: {done} of {len(run.calls)} calls "
                                 f"answered (spent ${client.ledger.spent_usd:.4f} this build); they are cached, "
                                 f"so raising judge.budget_usd and building again resumes without paying twice")
        if len(failed) > j.max_failed_calls:
            kinds = sorted({c.error.split(":")[0] for c in failed})
            raise RuntimeError(f"{len(failed)} judge calls failed after retries ({', '.join(kinds)}; first: "
                               f"{failed[0].error}); finished calls are cached, build again to resume "
                               f"(or allow judge.max_failed_calls)")
        return Verdicts(run, j.model, template.version_id,
                        {"spend_this_build": client.ledger.summary(), "transport_retries": client.retries,
                         "transport": client.transport})
