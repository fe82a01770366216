"""The default backend: `transformers` `generate` on CPU or GPU, batched.

Prompts are rendered with the chat template, sorted by length and packed into left-padded batches of
`spec.batch_size` sequences (a prompt's n samples are rows of their own, so n may exceed the batch). Sampling is
done by a logits processor that draws row r's token from row r's own random stream (seeded with the sample's
seed), so a sample does not depend on which other prompts shared its batch; `generate` itself runs greedy over
the processor's one-hot choice.
"""
from __future__ import annotations

from typing import Any

from xwin_data.llm.generation import Completion, GeneratorSpec, LocalGenerator, Messages, PromptTooLongError, SamplingConfig, \
    load_chat_template


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


class TransformersGenerator(LocalGenerator):
    def __init__(self, spec: GeneratorSpec):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from xwin_data.llm.tiny import resolve_model

        self.spec = spec
        opts = dict(spec.extra)
        revision = opts.pop("revision", None)
        model_path = resolve_model(spec.model)
        tok_path = resolve_model(spec.tokenizer) if spec.tokenizer else model_path
        self.tokenizer = AutoTokenizer.from_pretrained(tok_path, revision=None if spec.tokenizer else revision)
        self.tokenizer.padding_side = "left"
        template = load_chat_template(spec.chat_template)
        if template is not None:
            self.tokenizer.chat_template = template
        if self.tokenizer.chat_template is None:
            raise ValueError(f"tokenizer of {spec.model!r} has no chat template; set chat_template in the spec")
        device = opts.pop("device", "cuda" if torch.cuda.is_available() else "cpu")
        dtype = opts.pop("dtype", "float32" if device == "cpu" else "auto")
        self.model = AutoModelForCausalLM.from_pretrained(
            model_path, revision=revision, dtype=dtype if dtype == "auto" else getattr(torch, dtype)).to(device)
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
        self._set_identity(spec, revision)

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

    def describe(self) -> dict[str, Any]:
        return {"backend": "transformers", "model_id": self.model_id, "device": self.device}
