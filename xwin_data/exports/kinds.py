"""Recognise what a table holds from its columns, and read its rows in one normalised shape.

Three kinds cover the catalog's tables:

- ``conversations``: ``messages`` (list of role/content), e.g. ``sft_sharegpt``;
- ``pairs``: ``chosen`` and ``rejected`` (a response string or a messages list) with an optional ``prompt``
  (messages or string), e.g. ``xwin_pair`` and ``dpo_pairs_*``;
- ``responses``: ``prompt`` and ``response`` (optionally ``score``, ``rank``), e.g. ``xwin_set`` and
  ``rs_best_of_*``: each row becomes a prompt + one assistant reply.

Converters are tolerant of both response shapes, because pair tables are made by several ops.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from xwin_data.core.catalog import Catalog
from xwin_data.core.connection import connect
from xwin_data.core.errors import XwinError

ROLES = ("system", "user", "assistant")


class ExportError(XwinError, ValueError):
    """A table this format cannot represent; the message says which columns were expected."""


def table_columns(catalog: Catalog, table: str) -> dict[str, str]:
    con = connect(catalog, canned_views=False)
    try:
        return {r[0]: r[1] for r in con.execute(f'DESCRIBE "{table}"').fetchall()}
    finally:
        con.close()


def table_kind(columns: dict[str, str] | list[str]) -> str:
    cols = set(columns)
    if {"chosen", "rejected"} <= cols:
        return "pairs"
    if "messages" in cols:
        return "conversations"
    if {"prompt", "response"} <= cols:
        return "responses"
    raise ExportError(
        f"cannot tell what this table holds from its columns ({', '.join(sorted(cols))}): expected `messages` "
        "(conversations), `chosen` + `rejected` (pairs) or `prompt` + `response` (responses)")


def iter_rows(catalog: Catalog, table: str, batch_size: int = 5_000) -> Iterator[dict]:
    """Stream a table's rows as Python dicts in bounded memory."""
    con = connect(catalog, canned_views=False)
    try:
        reader = con.sql(f'SELECT * FROM "{table}"').to_arrow_reader(batch_size)
        for batch in reader:
            yield from batch.to_pylist()
    finally:
        con.close()


def as_messages(value: Any, role: str) -> list[dict] | None:
    """A string, one message, a messages list or a JSON string of either -> a list of {role, content}."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if text[:1] in ("[", "{"):
            try:
                return as_messages(json.loads(text), role)
            except ValueError:
                pass
        return [{"role": role, "content": value}]
    if isinstance(value, dict):
        value = [value]
    out = []
    for m in value:
        if not isinstance(m, dict) or "content" not in m:
            raise ExportError(f"not a message: {str(m)[:200]}")
        out.append({"role": m.get("role") or role, "content": m.get("content")})
    return out


@dataclass
class Example:
    """One exportable record: prompt turns, and either one reply (SFT) or a chosen/rejected pair."""

    id: str | None
    prompt: list[dict]
    reply: list[dict] | None = None
    chosen: list[dict] | None = None
    rejected: list[dict] | None = None
    extra: dict | None = None

    @property
    def system(self) -> str | None:
        return self.prompt[0]["content"] if self.prompt and self.prompt[0]["role"] == "system" else None

    @property
    def conversation(self) -> list[dict]:
        return self.prompt + (self.reply or [])


def _split_pair_side(prompt: list[dict] | None, side: list[dict]) -> tuple[list[dict] | None, list[dict]]:
    """A side may be the whole conversation (prompt turns + reply): strip the shared prompt prefix."""
    if prompt and len(side) > len(prompt) and side[: len(prompt)] == prompt:
        return prompt, side[len(prompt):]
    if prompt is None and len(side) > 1:
        return side[:-1], side[-1:]
    return prompt, side


def to_example(kind: str, row: dict) -> Example:
    rid = row.get("id") if row.get("id") is not None else row.get("pair_id", row.get("response_id", row.get("prompt_id")))
    rid = None if rid is None else str(rid)
    if kind == "conversations":
        msgs = as_messages(row["messages"], "user") or []
        if not msgs or msgs[-1]["role"] != "assistant":
            return Example(rid, msgs)
        # the whole conversation is the reply target; prompt is everything before the last assistant turn
        return Example(rid, msgs[:-1], reply=msgs[-1:], extra={"messages": msgs})
    if kind == "pairs":
        prompt = as_messages(row.get("prompt"), "user")
        chosen = as_messages(row["chosen"], "assistant") or []
        rejected = as_messages(row["rejected"], "assistant") or []
        prompt_c, chosen = _split_pair_side(prompt, chosen)
        prompt_r, rejected = _split_pair_side(prompt, rejected)
        if prompt is None and prompt_c != prompt_r:
            raise ExportError(f"pair {rid}: chosen and rejected conversations do not share a prompt")
        extra = {k: row[k] for k in ("strength", "margin", "consistent", "judge") if k in row}
        return Example(rid, prompt_c or [], chosen=chosen, rejected=rejected, extra=extra)
    if kind == "responses":
        prompt = as_messages(row["prompt"], "user") or []
        reply = as_messages(row["response"], "assistant")
        extra = {k: row[k] for k in ("score", "rank", "prompt_id", "response_id") if k in row}
        return Example(rid, prompt, reply=reply, extra=extra)
    raise ExportError(f"unknown table kind {kind!r}")


def problem(ex: Example, kind: str) -> str | None:
    """Why a record cannot be a training example (None when it can); the reason is counted, never hidden."""
    msgs = ex.conversation if kind != "pairs" else ex.prompt
    if any(m["role"] not in ROLES for m in msgs):
        return "unknown_role"
    if any(m["content"] is None or not str(m["content"]).strip() for m in msgs):
        return "empty_content"
    turns = [m for m in ex.prompt if m["role"] != "system"]
    if not turns or turns[-1]["role"] != "user":
        return "prompt_not_ending_with_user"
    if kind == "pairs":
        for side in (ex.chosen, ex.rejected):
            if not side or any(m["role"] != "assistant" for m in side):
                return "response_not_assistant"
            if any(m["content"] is None or not str(m["content"]).strip() for m in side):
                return "empty_response"
    elif not ex.reply or ex.reply[-1]["role"] != "assistant":
        return "no_assistant_reply"
    return None


class JsonlWriter:
    """Write records to OUT/<name>.jsonl, counting rows and skipped records per reason."""

    def __init__(self, path: Path):
        self.path = path
        self.rows = 0
        self.skipped: dict[str, int] = {}
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = path.open("w", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._fh.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        self.rows += 1

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def close(self) -> dict:
        self._fh.close()
        return {"rows": self.rows, "path": str(self.path), "skipped": self.skipped}


def export_examples(catalog: Catalog, table: str, out: Path, convert, file_name: str | None = None) -> dict:
    """Shared loop: detect the kind, normalise each row, let `convert(kind, example)` make the record."""
    kind = table_kind(table_columns(catalog, table))
    writer = JsonlWriter(Path(out) / (file_name or f"{table}.jsonl"))
    try:
        for row in iter_rows(catalog, table):
            try:
                ex = to_example(kind, row)
            except ExportError:
                writer.skip("malformed_messages")
                continue
            reason = problem(ex, kind)
            if reason:
                writer.skip(reason)
                continue
            writer.write(convert(kind, ex))
    finally:
        result = writer.close()
    result["kind"] = kind
    return result


def write_skipped_note(out: Path, result: dict) -> None:
    if result.get("skipped"):
        (Path(out) / "skipped.json").write_text(json.dumps(result["skipped"], indent=1))


def plain(messages: list[dict]) -> list[dict]:
    return [{"role": m["role"], "content": m["content"]} for m in messages]
