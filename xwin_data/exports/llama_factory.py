"""LLaMA-Factory's sharegpt format and its ``dataset_info.json`` entry.

- conversations / responses -> ``{"conversations": [{"from": "human"|"gpt", "value": ...}], "system": ...}``
  (supervised fine-tuning);
- pairs -> ``{"conversations": [...prompt turns...], "chosen": {"from": "gpt", ...}, "rejected": {...},
  "system": ...}`` with ``"ranking": true`` (DPO / reward modelling).

The system prompt goes to the ``system`` column (LLaMA-Factory's documented place for it), human turns sit at
odd positions and gpt turns at even ones, as the format requires. ``OUT/dataset_info.json`` gains an entry named
after the table (existing entries are kept), so ``dataset_dir: OUT`` and ``dataset: <table>`` train on it.
"""
from __future__ import annotations

import json
from pathlib import Path

from xwin_data.exports.base import exporter
from xwin_data.core.progress import console
from xwin_data.exports.kinds import export_examples, write_skipped_note

TAGS = {"user": "human", "assistant": "gpt"}


def _turns(messages: list[dict]) -> list[dict]:
    return [{"from": TAGS[m["role"]], "value": m["content"]} for m in messages if m["role"] != "system"]


def llama_factory_record(kind: str, ex) -> dict:
    if kind == "pairs":
        if len(ex.chosen) != 1 or len(ex.rejected) != 1:
            raise ValueError("multi-message responses")
        rec = {"conversations": _turns(ex.prompt),
               "chosen": {"from": "gpt", "value": ex.chosen[0]["content"]},
               "rejected": {"from": "gpt", "value": ex.rejected[0]["content"]}}
    else:
        rec = {"conversations": _turns(ex.conversation)}
    if ex.system:
        rec["system"] = ex.system
    return rec


def dataset_info_entry(kind: str, file_name: str) -> dict:
    entry = {"file_name": file_name, "formatting": "sharegpt"}
    if kind == "pairs":
        entry["ranking"] = True
        entry["columns"] = {"messages": "conversations", "chosen": "chosen", "rejected": "rejected",
                            "system": "system"}
    else:
        entry["columns"] = {"messages": "conversations", "system": "system"}
    return entry


@exporter("llama-factory", "LLaMA-Factory sharegpt JSONL (+ preference form for pairs) and OUT/dataset_info.json")
def export_llama_factory(catalog, table: str, out: Path) -> dict:
    out = Path(out)
    multi = {"n": 0}

    def convert(kind, ex):
        if kind == "pairs" and (len(ex.chosen) != 1 or len(ex.rejected) != 1):
            multi["n"] += 1
            # LLaMA-Factory holds one chosen and one rejected message: keep the final assistant reply of each
            ex.chosen, ex.rejected = ex.chosen[-1:], ex.rejected[-1:]
        return llama_factory_record(kind, ex)

    result = export_examples(catalog, table, out, convert)
    if multi["n"]:
        result["truncated_multi_message_responses"] = multi["n"]
    info_path = out / "dataset_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    info[table] = dataset_info_entry(result["kind"], Path(result["path"]).name)
    info_path.write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    result["dataset_info"] = str(info_path)
    write_skipped_note(out, result)
    if result["skipped"]:
        console.print(f"skipped records by reason: {result['skipped']}")
    return result
