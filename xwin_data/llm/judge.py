"""Pairwise LLM judging: versioned prompt templates, verdict parsers, both presentation orders, aggregation.

A pair (x, y) is judged twice by default: once with x shown as assistant A ("ab"), once with y shown first
("ba"). Each reply is parsed into a preference for the answer shown as A (positive), B (negative) or neither
(0); a reply that cannot be parsed is asked again (a new cache key: the attempt index) up to `parse_retries`
times and then kept as invalid. The two orders aggregate into a winner, a strength and a consistency flag.

Verdict formats (the template's `verdict`):
- `abc`: `[[A]]`, `[[B]]`, `[[C]]` (tie), as MT-bench. Preference +1 / -1 / 0.
- `graded`: `[[A>>B]]`, `[[A>B]]`, `[[A=B]]`, `[[B>A]]`, `[[B>>A]]`. Preference +2 / +1 / 0 / -1 / -2.
- `scores`: two 1-10 scores (the 2023 Vicuna evaluation). Preference = score_A - score_B.

Aggregation: the preference for x is +p_ab and -p_ba; strength = |mean of the valid ones|, so it is on the
template's own scale (abc: 1 for a consistent win, 0.5 for a win + tie, 0 for a flip or a tie; graded: 0..2;
scores: 0..9). consistent = both orders valid and the same sign (a consistent tie counts as consistent).
A position-biased judge (always A) gives +1 and -1: a tie, inconsistent, which is what the flip rate counts.

Raw replies are stored, so `parse_verdict` can be re-run offline after a parser fix (rebuilding the judge
stage re-parses from the request cache without new calls).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import yaml

from xwin_data.llm.client import ChatCall, ChatClient, ChatResult

TEMPLATE_PACKAGE = "xwin_data.templates"
VERDICT_KINDS = ("abc", "graded", "scores")
SCOPES = ("single", "conversation", "last_turn")
PLACEHOLDER = re.compile(r"\{(question|context|answer_a|answer_b|conversation_a|conversation_b)\}")


class TemplateError(ValueError):
    pass


@dataclass(frozen=True)
class JudgeTemplate:
    name: str
    version: int
    verdict: str
    scope: str
    system: str
    prompt: str
    source: str
    digest: str

    @property
    def version_id(self) -> str:
        """What the cache keys and the `template_version` column carry: name, version and content hash."""
        return f"{self.name}@v{self.version}-{self.digest}"


def list_templates() -> list[str]:
    folder = resources.files(TEMPLATE_PACKAGE) / "judge"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_template(name_or_path: str) -> JudgeTemplate:
    """A shipped template by name (see `list_templates()`) or a YAML file of the same shape."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        text = path.read_text(encoding="utf-8")
    else:
        res = resources.files(TEMPLATE_PACKAGE) / "judge" / f"{name_or_path}.yaml"
        if not res.is_file():
            raise TemplateError(f"unknown judge template {name_or_path!r}; shipped: {', '.join(list_templates())} "
                                "(or give a path to a .yaml file)")
        text = res.read_text(encoding="utf-8")
    data = yaml.safe_load(text) or {}
    missing = {"name", "version", "verdict", "scope", "system", "prompt"} - set(data)
    if missing:
        raise TemplateError(f"judge template {name_or_path}: missing {', '.join(sorted(missing))}")
    if data["verdict"] not in VERDICT_KINDS or data["scope"] not in SCOPES:
        raise TemplateError(f"judge template {name_or_path}: verdict must be one of {VERDICT_KINDS} and scope one "
                            f"of {SCOPES}")
    return JudgeTemplate(str(data["name"]), int(data["version"]), data["verdict"], data["scope"],
                         str(data["system"]).strip(), str(data["prompt"]), str(data.get("source", "")),
                         hashlib.sha256(text.encode()).hexdigest()[:8])


# ---------------------------------------------------------------------------------------------- rendering
def _transcript(history: Sequence[dict], answer: str, label: str) -> str:
    turns = [m for m in history if m["role"] != "system"] + [{"role": "assistant", "content": answer}]
    return "\n\n".join(f"### {'User' if m['role'] == 'user' else f'Assistant {label}'}:\n{m['content']}"
                       for m in turns)


def render(template: JudgeTemplate, prompt: Sequence[dict], answer_a: str, answer_b: str) -> list[dict]:
    """The judge's messages for one order: `prompt` is the conversation up to the last user turn."""
    users = [i for i, m in enumerate(prompt) if m["role"] == "user"]
    if not users:
        raise TemplateError("a prompt without a user turn cannot be judged")
    last = users[-1]
    earlier = [m for m in prompt[:last] if m["role"] != "system"]
    context = ""
    if earlier:
        context = ("[Conversation so far]\n" + "\n\n".join(f"### {m['role'].capitalize()}:\n{m['content']}"
                                                           for m in earlier) + "\n\n")
    values = {"question": prompt[last]["content"], "context": context, "answer_a": answer_a, "answer_b": answer_b,
              "conversation_a": _transcript(prompt, answer_a, "A"),
              "conversation_b": _transcript(prompt, answer_b, "B")}
    text = PLACEHOLDER.sub(lambda m: values[m.group(1)], template.prompt)  # one pass: answers are never re-scanned
    return [{"role": "system", "content": template.system}, {"role": "user", "content": text}]


# ---------------------------------------------------------------------------------------------- parsing
@dataclass
class Verdict:
    status: str  # "ok" | "unparseable"
    label: str | None = None  # as the judge wrote it: "A", "A>>B", "8 9"
    preference: float | None = None  # for the answer shown as A; None when unparseable


_ABC = re.compile(r"\[\[\s*([ABC])\s*\]\]")
_GRADED = re.compile(r"\[\[\s*([AB])\s*(>>|>|=|==|<<|<)\s*([AB])\s*\]\]")
_NUM = r"(\d+(?:\.\d+)?)"
_FIRST_LINE = re.compile(rf"^\s*{_NUM}\s*(?:/\s*10)?\s*[ ,;]\s*{_NUM}\s*(?:/\s*10)?\s*$")
_LABELLED = {side: re.compile(rf"Assistant {lab}\s*(?:'s score)?\s*[:=]\s*\**\s*{_NUM}\s*(?:/\s*10)?", re.I)
             for side, lab in (("A", "(?:A|1)"), ("B", "(?:B|2)"))}
_TUPLE = re.compile(rf"\(\s*{_NUM}\s*,\s*{_NUM}\s*\)")


def _graded_preference(left: str, op: str, right: str) -> float | None:
    if left == right:
        return None
    if op in ("=", "=="):
        return 0.0
    size = 2.0 if op in (">>", "<<") else 1.0
    a_first = left == "A"
    a_wins = (op.startswith(">") and a_first) or (op.startswith("<") and not a_first)
    return size if a_wins else -size


def parse_verdict(kind: str, text: str | None) -> Verdict:
    """The judge's verdict in `text`; the last well-formed verdict wins (judges restate the format first)."""
    text = text or ""
    if kind == "abc":
        found = _ABC.findall(text)
        if not found:
            return Verdict("unparseable")
        label = found[-1]
        return Verdict("ok", label, {"A": 1.0, "B": -1.0, "C": 0.0}[label])
    if kind == "graded":
        found = [(m, _graded_preference(*m)) for m in _GRADED.findall(text)]
        found = [(m, p) for m, p in found if p is not None]
        if not found:
            return Verdict("unparseable")
        (left, op, right), pref = found[-1]
        return Verdict("ok", f"{left}{op}{right}", pref)
    if kind == "scores":
        scores = _parse_scores(text)
        if scores is None:
            return Verdict("unparseable")
        a, b = scores
        return Verdict("ok", f"{a:g} {b:g}", a - b)
    raise TemplateError(f"unknown verdict kind {kind!r}")


def _parse_scores(text: str) -> tuple[float, float] | None:
    """Two scores: a first line "s_A s_B" (the requested format), else "Assistant A/1: s ... Assistant B/2: s",
    else a tuple "(s_A, s_B)"; scores outside 0..10 are rejected."""
    lines = text.strip().splitlines()
    candidates = []
    m = _FIRST_LINE.match(lines[0]) if lines else None
    if m:
        candidates.append((float(m.group(1)), float(m.group(2))))
    a, b = _LABELLED["A"].findall(text), _LABELLED["B"].findall(text)
    if a and b:
        candidates.append((float(a[-1]), float(b[-1])))
    t = _TUPLE.findall(text)
    if t:
        candidates.append((float(t[-1][0]), float(t[-1][1])))
    for sa, sb in candidates:
        if 0 <= sa <= 10 and 0 <= sb <= 10:
            return sa, sb
    return None


# ---------------------------------------------------------------------------------------------- aggregation
@dataclass
class Outcome:
    winner: str | None  # "first" (x), "second" (y), "tie", or None when no order gave a valid verdict
    strength: float | None
    consistent: bool | None  # None when fewer than two orders are valid
    n_valid: int


def _sign(v: float) -> int:
    return (v > 0) - (v < 0)


def aggregate(pref_ab: float | None, pref_ba: float | None) -> Outcome:
    """Combine the order where x was A (pref_ab) and the order where y was A (pref_ba) into x-vs-y."""
    for_x = [p for p in (pref_ab, None if pref_ba is None else -pref_ba) if p is not None]
    if not for_x:
        return Outcome(None, None, None, 0)
    mean = sum(for_x) / len(for_x)
    consistent = _sign(for_x[0]) == _sign(for_x[1]) if len(for_x) == 2 else None
    winner = "first" if mean > 0 else "second" if mean < 0 else "tie"
    return Outcome(winner, abs(mean), consistent, len(for_x))


# ---------------------------------------------------------------------------------------------- judging
@dataclass
class PairToJudge:
    pair_id: str
    prompt: list[dict]
    first: str  # x
    second: str  # y


@dataclass
class CallRecord:
    pair_id: str
    order: str  # "ab": x shown as A; "ba": y shown as A
    attempt: int
    request_key: str
    raw_text: str | None
    verdict: str | None
    preference: float | None  # for the answer shown as A
    parse_status: str  # ok | unparseable | error
    error: str | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    cached: bool


@dataclass
class JudgeRun:
    calls: list[CallRecord] = field(default_factory=list)
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    final: dict[tuple[str, str], CallRecord] = field(default_factory=dict)  # (pair, order) -> last attempt used


def judge_pairs(pairs: Sequence[PairToJudge], template: JudgeTemplate, client: ChatClient, *,
                params: dict | None = None, both_orders: bool = True, parse_retries: int = 2,
                retry_temperature: float | None = 0.7, on_call: Any = None) -> JudgeRun:
    """Judge every pair in one or both orders; unparseable replies are asked again with a new attempt index.

    `on_call(record)` sees every call record as it completes (progress). Errors (time-outs after retries,
    budget) leave a record with parse_status "error" and no verdict; the pair keeps whatever orders succeeded.
    """
    params = dict(params or {"temperature": 0.0, "max_tokens": 1024})
    orders = ("ab", "ba") if both_orders else ("ab",)
    run = JudgeRun()
    pending = [(p, o) for p in pairs for o in orders]
    for attempt in range(parse_retries + 1):
        if not pending:
            break
        calls = []
        for pair, order in pending:
            a, b = (pair.first, pair.second) if order == "ab" else (pair.second, pair.first)
            call_params = dict(params)
            if attempt and retry_temperature is not None:
                call_params["temperature"] = max(float(call_params.get("temperature", 0.0)), retry_temperature)
            calls.append(ChatCall(render(template, pair.prompt, a, b), call_params,
                                  {"template": template.version_id, "attempt": attempt}, (pair.pair_id, order)))
        results = client.run(calls, on_done=None if on_call is None else
                             (lambda r, a=attempt: on_call(_record(r, template, a))))
        retry = []
        by_tag = {(p.pair_id, o): (p, o) for p, o in pending}
        for res in results:
            rec = _record(res, template, attempt)
            run.calls.append(rec)
            run.final[(rec.pair_id, rec.order)] = rec
            if rec.parse_status == "unparseable":
                retry.append(by_tag[(rec.pair_id, rec.order)])
        pending = retry
    for pair in pairs:
        ab = run.final.get((pair.pair_id, "ab"))
        ba = run.final.get((pair.pair_id, "ba"))
        run.outcomes[pair.pair_id] = aggregate(ab.preference if ab else None, ba.preference if ba else None)
    return run


def _record(res: ChatResult, template: JudgeTemplate, attempt: int) -> CallRecord:
    pair_id, order = res.call.tag
    if res.error is not None:
        return CallRecord(pair_id, order, attempt, res.key, None, None, None, "error",
                          f"{type(res.error).__name__}: {res.error}", 0, 0, 0.0, False)
    v = parse_verdict(template.verdict, res.text)
    return CallRecord(pair_id, order, attempt, res.key, res.text, v.label, v.preference, v.status, None,
                      res.prompt_tokens, res.completion_tokens, res.cost_usd, res.cached)
