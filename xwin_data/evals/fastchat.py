"""FastChat's MT-bench judge prompts (pair-v2, single-v1, their math and multi-turn forms) rendered for a
question and answers, as FastChat's ``llm_judge`` does.

The prompts ship with the package (``xwin_data/templates/judge/mtbench/*.yaml``, verbatim from FastChat,
Apache-2.0); a FastChat ``judge_prompts.jsonl`` given as ``path`` overrides them.
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import yaml

NEED_REF_CATEGORIES = ("math", "reasoning", "coding")  # FastChat judges these against a reference answer
REQUIRED = {"pair-v2", "single-v1", "single-v1-multi-turn", "single-math-v1"}


def load_jsonl(path: Path) -> list[dict]:
    with Path(path).open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def shipped_judge_prompts() -> dict[str, dict]:
    folder = resources.files("xwin_data.templates") / "judge" / "mtbench"
    out = {}
    for p in folder.iterdir():
        if p.name.endswith(".yaml"):
            data = yaml.safe_load(p.read_text(encoding="utf-8"))
            out[data["name"]] = data
    return out


def load_judge_prompts(path: Path | None = None) -> dict[str, dict]:
    """The shipped prompts, or FastChat's judge_prompts.jsonl at `path`."""
    prompts = {p["name"]: p for p in load_jsonl(path)} if path is not None else shipped_judge_prompts()
    missing = REQUIRED - set(prompts)
    if missing:
        where = path if path is not None else "the shipped templates (xwin_data/templates/judge/mtbench)"
        raise ValueError(f"{where} is not FastChat's judge_prompts.jsonl (missing {', '.join(sorted(missing))})")
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
