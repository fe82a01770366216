"""TRL's dataset formats (conversational): what `SFTTrainer`, `RewardTrainer` and `DPOTrainer` load directly.

- conversations -> ``{"messages": [...]}`` (language modeling, SFT);
- responses     -> ``{"prompt": [...], "completion": [...]}`` (prompt-completion, SFT on the completion only),
  plus ``score`` / ``rank`` where the table has them;
- pairs         -> ``{"prompt": [...], "chosen": [...], "rejected": [...]}`` (preference with explicit prompt,
  for DPO and reward modelling), plus ``margin`` from a pair table's ``strength`` where present
  (`RewardTrainer` reads an optional ``margin`` column).

Load with ``datasets.load_dataset("json", data_files="OUT/<table>.jsonl", split="train")``.
"""
from __future__ import annotations

from pathlib import Path

from xwin_data.exports.base import exporter
from xwin_data.core.progress import console
from xwin_data.exports.kinds import export_examples, plain, write_skipped_note


def trl_record(kind: str, ex) -> dict:
    if kind == "conversations":
        return {"messages": plain(ex.conversation)}
    if kind == "responses":
        rec = {"prompt": plain(ex.prompt), "completion": plain(ex.reply)}
        rec.update({k: ex.extra[k] for k in ("score", "rank") if k in (ex.extra or {})})
        return rec
    rec = {"prompt": plain(ex.prompt), "chosen": plain(ex.chosen), "rejected": plain(ex.rejected)}
    strength = (ex.extra or {}).get("margin", (ex.extra or {}).get("strength"))
    if isinstance(strength, (int, float)) and not isinstance(strength, bool):
        rec["margin"] = float(strength)
    return rec


@exporter("trl", "TRL conversational JSONL: messages (SFT), prompt/completion (responses) or "
                 "prompt/chosen/rejected (pairs): OUT/<table>.jsonl")
def export_trl(catalog, table: str, out: Path) -> dict:
    result = export_examples(catalog, table, Path(out), trl_record)
    write_skipped_note(out, result)
    if result["skipped"]:
        console.print(f"skipped records by reason: {result['skipped']}")
    return result
