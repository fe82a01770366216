"""Reward-model scoring of (prompt, response) conversations, one scalar each.

    with make_scorer(RewardSpec(model="tiny-reward")) as rm:
        scores = score_cached(rm, cache, conversations)          # cached per conversation, resumable

Backends: `transformers` (the default: AutoModelForSequenceClassification, one logit) and `vllm` (the pooling
runner, `LLM(..., runner="pooling")` with `classify(..., PoolingParams(use_activation=False))`, the raw logit).
Either way the RM's own chat template renders the conversation, the rendered text is what the cache key names,
and conversations are scored in buckets of similar length (sorted by token count) so batches pad little.
Conversations longer than `max_length` tokens keep their last `max_length` tokens (the answer's end, where a
sequence classifier reads its score) and are counted in the stats as truncated.

Training and evaluation score through the same class: `TransformersRewardScorer.from_model(model, tokenizer)`
wraps a reward model that is already loaded (WIND keeps it on the trainer's device). The sequence is the one TRL's
RewardTrainer trains on for a conversational pair, `apply_chat_template(prompt + [assistant response])` with no
EOS appended, and batches are right-padded with `model.config.pad_token_id`, the id the classifier pools by (the
last token that is not that id), so a batched score equals the unbatched, unpadded forward pass.
"""
from __future__ import annotations

from typing import Any, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

from xwin_data.llm.cache import request_key

Messages = list[dict]


class RewardSpec(BaseModel):
    """Which reward model scores and how: the `rm:` block of a recipe."""

    model_config = ConfigDict(extra="forbid")
    backend: Literal["transformers", "vllm"] = "transformers"
    model: str = Field("tiny-reward", description="local path, hub id, or tiny-reward/small-reward")
    tokenizer: str | None = Field(None, description="tokenizer path/id when it differs from the model")
    chat_template: str | None = Field(None, description="Jinja template (text or file) overriding the RM's own")
    batch_size: int = Field(16, ge=1, description="conversations per forward batch")
    max_length: int = Field(2048, ge=8, description="tokens per conversation at most (longer: keep the end)")
    extra: dict[str, Any] = Field(default_factory=dict, description="backend options: revision, dtype, device, "
                                                                    "vllm LLM kwargs")


def with_response(prompt: Messages, response: str) -> Messages:
    """The conversation a reward model scores: the prompt turns, then the response as the assistant turn."""
    return [dict(m) for m in prompt] + [{"role": "assistant", "content": response}]


class RewardScorer:
    """Base: `render` (the RM's chat template) and `_score` (token ids -> floats), set by each backend."""

    spec: RewardSpec
    model_id: str
    tokenizer: Any

    def _load_spec(self, spec: RewardSpec) -> tuple[str, str | None, dict]:
        """Common to the backends: tokenizer (with the chat template check) and model id; returns the resolved
        model path, the revision and the remaining backend options."""
        from xwin_data.llm.tiny import resolve_model

        self.spec = spec
        opts = dict(spec.extra)
        revision = opts.pop("revision", None)
        path = resolve_model(spec.model)
        self.tokenizer = _load_tokenizer(spec, path)
        self.model_id = _identity(spec)
        return path, revision, opts

    def render(self, messages: Messages) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False)

    def encode(self, rendered: str, stats: dict | None = None) -> list[int]:
        """Token ids of a rendered conversation (the template supplies any BOS), keeping the last max_length."""
        ids = self.tokenizer(rendered, add_special_tokens=False)["input_ids"]
        if len(ids) > self.spec.max_length:
            if stats is not None:
                stats["truncated"] = stats.get("truncated", 0) + 1
            ids = ids[-self.spec.max_length:]
        return ids

    def score_ids(self, ids: Sequence[list[int]], on_bucket=None) -> list[float]:
        """Scores in input order, computed in buckets of `batch_size` sequences of similar length.
        `on_bucket(indices, scores)` is called as each bucket completes."""
        order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
        out: list[float] = [0.0] * len(ids)
        bs = self.spec.batch_size
        for lo in range(0, len(order), bs):
            bucket = order[lo:lo + bs]
            scores = [float(s) for s in self._score([ids[i] for i in bucket])]
            for i, s in zip(bucket, scores):
                out[i] = s
            if on_bucket:
                on_bucket(bucket, scores)
        return out

    def score(self, conversations: Sequence[Messages], stats: dict | None = None) -> list[float]:
        return self.score_ids([self.encode(self.render(c), stats) for c in conversations])

    def score_responses(self, prompts: Sequence[Messages], responses: Sequence[str],
                        stats: dict | None = None) -> list[float]:
        """Score of each (prompt, response) pair, uncached (fresh samples in training and evaluation)."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        return self.score([with_response(p, r) for p, r in zip(prompts, responses)], stats)

    def _score(self, batch: list[list[int]]) -> list[float]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "RewardScorer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _load_tokenizer(spec: RewardSpec, model_path: str):
    from transformers import AutoTokenizer

    from xwin_data.llm.generation import load_chat_template
    from xwin_data.llm.tiny import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model(spec.tokenizer) if spec.tokenizer else model_path,
                                        revision=spec.extra.get("revision"))
    template = load_chat_template(spec.chat_template)
    if template is not None:
        tok.chat_template = template
    _require_template(tok, spec.model)
    return tok


def _require_template(tokenizer, name: str) -> None:
    if tokenizer.chat_template is None:
        raise ValueError(f"reward model {name!r} has no chat template; set rm.chat_template")


def _identity(spec: RewardSpec) -> str:
    from xwin_data.llm.generation import model_identity

    ident = model_identity(spec.model, spec.extra.get("revision"))
    if spec.tokenizer:
        ident += f"+tok={model_identity(spec.tokenizer)}"
    return ident


class TransformersRewardScorer(RewardScorer):
    def __init__(self, spec: RewardSpec):
        import torch
        from transformers import AutoModelForSequenceClassification

        path, revision, opts = self._load_spec(spec)
        device = opts.pop("device", "cuda" if torch.cuda.is_available() else "cpu")
        dtype = opts.pop("dtype", "float32" if device == "cpu" else "auto")
        model = AutoModelForSequenceClassification.from_pretrained(
            path, revision=revision, dtype=dtype if dtype == "auto" else getattr(torch, dtype))
        self._attach(model.to(device).eval())

    @classmethod
    def from_model(cls, model, tokenizer, batch_size: int = 32, max_length: int = 2048,
                   model_id: str | None = None) -> "TransformersRewardScorer":
        """A scorer over a reward model already in memory (and on its device), scoring exactly as one loaded from
        a spec does. `model_id` (for cache keys) defaults to the identity of the folder it was loaded from."""
        self = cls.__new__(cls)
        name = str(getattr(model, "name_or_path", "") or "in-memory-reward-model")
        self.spec = RewardSpec(model=name, batch_size=batch_size, max_length=max_length)
        _require_template(tokenizer, name)
        self.tokenizer = tokenizer
        self.model_id = model_id or _identity(self.spec)
        self._attach(model.eval())
        return self

    def _attach(self, model) -> None:
        if model.config.num_labels != 1:
            raise ValueError(f"reward model {self.spec.model!r} has {model.config.num_labels} labels; expected one "
                             "scalar output (num_labels=1)")
        if model.config.pad_token_id is None:
            pad = self.tokenizer.pad_token_id
            model.config.pad_token_id = pad if pad is not None else self.tokenizer.eos_token_id
        # Pad with the id the classifier pools by (not the tokenizer's, which may differ): the score is read at
        # the last token that is not config.pad_token_id.
        self.pad_id = model.config.pad_token_id
        self.model = model
        self.device = next(model.parameters()).device

    def _score(self, batch: list[list[int]]) -> list[float]:
        import torch

        width = max(len(x) for x in batch)
        # Right padding: the classifier reads the last non-pad token of each row.
        input_ids = torch.tensor([x + [self.pad_id] * (width - len(x)) for x in batch], device=self.device)
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in batch], device=self.device)
        with torch.inference_mode():
            logits = self.model(input_ids=input_ids, attention_mask=mask).logits
        return logits[:, 0].float().tolist()

    def close(self) -> None:
        self.model = None


class VLLMRewardScorer(RewardScorer):
    def __init__(self, spec: RewardSpec):
        from vllm import LLM

        from xwin_data.llm.tiny import resolve_model

        path, revision, opts = self._load_spec(spec)
        kwargs = {"runner": "pooling", "enforce_eager": True, "max_model_len": spec.max_length, "seed": 0, **opts}
        if revision:
            kwargs["revision"] = revision
        if spec.tokenizer:
            kwargs["tokenizer"] = resolve_model(spec.tokenizer)
        self.llm = LLM(model=path, **kwargs)

    def _score(self, batch: list[list[int]]) -> list[float]:
        from vllm import PoolingParams

        prompts = [{"prompt_token_ids": x} for x in batch]
        outs = self.llm.classify(prompts, pooling_params=PoolingParams(use_activation=False), use_tqdm=False)
        return [float(o.outputs.probs[0]) for o in outs]

    def close(self) -> None:
        self.llm = None


def make_scorer(spec: RewardSpec | dict) -> RewardScorer:
    if isinstance(spec, dict):
        spec = RewardSpec.model_validate(spec)
    if spec.backend == "transformers":
        return TransformersRewardScorer(spec)
    if spec.backend == "vllm":
        return VLLMRewardScorer(spec)
    raise ValueError(f"unknown reward backend {spec.backend!r}")


def reward_key(spec: RewardSpec, model_id: str, rendered: str) -> str:
    """Cache key of one score: model, the exact rendered conversation, the truncation limit. The backend is not
    part of it: both compute the same logit."""
    return request_key(kind="reward_score", model=model_id, text=rendered, max_length=spec.max_length)


def score_cached(scorer: RewardScorer, cache, conversations: Sequence[Messages], stats: dict | None = None,
                 on_scored=None) -> list[float]:
    """Scores from the cache where present; the rest computed in length-sorted buckets, each score stored as its
    bucket completes (a killed run keeps every finished bucket). `stats` gets `cached` / `scored` / `truncated`
    counts; `on_scored(n)` is called per bucket (progress)."""
    stats = stats if stats is not None else {}
    for name in ("cached", "scored", "truncated"):
        stats.setdefault(name, 0)
    rendered = [scorer.render(c) for c in conversations]
    keys = [reward_key(scorer.spec, scorer.model_id, r) for r in rendered]
    found = cache.get_many(keys)
    todo = [i for i, k in enumerate(keys) if k not in found]
    stats["cached"] += len(keys) - len(todo)
    namespace = f"reward:{scorer.model_id}"

    def store(bucket: list[int], scores: list[float]) -> None:
        for b, s in zip(bucket, scores):
            key = keys[todo[b]]
            cache.put(key, {"score": s}, namespace)
            found[key] = {"score": s}
        stats["scored"] += len(bucket)
        if on_scored:
            on_scored(len(bucket))

    if todo:
        scorer.score_ids([scorer.encode(rendered[i], stats) for i in todo], on_bucket=store)
    return [float(found[k]["score"]) for k in keys]
