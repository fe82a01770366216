"""FastChat's MT-bench judge prompts (``judge_prompts.jsonl``: pair-v2, single-v1, their math and multi-turn
forms) rendered for a question and answers, as FastChat's ``llm_judge`` does."""
from __future__ import annotations

import json
from pathlib import Path

NEED_REF_CATEGORIES = ("math", "reasoning", "coding")  # FastChat judges these against a reference answer


def load_jsonl(path: Path) -> list[dict]:
    with Path(path).open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_judge_prompts(path: Path) -> dict[str, dict]:
    prompts = {p["name"]: p for p in load_jsonl(path)}
    missing = {"pair-v2", "single-v1", "single-v1-multi-turn", "single-math-v1"} - set(prompts)
    if missing:
        raise ValueError(f"{path} is not FastChat's judge_prompts.jsonl (missing {', '.join(sorted(missing))})")
    return prompts


def _messages(prompt: dict, user: str) -> list[dict]:
    return [{"role": "system", "content": prompt["system_prompt"]}, {"role": "user", "content": user}]


def pairwise_messages(prompts: dict, question: str, answer_a: str, answer_b: str,
                      reference: str | None = None) -> tuple[str, list[dict]]:
    """The single-turn pairwise judge call (pair-v2, or pair-math-v1 with a reference)."""
    name = "pair-math-v1" if reference is not None and "pair-math-v1" in prompts else "pair-v2"
    p = prompts[name]
    kwargs = {"question": question, "answer_a": answer_a, "answer_b": answer_b}
    if name == "pair-math-v1":
        kwargs["ref_answer_1"] = reference
    return name, _messages(p, p["prompt_template"].format(**kwargs))


def single_messages(prompts: dict, turns: list[str], answers: list[str], turn: int,
                    references: list[str] | None = None) -> tuple[str, list[dict]]:
    """The single-grade judge call for turn 1 (single-v1) or turn 2 (single-v1-multi-turn), with the math forms
    when a reference answer is given."""
    math = references is not None
    if turn == 1:
        name = "single-math-v1" if math else "single-v1"
        kwargs = {"question": turns[0], "answer": answers[0]}
        if math:
            kwargs["ref_answer_1"] = references[0]
    else:
        name = "single-math-v1-multi-turn" if math else "single-v1-multi-turn"
        kwargs = {"question_1": turns[0], "answer_1": answers[0], "question_2": turns[1], "answer_2": answers[1]}
        if math:
            kwargs.update(ref_answer_1=references[0], ref_answer_2=references[1])
    p = prompts[name]
    return name, _messages(p, p["prompt_template"].format(**kwargs))
