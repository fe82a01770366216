"""Languages as users mean them (macrolanguages, raw code kept) and refusal patterns per language kept as data."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import xwin_data
from xwin_data.text.language import macrolanguage, matching_codes
from xwin_data.text.refusals import known_languages, refusal_regex


def test_macrolanguage_mapping() -> None:
    assert [macrolanguage(c) for c in ("cmn", "wuu", "yue", "zh", "arb", "nb", "zsm")] == \
        ["zh", "zh", "zh", "zh", "ar", "no", "ms"]
    assert macrolanguage("hr") == "hr" and macrolanguage("en") == "en" and macrolanguage("und") == "und"
    assert matching_codes(["zh"], ["cmn", "wuu", "yue", "zh", "ja", "en", None]) == ["cmn", "wuu", "yue", "zh"]
    assert matching_codes(["zho", "eng"], ["yue", "en", "fr"]) == ["yue", "en"]
    assert matching_codes(["yue"], ["cmn", "yue"]) == ["yue"]  # a variety still selects itself only


LANG_RECIPE = """\
name: langs
stages:
  - id: labelled
    op: sql
    params:
      query: >-
        SELECT id, messages::STRUCT(role VARCHAR, content VARCHAR)[] AS messages, language
        FROM read_json('labelled.jsonl')
  - id: chinese
    op: filter_conversations
    inputs: [labelled]
    params:
      languages: [zh]
"""


def test_languages_zh_keeps_chinese_varieties(tmp_path: Path) -> None:
    labels = ["cmn", "wuu", "yue", "zh", "ja", "en", "ko"]
    rows = [{"id": f"r{i}", "language": lab, "messages": [{"role": "user", "content": "你好"},
                                                           {"role": "assistant", "content": "你好！"}]}
            for i, lab in enumerate(labels)]
    (tmp_path / "labelled.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    (tmp_path / "r.yaml").write_text(LANG_RECIPE.replace("'labelled.jsonl'", f"'{tmp_path}/labelled.jsonl'"))
    xwin_data.build(tmp_path / "r.yaml", tmp_path / "xwin-catalog", show_progress=False)
    con = xwin_data.connect(tmp_path / "xwin-catalog")
    kept = sorted(r[0] for r in con.execute("SELECT language FROM chinese").fetchall())
    assert kept == ["cmn", "wuu", "yue", "zh"]
    dropped = con.execute("SELECT reason, count(*) FROM drops WHERE stage = 'chinese' GROUP BY 1").fetchall()
    assert dropped == [("language_not_allowed", 3)]


REAL_RECIPE = """\
name: refusals
stages:
  - id: alpaca_zh
    op: read_conversations
    params: {{path: "{d}/hiyouga_LLaMA-Factory/data/alpaca_zh_demo.json", format: alpaca}}
  - id: mixed
    op: read_conversations
    params: {{path: "{d}/hiyouga_LLaMA-Factory/data/v1_sft_demo.jsonl"}}
  - id: mixed_stats
    op: conversation_stats
    inputs: [mixed]
  - id: mixed_zh
    op: filter_conversations
    inputs: [mixed_stats]
    params: {{languages: [zh]}}
  - id: no_zh_refusals
    op: filter_conversations
    inputs: [alpaca_zh]
    params: {{refusals: [zh]}}
  - id: no_refusals
    op: filter_conversations
    inputs: [alpaca_zh]
    params: {{refusals: true}}
"""


def test_real_chinese_refusals_and_language_columns(shared_data: Path, tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(REAL_RECIPE.format(d=shared_data))
    xwin_data.build(tmp_path / "r.yaml", tmp_path / "xwin-catalog", show_progress=False)
    con = xwin_data.connect(tmp_path / "xwin-catalog")
    # The reference: Python's own regex engine over the file's answers.
    records = json.loads((shared_data / "hiyouga_LLaMA-Factory/data/alpaca_zh_demo.json").read_text())
    for stage, langs in (("no_zh_refusals", ["zh"]), ("no_refusals", None)):
        rx = re.compile(refusal_regex(langs))
        expected = sum(bool(rx.search(r["output"])) for r in records)
        got = con.execute(f"SELECT count(*) FROM drops WHERE stage = '{stage}' AND reason = 'refusal_boilerplate'")
        assert got.fetchone()[0] == expected > 5
        assert con.execute(f"SELECT count(*) FROM {stage}").fetchone()[0] == len(records) - expected
    # Language is the macrolanguage, the detector's code is kept; [zh] keeps the Chinese conversations.
    rows = con.execute("SELECT language, language_raw, count(*) FROM mixed_stats GROUP BY ALL").fetchall()
    assert {(lang, raw) for lang, raw, _ in rows} >= {("zh", "zh"), ("en", "en")}
    n_zh = sum(n for lang, _, n in rows if lang == "zh")
    assert con.execute("SELECT count(*) FROM mixed_zh").fetchone()[0] == n_zh > 0


SAMPLES = {
    "en": "As an AI language model, I cannot browse the internet.",
    "zh": "作为一个AI语言模型，我无法访问互联网。",
    "es": "Como modelo de lenguaje, no tengo acceso a internet.",
    "fr": "En tant que modèle de langage, je n'ai pas accès à internet.",
    "de": "Als KI-Sprachmodell habe ich keinen Zugang zum Internet.",
    "ru": "Как языковая модель, я не имею доступа к интернету.",
    "ja": "AI言語モデルとして、インターネットにはアクセスできません。",
    "ko": "AI 언어 모델로서 인터넷에 접속할 수 없습니다.",
    "pt": "Como modelo de linguagem, não tenho acesso à internet.",
}


def test_refusal_patterns_cover_the_filtered_languages() -> None:
    assert set(known_languages()) >= set(SAMPLES)
    for lang, text in SAMPLES.items():
        assert re.search(refusal_regex([lang]), text), lang
        assert not re.search(refusal_regex([lang]), "Here is the answer you asked for: 42."), lang
    with pytest.raises(ValueError, match="no refusal patterns for xx"):
        refusal_regex(["xx"])
