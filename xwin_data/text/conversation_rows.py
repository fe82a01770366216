"""Source records to rows of the canonical conversation table, a batch at a time, in whichever process parses them.

`RowBuilder` turns `(position, record)` items into Arrow columns (id, messages, model) built straight from flat
role and content lists, and keeps each bad record as a drop `(id, reason, detail)`; `parse_jsonl_block` does that
for one block of JSONL lines and is what worker processes run. Ids are made unique afterwards, in file order, by the
reader (`unique_ids`), since a repeat can sit in another block.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from xwin_data.conversation import MESSAGE_TYPE


@dataclass(frozen=True)
class RowOptions:
    fmt: str
    model_field: str | None
    id_fields: tuple[str, ...]
    stem: str  # fallback ids are `stem:position`
    on_bad_turn: str = "truncate"  # an empty turn: keep the turns before it, or drop the conversation


@dataclass
class Rows:
    """Converted rows: `table` (id, messages, model), each row's position in the file, and the drops."""

    table: pa.Table
    positions: list[int]
    drops: list[tuple] = field(default_factory=list)  # (id, reason, detail[, unit])
    records: int = 0  # items read, the bad ones included


class RowBuilder:
    def __init__(self, options: RowOptions):
        self.options = options
        self.stem = options.stem  # the reader sets it per file of a folder
        self._clear()

    def _clear(self) -> None:
        self.ids: list[str] = []
        self.positions: list[int] = []
        self.models: list[str | None] = []
        self.roles: list[str] = []
        self.contents: list[str] = []
        self.offsets: list[int] = [0]
        self.drops: list[tuple[str, str, Any]] = []
        self.records = 0

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, position: int, record: Any) -> bool:
        """Convert one item; False when it became a drop."""
        from xwin_data.text.records import BadRecord, normalise_turns
        from xwin_data.text.sources import Unreadable

        self.records += 1
        fallback = f"{self.stem}:{position}"
        if isinstance(record, Unreadable):
            self.drops.append((record.source_id or fallback, record.reason, record.detail))
            return False
        rid = None
        try:
            if isinstance(record, dict):
                for f in self.options.id_fields:
                    if record.get(f) not in (None, ""):
                        rid = record_id(record[f])
                        break
            turns, model, cut = normalise_turns(record, self.options.fmt, self.options.model_field,
                                                self.options.on_bad_turn)
        except BadRecord as bad:
            self.drops.append((rid or fallback, bad.reason, bad.detail))
            return False
        except RecursionError:
            self.drops.append((rid or fallback, "too_deeply_nested", "a value is nested deeper than Python can walk"))
            return False
        if cut is not None:  # the conversation is kept; the turns cut from it are the drop
            self.drops.append((rid or fallback, cut.reason, cut.detail, "cuts"))
        self.ids.append(rid or fallback)
        self.positions.append(position)
        self.models.append(model)
        for role, content in turns:
            self.roles.append(role)
            self.contents.append(content)
        self.offsets.append(len(self.roles))
        return True

    def take(self) -> Rows:
        """The rows converted so far (the builder starts over). A record with a string Arrow cannot store (a lone
        surrogate such as `"\\ud800"`, which Python's json accepts) becomes a drop instead of failing the batch."""
        try:
            return self._take()
        except (UnicodeEncodeError, pa.ArrowException):
            self._drop_unencodable()
            return self._take()

    def _drop_unencodable(self) -> None:
        keep_ids, keep_pos, keep_models, roles, contents, offsets = [], [], [], [], [], [0]
        for i, rid in enumerate(self.ids):
            lo, hi = self.offsets[i], self.offsets[i + 1]
            bad = next((s for s in (rid, self.models[i], *self.roles[lo:hi], *self.contents[lo:hi])
                        if s is not None and not _encodable(s)), None)
            if bad is not None:
                self.drops.append((safe_text(rid), "lone_surrogate",
                                   f"text that is not valid Unicode: {safe_text(bad[:200])}"))
                continue
            keep_ids.append(rid)
            keep_pos.append(self.positions[i])
            keep_models.append(self.models[i])
            roles += self.roles[lo:hi]
            contents += self.contents[lo:hi]
            offsets.append(len(roles))
        self.ids, self.positions, self.models = keep_ids, keep_pos, keep_models
        self.roles, self.contents, self.offsets = roles, contents, offsets

    def _take(self) -> Rows:
        messages = pa.ListArray.from_arrays(
            pa.array(self.offsets, pa.int32()),
            pa.StructArray.from_arrays([pa.array(self.roles, pa.string()), pa.array(self.contents, pa.string())],
                                       fields=list(MESSAGE_TYPE)))
        table = pa.table({"id": pa.array(self.ids, pa.string()), "messages": messages,
                          "model": pa.array(self.models, pa.string())})
        rows = Rows(table, self.positions, self.drops, self.records)
        self._clear()
        return rows


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def safe_text(text: str) -> str:
    """`text` as valid UTF-8: lone surrogates written as their escapes (`\\ud800`), the rest unchanged."""
    return text if _encodable(text) else text.encode("utf-8", "backslashreplace").decode("utf-8")


def record_id(value: Any) -> str:
    """A record's id as text (numbers and other JSON values too), limited in length and valid UTF-8."""
    if not isinstance(value, str):
        try:
            value = str(value)
        except RecursionError:
            value = f"<{type(value).__name__} nested too deep to print>"
    return safe_text(value if len(value) <= 300 else value[:300] + "…")


def parse_jsonl_block(block: bytes, first_lineno: int, options: RowOptions) -> Rows:
    """Rows of one block of JSONL lines (see `sources.jsonl_blocks`)."""
    from xwin_data.text.sources import iter_jsonl_block

    builder = RowBuilder(options)
    for position, record in iter_jsonl_block(block, first_lineno):
        builder.add(position, record)
    return builder.take()


def unique_ids(ids: list[str], positions: list[int], seen: set[str]) -> tuple[list[str], int]:
    """Ids made unique against `seen` (updated): a repeat keeps its position, `id~position`, to stay traceable."""
    if seen.isdisjoint(ids) and len(set(ids)) == len(ids):  # the usual case, checked at C speed
        seen.update(ids)
        return ids, 0
    out, renamed = [], 0
    for rid, position in zip(ids, positions):
        if rid in seen:
            rid = f"{rid}~{position}"
            renamed += 1
        seen.add(rid)
        out.append(rid)
    return out, renamed
