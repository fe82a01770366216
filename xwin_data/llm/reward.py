"""Reward-model scoring of (prompt, response) conversations, one scalar each: the one scorer that the Xwin-Set
op, the reward-model judge, WIND and the evaluations all use.

    with make_scorer(ScorerSpec(model="tiny-reward")) as rm:
        scores = score_cached(rm, cache, conversations)          # cached per conversation, resumable

Backends are registered in `xwin_data.llm.registry` (kind `scorer`): `transformers` (the default:
AutoModelForSequenceClassification, one logit) and `vllm` (the pooling runner, the raw logit). Either way the
RM's own chat template renders the conversation, the rendered text is what the cache key names, and
conversations are scored in buckets of similar length (sorted by token count) so batches pad little.

One truncation rule: a conversation longer than the RM's own maximum length (its position limit and its
tokenizer's `model_max_length`; `max_length` can only lower it) keeps its LAST tokens, the answer's end, where a
sequence classifier reads its score, as TRL evaluates a reward model. Truncated conversations are counted.

The sequence is the one TRL's RewardTrainer trains on for a conversational pair,
`apply_chat_template(prompt + [assistant response])` with no EOS appended, and batches are right-padded with
`model.config.pad_token_id`, the id the classifier pools by (the last token that is not that id), so a batched
score equals the unbatched, unpadded forward pass.
"""
from __future__ import annotations

from typing import Any, ClassVar, Sequence

from pydantic import Field

from xwin_data.llm.cache import request_key
from xwin_data.llm.spec import ModelSpec, load_chat_template, local_identity

Messages = list[dict]
UNBOUNDED = 1_000_000  # tokenizers without a limit report ~1e30


class ScorerSpec(ModelSpec):
    """Which reward model scores and how: the `rm:` block of a recipe."""

    KIND: ClassVar[str] = "scorer"
    backend: str = Field("transformers", description="transformers (default), vllm, or any registered scorer")
    model: str = Field("tiny-reward", description="local path, hub id, or tiny-reward/small-reward")
    tokenizer: str | None = Field(None, description="tokenizer path/id when it differs from the model")
    chat_template: str | None = Field(None, description="Jinja template (text or file) overriding the RM's own")
    batch_size: int = Field(16, ge=1, description="conversations per forward batch")
    max_length: int | None = Field(None, ge=8, description="tokens per conversation at most (longer: keep the "
                                                           "end); default and ceiling: the RM's own limit")


RewardSpec = ScorerSpec  # the name recipes' documentation and earlier code use


def with_response(prompt: Messages, response: str) -> Messages:
    """The conversation a reward model scores: the prompt turns, then the response as the assistant turn."""
    return [dict(m) for m in prompt] + [{"role": "assistant", "content": response}]


def own_max_length(config: Any, tokenizer: Any) -> int | None:
    """The longest sequence a reward model takes: its position limit and its tokenizer's, whichever is smaller."""
    limits = [getattr(config, name, None) for name in ("max_position_embeddings", "n_positions", "max_seq_len")]
    limits.append(getattr(tokenizer, "model_max_length", None))
    limits = [int(x) for x in limits if isinstance(x, (int, float)) and 0 < x < UNBOUNDED]
    return min(limits) if limits else None


def truncation_length(requested: int | None, config: Any, tokenizer: Any) -> int:
    own = own_max_length(config, tokenizer)
    if requested is None and own is None:
        raise ValueError("the reward model states no maximum length; set rm.max_length")
    return min(x for x in (requested, own) if x is not None)


class Scorer:
    """Base of the scorer backends: `render` (the RM's chat template), `encode` (the one truncation rule) and
    bucketed scoring; a backend loads its model in `__init__` and implements `_score` (token ids -> floats)."""

    spec: ScorerSpec
    model_id: str
    tokenizer: Any
    max_length: int

    @classmethod
    def identity(cls, spec: ScorerSpec) -> str:
        return local_identity(spec)

    def _prepare(self, spec: ScorerSpec) -> tuple[str, dict]:
        """Common to the backends: tokenizer (with the chat template check) and identity; returns the resolved
        model path and the backend options."""
        from xwin_data.llm.tiny import resolve_model

        self.spec = spec
        path = resolve_model(spec.model)
        self.tokenizer = load_tokenizer(spec, path)
        self.model_id = type(self).identity(spec)
        return path, dict(spec.options)

    def render(self, messages: Messages) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False)

    def encode(self, rendered: str, stats: dict | None = None) -> list[int]:
        """Token ids of a rendered conversation (the template supplies any BOS), keeping the last max_length."""
        return self.encode_many([rendered], stats)[0]

    def encode_many(self, rendered: Sequence[str], stats: dict | None = None) -> list[list[int]]:
        """`encode` of many conversations in one tokenizer call (a fast tokenizer's batch path, not one Python
        call per conversation)."""
        if not rendered:
            return []
        out = self.tokenizer(list(rendered), add_special_tokens=False)["input_ids"]
        long = [i for i, ids in enumerate(out) if len(ids) > self.max_length]
        for i in long:
            out[i] = out[i][-self.max_length:]
        if long and stats is not None:
            stats["truncated"] = stats.get("truncated", 0) + len(long)
        return out

    def bucket_size(self) -> int:
        """Conversations per `_score` call: the forward batch of a padding backend (`batch_size`)."""
        return self.spec.batch_size

    def score_ids(self, ids: Sequence[list[int]], on_bucket=None) -> list[float]:
        """Scores in input order, computed in buckets of `batch_size` sequences of similar length.
        `on_bucket(indices, scores)` is called as each bucket completes."""
        order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
        out: list[float] = [0.0] * len(ids)
        bs = self.bucket_size()
        for lo in range(0, len(order), bs):
            bucket = order[lo:lo + bs]
            scores = [float(s) for s in self._score([ids[i] for i in bucket])]
            for i, s in zip(bucket, scores):
                out[i] = s
            if on_bucket:
                on_bucket(bucket, scores)
        return out

    def score(self, conversations: Sequence[Messages], stats: dict | None = None) -> list[float]:
        return self.score_ids(self.encode_many([self.render(c) for c in conversations], stats))

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

    def __enter__(self) -> "Scorer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def load_tokenizer(spec: ScorerSpec, model_path: str):
    from transformers import AutoTokenizer

    from xwin_data.llm.loading import loading
    from xwin_data.llm.tiny import resolve_model

    with loading(spec.tokenizer or spec.model):
        tok = AutoTokenizer.from_pretrained(resolve_model(spec.tokenizer) if spec.tokenizer else model_path,
                                            revision=None if spec.tokenizer else spec.revision)
    template = load_chat_template(spec.chat_template)
    if template is not None:
        tok.chat_template = template
    require_template(tok, spec.model)
    return tok


def require_template(tokenizer, name: str) -> None:
    if tokenizer.chat_template is None:
        raise ValueError(f"reward model {name!r} has no chat template; set rm.chat_template")


def make_scorer(spec: ScorerSpec | dict) -> Scorer:
    """The scorer backend a spec names, from the backend registry."""
    return (spec if isinstance(spec, ScorerSpec) else ScorerSpec.model_validate(spec)).build()


def reward_key(scorer: Scorer, rendered: str) -> str:
    """Cache key of one score: model, the exact rendered conversation, the truncation length. The backend is not
    part of it: both compute the same logit."""
    return request_key(kind="reward_score", model=scorer.model_id, text=rendered, max_length=scorer.max_length)


def score_cached(scorer: Scorer, cache, conversations: Sequence[Messages], stats: dict | None = None,
                 on_scored=None) -> list[float]:
    """Scores from the cache where present; the rest computed in length-sorted buckets, each score stored as its
    bucket completes (a killed run keeps every finished bucket). `stats` gets `cached` / `scored` / `truncated`
    counts; `on_scored(n)` is called per bucket (progress)."""
    stats = stats if stats is not None else {}
    for name in ("cached", "scored", "truncated"):
        stats.setdefault(name, 0)
    rendered = [scorer.render(c) for c in conversations]
    keys = [reward_key(scorer, r) for r in rendered]
    found = cache.get_many(keys)
    todo = [i for i, k in enumerate(keys) if k not in found]
    stats["cached"] += len(keys) - len(todo)
    namespace = f"reward:{scorer.model_id}"

    put_many = getattr(cache, "put_many", None)

    def store(bucket: list[int], scores: list[float]) -> None:
        fresh = [(keys[todo[b]], {"score": s}) for b, s in zip(bucket, scores)]
        if put_many is not None:   # one transaction per bucket
            put_many(fresh, namespace)
        else:
            for key, value in fresh:
                cache.put(key, value, namespace)
        found.update(fresh)
        stats["scored"] += len(bucket)
        if on_scored:
            on_scored(len(bucket))

    if todo:
        scorer.score_ids(scorer.encode_many([rendered[i] for i in todo], stats), on_bucket=store)
    return [float(found[k]["score"]) for k in keys]
