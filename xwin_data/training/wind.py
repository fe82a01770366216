"""WIND (Faster WIND, arXiv 2410.20727), sample-efficient form, as a `transformers.Trainer`.

Iteration t: freeze a copy of the policy as π_t; sample a group of K responses per prompt from π_t (temperature
1, no truncation of the distribution, so the samples are π_t's); score them with the reward model; give each
its empirical win rate against the other K-1 (ties count half); then take `steps_per_iteration` gradient steps
regressing the log-ratio log π_θ(y|x) - log π_t(y|x) onto the target

    T(y) = η / (1 + ηβ) · ( w_t(y) - β · (log π_t(y|x) - log π_ref(y|x)) ),

both sides centred within the prompt's group (the per-prompt normaliser cancels). Fitted exactly, this is the
tabular update π_{t+1} ∝ (π_t · π_ref^{ηβ} · exp(η w_t))^{1/(1+ηβ)} of `wind_tabular.wind_step`.
Iteration 0 may use the stored groups of the `wind_groups` table (responses of the SFT policy with their
leave-one-out win rates) instead of fresh samples.
"""
from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from transformers import Trainer, TrainingArguments

from xwin_data.training.config import StageArgs, _stage_config, _stage_defaults


@dataclass
class WindArgs:
    """WIND's own settings."""

    eta: float = field(default=1.0, metadata={"help": "Step size η of the mirror-descent update."})
    beta: float = field(default=0.1, metadata={"help": "KL regularisation β toward the reference policy."})
    group_size: int = field(default=8, metadata={"help": "Responses sampled per prompt per iteration (K >= 2)."})
    steps_per_iteration: int = field(default=4, metadata={
        "help": "Optimizer steps regressing onto one iteration's samples before π_t is refreshed."})
    max_prompt_length: int = field(default=128, metadata={"help": "Prompt tokens kept (the end of the prompt)."})
    max_completion_length: int = field(default=32, metadata={"help": "Sampled tokens per response at most."})
    reward_model: str = field(default="tiny-reward", metadata={"help": "Reward model that scores the samples."})
    reward_batch_size: int = field(default=64, metadata={"help": "Sequences per reward-model batch."})
    reset_optimizer_each_iteration: bool = field(default=True, metadata={
        "help": "Clear the optimizer's moments when π_t is refreshed: each iteration is a new regression problem, "
                "and momentum from the previous targets pushes the fit off."})
    first_iteration_from_table: bool = field(default=True, metadata={
        "help": "Use the table's stored groups (response, score) for iteration 0 when it has them."})


def _check(cfg) -> None:
    if cfg.group_size < 2:
        raise ValueError("group_size must be at least 2 (a win rate needs other responses)")
    if cfg.eta <= 0 or cfg.beta < 0:
        raise ValueError("eta must be > 0 and beta >= 0")


WindConfig = _stage_config(
    "WindConfig", TrainingArguments, mixins=(StageArgs, WindArgs), module=__name__, check=_check,
    **_stage_defaults(remove_unused_columns=False, learning_rate=1e-5))
WindConfig.__doc__ = "transformers' TrainingArguments + the catalog / model / evaluation fields + WIND's own."


def group_win_rates(scores: torch.Tensor) -> torch.Tensor:
    """(groups, K) scores -> leave-one-out win rates: mean over j != i of 1[s_i > s_j] + 0.5 * 1[s_i = s_j]."""
    diff = scores[:, :, None] - scores[:, None, :]
    wins = (diff > 0).float() + 0.5 * (diff == 0).float()
    k = scores.shape[1]
    return (wins.sum(-1) - 0.5) / (k - 1)  # remove the self-comparison (a tie, 0.5)


def wind_target(win_rate: torch.Tensor, logp_prev: torch.Tensor, logp_ref: torch.Tensor,
                eta: float, beta: float) -> torch.Tensor:
    """Regression target for log π_θ - log π_t, per response (uncentred)."""
    return eta / (1.0 + eta * beta) * (win_rate - beta * (logp_prev - logp_ref))


def centred(x: torch.Tensor) -> torch.Tensor:
    return x - x.mean(dim=-1, keepdim=True)


def sequence_logps(model, input_ids, attention_mask, completion_mask) -> torch.Tensor:
    """Sum of the completion tokens' log-probabilities, per sequence."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    targets = input_ids[:, 1:]
    logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (logp * completion_mask[:, 1:]).sum(-1)


class WindTrainer(Trainer):
    """Trainer whose batches are prompts; each `steps_per_iteration` optimizer steps form one WIND iteration."""

    def __init__(self, model, ref_model, reward_model, reward_tokenizer, args: WindConfig, train_dataset,
                 processing_class, **kwargs):
        super().__init__(model=model, args=args, train_dataset=train_dataset, processing_class=processing_class,
                         data_collator=lambda features: features, **kwargs)
        self.loss_is_scaled_for_ga = False  # compute_loss returns a mean; Trainer divides by the GA steps
        device = self.args.device
        self.ref_model = ref_model.to(device).eval().requires_grad_(False)
        from xwin_data.llm.backends.transformers_backend import TransformersScorer

        # The Xwin-Set op's scorer over the loaded model: fresh samples score as the stored groups were scored.
        self.reward_scorer = TransformersScorer.from_model(
            reward_model.to(device).requires_grad_(False), reward_tokenizer, batch_size=args.reward_batch_size)
        self.prev_model = None
        self.iteration = -1
        self._micro = 0
        self._buffers: dict[int, dict] = {}
        self._stats: dict[str, list[float]] = defaultdict(list)
        self.iteration_log: list[dict] = []

    # ----------------------------------------------------------------------------------- sampling and targets
    def _prompt_ids(self, prompt) -> list[int]:
        out = self.processing_class.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                                        return_dict=True)
        return list(out["input_ids"])[-self.args.max_prompt_length:]

    @torch.no_grad()
    def _sample(self, prompt_ids: list[list[int]]) -> list[list[list[int]]]:
        """K completions (token ids, eos kept, padding cut) per prompt from the frozen π_t."""
        tok, k = self.processing_class, self.args.group_size
        width = max(len(p) for p in prompt_ids)
        ids = torch.full((len(prompt_ids), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompt_ids):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        out = self.prev_model.generate(
            input_ids=ids.to(self.args.device), attention_mask=mask.to(self.args.device), do_sample=True,
            temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=self.args.max_completion_length,
            num_return_sequences=k, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        groups = []
        for i in range(len(prompt_ids)):
            group = []
            for j in range(k):
                seq = out[i * k + j, width:].tolist()
                if tok.eos_token_id in seq:
                    seq = seq[:seq.index(tok.eos_token_id) + 1]
                group.append([t for t in seq if t != tok.pad_token_id] or [tok.eos_token_id])
            groups.append(group)
        return groups

    def _pack(self, prompt_ids, completions) -> dict[str, torch.Tensor]:
        seqs = [p + c for p, group in zip(prompt_ids, completions) for c in group]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.processing_class.pad_token_id, dtype=torch.long)
        attn, comp = torch.zeros_like(ids), torch.zeros_like(ids)
        row = 0
        for p, group in zip(prompt_ids, completions):
            for c in group:
                ids[row, :len(p) + len(c)] = torch.tensor(p + c)
                attn[row, :len(p) + len(c)] = 1
                comp[row, len(p):len(p) + len(c)] = 1
                row += 1
        dev = self.args.device
        return {"input_ids": ids.to(dev), "attention_mask": attn.to(dev), "completion_mask": comp.to(dev)}

    @torch.no_grad()
    def _make_buffer(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        tok, k = self.processing_class, self.args.group_size
        prompt_ids = [self._prompt_ids(r["prompt"]) for r in rows]
        stored = (self.iteration == 0 and self.args.first_iteration_from_table
                  and all(len(r.get("responses") or []) >= 2 for r in rows))
        if stored:  # iteration 0 from the table's groups (sampled from the starting policy, already scored)
            completions = [[tok(t, add_special_tokens=False)["input_ids"][:self.args.max_completion_length - 1]
                            + [tok.eos_token_id] for t in r["responses"]] for r in rows]
            k = min([self.args.group_size] + [len(c) for c in completions])
            completions = [c[:k] for c in completions]
            scores = torch.tensor([r["scores"][:k] for r in rows], dtype=torch.float32)
        else:
            completions = self._sample(prompt_ids)
            texts = [tok.decode(c, skip_special_tokens=True) for group in completions for c in group]
            prompts = [r["prompt"] for r in rows for _ in range(k)]
            scores = torch.tensor(self.reward_scorer.score_responses(prompts, texts)).view(len(rows), k)
        batch = self._pack(prompt_ids, completions)
        args = (batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        logp_prev = sequence_logps(self.prev_model, *args).view(len(rows), k)
        logp_ref = sequence_logps(self.ref_model, *args).view(len(rows), k)
        win = group_win_rates(scores).to(logp_prev.device)
        batch["target"] = centred(wind_target(win, logp_prev, logp_ref, self.args.eta, self.args.beta))
        batch["logp_prev"] = logp_prev
        self._stats["reward"].append(float(scores.mean()))
        self._stats["kl_prev_ref"].append(float((logp_prev - logp_ref).mean()))
        self._stats["completion_tokens"].append(float(batch["completion_mask"].sum()) / (len(rows) * k))
        self._stats["from_table"].append(float(stored))
        return batch

    # ----------------------------------------------------------------------------------- loss and iterations
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        groups, k = inputs["target"].shape
        logp = sequence_logps(model, inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"])
        delta = centred(logp.view(groups, k) - inputs["logp_prev"])
        loss = ((delta - inputs["target"]) ** 2).mean()
        return (loss, {"delta": delta}) if return_outputs else loss

    @torch.no_grad()
    def buffer_loss(self) -> float | None:
        """The regression loss of the current model on this iteration's samples (without gradients)."""
        if not self._buffers:
            return None
        was = self.model.training
        self.model.eval()
        losses = [float(self.compute_loss(self.model, b)) for b in self._buffers.values()]
        self.model.train(was)
        return sum(losses) / len(losses)

    def end_iteration(self) -> None:
        if self.iteration_log and self.iteration_log[-1].get("loss_after") is None:
            self.iteration_log[-1]["loss_after"] = self.buffer_loss()

    def _start_iteration(self) -> None:
        self.end_iteration()
        self.iteration += 1
        self.prev_model = copy.deepcopy(self.accelerator.unwrap_model(self.model)).eval().requires_grad_(False)
        self._buffers = {}
        if self.args.reset_optimizer_each_iteration and self.optimizer is not None:
            inner = getattr(self.optimizer, "optimizer", self.optimizer)  # accelerate wraps the torch optimizer
            inner.state.clear()

    def training_step(self, model, inputs, num_items_in_batch=None):
        ga = self.args.gradient_accumulation_steps
        slot, phase = self._micro % ga, (self._micro // ga) % self.args.steps_per_iteration
        if phase == 0:
            if slot == 0:
                self._start_iteration()
            self._buffers[slot] = self._make_buffer(inputs)
            if slot == ga - 1:
                self.iteration_log.append({"iteration": self.iteration, "loss_before": self.buffer_loss(),
                                           "loss_after": None, "reward": self._stats["reward"][-1],
                                           "from_table": bool(self._stats["from_table"][-1])})
        self._micro += 1
        return super().training_step(model, self._buffers[slot], num_items_in_batch)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        for key, values in self._stats.items():
            if values:
                logs[f"wind/{key}"] = sum(values) / len(values)
        logs["wind/iteration"] = self.iteration
        self._stats = defaultdict(list)
        super().log(logs, start_time)
