"""Any OpenAI-compatible server (vLLM's, SGLang's, OpenAI's) through the real `openai` client.

Token counts per response: the server's own token ids where it returns them (vLLM with
`extra.return_token_ids: true`), else a re-tokenization with `spec.tokenizer` where one is given, else the
request's completion-token total shared among its n choices by text length.

One chat-completions request per prompt with `n`, `seed` and `max_tokens`; requests run concurrently on a small
thread pool (`extra.concurrency`, default 8) and the client's own retries (which honour Retry-After) absorb
transient errors. The API key is read from the environment variable the spec names, at call time, and is never
stored on the generator or in any identifier.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from xwin_data.llm.generation import Completion, Generator, GeneratorSpec, Messages, SamplingConfig, model_identity


class OpenAIGenerator(Generator):
    def __init__(self, spec: GeneratorSpec):
        self.spec = spec
        self.concurrency = int(spec.extra.get("concurrency", 8))
        self.timeout = float(spec.extra.get("timeout", 600))
        self.max_retries = int(spec.extra.get("max_retries", 5))
        self.return_token_ids = bool(spec.extra.get("return_token_ids", False))  # vLLM servers: exact counts
        self.model_id = str(spec.extra.get("model_id") or f"openai:{spec.model}")
        self.tokenizer = None
        if spec.tokenizer:  # exact per-response token counts (the API reports one total for all n choices)
            from transformers import AutoTokenizer

            from xwin_data.llm.tiny import resolve_model
            self.tokenizer = AutoTokenizer.from_pretrained(resolve_model(spec.tokenizer))
            self.model_id += f"+tok={model_identity(spec.tokenizer)}"
        self._client = None

    def _api_key(self) -> str:
        key = os.environ.get(self.spec.api_key_env)
        if key:
            return key
        if self.spec.base_url:
            return "EMPTY"  # local servers (vLLM, SGLang) accept any key
        raise RuntimeError(f"the openai backend needs an API key in the environment variable "
                           f"{self.spec.api_key_env!r} (or a base_url of a local OpenAI-compatible server)")

    def _get_client(self):
        if self._client is None:
            from openai import OpenAI

            self._client = OpenAI(api_key=self._api_key(), base_url=self.spec.base_url, timeout=self.timeout,
                                  max_retries=self.max_retries)
        return self._client

    def _request(self, messages: Messages, n: int, sampling: SamplingConfig, seed: int) -> list[Completion]:
        extra_body = {}
        if sampling.top_k > 0:
            extra_body["top_k"] = sampling.top_k
        if self.return_token_ids:
            extra_body["return_token_ids"] = True
        resp = self._get_client().chat.completions.create(
            model=self.spec.model, messages=messages, n=n, seed=seed, temperature=sampling.temperature,
            top_p=sampling.top_p, max_tokens=sampling.max_new_tokens, extra_body=extra_body or None)
        choices = sorted(resp.choices, key=lambda c: c.index)
        if len(choices) != n:
            raise RuntimeError(f"server returned {len(choices)} choices for n={n}")
        texts = [c.message.content or "" for c in choices]
        return [Completion(text=t, tokens=k, finish_reason=_finish(c.finish_reason))
                for t, k, c in zip(texts, self._token_counts(texts, choices, resp.usage), choices)]

    def _token_counts(self, texts: list[str], choices, usage) -> list[int]:
        ids = [getattr(c, "token_ids", None) or (c.model_extra or {}).get("token_ids") for c in choices]
        if all(isinstance(x, list) for x in ids):
            return [len(x) for x in ids]
        if self.tokenizer is not None:
            return [len(self.tokenizer(t, add_special_tokens=False)["input_ids"]) + (c.finish_reason == "stop")
                    for t, c in zip(texts, choices)]
        total = int(getattr(usage, "completion_tokens", 0) or 0)
        if len(texts) == 1:
            return [total]
        # One total for n choices: share it by text length, so the parts add up to what was billed.
        weights = [max(1, len(t)) for t in texts]
        parts = [total * w // sum(weights) for w in weights]
        parts[max(range(len(parts)), key=lambda i: weights[i])] += total - sum(parts)
        return parts

    def _generate(self, prompts: list[Messages], n: int, sampling: SamplingConfig,
                  seeds: list[int]) -> list[list[Completion]]:
        self._get_client()
        with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(prompts)))) as pool:
            futures = [pool.submit(self._request, p, n, sampling, s) for p, s in zip(prompts, seeds)]
            return [f.result() for f in futures]

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _finish(reason: str | None) -> str:
    return "length" if reason == "length" else "stop" if reason in (None, "stop", "eos") else str(reason)
