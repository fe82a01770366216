"""Readers: conversation files (ShareGPT, OpenAI `messages`, Alpaca; JSONL, JSON, Parquet, HF datasets) to the
canonical conversation table. Bad records are drops with the reason and offending value, never a crash."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import pyarrow as pa
from pydantic import Field

from ..fingerprint import path_fingerprint
from ..yaml_lines import RecipeError
from .base import Op, Params, register

MESSAGES_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
RAW_SCHEMA = pa.schema([("id", pa.string()), ("messages", MESSAGES_TYPE), ("source", pa.string()),
                        ("model", pa.string())])
ID_FIELDS = ("id", "conversation_id", "question_id", "uid")
BATCH = 20_000


class ReadParams(Params):
    path: str = Field(description="input file or folder (JSONL, JSON, Parquet, a saved HF dataset) or a hub id")
    format: Literal["auto", "sharegpt", "openai", "alpaca"] = Field(
        "auto", description="record shape; auto looks at each record's keys (conversations / messages / instruction)")
    file_type: Literal["auto", "jsonl", "json", "parquet", "hf"] = Field(
        "auto", description="container; auto goes by extension and first bytes (a folder or hub id is hf)")
    split: str = Field("train", description="split of a Hugging Face dataset")
    id_field: str | None = Field(None, description=f"record id field (default: the first of {', '.join(ID_FIELDS)})")
    model_field: str | None = Field(None, description="field naming the answering model (default: model, model_id)")
    source: str | None = Field(None, description="value of the `source` column (default: the file name)")
    limit: int | None = Field(None, ge=1, description="read at most this many records")


@register
class ReadConversations(Op):
    """Read conversations from a file into id, messages, source, model; malformed records go to drops."""

    name = "read_conversations"
    Params = ReadParams
    schema = "conversations"
    min_inputs = max_inputs = 0
    version = "1"
    summary = "ShareGPT / OpenAI messages / Alpaca in JSONL, JSON, Parquet or HF datasets → canonical messages"

    def external_fingerprint(self, params: ReadParams) -> dict:
        from ..text.sources import is_hub_id

        p = Path(params.path)
        if p.exists():
            return {"file": path_fingerprint(p)}
        if params.file_type in ("auto", "hf") and is_hub_id(params.path):
            return {"hub": params.path}
        raise RecipeError(f"path: input file not found: {params.path}")

    def run(self, ctx, params: ReadParams) -> None:
        from ..text.records import BadRecord, normalise
        from ..text.sources import Unreadable, iter_records

        source = params.source or Path(params.path).name
        stem = source.split(".")[0] or "record"
        id_fields = (params.id_field,) if params.id_field else ID_FIELDS
        seen: set[str] = set()
        cols: dict[str, list] = {name: [] for name in RAW_SCHEMA.names}
        stats = {"records": 0, "renamed_duplicate_ids": 0}
        with ctx.writer(RAW_SCHEMA) as out, ctx.track(f"reading {source}", None, "records") as bar:
            def flush() -> None:
                if cols["id"]:
                    out.write(pa.table(cols, schema=RAW_SCHEMA))
                    for v in cols.values():
                        v.clear()

            for position, record in iter_records(params.path, params.file_type, params.split):
                stats["records"] += 1
                fallback = f"{stem}:{position}"
                if isinstance(record, Unreadable):
                    ctx.drop(fallback, record.reason, record.detail)
                    continue
                rid = None
                if isinstance(record, dict):
                    for f in id_fields:
                        if record.get(f) not in (None, ""):
                            rid = str(record[f])
                            break
                try:
                    messages, model = normalise(record, params.format, params.model_field)
                except BadRecord as bad:
                    ctx.drop(rid or fallback, bad.reason, bad.detail)
                    continue
                rid = rid or fallback
                if rid in seen:  # ids must be unique; a repeated source id keeps its position to stay traceable
                    rid = f"{rid}~{position}"
                    stats["renamed_duplicate_ids"] += 1
                seen.add(rid)
                cols["id"].append(rid)
                cols["messages"].append(messages)
                cols["source"].append(source)
                cols["model"].append(model)
                if len(cols["id"]) >= BATCH:
                    flush()
                    bar.advance(BATCH)
                if params.limit and len(seen) >= params.limit:
                    break
            flush()
        ctx.stats.update(stats)
