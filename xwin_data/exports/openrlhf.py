"""OpenRLHF's JSONL keys, used with ``--apply_chat_template`` so the trainer applies the model's own template.

- conversations -> ``{"messages": [...]}``: ``openrlhf.cli.train_sft --input_key messages --apply_chat_template
  --multiturn``;
- responses     -> ``{"input": [...], "output": [...]}``: ``train_sft --input_key input --output_key output
  --apply_chat_template``;
- pairs         -> ``{"prompt": [...], "chosen": [...], "rejected": [...]}`` (and ``margin`` from ``strength``):
  ``train_rm`` / ``train_dpo --prompt_key prompt --chosen_key chosen --rejected_key rejected
  --apply_chat_template``.

The flags are also written to OUT/openrlhf_args.txt so the export carries its own instructions.
"""
from __future__ import annotations

from pathlib import Path

from xwin_data.exports.base import exporter
from xwin_data.core.progress import console
from xwin_data.exports.kinds import export_examples, plain, write_skipped_note

FLAGS = {
    "conversations": "--input_key messages --apply_chat_template --multiturn",
    "responses": "--input_key input --output_key output --apply_chat_template",
    "pairs": "--prompt_key prompt --chosen_key chosen --rejected_key rejected --apply_chat_template",
}


def openrlhf_record(kind: str, ex) -> dict:
    if kind == "conversations":
        return {"messages": plain(ex.conversation)}
    if kind == "responses":
        return {"input": plain(ex.prompt), "output": plain(ex.reply)}
    rec = {"prompt": plain(ex.prompt), "chosen": plain(ex.chosen), "rejected": plain(ex.rejected)}
    strength = (ex.extra or {}).get("margin", (ex.extra or {}).get("strength"))
    if isinstance(strength, (int, float)) and not isinstance(strength, bool):
        rec["margin"] = float(strength)
    return rec


@exporter("openrlhf", "OpenRLHF JSONL (messages | input/output | prompt/chosen/rejected) for --apply_chat_template")
def export_openrlhf(catalog, table: str, out: Path) -> dict:
    out = Path(out)
    result = export_examples(catalog, table, out, openrlhf_record)
    data = Path(result["path"])
    (out / "openrlhf_args.txt").write_text(f"--dataset {data} {FLAGS[result['kind']]}\n")
    write_skipped_note(out, result)
    if result["skipped"]:
        console.print(f"skipped records by reason: {result['skipped']}")
    return result
