"""Clean failure: a recipe whose variables form a cycle, or whose YAML aliases expand without bound, is a recipe
error naming file and line; a full disk is one line and a build marked failed; credentials in a base_url never
reach the catalog's records of builds, params and stats."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from xwin_data.core.recipe import load_recipe
from xwin_data.core.yaml_lines import RecipeError

PROJECT = Path(__file__).resolve().parents[1]


def test_variable_cycle_is_a_recipe_error_with_file_and_line(tmp_path) -> None:
    recipe = tmp_path / "cycle.yaml"
    recipe.write_text(textwrap.dedent("""\
        name: cycle
        vars:
          data: data.jsonl
          a: "prefix-${b}"
          b: ${a}
        stages:
          - {id: raw, op: read_conversations, params: {path: "${a}"}}
        """))
    with pytest.raises(RecipeError) as err:
        load_recipe(recipe)
    assert str(err.value).startswith(f"{recipe}:4: vars.a: ")
    assert "cycle: ${a} → ${b} → ${a}" in str(err.value)
    recipe.write_text(recipe.read_text().replace('"prefix-${b}"', "${a}"))
    with pytest.raises(RecipeError, match=r":4: vars.a: .*cycle: \$\{a\} → \$\{a\}"):
        load_recipe(recipe)


def test_doubling_variables_are_refused(tmp_path) -> None:
    lines = ["name: doubling", "vars:", "  v0: xxxxxxxxxxxxxxxx"]
    lines += [f"  v{i}: \"${{v{i - 1}}}${{v{i - 1}}}\"" for i in range(1, 40)]
    lines += ["stages:", "  - {id: raw, op: read_conversations, params: {path: \"${v39}\"}}"]
    recipe = tmp_path / "doubling.yaml"
    recipe.write_text("\n".join(lines) + "\n")
    with pytest.raises(RecipeError, match=r"doubling.yaml:\d+: vars.v\d+: a value grows to"):
        load_recipe(recipe)


def test_yaml_alias_bomb_is_a_recipe_error_with_file_and_line(tmp_path, cli) -> None:
    names = "abcdefghi"
    lines = ["name: bomb", "vars:", f"  a: &a [{', '.join(['lol'] * 9)}]"]
    lines += [f"  {n}: &{n} [{', '.join([f'*{p}'] * 9)}]" for p, n in zip(names, names[1:])]
    lines += ["stages: []"]
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text("\n".join(lines) + "\n")
    with pytest.raises(RecipeError, match=r"bomb.yaml:\d+: the YAML expands to more than 100,000 values"):
        load_recipe(recipe)
    proc = cli("plan", str(recipe), "-c", str(tmp_path / "cat"), check=False)
    assert proc.returncode == 2 and "alias bomb" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    small = tmp_path / "aliases.yaml"  # ordinary anchors and aliases still work
    small.write_text("name: ok\nvars:\n  base: &base {path: x.jsonl}\n  again: *base\nstages:\n"
                     "  - {id: raw, op: read_conversations, params: *base}\n")
    assert load_recipe(small).vars["again"] == {"path": "x.jsonl"}


DISK_SCRIPT = r"""
set -e
mount -t tmpfs -o size=12m tmpfs "$FULL"
set +e
"$PY" -m xwin_data.cli build "$RECIPE" -c "$FULL/cat" --set input="$DATA" -q > "$OUT/build.txt" 2>&1
echo $? > "$OUT/rc.txt"
"$PY" -c "
import json, sys, duckdb
con = duckdb.connect(sys.argv[1] + '/cat/catalog.duckdb', read_only=True)
print(json.dumps(con.execute('SELECT status, error FROM builds').fetchall()))
" "$FULL" > "$OUT/builds.json" 2>&1
ls -A "$FULL/cat/staging" "$FULL/cat/tmp" > "$OUT/left.txt" 2>&1
"""


def test_disk_full_is_one_line_and_a_failed_build(tmp_path) -> None:
    """The catalog on a real 12 MB filesystem (a tmpfs in a private mount namespace) that the stage overflows."""
    if not shutil.which("unshare") or subprocess.run(
            ["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs unprivileged user and mount namespaces to mount a small filesystem")
    import base64
    import random

    rng = random.Random(0)
    data = tmp_path / "big.jsonl"
    with data.open("w") as fh:
        for i in range(6000):
            text = base64.b64encode(rng.randbytes(2250)).decode()  # 18 MB that does not compress below 12 MB
            fh.write(json.dumps({"id": f"r{i}", "conversations": [{"from": "human", "value": f"q{i}"},
                                                                    {"from": "gpt", "value": text}]}) + "\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: full\nvars: {input: x}\nstages:\n"
                      "  - {id: raw, op: read_conversations, params: {path: \"${input}\"}}\n")
    full, out = tmp_path / "full", tmp_path / "out"
    full.mkdir()
    out.mkdir()
    env = {"FULL": str(full), "OUT": str(out), "PY": sys.executable, "RECIPE": str(recipe), "DATA": str(data),
           "PATH": "/usr/bin:/bin", "PYTHONPATH": str(PROJECT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "COLUMNS": "200"}
    proc = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "bash", "-c", DISK_SCRIPT], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    console = (out / "build.txt").read_text()
    assert (out / "rc.txt").read_text().strip() == "1", console
    assert "Traceback" not in console
    lines = [line for line in console.splitlines() if line.strip() and not line.startswith("▶")]
    assert lines[0].startswith("error: disk full while building stage raw"), console
    builds = json.loads((out / "builds.json").read_text())
    assert len(builds) == 1 and builds[0][0] == "failed" and builds[0][1].startswith("disk full"), builds
    assert (out / "left.txt").read_text().split() == [f"{full}/cat/staging:", f"{full}/cat/tmp:"]


def test_credentials_in_a_base_url_never_reach_the_catalog_records(openai_server, tmp_path) -> None:
    """The policies' endpoint carries user:password; the stage uses it, the records show it masked."""
    import xwin_data
    from openai_server import pairwise_judge, prefer_longer
    from test_xwin_pair import JUDGE, PROMPTS, RECIPE, serve
    from xwin_data.core.connection import connect

    openai_server.reply = serve(pairwise_judge(prefer_longer))
    password = "pw-5e3a9c17d2"
    url = openai_server.base_url.replace("http://", f"http://judge-user:{password}@")
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"id": f"q{i}", "prompt": p}) + "\n"
                                                   for i, p in enumerate(PROMPTS[:3])))
    sets = [f"prompts={tmp_path / 'prompts.jsonl'}", "k=2",
            f"policies=[{{name: pol, backend: openai, model: test-policy, base_url: '{url}'}}]",
            "judge.kind=openai", f"judge.base_url={openai_server.base_url}", f"judge.model={JUDGE}",
            "judge.timeout_s=10"]
    cat = tmp_path / "cat"
    report = xwin_data.build(RECIPE, cat, sets, show_progress=False)
    assert report.status == "ok" and openai_server.total > 0
    con = connect(cat)
    try:
        records = con.execute("SELECT to_json(b)::VARCHAR FROM builds b").fetchall() + \
            con.execute("SELECT params::VARCHAR || stats::VARCHAR FROM table_versions").fetchall()
    finally:
        con.close()
    text = " ".join(r[0] for r in records)
    assert "http://***@127.0.0.1" in text  # which endpoint was used stays readable
    assert password not in text
    assert password.encode() not in (cat / "catalog.duckdb").read_bytes()
