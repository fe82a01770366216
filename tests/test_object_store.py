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
