"""Turn one source record (ShareGPT, OpenAI `messages`, Alpaca) into canonical messages, or say why it cannot be.

A record either becomes `(messages, model)` with roles system/user/assistant that alternate user→assistant and end
on the assistant, or raises `BadRecord(reason, detail)`; the reader turns that into a drops row. Nothing here
decides policy beyond the canonical form: a trailing unanswered user turn is trimmed (it cannot be trained on), an
empty turn cuts the conversation before it (`on_bad_turn: truncate`, the default) or drops it (`drop_conversation`),
everything else that breaks the form is a drop with the offending value.
"""
from __future__ import annotations

import json
from typing import Any

from xwin_data.conversation import canonical_role

FORMATS = ("sharegpt", "openai", "alpaca")
MODEL_FIELDS = ("model", "model_id", "model_name")


class BadRecord(Exception):
    def __init__(self, reason: str, detail: Any = None):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def _short(value: Any, limit: int = 300) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[:limit] + "…"


def detect_format(record: Any) -> str | None:
    if not isinstance(record, dict):
        return None
    if "conversations" in record or "conversation" in record:
        return "sharegpt"
    if "messages" in record:
        return "openai"
    if "instruction" in record and "output" in record:
        return "alpaca"
    return None


def _content(value: Any, where: str) -> str:
    """A turn's text; OpenAI-style content parts ([{type: text, text|value}]) are joined."""
    if isinstance(value, list) and value and all(isinstance(p, dict) for p in value):
        texts = []
        for part in value:
            if part.get("type", "text") != "text":
                raise BadRecord("non_text_content", f"{where}: part type {part.get('type')!r}")
            text = part.get("text", part.get("value"))
            if not isinstance(text, str):
                raise BadRecord("non_string_content", f"{where}: {_short(part)}")
            texts.append(text)
        value = "".join(texts)
    if not isinstance(value, str):
        raise BadRecord("non_string_content", f"{where}: {_short(value)}")
    return value


def _turns_sharegpt(record: dict) -> list[tuple[str, str]]:
    convs = record.get("conversations", record.get("conversation"))
    if convs is None:
        raise BadRecord("missing_field", f"no 'conversations' (keys: {sorted(record)})")
    if not isinstance(convs, list):
        raise BadRecord("malformed_conversations", _short(convs))
    turns = []
    for i, turn in enumerate(convs):
        if not isinstance(turn, dict):
            raise BadRecord("malformed_turn", f"turn {i}: {_short(turn)}")
        raw_role = turn.get("from", turn.get("role"))
        if raw_role is None or ("value" not in turn and "content" not in turn):
            raise BadRecord("missing_field", f"turn {i} needs 'from' and 'value' (keys: {sorted(turn)})")
        role = canonical_role(raw_role)
        if role is None:
            raise BadRecord("unknown_role", f"turn {i}: role {raw_role!r}")
        turns.append((role, _content(turn.get("value", turn.get("content")), f"turn {i}")))
    system = record.get("system")
    if isinstance(system, str) and system.strip() and not (turns and turns[0][0] == "system"):
        turns.insert(0, ("system", system))
    return turns


def _turns_openai(record: dict) -> list[tuple[str, str]]:
    msgs = record.get("messages")
    if msgs is None:
        raise BadRecord("missing_field", f"no 'messages' (keys: {sorted(record)})")
    if not isinstance(msgs, list):
        raise BadRecord("malformed_conversations", _short(msgs))
    turns = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise BadRecord("malformed_turn", f"turn {i}: {_short(m)}")
        if "role" not in m or "content" not in m:
            raise BadRecord("missing_field", f"turn {i} needs 'role' and 'content' (keys: {sorted(m)})")
        role = canonical_role(m["role"])
        if role is None:
            raise BadRecord("unknown_role", f"turn {i}: role {m['role']!r}")
        turns.append((role, _content(m["content"], f"turn {i}")))
    return turns


def _turns_alpaca(record: dict) -> list[tuple[str, str]]:
    for key in ("instruction", "output"):
        if key not in record:
            raise BadRecord("missing_field", f"no {key!r} (keys: {sorted(record)})")
    turns: list[tuple[str, str]] = []
    system = record.get("system")
    if system not in (None, ""):
        turns.append(("system", _content(system, "system")))
    history = record.get("history") or []
    if not isinstance(history, list):
        raise BadRecord("malformed_conversations", f"history: {_short(history)}")
    for i, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise BadRecord("malformed_turn", f"history {i}: {_short(pair)}")
        turns += [("user", _content(pair[0], f"history {i}")), ("assistant", _content(pair[1], f"history {i}"))]
    instruction = _content(record["instruction"], "instruction")
    extra = record.get("input")
    if extra not in (None, ""):
        instruction = f"{instruction}\n\n{_content(extra, 'input')}"
    turns += [("user", instruction), ("assistant", _content(record["output"], "output"))]
    return turns


_READERS = {"sharegpt": _turns_sharegpt, "openai": _turns_openai, "alpaca": _turns_alpaca}


BAD_TURN_POLICIES = ("truncate", "drop_conversation")
_INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff\u00ad"


def is_blank(text: str) -> bool:
    """Empty once whitespace and zero-width characters are taken out."""
    return not text.strip().strip(_INVISIBLE).strip()


class Cut:
    """A conversation kept up to a bad turn: `reason` and `detail` for its drops row (unit `cuts`)."""

    def __init__(self, reason: str, detail: str, turns_cut: int):
        self.reason, self.detail, self.turns_cut = reason, detail, turns_cut


def truncate_at(turns: list, k: int, reason: str, what: str) -> tuple[list, Cut] | None:
    """`turns` (role first in each item) cut before turn k, a trailing user turn dropped too; None when what is
    left has no assistant turn to learn from."""
    kept = list(turns[:k])
    while kept and kept[-1][0] != "assistant":
        kept.pop()
    if not any(t[0] == "assistant" for t in kept):
        return None
    cut = len(turns) - len(kept)
    return kept, Cut(f"truncated_{reason}", f"{what}; kept turns 0-{len(kept) - 1} of {len(turns)}", cut)


def check_turns(turns: list[tuple[str, str]], on_bad_turn: str = "truncate"
                ) -> tuple[list[tuple[str, str]], Cut | None]:
    """Enforce the canonical form: optional system first, then user/assistant alternating, ending on assistant.
    A turn that is empty or only whitespace / zero-width characters is a bad turn: with `truncate` the
    conversation keeps the turns before it (when they end on an assistant turn) and the cut is returned; with
    `drop_conversation` (or when nothing usable is left) the record is a drop."""
    if not turns:
        raise BadRecord("empty_conversation", "no turns")
    cut = None
    for i, (role, text) in enumerate(turns):
        if role == "system" and i != 0:
            raise BadRecord("misplaced_system", f"system turn at position {i}")
        if is_blank(text):
            what = f"turn {i} ({role}) is empty"
            kept = truncate_at(turns, i, "empty_content", what) if on_bad_turn == "truncate" else None
            if kept is None:
                raise BadRecord("empty_content", what)
            turns, cut = kept
            break
    body = turns[1:] if turns[0][0] == "system" else turns
    for i, (role, _) in enumerate(body):  # checked before trimming: [user, user] is not one unanswered question
        want = "user" if i % 2 == 0 else "assistant"
        if role != want:
            reason = "first_turn_not_user" if i == 0 else "non_alternating_roles"
            raise BadRecord(reason, f"roles {[r for r, _ in turns]}")
    if body and body[-1][0] == "user":  # an unanswered last question carries nothing to learn
        body = body[:-1]
    if not body:
        raise BadRecord("no_assistant_turn", f"roles {[r for r, _ in turns]}")
    return ([turns[0]] if turns[0][0] == "system" else []) + body, cut


def normalise(record: Any, fmt: str = "auto", model_field: str | None = None, on_bad_turn: str = "truncate"
              ) -> tuple[list[dict], str | None]:
    """Canonical messages and the answering model (where the record says) of one source record."""
    turns, model, _ = normalise_turns(record, fmt, model_field, on_bad_turn)
    return [{"role": r, "content": c} for r, c in turns], model


def normalise_turns(record: Any, fmt: str = "auto", model_field: str | None = None, on_bad_turn: str = "truncate"
                    ) -> tuple[list[tuple[str, str]], str | None, Cut | None]:
    """`normalise` with the messages as (role, content) pairs (for building Arrow columns directly), and the cut
    made at a bad turn, if any."""
    if not isinstance(record, dict):
        raise BadRecord("not_an_object", _short(record))
    kind = detect_format(record) if fmt == "auto" else fmt
    if kind is None:
        raise BadRecord("missing_field", f"no conversations / messages / instruction field (keys: {sorted(record)})")
    turns, cut = check_turns(_READERS[kind](record), on_bad_turn)
    model = None
    for field in ((model_field,) if model_field else MODEL_FIELDS):
        value = record.get(field)
        if isinstance(value, str) and value:
            model = value
            break
    return turns, model, cut
