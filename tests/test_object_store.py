"""Inputs read from an object store: an S3-compatible server (moto) on 127.0.0.1 serves the ShareGPT sample, and the
reader's table equals the one read from the local file; the object's identity is its fingerprint, so an unchanged
object rebuilds nothing and a changed one rebuilds the stage."""
from __future__ import annotations

import gzip
from pathlib import Path

import duckdb
import pytest

import xwin_data

from xwin_data.core.catalog import Catalog

moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed")
boto3 = pytest.importorskip("boto3")

PROJECT = Path(__file__).resolve().parents[1]
SAMPLE = PROJECT / "recipes" / "data" / "sharegpt_sample.jsonl.gz"
RECIPE = """\
name: s3_read
vars: {input: x}
stages:
  - {id: raw, op: read_conversations, schema: conversations, params: {path: "${input}", source: sample}}
"""


@pytest.fixture
def s3(monkeypatch):
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket="data")
    try:
        yield client
    finally:
        server.stop()


def rows(catalog: Path, table: str) -> list:
    cat = Catalog(catalog)
    return duckdb.sql(f"SELECT * FROM read_parquet('{cat.data_glob(cat.current(table))}')").fetchall()


def test_reader_reads_s3_like_a_local_file(s3, tmp_path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    s3.upload_file(str(SAMPLE), "data", "sharegpt/sample.jsonl.gz")
    url = "s3://data/sharegpt/sample.jsonl.gz"
    xwin_data.build(recipe, tmp_path / "local", [f"input={SAMPLE}"], show_progress=False)
    xwin_data.build(recipe, tmp_path / "s3", [f"input={url}"], show_progress=False)
    local, remote = rows(tmp_path / "local", "raw"), rows(tmp_path / "s3", "raw")
    assert len(remote) > 2000 and remote == local
    assert Catalog(tmp_path / "s3").current("raw").n_drops == Catalog(tmp_path / "local").current("raw").n_drops
    # the local copy lives in the catalog, named by the object's identity, without credentials anywhere
    copies = list((tmp_path / "s3" / "cache" / "inputs").glob("*/sample.jsonl.gz"))
    assert len(copies) == 1 and copies[0].read_bytes() == SAMPLE.read_bytes()
    assert b"testing" not in (tmp_path / "s3" / "catalog.duckdb").read_bytes()

    again = xwin_data.build(recipe, tmp_path / "s3", [f"input={url}"], show_progress=False)
    assert [st.status for st in again.stages] == ["skipped"]
    lines = gzip.decompress(SAMPLE.read_bytes()).splitlines(keepends=True)
    s3.put_object(Bucket="data", Key="sharegpt/sample.jsonl.gz", Body=gzip.compress(b"".join(lines[:100])))
    changed = xwin_data.build(recipe, tmp_path / "s3", [f"input={url}"], show_progress=False)
    assert [st.status for st in changed.stages] == ["built"]
    assert 90 <= len(rows(tmp_path / "s3", "raw")) <= 100


def test_a_missing_object_is_a_recipe_error(s3, tmp_path, cli) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    proc = cli("build", str(recipe), "-c", str(tmp_path / "cat"), "--set", "input=s3://data/nope.jsonl", check=False)
    assert proc.returncode == 2 and "nope.jsonl" in proc.stdout + proc.stderr


def drops(catalog: Path) -> list:
    found = list(catalog.glob("**/drops/*.parquet"))
    return duckdb.sql(f"SELECT source_id, reason, detail FROM read_parquet({[str(f) for f in found]}) "
                      "ORDER BY ALL").fetchall() if found else []


def test_a_folder_or_glob_of_objects_reads_like_a_local_folder_of_shards(s3, tmp_path) -> None:
    """`s3://bucket/folder` and `s3://bucket/folder/*.jsonl` expand to their objects in name order, copied into the
    catalog under their names; the table and the drops (which name the shard) equal a local folder's, `_SUCCESS` is
    not data, and a new object in the folder rebuilds the stage."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    lines = gzip.decompress(SAMPLE.read_bytes()).splitlines(keepends=True)
    shards = {"a.jsonl": b"".join(lines[:40]), "b.jsonl": b"".join(lines[40:70]) + b'{"id": "broken", \n',
              "notes.txt": b"not data\n", "_SUCCESS": b""}
    folder = tmp_path / "shards"
    folder.mkdir()
    for name, body in shards.items():
        (folder / name).write_bytes(body)
        s3.put_object(Bucket="data", Key=f"sets/shards/{name}", Body=body)
    xwin_data.build(recipe, tmp_path / "local", [f"input={folder}"], show_progress=False)
    xwin_data.build(recipe, tmp_path / "s3", ["input=s3://data/sets/shards"], show_progress=False)
    xwin_data.build(recipe, tmp_path / "glob", ["input=s3://data/sets/shards/*.jsonl"], show_progress=False)

    local = rows(tmp_path / "local", "raw")
    assert 60 <= len(local) <= 70 and rows(tmp_path / "s3", "raw") == local == rows(tmp_path / "glob", "raw")
    local_drops = drops(tmp_path / "local")
    assert {(d[0].split(":")[0], d[1]) for d in local_drops} >= {("b.jsonl", "broken_json"),
                                                                ("notes.txt", "not_a_data_file")}
    assert drops(tmp_path / "s3") == local_drops
    assert drops(tmp_path / "glob") == [d for d in local_drops if d[1] != "not_a_data_file"]
    copies = sorted(p.name for p in (tmp_path / "s3" / "cache" / "inputs").glob("*/shards/*"))
    assert copies == ["a.jsonl", "b.jsonl", "notes.txt"]

    s3.put_object(Bucket="data", Key="sets/shards/c.jsonl", Body=b"".join(lines[70:80]))
    again = xwin_data.build(recipe, tmp_path / "s3", ["input=s3://data/sets/shards"], show_progress=False)
    assert [st.status for st in again.stages] == ["built"]
    assert len(rows(tmp_path / "s3", "raw")) > len(local)
