"""The default backends: `transformers` generation and reward scoring on CPU or GPU, batched.

Generation: prompts are rendered with the chat template, sorted by length and packed into left-padded batches of
`spec.batch_size` sequences (a prompt's n samples are rows of their own, so n may exceed the batch). Sampling is
done by a logits processor that draws row r's token from row r's own random stream (seeded with the sample's
seed), so a sample does not depend on which other prompts shared its batch; `generate` itself runs greedy over
the processor's one-hot choice.

Scoring: AutoModelForSequenceClassification with one label; `TransformersScorer.from_model` wraps a reward model
already in memory (WIND keeps it on the trainer's device) and scores exactly as one loaded from a spec.
"""
from __future__ import annotations

from xwin_data.llm.generation import (Completion, GeneratorSpec, LocalGenerator, Messages, PromptTooLongError,
                                      SamplingConfig)
from xwin_data.llm.loading import loading
from xwin_data.llm.registry import register_backend
from xwin_data.llm.reward import Scorer, ScorerSpec, require_template, truncation_length
from xwin_data.llm.spec import load_chat_template, local_identity


class _SeededSampler:
    """Logits processor: temperature, top-k, top-p, then inverse-CDF sampling with per-row uniforms."""

    def __init__(self, uniforms, prompt_len: int, sampling: SamplingConfig):
        self.uniforms = uniforms
        self.prompt_len = prompt_len
        self.sampling = sampling

    def __call__(self, input_ids, scores):
        import torch

        step = input_ids.shape[1] - self.prompt_len
        logits = scores.float() / self.sampling.temperature
        k = self.sampling.top_k
        if 0 < k < logits.shape[-1]:
            kth = torch.topk(logits, k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if self.sampling.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
            before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
            sorted_probs = sorted_probs.masked_fill(before > self.sampling.top_p, 0.0)
            probs = torch.zeros_like(probs).scatter_(1, order, sorted_probs)
        cdf = torch.cumsum(probs, dim=-1)
        target = (self.uniforms[:, step].to(cdf.device) * cdf[:, -1]).unsqueeze(1)
        choice = torch.searchsorted(cdf, target, right=True).clamp_(max=cdf.shape[-1] - 1)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, choice, 0.0)


def _device_and_dtype(opts: dict):
    import torch

    device = opts.pop("device", "cuda" if torch.cuda.is_available() else "cpu")
    dtype = opts.pop("dtype", "float32" if device == "cpu" else "auto")
    return device, dtype if dtype == "auto" else getattr(torch, dtype)


@register_backend("transformers", kind="generator")
class TransformersGenerator(LocalGenerator):
    def __init__(self, spec: GeneratorSpec):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from xwin_data.llm.tiny import resolve_model

        self.spec = spec
        opts = dict(spec.options)
        revision = spec.revision
        model_path = resolve_model(spec.model)
        tok_path = resolve_model(spec.tokenizer) if spec.tokenizer else model_path
        with loading(spec.tokenizer or spec.model):
            self.tokenizer = AutoTokenizer.from_pretrained(tok_path, revision=None if spec.tokenizer else revision)
        self.tokenizer.padding_side = "left"
        template = load_chat_template(spec.chat_template)
        if template is not None:
            self.tokenizer.chat_template = template
        if self.tokenizer.chat_template is None:
            raise ValueError(f"tokenizer of {spec.model!r} has no chat template; set chat_template in the spec")
        device, dtype = _device_and_dtype(opts)
        with loading(spec.model):
            self.model = AutoModelForCausalLM.from_pretrained(model_path, revision=revision, dtype=dtype).to(device)
        self.model.eval()
        self.device = device
        eos = self.model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in eos:
            eos.append(self.tokenizer.eos_token_id)
        if not eos:
            raise ValueError(f"model {spec.model!r} defines no end-of-sequence token")
        self.eos_ids = set(eos)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos[0]
        limit = getattr(self.model.config, "max_position_embeddings", None)
        self.max_model_len = spec.max_model_len or limit or 1 << 30
        self.model_id = self.identity(spec)

    def prompts_per_call(self, n: int) -> int:
        return max(1, self.spec.batch_size // max(1, n))

    def _generate(self, prompts: list[Messages], n: int, sampling: SamplingConfig,
                  seeds: list[int]) -> list[list[Completion]]:
        encoded = [self.prompt_ids(p) for p in prompts]
        too_long = [i for i, ids in enumerate(encoded) if len(ids) >= self.max_model_len]
        if too_long:
            raise PromptTooLongError(f"prompts {too_long[:10]} have >= max_model_len={self.max_model_len} tokens")
        # Rows: (prompt index, sample index), sorted by prompt length so batches pad little.
        rows = sorted(((i, j) for i in range(len(prompts)) for j in range(n)), key=lambda r: (len(encoded[r[0]]), r))
        out: list[list[Completion | None]] = [[None] * n for _ in prompts]
        bs = self.spec.batch_size
        for lo in range(0, len(rows), bs):
            batch = rows[lo:lo + bs]
            comps = self._generate_batch([encoded[i] for i, _ in batch], [seeds[i] + j for i, j in batch], sampling)
            for (i, j), comp in zip(batch, comps):
                out[i][j] = comp
        return out  # type: ignore[return-value]

    def _generate_batch(self, prompt_ids: list[list[int]], seeds: list[int], sampling: SamplingConfig) -> list[Completion]:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        width = max(len(ids) for ids in prompt_ids)
        budgets = [min(sampling.max_new_tokens, self.max_model_len - len(ids)) for ids in prompt_ids]
        steps = max(budgets)
        input_ids = torch.tensor([[self.pad_id] * (width - len(ids)) + ids for ids in prompt_ids])
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompt_ids])
        processors = LogitsProcessorList()
        if sampling.temperature > 0:
            uniforms = torch.stack([torch.rand(steps, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
                                    for s in seeds]).float()
            processors.append(_SeededSampler(uniforms, width, sampling))
        config = GenerationConfig(do_sample=False, max_new_tokens=steps, eos_token_id=sorted(self.eos_ids),
                                  pad_token_id=self.pad_id, num_beams=1)
        with torch.inference_mode():
            generated = self.model.generate(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device),
                                            generation_config=config, logits_processor=processors)
        new = generated[:, width:].tolist()
        return [self._completion(row, budget) for row, budget in zip(new, budgets)]

    def _completion(self, ids: list[int], budget: int) -> Completion:
        ids = ids[:budget]
        for pos, tok in enumerate(ids):
            if tok in self.eos_ids:
                text = self.tokenizer.decode(ids[:pos], skip_special_tokens=True)
                return Completion(text=text, tokens=pos + 1, finish_reason="stop")
        return Completion(text=self.tokenizer.decode(ids, skip_special_tokens=True), tokens=len(ids),
                          finish_reason="length")

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]


@register_backend("transformers", kind="scorer")
class TransformersScorer(Scorer):
    def __init__(self, spec: ScorerSpec):
        from transformers import AutoModelForSequenceClassification

        path, opts = self._prepare(spec)
        device, dtype = _device_and_dtype(opts)
        with loading(spec.model):
            model = AutoModelForSequenceClassification.from_pretrained(path, revision=spec.revision, dtype=dtype)
        self._attach(model.to(device).eval())

    @classmethod
    def from_model(cls, model, tokenizer, batch_size: int = 32, max_length: int | None = None,
                   model_id: str | None = None) -> "TransformersScorer":
        """A scorer over a reward model already in memory (and on its device), scoring exactly as one loaded from
        a spec does. `model_id` (for cache keys) defaults to the identity of the folder it was loaded from."""
        self = cls.__new__(cls)
        name = str(getattr(model, "name_or_path", "") or "in-memory-reward-model")
        self.spec = ScorerSpec(model=name, batch_size=batch_size, max_length=max_length)
        require_template(tokenizer, name)
        self.tokenizer = tokenizer
        self.model_id = model_id or local_identity(self.spec)
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
        self.max_length = truncation_length(self.spec.max_length, model.config, self.tokenizer)
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
