"""Catalog tables -> TRL datasets in the conversational format.

Accepted shapes (the canonical columns of this project):
- SFT / RS: `messages` (a conversation ending with an assistant turn), or `prompt` (messages) + `response`
  (text) or `completion` (messages), as in `xwin_set` / `wind_groups`.
- Preferences (RM, DPO): `prompt` (messages or text) + `chosen` / `rejected` (assistant messages or text), as in
  `dpo_pairs_<strategy>` and `xwin_pair`; or whole `chosen` / `rejected` conversations sharing a prefix (HH-RLHF).
- Prompts (evaluation, WIND): `prompt` (messages), or `messages` whose trailing assistant turn is dropped.
Rows that cannot be converted are counted by reason and skipped; a table with no usable row is an error.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from xwin_data.conversation import Messages, valid_messages
from xwin_data.core.errors import XwinError


class TableFormatError(XwinError, ValueError):
    """A table whose columns do not fit the training stage."""


def read_rows(catalog: str | Path, table: str, max_rows: int | None = None) -> list[dict]:
    """Rows of a table's current version, in a stable order (by `id` or `prompt_id` when present)."""
    from xwin_data.core.connection import connect

    con = connect(catalog, canned_views=False)
    try:
        names = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        if table not in names:
            from xwin_data.core.origins import missing_table_message

            raise TableFormatError(missing_table_message(table, catalog))
        quoted = '"' + table.replace('"', '""') + '"'
        cols = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {quoted}").fetchall()]
        order = next((c for c in ("id", "prompt_id", "response_id") if c in cols), None)
        sql = f"SELECT * FROM {quoted}" + (f" ORDER BY {order}" if order else "")
        if max_rows:
            sql += f" LIMIT {int(max_rows)}"
        return con.sql(sql).to_arrow_table().to_pylist()
    finally:
        con.close()


def _as_turns(value: Any, role: str) -> Messages | None:
    """Text or messages -> messages (text becomes one turn of `role`)."""
    if isinstance(value, str):
        return [{"role": role, "content": value}] if value.strip() else None
    return valid_messages(value)


def _finish(rows: list[dict], skipped: Counter, table: str, kind: str):
    from datasets import Dataset

    if not rows:
        detail = ", ".join(f"{k}: {v}" for k, v in skipped.items()) or "table is empty"
        raise TableFormatError(f"{table}: no usable {kind} rows ({detail})")
    ds = Dataset.from_list(rows)
    ds.info.description = f"from catalog table {table}; skipped {dict(skipped)}"
    return ds, dict(skipped)


def _require(cols: set[str], table: str, options: Iterable[tuple[str, ...]], kind: str) -> tuple[str, ...]:
    for option in options:
        if set(option) <= cols:
            return option
    wanted = " or ".join("(" + ", ".join(o) + ")" for o in options)
    raise TableFormatError(f"{table}: a {kind} table needs columns {wanted}; it has {', '.join(sorted(cols))}")


def sft_dataset(rows: list[dict], table: str = "table"):
    """-> (Dataset with `messages`, skipped counts by reason)."""
    cols = set(rows[0]) if rows else set()
    shape = _require(cols, table, [("messages",), ("prompt", "completion"), ("prompt", "response")], "SFT")
    out, skipped = [], Counter()
    for row in rows:
        if shape == ("messages",):
            msgs = valid_messages(row["messages"])
        else:
            prompt = _as_turns(row["prompt"], "user")
            reply = _as_turns(row[shape[1]], "assistant")
            msgs = prompt + reply if prompt and reply else None
        if msgs is None:
            skipped["malformed_messages"] += 1
        elif msgs[-1]["role"] != "assistant" or not msgs[-1]["content"].strip():
            skipped["no_final_assistant_turn"] += 1
        else:
            out.append({"messages": msgs})
    return _finish(out, skipped, table, "SFT")


def _split_shared_prefix(chosen: Messages, rejected: Messages) -> tuple[Messages, Messages, Messages]:
    k = 0
    while k < min(len(chosen), len(rejected)) - 1 and chosen[k] == rejected[k]:
        k += 1
    return chosen[:k], chosen[k:], rejected[k:]


def preference_dataset(rows: list[dict], table: str = "table"):
    """-> (Dataset with `prompt`, `chosen`, `rejected` as messages, skipped counts). TRL's explicit-prompt
    conversational preference format, used by both RewardTrainer and DPOTrainer."""
    cols = set(rows[0]) if rows else set()
    shape = _require(cols, table, [("prompt", "chosen", "rejected"), ("chosen", "rejected")], "preference")
    out, skipped = [], Counter()
    for row in rows:
        chosen, rejected = _as_turns(row["chosen"], "assistant"), _as_turns(row["rejected"], "assistant")
        prompt = _as_turns(row["prompt"], "user") if "prompt" in shape else None
        if chosen is None or rejected is None or ("prompt" in shape and prompt is None):
            skipped["malformed_messages"] += 1
            continue
        if prompt is None:
            prompt, chosen, rejected = _split_shared_prefix(chosen, rejected)
        if not prompt or prompt[-1]["role"] != "user":
            skipped["prompt_not_ending_with_user"] += 1
        elif any(m["role"] != "assistant" for m in chosen + rejected):
            skipped["completion_not_assistant"] += 1
        elif chosen == rejected:
            skipped["chosen_equals_rejected"] += 1
        else:
            out.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return _finish(out, skipped, table, "preference")


def prompt_rows(rows: list[dict], table: str = "table", max_prompts: int | None = None) -> list[dict]:
    """-> [{"prompt_id", "prompt"}], one per distinct prompt, in table order."""
    cols = set(rows[0]) if rows else set()
    shape = _require(cols, table, [("prompt",), ("messages",)], "prompt")
    out, seen = [], set()
    for i, row in enumerate(rows):
        if shape == ("prompt",):
            msgs = _as_turns(row["prompt"], "user")
        else:
            msgs = valid_messages(row["messages"])
            while msgs and msgs[-1]["role"] == "assistant":
                msgs = msgs[:-1]
        if not msgs or msgs[-1]["role"] != "user":
            continue
        pid = str(row.get("prompt_id") or row.get("id") or i)
        if pid in seen:
            continue
        seen.add(pid)
        out.append({"prompt_id": pid, "prompt": msgs})
        if max_prompts and len(out) >= max_prompts:
            break
    if not out:
        raise TableFormatError(f"{table}: no usable prompts (a prompt must end with a user turn)")
    return out


def wind_dataset(rows: list[dict], table: str = "table", max_prompts: int | None = None):
    """-> Dataset of {"prompt", "responses", "scores"} per prompt. A `wind_groups` table (prompt_id, prompt,
    response, score, sample_index) gives each prompt its stored group, in sample order; a prompt-only table
    gives prompts with empty groups (every iteration then samples)."""
    from datasets import Dataset

    cols = set(rows[0]) if rows else set()
    if {"prompt_id", "prompt", "response", "score"} <= cols:
        groups: dict[str, dict] = {}
        for row in sorted(rows, key=lambda r: (str(r["prompt_id"]), r.get("sample_index") or 0)):
            prompt = _as_turns(row["prompt"], "user")
            if not prompt or row["score"] is None or not isinstance(row["response"], str):
                continue
            g = groups.setdefault(str(row["prompt_id"]), {"prompt_id": str(row["prompt_id"]), "prompt": prompt,
                                                          "responses": [], "scores": []})
            g["responses"].append(row["response"])
            g["scores"].append(float(row["score"]))
        out = list(groups.values())[:max_prompts] if max_prompts else list(groups.values())
    else:
        out = [{**p, "responses": [], "scores": []} for p in prompt_rows(rows, table, max_prompts)]
    if not out:
        raise TableFormatError(f"{table}: no usable prompts for WIND")
    return Dataset.from_list(out)
