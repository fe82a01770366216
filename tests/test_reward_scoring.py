"""One reward scorer for data, training and evaluation: the Xwin-Set op's stored score of a response equals what
the training evaluation and WIND's in-memory scorer compute for it, and both equal one unbatched, unpadded forward
pass on `apply_chat_template(prompt + [assistant response])`, the ids TRL's RewardTrainer trains on."""
from __future__ import annotations

from pathlib import Path

import pytest

import xwin_data

PROJECT = Path(__file__).resolve().parents[1]
RECIPE = PROJECT / "recipes" / "xwin_set.yaml"
# Two prompts, 16 distinct responses each, short generations: responses of different lengths in one batch.
SMALL = ["max_prompts=2", "n_unique=16", "max_samples=64", "sampling.max_new_tokens=16"]


@pytest.fixture(scope="module")
def stored(tmp_path_factory) -> list[dict]:
    """The xwin_set table built by the recipe (up to the scoring stage), in prompt / sample order."""
    root = tmp_path_factory.mktemp("reward_scoring")
    recipe = root / "xwin_set_only.yaml"
    text = RECIPE.read_text().split("  - id: rs_best_of")[0]
    recipe.write_text(text.replace("${recipe_dir}/data/", f"{RECIPE.parent}/data/"))
    xwin_data.build(recipe, root / "cat", sets=SMALL, show_progress=False)
    con = xwin_data.connect(root / "cat")
    try:
        return con.sql("SELECT prompt_id, prompt, response, score FROM xwin_set "
                       "ORDER BY prompt_id, sample_index").to_arrow_table().to_pylist()
    finally:
        con.close()


def alone(model, tokenizer, prompt, response) -> float:
    """One forward pass of one conversation: no batch, no padding."""
    import torch

    conv = [dict(m) for m in prompt] + [{"role": "assistant", "content": response}]
    ids = tokenizer.apply_chat_template(conv, tokenize=True, return_dict=True)["input_ids"]
    with torch.no_grad():
        return float(model(input_ids=torch.tensor([ids])).logits[0, 0])


def test_stored_scores_equal_training_evaluation_and_unbatched_forward(stored: list[dict]) -> None:
    from xwin_data.llm.backends.transformers_backend import TransformersScorer
    from xwin_data.training.evaluate import BonEvalSettings, reward_scorer, score_samples
    from xwin_data.training.models import load_reward, load_tokenizer

    prompts: dict[str, dict] = {}
    for r in stored:
        prompts.setdefault(r["prompt_id"], {"prompt_id": r["prompt_id"], "prompt": r["prompt"], "texts": [],
                                            "scores": []})
        prompts[r["prompt_id"]]["texts"].append(r["response"])
        prompts[r["prompt_id"]]["scores"].append(r["score"])
    groups = list(prompts.values())
    assert len(groups) == 2 and all(len(g["texts"]) == 16 for g in groups)
    assert len({len(r["response"]) for r in stored}) > 4  # unequal lengths: the batches are padded

    # The training evaluation's scorer (its settings: batch of 64, the eval reward model).
    with reward_scorer(BonEvalSettings(prompts_table="unused", reward_model="tiny-reward")) as scorer:
        evaluated = score_samples(scorer, groups, [g["texts"] for g in groups])
    # WIND's: the training loaders, the model already in memory, a different batch size.
    model, tok = load_reward("tiny-reward"), load_tokenizer("tiny-reward")
    wind = TransformersScorer.from_model(model, tok, batch_size=5)
    in_memory = wind.score_responses([g["prompt"] for g in groups for _ in g["texts"]],
                                     [t for g in groups for t in g["texts"]])

    k = 0
    for g in groups:
        assert evaluated[g["prompt_id"]] == pytest.approx(g["scores"], abs=1e-5)
        for text, score in zip(g["texts"], g["scores"]):
            assert in_memory[k] == pytest.approx(score, abs=1e-5)
            assert alone(model, tok, g["prompt"], text) == pytest.approx(score, abs=1e-5)
            k += 1
    assert len({round(r["score"], 4) for r in stored}) > 8  # the scores differ, so equality means something


def test_batches_pad_with_the_id_the_classifier_pools_by() -> None:
    """A tokenizer whose pad token differs from the model's pad_token_id (here: none, so eos stands in, as TRL
    and the training loaders do): padding with the tokenizer's id would make the classifier read a pad position
    for every row shorter than the longest."""
    from xwin_data.llm.backends.transformers_backend import TransformersScorer
    from xwin_data.training.models import load_reward, load_tokenizer

    model, tok = load_reward("tiny-reward"), load_tokenizer("tiny-reward")
    tok.pad_token = tok.eos_token
    assert tok.pad_token_id != model.config.pad_token_id
    prompt = [{"role": "user", "content": "Say something about apples."}]
    responses = ["Apples.", "Apples are red and sweet fruit.", "No", "I like them in pie with cinnamon on top.", "ok"]
    scores = TransformersScorer.from_model(model, tok, batch_size=8).score_responses([prompt] * 5, responses)
    assert scores == pytest.approx([alone(model, tok, prompt, r) for r in responses], abs=1e-5)


def test_scored_ids_are_the_ids_trl_reward_trainer_trains_on(tmp_path: Path) -> None:
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    from xwin_data.llm.reward import RewardSpec, make_scorer, with_response
    from xwin_data.training.models import load_reward, load_tokenizer

    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]
    pairs = [("Blue.", "I cannot."), ("  Red, with <|end|> inside ", "")]
    data = Dataset.from_list([{"prompt": prompt, "chosen": [{"role": "assistant", "content": c}],
                               "rejected": [{"role": "assistant", "content": r}]} for c, r in pairs])
    tok = load_tokenizer("tiny-reward")
    trainer = RewardTrainer(model=load_reward("tiny-reward"), processing_class=tok, train_dataset=data,
                            args=RewardConfig(output_dir=str(tmp_path), report_to=[], max_length=None, bf16=False,
                                            use_cpu=True))
    with make_scorer(RewardSpec(model="tiny-reward")) as scorer:
        for (chosen, rejected), row in zip(pairs, trainer.train_dataset):
            for text, trl_ids in ((chosen, row["chosen_ids"]), (rejected, row["rejected_ids"])):
                assert scorer.encode(scorer.render(with_response(prompt, text))) == list(trl_ids)
        assert scorer.pad_id == trainer.model.config.pad_token_id  # TRL pools (and pads) by this id too
