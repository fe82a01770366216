"""One interface for every way of sampling responses from a policy. The backends are registered in
`xwin_data.llm.registry` (one file each under `llm/backends/`): `transformers` (the default, CPU-capable), `vllm`
(the in-process engine) and `openai` (any OpenAI-compatible server: vLLM's, SGLang's, OpenAI's).

    gen = make_generator(GeneratorSpec(model="tiny-policy"))
    out = gen.generate([[{"role": "user", "content": "Hi"}]], n=4, sampling=SamplingConfig(seed=1))
    out[0][3].text, out[0][3].tokens, out[0][3].finish_reason      # "stop" (eos) or "length"

Seeds: sample j of prompt i is drawn with seed `seeds[i] + j`, whatever the backend and however the prompts are
batched, so a sample is identified by (model, rendered prompt, sampling parameters, seed) and can be cached and
regenerated one by one (see `generate_cached`). Without explicit seeds, `seeds[i]` is derived from
`sampling.seed` and the prompt. The local backends honour this exactly; an OpenAI server receives `seed` and `n`
and is only as reproducible as it is.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Callable, ClassVar, Sequence

from pydantic import BaseModel, ConfigDict, Field

from xwin_data.core.fingerprint import stable_hash
from xwin_data.llm.spec import ModelSpec, local_identity, model_identity  # noqa: F401  (model_identity: re-export)

Messages = list[dict]
MAX_SEED = 2**31 - 1


class SamplingConfig(BaseModel):
    """Sampling parameters shared by every backend. temperature 0 means greedy decoding."""

    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(1.0, ge=0.0, description="softmax temperature; 0 is greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling mass; 1 is off")
    top_k: int = Field(-1, description="keep the k most likely tokens; -1 (or 0) is off")
    max_new_tokens: int = Field(256, ge=1, description="generated tokens per response at most")
    seed: int = Field(0, ge=0, description="base seed; per-prompt seeds derive from it and the prompt")

    def cache_params(self) -> dict:
        """Everything except the seed, which the per-sample seed replaces in cache keys."""
        return self.model_dump(exclude={"seed"})


class GeneratorSpec(ModelSpec):
    """Which model answers and how: the `policy:` block of a recipe."""

    KIND: ClassVar[str] = "generator"
    backend: str = Field("transformers", description="transformers (default), vllm, openai, or any registered "
                                                     "generator backend")
    model: str = Field("tiny-policy", description="local path, hub id, tiny-policy/small-policy, or served name")
    tokenizer: str | None = Field(None, description="tokenizer path/id when it differs from the model")
    chat_template: str | None = Field(None, description="Jinja chat template (text or a file path) overriding "
                                                         "the tokenizer's own")
    batch_size: int = Field(16, ge=1, description="sequences per forward batch (transformers), prompts per "
                                                  "request wave (vllm, openai)")
    max_model_len: int | None = Field(None, ge=8, description="prompt + response tokens at most")


@dataclass
class Completion:
    text: str
    tokens: int          # generated tokens, the stop token included (what a server bills)
    finish_reason: str   # "stop" (end of sequence) or "length" (max_new_tokens / max_model_len reached)

    def to_dict(self) -> dict:
        return asdict(self)


class PromptTooLongError(ValueError):
    """A prompt does not leave room for one generated token within max_model_len."""


class Generator:
    """Base class of the generator backends: a backend sets `spec` and `model_id` (its `identity(spec)`) and
    implements `_generate`; `generate` checks the inputs and derives the per-sample seeds for every backend."""

    spec: GeneratorSpec
    model_id: str

    @classmethod
    def identity(cls, spec: GeneratorSpec) -> str:
        """What names this generator's model in cache keys and fingerprints: a local model by its weights."""
        return local_identity(spec)

    def generate(self, prompts: Sequence[Messages], n: int, sampling: SamplingConfig,
                 seeds: Sequence[int] | None = None) -> list[list[Completion]]:
        """n completions per prompt; completion j of prompt i is sampled with seed `seeds[i] + j`."""
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        prompts = [validate_messages(p, i) for i, p in enumerate(prompts)]
        if seeds is None:
            seeds = [derive_seed(sampling.seed, self.render(p)) for p in prompts]
        elif len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        if not prompts:
            return []
        return self._generate(prompts, n, sampling, [int(s) for s in seeds])

    def _generate(self, prompts: list[Messages], n: int, sampling: SamplingConfig,
                  seeds: list[int]) -> list[list[Completion]]:
        raise NotImplementedError

    def generate_mixed(self, prompts: Sequence[Messages], counts: Sequence[int], sampling: SamplingConfig,
                       seeds: Sequence[int]) -> list[list[Completion]]:
        """`counts[i]` completions of prompt i, completion j drawn with seed `seeds[i] + j`: the same samples as
        `generate`, for requests of different sizes at once (the rounds of "sample until k unique")."""
        if not (len(prompts) == len(counts) == len(seeds)):
            raise ValueError(f"{len(prompts)} prompts, {len(counts)} counts and {len(seeds)} seeds")
        if any(c < 1 for c in counts):
            raise ValueError(f"every count must be at least 1, got {min(counts)}")
        prompts = [validate_messages(p, i) for i, p in enumerate(prompts)]
        if not prompts:
            return []
        return self._generate_mixed(prompts, [int(c) for c in counts], sampling, [int(s) for s in seeds])

    def _generate_mixed(self, prompts: list[Messages], counts: list[int], sampling: SamplingConfig,
                        seeds: list[int]) -> list[list[Completion]]:
        """One `_generate` call per distinct count; a continuously batching engine overrides this to take them all
        in one call, so small requests fill its batch instead of running alone."""
        out: list[list[Completion]] = [[] for _ in prompts]
        by_count: dict[int, list[int]] = {}
        for i, count in enumerate(counts):
            by_count.setdefault(count, []).append(i)
        for count, members in by_count.items():
            outs = self._generate([prompts[i] for i in members], count, sampling, [seeds[i] for i in members])
            for i, comps in zip(members, outs):
                out[i] = comps
        return out

    def render(self, messages: Messages) -> str:
        """The exact prompt the model sees (chat template applied): the part of a cache key that names the input."""
        return json.dumps(messages, ensure_ascii=False, sort_keys=True)

    def prompts_per_call(self, n: int) -> int:
        """How many prompts one `generate` call should carry so that results are cached at a useful grain."""
        return max(1, self.spec.batch_size)

    def close(self) -> None:
        pass

    def __enter__(self) -> "Generator":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class LocalGenerator(Generator):
    """A backend that holds the model's tokenizer: the prompt is its chat template, tokenised as the model sees it."""

    tokenizer: Any

    def render(self, messages: Messages) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def prompt_ids(self, messages: Messages) -> list[int]:
        return self.tokenizer(self.render(messages), add_special_tokens=False)["input_ids"]


def validate_messages(messages: Any, index: int = 0) -> Messages:
    """A prompt is a non-empty list of {role, content} with known roles; anything else is a clear error."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError(f"prompt {index}: expected a non-empty list of messages, got {type(messages).__name__}")
    out = []
    for m in messages:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"prompt {index}: each message needs 'role' and 'content', got {m!r:.120}")
        if m["role"] not in ("system", "user", "assistant"):
            raise ValueError(f"prompt {index}: unknown role {m['role']!r}")
        if not isinstance(m["content"], str):
            raise ValueError(f"prompt {index}: content must be a string, got {type(m['content']).__name__}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def derive_seed(base_seed: int, rendered_prompt: str) -> int:
    """A per-prompt seed from the recipe's seed and the prompt, spaced so that `seed + j` never collides in practice."""
    return int(stable_hash([int(base_seed), rendered_prompt], length=15), 16) % (MAX_SEED - 1_000_000)


def make_generator(spec: GeneratorSpec | dict) -> Generator:
    """The generator backend a spec names, from the backend registry."""
    return (spec if isinstance(spec, GeneratorSpec) else GeneratorSpec.model_validate(spec)).build()


def sample_key(backend: str, model_id: str, rendered_prompt: str, sampling: SamplingConfig, seed: int) -> str:
    """Cache key of one sample: backend (samplers differ), model, exact prompt, sampling parameters and the
    sample's own seed."""
    return _sample_key(backend, model_id, rendered_prompt, sampling.cache_params(), seed)


def _sample_key(backend: str, model_id: str, rendered_prompt: str, params: dict, seed: int) -> str:
    from xwin_data.llm.cache import request_key

    return request_key(kind="generation", backend=backend, model=model_id, prompt=rendered_prompt,
                       sampling=params, seed=int(seed))


def generate_cached(generator: Generator, cache, prompts_with_ids: Sequence[tuple[str, Messages]], n: int,
                    sampling: SamplingConfig, on_done: Callable[[str, list[Completion], bool], None] | None = None,
                    start: int = 0, stats: dict | None = None) -> list[list[Completion]]:
    """n samples per prompt (sample indices start..start+n-1), each looked up in and stored to a RequestCache.

    Each sample is stored as soon as the call that made it returns, so a killed build resumes where it stopped.
    Asking again with `start=n` draws the next n samples of the same prompts (for "sample until k unique").
    `on_done(prompt_id, completions, from_cache)` is called once per prompt, in completion order.
    Returns the completions in input order. `stats` (if given) receives counts of cached and generated samples.
    """
    return draw_cached(generator, cache, [(pid, messages, start, n) for pid, messages in prompts_with_ids],
                       sampling, on_done=on_done, stats=stats)


def draw_cached(generator: Generator, cache, requests: Sequence[tuple[str, Messages, int, int]],
                sampling: SamplingConfig, on_done: Callable[[str, list[Completion], bool], None] | None = None,
                stats: dict | None = None) -> list[list[Completion]]:
    """`generate_cached` with each prompt's own range of samples: requests are (id, messages, start, count), and
    prompt i gets samples start..start+count-1. What is missing goes to the generator in waves of
    `prompts_per_call` prompts, one `generate_mixed` call each (whatever the counts), and each wave's samples are
    stored in one cache transaction when it returns."""
    if stats is None:
        stats = {}
    stats.setdefault("cached", 0)
    stats.setdefault("generated", 0)
    items = []
    backend, model_id = generator.spec.backend, generator.model_id
    params = sampling.cache_params()
    for i, (pid, messages, start, n) in enumerate(requests):
        if n < 1:
            raise ValueError(f"request {i}: the sample count must be at least 1, got {n}")
        messages = validate_messages(messages, i)
        rendered = generator.render(messages)
        base = derive_seed(sampling.seed, rendered) + int(start)
        keys = [_sample_key(backend, model_id, rendered, params, base + j) for j in range(n)]
        items.append((str(pid), messages, base, keys))

    found = cache.get_many(k for item in items for k in item[3])
    results: list[list[Completion] | None] = [None] * len(items)
    todo: list[tuple[int, int, int]] = []   # (item index, first missing sample, samples to draw)
    for idx, (pid, _m, _base, keys) in enumerate(items):
        missing = [j for j, k in enumerate(keys) if k not in found]
        if not missing:
            results[idx] = [Completion(**found[k]) for k in keys]
            stats["cached"] += len(keys)
            if on_done:
                on_done(pid, results[idx], True)
        else:
            first = missing[0]
            todo.append((idx, first, missing[-1] - first + 1))
    if not todo:
        return [r if r is not None else [] for r in results]

    per_call = generator.prompts_per_call(max(count for _i, _f, count in todo))
    namespace = f"generation:{backend}:{model_id}"
    put_many = getattr(cache, "put_many", None)
    for lo in range(0, len(todo), per_call):
        wave = todo[lo:lo + per_call]
        outs = generator.generate_mixed([items[idx][1] for idx, _f, _c in wave], [count for _i, _f, count in wave],
                                        sampling, [items[idx][2] + first for idx, first, _c in wave])
        fresh = []
        for (idx, first, _c), comps in zip(wave, outs):
            keys = items[idx][3]
            for j, comp in enumerate(comps):
                value = comp.to_dict()
                fresh.append((keys[first + j], value))
                found[keys[first + j]] = value
        if put_many is not None:
            put_many(fresh, namespace)
        else:
            for key, value in fresh:
                cache.put(key, value, namespace)
        for (idx, first, _c), comps in zip(wave, outs):
            pid, _m, _base, keys = items[idx]
            stats["generated"] += len(comps)
            stats["cached"] += len(keys) - len(comps)
            results[idx] = [Completion(**found[k]) for k in keys]
            if on_done:
                on_done(pid, results[idx], False)
    return [r if r is not None else [] for r in results]
