"""Training stages on real HH-RLHF data with tiny local models, on CPU: each trains a few steps from a catalog
table, its loss goes down on a fixed batch, the saved model reloads and generates / scores, and the run lands
in the catalog's `runs` table (and the best-of-n evaluation in `evals`)."""
from __future__ import annotations

import json
import math

import pytest

import xwin_data
from xwin_data.training.scripts import run_script

COMMON = ["max_length=128", "per_device_train_batch_size=4", "logging_steps=1", "lr_scheduler_type=constant",
          "report_to=[]", "save_strategy=no", "dataloader_num_workers=0", "seed=0"]


@pytest.fixture(scope="module")
def hh_catalog(tmp_path_factory, shared_data, project_dir):
    cat = tmp_path_factory.mktemp("train") / "catalog"
    report = xwin_data.build(project_dir / "train" / "recipes" / "hh_rlhf.yaml", cat,
                             sets=[f"hh_dir={shared_data / 'anthropics_hh-rlhf'}"], show_progress=False)
    assert report.status == "ok"
    return cat


def runs(cat) -> list[dict]:
    return xwin_data.connect(cat).sql("SELECT * FROM runs ORDER BY created_at").to_arrow_table().to_pylist()


def test_sft_loss_drops_saved_model_generates_and_run_is_recorded(hh_catalog, project_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "sft"
    rec = run_script("sft", [str(project_dir / "train/configs/sft.yaml"), f"catalog={hh_catalog}", "table=hh_sft",
                             f"output_dir={out}", "max_rows=16", "max_steps=24", "learning_rate=3e-3", *COMMON,
                             "bon_eval_prompts_table=hh_prompts", "bon_eval_max_prompts=2",
                             "bon_eval_max_new_tokens=8"])
    m = rec["metrics"]
    assert m["rows_used"] == 16
    assert m["fixed_batch_loss_after"] < m["fixed_batch_loss_before"] - 0.5

    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    ids = tok.apply_chat_template([{"role": "user", "content": "How do I bake bread?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    gen = model.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    assert gen.shape[1] > ids["input_ids"].shape[1]
    assert torch.isfinite(model(**ids).logits).all()

    (row,) = [r for r in runs(hh_catalog) if r["run_id"] == rec["run_id"]]
    tv = xwin_data.connect(hh_catalog).sql("SELECT version, fingerprint FROM tables WHERE name = 'hh_sft'").fetchall()[0]
    assert (row["stage"], row["kind"], row["table_name"]) == ("sft", "sft", "hh_sft")
    assert (row["table_version"], row["table_fingerprint"]) == tv
    assert json.loads(row["config"])["assistant_only_loss"] is True
    assert "trl" in json.loads(row["library_versions"])
    assert row["output_dir"] == str(out.resolve())

    ev = xwin_data.connect(hh_catalog).sql(
        "SELECT stage, run_id, best_of_1, best_of_16, best_of_64, n_prompts, samples_per_prompt FROM evals "
        "ORDER BY created_at").fetchall()[-1]
    assert ev[0] == "sft" and ev[1] == rec["run_id"] and ev[5:] == (2, 64)
    assert ev[2] <= ev[3] <= ev[4]


def test_reward_model_loss_drops_and_reloaded_model_scores_like_trl(hh_catalog, project_dir, tmp_path):
    from xwin_data.training.data import preference_dataset, read_rows
    from xwin_data.llm.reward import RewardSpec, make_scorer
    from xwin_data.training.models import load_tokenizer

    out = tmp_path / "rm"
    rec = run_script("rm", [str(project_dir / "train/configs/rm.yaml"), f"catalog={hh_catalog}", "table=hh_pairs",
                            f"output_dir={out}",
                            "max_rows=16", "max_steps=30", "learning_rate=2e-3", "center_rewards_coefficient=null",
                            *COMMON])
    m = rec["metrics"]
    assert m["fixed_batch_loss_after"] < m["fixed_batch_loss_before"] - 0.05

    # the saved model, scored through the toolkit's own scorer, gives TRL's loss on the same fixed batch
    tok = load_tokenizer(str(out))
    ds, _ = preference_dataset(read_rows(hh_catalog, "hh_pairs", 16), "hh_pairs")
    fits = [ex for ex in ds if max(len(tok.apply_chat_template(ex["prompt"] + ex[k], tokenize=True, return_dict=True)
                                        ["input_ids"]) for k in ("chosen", "rejected")) <= 128][:8]
    with make_scorer(RewardSpec(model=str(out))) as rm:
        chosen = rm.score_responses([e["prompt"] for e in fits], [e["chosen"][0]["content"] for e in fits])
        rejected = rm.score_responses([e["prompt"] for e in fits], [e["rejected"][0]["content"] for e in fits])
    loss = sum(-math.log(1 / (1 + math.exp(-(c - r)))) for c, r in zip(chosen, rejected)) / len(fits)
    assert loss == pytest.approx(m["fixed_batch_loss_after"], abs=1e-4)
    assert "eval" not in rec  # reward models are not policies: no best-of-n evaluation


def test_dpo_loss_drops_and_policy_reloads(hh_catalog, project_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "dpo"
    rec = run_script("dpo", [str(project_dir / "train/configs/dpo.yaml"), f"catalog={hh_catalog}",
                             "table=hh_pairs", "model_name_or_path=tiny-policy", f"output_dir={out}", "max_rows=8",
                             "max_steps=16", "learning_rate=5e-3", "beta=0.1", *COMMON,
                             "bon_eval_prompts_table=null"])
    m = rec["metrics"]
    assert m["fixed_batch_loss_before"] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference at start
    assert m["fixed_batch_loss_after"] < m["fixed_batch_loss_before"] - 0.1
    model = AutoModelForCausalLM.from_pretrained(out)
    assert sum(p.numel() for p in model.parameters()) > 0
    assert runs(hh_catalog)[-1]["kind"] == "dpo"


def test_config_errors_name_the_problem(hh_catalog, project_dir, tmp_path):
    from xwin_data.training.data import TableFormatError

    cfg = str(project_dir / "train/configs/sft.yaml")
    no_eval = "bon_eval_prompts_table=null"
    with pytest.raises(ValueError, match="unknown config key.*learnin_rate"):
        run_script("sft", [cfg, f"catalog={hh_catalog}", "learnin_rate=1"])
    with pytest.raises(TableFormatError, match="not in catalog"):
        run_script("sft", [cfg, f"catalog={hh_catalog}", "table=no_such_table", f"output_dir={tmp_path}", no_eval])
    with pytest.raises(TableFormatError, match="needs columns"):
        run_script("sft", [cfg, f"catalog={hh_catalog}", "table=hh_prompts", f"output_dir={tmp_path}", no_eval])


def test_hh_ids_are_line_numbers_in_their_file(hh_catalog, shared_data):
    import gzip
    import json

    path = shared_data / "anthropics_hh-rlhf" / "helpful-base" / "test.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        lines = [json.loads(next(fh)) for _ in range(3)]
    con = xwin_data.connect(hh_catalog)
    got = con.execute("SELECT id, chosen_messages[-1].content FROM hh_parsed "
                      "WHERE id IN ('helpful-base-00001', 'helpful-base-00002', 'helpful-base-00003') ORDER BY id").fetchall()
    want = [line["chosen"].rsplit("\n\nAssistant: ", 1)[1].strip() for line in lines]
    assert [content for _, content in got] == want
