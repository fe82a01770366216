"""Generation backends through the public interface: the transformers backend on the tiny local policy, the openai
backend against a real OpenAI-compatible HTTP server on 127.0.0.1, and the request-cached helper."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from xwin_data.llm.cache import RequestCache
from xwin_data.llm.generation import (Completion, GeneratorSpec, SamplingConfig, derive_seed, draw_cached,
                                      generate_cached, make_generator, model_identity)
from xwin_data.llm.tiny import CHAT_TEMPLATE, ensure_tiny_models

PROMPTS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What does a recipe stage do?"}],
    [{"role": "user", "content": "Write a long story about tables, columns and the rows that live in them."}],
]
PLAIN_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}answer:"


@pytest.fixture(scope="module")
def tiny():
    return ensure_tiny_models()


@pytest.fixture(scope="module")
def gen(tiny):
    with make_generator(GeneratorSpec(model="tiny-policy", batch_size=8)) as g:
        yield g


@pytest.fixture(scope="module")
def eos_prone_model(tiny, tmp_path_factory) -> Path:
    """The tiny policy with its end-of-sequence logit raised along the hidden states' mean direction, so that
    sampled responses end by eos often (and reach max_new_tokens otherwise): both finish reasons occur."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny.policy)
    model = AutoModelForCausalLM.from_pretrained(tiny.policy)
    batch = tok(["a recipe builds tables from stages", "every dropped row has a reason"], return_tensors="pt",
                padding=True)
    with torch.no_grad():
        h = model(**batch, output_hidden_states=True).hidden_states[-1].reshape(-1, model.config.hidden_size)
        u = h.mean(0) / h.mean(0).norm()
        model.lm_head.weight[tok.eos_token_id] = u * 5.0 / (h @ u).mean()
    out = tmp_path_factory.mktemp("eos-model")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def hf_greedy(model_path, text: str, max_new_tokens: int) -> list[int]:
    """Plain transformers greedy decoding, the reference the backend must agree with."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path)
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new_tokens,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return out[0, ids.shape[1]:].tolist()


def expected_greedy(model_path, text: str, max_new_tokens: int) -> Completion:
    """The completion a backend must return for greedy decoding: text up to eos, eos counted as a token."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    ref = hf_greedy(model_path, text, max_new_tokens)
    if tok.eos_token_id in ref:
        end = ref.index(tok.eos_token_id)
        return Completion(tok.decode(ref[:end], skip_special_tokens=True), end + 1, "stop")
    return Completion(tok.decode(ref, skip_special_tokens=True), len(ref), "length")


# ------------------------------------------------------------------------------------------------ transformers
def test_shapes_n_and_budget(gen):
    out = gen.generate(PROMPTS, n=5, sampling=SamplingConfig(max_new_tokens=12, seed=3))
    assert [len(o) for o in out] == [5, 5, 5]
    for comps in out:
        assert all(isinstance(c, Completion) for c in comps)
        assert all(1 <= c.tokens <= 12 for c in comps)
        assert all(c.finish_reason in ("stop", "length") for c in comps)
        assert all(c.tokens == 12 for c in comps if c.finish_reason == "length")
        assert len({c.text for c in comps}) > 1, "samples of one prompt should differ"


def test_greedy_matches_plain_transformers_and_counts_tokens(gen, tiny):
    """Text and token counts agree with a direct `generate` on the same rendered prompt."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny.policy)
    out = gen.generate(PROMPTS, n=2, sampling=SamplingConfig(temperature=0, max_new_tokens=10))
    for prompt, comps in zip(PROMPTS, out):
        text = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        assert gen.render(prompt) == text
        assert comps[0] == comps[1]  # greedy: the n samples coincide
        assert comps[0] == expected_greedy(tiny.policy, text, 10)


def test_seeds_reproducible_and_batch_independent(gen, tiny):
    s = SamplingConfig(max_new_tokens=16, seed=11, top_k=50, top_p=0.95, temperature=0.9)
    first = gen.generate(PROMPTS, n=3, sampling=s)
    assert gen.generate(PROMPTS, n=3, sampling=s) == first
    other = gen.generate(PROMPTS, n=3, sampling=s.model_copy(update={"seed": 12}))
    assert all(a.text != b.text for x, y in zip(first, other) for a, b in zip(x, y))
    # Sample j of a prompt is drawn with seed seeds[i] + j, whatever else shares the batch.
    seeds = [derive_seed(11, gen.render(p)) for p in PROMPTS]
    alone = gen.generate([PROMPTS[2]], n=1, sampling=s, seeds=[seeds[2] + 2])
    assert alone[0][0] == first[2][2]
    with make_generator(GeneratorSpec(model="tiny-policy", batch_size=1)) as one_by_one:
        assert one_by_one.generate(PROMPTS[::-1], n=3, sampling=s) == first[::-1]


def test_finish_reasons_stop_and_length(eos_prone_model):
    with make_generator(GeneratorSpec(model=str(eos_prone_model), batch_size=32)) as g:
        out = g.generate(PROMPTS[:2], n=16, sampling=SamplingConfig(max_new_tokens=24, seed=0))
    comps = [c for o in out for c in o]
    stops = [c for c in comps if c.finish_reason == "stop"]
    lengths = [c for c in comps if c.finish_reason == "length"]
    assert stops and lengths
    assert all(c.tokens == 24 for c in lengths)
    assert all(1 <= c.tokens <= 24 for c in stops)   # the eos token counts, and ends the text
    assert all("<|end|>" not in c.text for c in comps)


def test_chat_template_override_and_max_model_len(tiny, tmp_path):
    template_file = tmp_path / "plain.jinja"
    template_file.write_text(PLAIN_TEMPLATE)
    with make_generator(GeneratorSpec(model="tiny-policy", chat_template=str(template_file))) as g:
        assert g.render(PROMPTS[1]) == "system: Answer briefly.\nuser: What does a recipe stage do?\nanswer:"
        got = g.generate([PROMPTS[1]], n=1, sampling=SamplingConfig(temperature=0, max_new_tokens=8))[0][0]
    text = "system: Answer briefly.\nuser: What does a recipe stage do?\nanswer:"
    assert got == expected_greedy(tiny.policy, text, 8)
    with make_generator(GeneratorSpec(model="tiny-policy")) as default:
        assert default.generate([PROMPTS[1]], n=1, sampling=SamplingConfig(temperature=0, max_new_tokens=8))[0][0] \
            == expected_greedy(tiny.policy, default.render(PROMPTS[1]), 8)

    with make_generator(GeneratorSpec(model="tiny-policy", max_model_len=40)) as g:
        n_prompt = len(g.prompt_ids(PROMPTS[0]))
        c = g.generate([PROMPTS[0]], n=2, sampling=SamplingConfig(max_new_tokens=200))[0]
        assert all(x.tokens <= 40 - n_prompt for x in c)
        with pytest.raises(ValueError, match="max_model_len"):
            g.generate([PROMPTS[2] * 4], n=1, sampling=SamplingConfig())


def test_bad_inputs_fail_clearly(gen):
    with pytest.raises(ValueError, match="role"):
        gen.generate([[{"role": "robot", "content": "x"}]], n=1, sampling=SamplingConfig())
    with pytest.raises(ValueError, match="non-empty"):
        gen.generate([[]], n=1, sampling=SamplingConfig())
    with pytest.raises(ValueError, match="seeds"):
        gen.generate(PROMPTS, n=1, sampling=SamplingConfig(), seeds=[1])
    with pytest.raises(Exception, match="extra"):
        GeneratorSpec(backend="transformers", modle="x")
    with pytest.raises(Exception):
        GeneratorSpec(backend="llamacpp")


def test_model_identity(tiny, tmp_path):
    ident = model_identity("tiny-policy")
    assert ident.startswith("policy@") and len(ident.split("@")[1]) == 16
    assert model_identity(str(tiny.policy)) == ident
    assert model_identity("org/some-model") == "org/some-model"
    assert model_identity("org/some-model", "abc123") == "org/some-model@abc123"
    import shutil
    copy = tmp_path / "policy"
    shutil.copytree(tiny.policy, copy)
    assert model_identity(str(copy)) == ident
    (copy / "generation_config.json").write_text(json.dumps({"eos_token_id": 2, "pad_token_id": 0}))
    assert model_identity(str(copy)) != ident


# ------------------------------------------------------------------------------------------------ openai
def test_openai_backend_against_local_server(openai_server, monkeypatch):
    monkeypatch.setenv("XWIN_TEST_GEN_KEY", "sk-never-stored-123")
    spec = GeneratorSpec(backend="openai", model="test-judge", base_url=openai_server.base_url,
                         api_key_env="XWIN_TEST_GEN_KEY", extra={"concurrency": 4})
    with make_generator(spec) as g:
        assert "sk-never" not in g.model_id
        out = g.generate(PROMPTS, n=3, sampling=SamplingConfig(max_new_tokens=33, seed=5, top_k=7, temperature=0.7))
    assert [len(o) for o in out] == [3, 3, 3]
    assert out[1][0].text == "Answer to: What does a recipe stage do?"
    assert out[1][2].text == "Answer to: What does a recipe stage do? #2"
    assert all(c.finish_reason == "stop" for o in out for c in o)
    assert openai_server.total == 3
    bodies = {b["messages"][-1]["content"]: b for b in openai_server.requests}
    body = bodies["What does a recipe stage do?"]
    assert body["n"] == 3 and body["max_tokens"] == 33 and body["top_k"] == 7 and body["temperature"] == 0.7
    assert body["seed"] == derive_seed(5, g.render(PROMPTS[1]))
    assert body["messages"] == PROMPTS[1]
    # The API reports one completion-token total for all n choices: the parts add up to it.
    words = sum(len(c.text.split()) for c in out[2])
    assert sum(c.tokens for c in out[2]) == words


def test_openai_backend_retries_and_missing_key(openai_server, monkeypatch):
    openai_server.fail_next(2, "429", retry_after=0.05)
    spec = GeneratorSpec(backend="openai", model="test-judge", base_url=openai_server.base_url)
    with make_generator(spec) as g:
        out = g.generate(PROMPTS[:1], n=1, sampling=SamplingConfig())
    assert out[0][0].text == "Answer to: Hi" and openai_server.total == 3
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(RuntimeError, match="OPENAI_API_KEY"):
        make_generator(GeneratorSpec(backend="openai", model="gpt-4o")).generate(PROMPTS[:1], 1, SamplingConfig())


# ------------------------------------------------------------------------------------------------ cache
def test_generate_cached_resumes_without_repeating(openai_server, tmp_path, monkeypatch):
    monkeypatch.setenv("XWIN_TEST_GEN_KEY", "sk-never-stored-456")
    spec = GeneratorSpec(backend="openai", model="test-judge", base_url=openai_server.base_url,
                         api_key_env="XWIN_TEST_GEN_KEY", batch_size=1)
    items = [(f"p{i}", p) for i, p in enumerate(PROMPTS)]
    sampling = SamplingConfig(seed=2, max_new_tokens=20)
    cache_path = tmp_path / "generation.sqlite"

    class Killed(Exception):
        pass

    def die_after_first(pid, comps, cached):
        raise Killed(pid)

    with make_generator(spec) as g, RequestCache(cache_path) as cache:
        with pytest.raises(Killed):
            generate_cached(g, cache, items, 4, sampling, on_done=die_after_first)
    assert openai_server.total == 1

    done, stats = [], {}
    with make_generator(spec) as g, RequestCache(cache_path) as cache:
        out = generate_cached(g, cache, items, 4, sampling, on_done=lambda pid, c, hit: done.append((pid, hit)),
                              stats=stats)
    assert openai_server.total == 3 and openai_server.repeated == 0
    assert stats == {"cached": 4, "generated": 8}
    assert sorted(done) == [("p0", True), ("p1", False), ("p2", False)]
    assert [len(o) for o in out] == [4, 4, 4] and out[2][3].text.endswith("#3")

    # Everything cached: no request at all, same answers.
    with make_generator(spec) as g, RequestCache(cache_path) as cache:
        again = generate_cached(g, cache, items, 4, sampling)
        # The next four samples of a prompt are new requests with the next seeds.
        more = generate_cached(g, cache, items[:1], 4, sampling, start=4)
    assert again == out and openai_server.total == 4
    assert openai_server.requests[-1]["seed"] == derive_seed(2, g.render(PROMPTS[0])) + 4
    assert "sk-never-stored" not in cache_path.read_bytes().decode("utf-8", "replace")
    assert len(more[0]) == 4


def test_generate_cached_transformers_matches_direct_and_fills_gaps(gen, tmp_path):
    items = [(f"p{i}", p) for i, p in enumerate(PROMPTS)]
    sampling = SamplingConfig(seed=9, max_new_tokens=10)
    with RequestCache(tmp_path / "gen.sqlite") as cache:
        stats: dict = {}
        two = generate_cached(gen, cache, items, 2, sampling, stats=stats)
        assert stats == {"cached": 0, "generated": 6}
        stats = {}
        four = generate_cached(gen, cache, items, 4, sampling, stats=stats)
        assert stats == {"cached": 6, "generated": 6}   # only the two missing samples per prompt were drawn
        assert [f[:2] for f in four] == two
    assert four == gen.generate(PROMPTS, n=4, sampling=sampling)
    with RequestCache(tmp_path / "gen.sqlite") as cache:
        other = generate_cached(gen, cache, items, 2, SamplingConfig(seed=9, max_new_tokens=10, temperature=0.5))
    assert other != two   # a sampling parameter is part of the key


def test_draw_cached_mixed_ranges_equal_separate_calls_and_resume(gen, tmp_path):
    """Prompts with different sample ranges in one call (a uniqueness round) get exactly the samples that
    separate calls give, and what is cached is not drawn again."""
    sampling = SamplingConfig(seed=4, max_new_tokens=8)
    requests = [("a", PROMPTS[0], 0, 3), ("b", PROMPTS[1], 2, 1), ("c", PROMPTS[2], 1, 2)]
    with RequestCache(tmp_path / "mixed.sqlite") as cache:
        stats: dict = {}
        mixed = draw_cached(gen, cache, requests, sampling, stats=stats)
        assert stats == {"cached": 0, "generated": 6}
        stats = {}
        assert draw_cached(gen, cache, requests, sampling, stats=stats) == mixed
        assert stats == {"cached": 6, "generated": 0}
    with RequestCache(tmp_path / "separate.sqlite") as cache:
        separate = [generate_cached(gen, cache, [(pid, p)], n, sampling, start=start)[0]
                    for pid, p, start, n in requests]
    assert mixed == separate
    assert [len(x) for x in mixed] == [3, 1, 2]
    direct = gen.generate_mixed([p for _i, p, _s, _n in requests], [n for *_x, n in requests], sampling,
                                [derive_seed(4, gen.render(p)) + start for _i, p, start, _n in requests])
    assert direct == mixed
    with pytest.raises(ValueError, match="at least 1"):
        draw_cached(gen, cache, [("a", PROMPTS[0], 0, 0)], sampling)
