"""The catalog: Parquet tables in versioned folders, and a DuckDB file of metadata (versions, lineage, builds,
validations). A table version becomes current only in one metadata transaction, after its files are complete
and validated, so a build killed at any moment leaves the catalog as it was.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import duckdb
from filelock import FileLock, Timeout

from xwin_data.core.errors import CatalogBusy
from xwin_data.core.records import PublishEntry, ValidationRecord
from xwin_data.core.checksums import PartRecord, check_parts, record_parts

DEFAULT_CATALOG = "xwin-catalog"
META_FILE = "catalog.duckdb"

_SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS table_versions (
    name VARCHAR NOT NULL,
    version INTEGER NOT NULL,
    fingerprint VARCHAR NOT NULL,
    path VARCHAR NOT NULL,
    rows BIGINT,
    n_drops BIGINT,
    schema_name VARCHAR,
    columns JSON,
    build_id VARCHAR,
    recipe VARCHAR,
    recipe_path VARCHAR,
    stage VARCHAR,
    op VARCHAR,
    params JSON,
    inputs JSON,
    library_versions JSON,
    stats JSON,
    seconds DOUBLE,
    created_at TIMESTAMP,
    is_current BOOLEAN,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS builds (
    build_id VARCHAR PRIMARY KEY,
    recipe VARCHAR,
    recipe_path VARCHAR,
    recipe_sha VARCHAR,
    overrides JSON,
    pid INTEGER,
    started_at TIMESTAMP,
    finished_at TIMESTAMP,
    status VARCHAR,
    stages_run JSON,
    stages_skipped JSON,
    error VARCHAR
);
CREATE TABLE IF NOT EXISTS table_files (
    name VARCHAR NOT NULL,
    version INTEGER NOT NULL,
    file VARCHAR NOT NULL,
    bytes BIGINT,
    checksum VARCHAR,
    PRIMARY KEY (name, version, file)
);
CREATE TABLE IF NOT EXISTS validations (
    build_id VARCHAR,
    table_name VARCHAR,
    version INTEGER,
    fingerprint VARCHAR,
    schema_name VARCHAR,
    success BOOLEAN,
    results JSON,
    created_at TIMESTAMP
);
"""

DROPS_COLUMNS = (
    "stage VARCHAR, table_name VARCHAR, source_id VARCHAR, reason VARCHAR, detail VARCHAR, build_id VARCHAR, unit VARCHAR")


@dataclass
class TableVersion:
    name: str
    version: int
    fingerprint: str
    path: str
    rows: int
    n_drops: int
    schema_name: str | None
    build_id: str | None
    recipe: str | None
    stage: str | None
    op: str | None
    created_at: Any
    is_current: bool
    stats: dict | None = None
    inputs: list | None = None
    columns: dict[str, str] | None = None  # name -> DuckDB type


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Catalog:
    """A folder holding tables and the metadata file. Opened briefly per operation, never held open."""

    def __init__(self, root: str | Path = DEFAULT_CATALOG):
        self.root = Path(root).resolve()
        self.meta_path = self.root / META_FILE
        self.tables_dir = self.root / "tables"
        self.staging_dir = self.root / "staging"
        self.cache_dir = self.root / "cache"
        self.work_dir = self.root / "work"
        self.tmp_dir = self.root / "tmp"
        self._verified: set[tuple[str, int]] = set()
        # Metadata reads inside `reads_cached()` (a plan; a build holding its lock, where no other build can
        # publish): a read is repeated from here until this process writes. A build reads the same versions many
        # times, and each read opens the metadata file; a run record another process appends meanwhile (training,
        # evals) is seen after this process's next write, or by the next build.
        self._read_cache: dict[tuple, list[dict]] | None = None

    # ------------------------------------------------------------------------------------- setup & locking
    def exists(self) -> bool:
        return self.meta_path.exists()

    def init(self) -> "Catalog":
        for d in (self.root, self.tables_dir, self.staging_dir, self.cache_dir, self.work_dir, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True)
        with self.meta(write=True) as con:
            con.execute(_SCHEMA_SQL)
        return self

    @contextmanager
    def meta(self, write: bool = False, wait: float = 30.0) -> Iterator[duckdb.DuckDBPyConnection]:
        """A short-lived connection to the metadata file; retries while another process has it open."""
        if write and self._read_cache is not None:
            self._read_cache.clear()
        deadline = time.monotonic() + wait
        while True:
            try:
                con = duckdb.connect(str(self.meta_path), read_only=not write)
                break
            except duckdb.IOException as err:
                if "lock" not in str(err).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        try:
            yield con
        finally:
            con.close()

    @contextmanager
    def build_lock(self, wait: float = 0.0, info: dict | None = None) -> Iterator[None]:
        """One build at a time per catalog: wait up to `wait` seconds, then fail naming the holder."""
        self.root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.root / ".build.lock"))
        info_path = self.root / ".build.lock.json"

        def holder() -> str:
            try:
                h = json.loads(info_path.read_text())
                return f" by build {h.get('build_id')} (pid {h.get('pid')}, recipe {h.get('recipe')}, " \
                       f"started {h.get('started_at')})"
            except (OSError, ValueError):
                return ""

        try:
            lock.acquire(timeout=0)
        except Timeout:
            if wait <= 0:
                raise CatalogBusy(f"catalog {self.root} is locked{holder()}; wait with --wait SECONDS or try "
                                  "later") from None
            from xwin_data.core.progress import console

            started = time.monotonic()
            console.print(f"waiting up to {wait:g} s: catalog {self.root} is locked{holder()}", highlight=False)
            try:
                lock.acquire(timeout=wait)
            except Timeout:
                raise CatalogBusy(f"catalog {self.root} is still locked{holder()} after waiting {wait:g} s; "
                                  "wait longer with --wait SECONDS or try later") from None
            console.print(f"catalog lock taken after waiting {time.monotonic() - started:.1f} s", highlight=False)
        try:
            info_path.write_text(json.dumps({**(info or {}), "pid": os.getpid()}, default=str))
            with self.reads_cached():
                yield
        finally:
            try:
                info_path.unlink()
            except OSError:
                pass
            lock.release()

    # ------------------------------------------------------------------------------------- reading metadata
    @contextmanager
    def reads_cached(self) -> Iterator[None]:
        """Repeat metadata reads from memory within the block (until this process writes the metadata)."""
        outer = self._read_cache
        self._read_cache = {} if outer is None else outer
        try:
            yield
        finally:
            self._read_cache = outer

    def _rows(self, sql: str, params: list | None = None) -> list[dict]:
        if not self.exists():
            return []
        cache, key = self._read_cache, (sql, tuple(params or ()))
        if cache is not None and key in cache:
            return [dict(r) for r in cache[key]]
        with self.meta() as con:
            cur = con.execute(sql, params or [])
            cols = [d[0] for d in cur.description]
            rows = [dict(zip(cols, row)) for row in cur.fetchall()]
        if cache is not None:
            cache[key] = [dict(r) for r in rows]
        return rows

    @staticmethod
    def _to_version(row: dict) -> TableVersion:
        load = lambda v: json.loads(v) if isinstance(v, str) else v  # noqa: E731
        return TableVersion(
            name=row["name"], version=row["version"], fingerprint=row["fingerprint"], path=row["path"],
            rows=row["rows"], n_drops=row["n_drops"], schema_name=row["schema_name"], build_id=row["build_id"],
            recipe=row["recipe"], stage=row["stage"], op=row["op"], created_at=row["created_at"],
            is_current=row["is_current"], stats=load(row.get("stats")), inputs=load(row.get("inputs")),
            columns=load(row.get("columns")),
        )

    def _cached_versions(self, keep) -> list[dict] | None:
        """Inside `reads_cached()`, the rows of `table_versions` that `keep` selects (by name, then version), from
        one read of the whole table: a build looks up several tables' versions for each stage, and every read
        opens the metadata file. None outside it (a single lookup reads only what it asks for)."""
        if self._read_cache is None:
            return None
        return [r for r in self._rows("SELECT * FROM table_versions ORDER BY name, version") if keep(r)]

    def current(self, name: str) -> TableVersion | None:
        rows = self._cached_versions(lambda r: r["name"] == name and r["is_current"])
        if rows is None:
            rows = self._rows("SELECT * FROM table_versions WHERE name = ? AND is_current", [name])
        return self._to_version(rows[0]) if rows else None

    def current_tables(self) -> list[TableVersion]:
        rows = self._cached_versions(lambda r: r["is_current"])
        if rows is None:
            rows = self._rows("SELECT * FROM table_versions WHERE is_current ORDER BY name")
        return [self._to_version(r) for r in rows]

    def versions(self, name: str) -> list[TableVersion]:
        rows = self._cached_versions(lambda r: r["name"] == name)
        if rows is None:
            rows = self._rows("SELECT * FROM table_versions WHERE name = ? ORDER BY version", [name])
        return [self._to_version(r) for r in rows]

    def find_version(self, name: str, fingerprint: str) -> TableVersion | None:
        rows = self._cached_versions(lambda r: r["name"] == name and r["fingerprint"] == fingerprint)
        if rows is None:
            rows = self._rows("SELECT * FROM table_versions WHERE name = ? AND fingerprint = ? "
                              "ORDER BY version DESC LIMIT 1", [name, fingerprint])
        rows = rows[-1:]  # the latest such version
        if not rows:
            return None
        tv = self._to_version(rows[0])
        return tv if not self.check_files(tv) else None

    # ------------------------------------------------------------------------------------- file integrity
    def part_records(self, tv: TableVersion) -> list[PartRecord]:
        try:
            rows = self._rows("SELECT file, bytes, checksum FROM table_files WHERE name = ? AND version = ? "
                              "ORDER BY file", [tv.name, tv.version])
        except duckdb.CatalogException:  # a catalog from before parts were recorded, not yet built again
            return []
        return [PartRecord(r["file"], r["bytes"], r["checksum"]) for r in rows]

    def current_part_records(self) -> dict[str, list[PartRecord]]:
        """The recorded parts of every current table, in one metadata read."""
        try:
            rows = self._rows("SELECT f.name, f.file, f.bytes, f.checksum FROM table_files f JOIN table_versions v "
                              "ON f.name = v.name AND f.version = v.version WHERE v.is_current ORDER BY f.name, f.file")
        except duckdb.CatalogException:
            return {}
        out: dict[str, list[PartRecord]] = {}
        for r in rows:
            out.setdefault(r["name"], []).append(PartRecord(r["file"], r["bytes"], r["checksum"]))
        return out

    def check_files(self, tv: TableVersion, verify: bool = False,
                    records: list[PartRecord] | None = None) -> list[str]:
        """Problems with a version's files (one line each, naming the file); [] when they match what was
        published. Versions published before parts were recorded are checked for their folder only."""
        folder = self.root / tv.path
        records = self.part_records(tv) if records is None else records
        if not records:
            return [] if (folder / "data").is_dir() else [f"{folder / 'data'}: folder is missing"]
        key = (tv.name, tv.version)
        problems = check_parts(folder, records, verify and key not in self._verified)
        if verify and not problems:
            self._verified.add(key)  # read in full once per process; sizes are still checked every time
        return problems

    def data_files(self, tv: TableVersion, records: list[PartRecord] | None = None) -> list[str]:
        """The data parts of a version, as recorded at publish (or as found, for older versions)."""
        return self._files(tv, "data", records)

    def drops_files(self, tv: TableVersion, records: list[PartRecord] | None = None) -> list[str]:
        return self._files(tv, "drops", records)

    def _files(self, tv: TableVersion, kind: str, records: list[PartRecord] | None) -> list[str]:
        records = self.part_records(tv) if records is None else records
        if records:
            return [str(self.root / tv.path / r.file) for r in records if r.file.startswith(kind + "/")]
        return sorted(str(p) for p in (self.root / tv.path / kind).glob("*.parquet"))

    def data_glob(self, tv: TableVersion) -> str:
        return str(self.root / tv.path / "data" / "*.parquet")

    def builds(self, limit: int = 20) -> list[dict]:
        return self._rows("SELECT * FROM builds ORDER BY started_at DESC LIMIT ?", [limit])

    # ------------------------------------------------------------------------------------- builds
    def start_build(self, recipe: str, recipe_path: str, recipe_sha: str, overrides: list[str]) -> str:
        build_id = datetime.now().strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        with self.meta(write=True) as con:
            con.execute(
                "INSERT INTO builds VALUES (?, ?, ?, ?, ?, ?, ?, NULL, 'running', '[]', '[]', NULL)",
                [build_id, recipe, recipe_path, recipe_sha, json.dumps(overrides), os.getpid(), utcnow()],
            )
        return build_id

    def finish_build(self, build_id: str, status: str, run: list[str], skipped: list[str], error: str | None) -> None:
        with self.meta(write=True) as con:
            con.execute(
                "UPDATE builds SET finished_at = ?, status = ?, stages_run = ?, stages_skipped = ?, error = ? "
                "WHERE build_id = ?",
                [utcnow(), status, json.dumps(run), json.dumps(skipped), error, build_id],
            )

    def mark_abandoned_builds(self) -> int:
        """Builds left 'running' by a killed process become 'killed' (called while holding the build lock)."""
        if not self.exists():
            return 0
        with self.meta(write=True) as con:
            n = con.execute("SELECT count(*) FROM builds WHERE status = 'running'").fetchone()[0]
            con.execute("UPDATE builds SET status = 'killed' WHERE status = 'running'")
        return n

    # ------------------------------------------------------------------------------------- publishing
    def staging_for(self, build_id: str, stage: str) -> Path:
        path = self.staging_dir / build_id / stage
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path

    def publish(self, entries: list[PublishEntry], validations: list[ValidationRecord]) -> list[TableVersion]:
        """Move staged folders into place and make them current in one metadata transaction."""
        self.tables_dir.mkdir(parents=True, exist_ok=True)
        with self.meta(write=True) as con:
            plan = []
            for e in entries:
                version = (con.execute("SELECT coalesce(max(version), 0) + 1 FROM table_versions WHERE name = ?",
                                       [e.name]).fetchone()[0])
                rel = f"tables/{e.name}/v{version:04d}-{e.fingerprint[:12]}"
                target = self.root / rel
                if target.exists():  # left by a publish killed before its metadata commit
                    shutil.rmtree(target)
                target.parent.mkdir(parents=True, exist_ok=True)
                parts = record_parts(Path(e.staged))
                os.replace(e.staged, target)
                plan.append((e, version, rel, parts))
            con.execute("BEGIN TRANSACTION")
            try:
                for e, version, rel, parts in plan:
                    con.execute("DELETE FROM table_files WHERE name = ? AND version = ?", [e.name, version])
                    if parts:
                        con.executemany("INSERT INTO table_files VALUES (?,?,?,?,?)",
                                        [[e.name, version, p.file, p.bytes, p.checksum] for p in parts])
                    con.execute("UPDATE table_versions SET is_current = false WHERE name = ?", [e.name])
                    con.execute(
                        "INSERT INTO table_versions VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,true)",
                        [e.name, version, e.fingerprint, rel, e.rows, e.n_drops, e.schema_name,
                         json.dumps(e.columns), e.build_id, e.recipe, e.recipe_path, e.stage, e.op,
                         json.dumps(e.params, default=str), json.dumps(e.inputs_json()),
                         json.dumps(e.library_versions), json.dumps(e.stats, default=str), e.seconds, utcnow()],
                    )
                for v in validations:
                    version = next(ver for e, ver, _, _ in plan if e.name == v.table_name)
                    self._insert_validation(con, v, version)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return [self.current(e.name) for e in entries]  # type: ignore[misc]

    def restore(self, tv: TableVersion) -> None:
        """Make an older version with the wanted fingerprint current again (no recomputation)."""
        with self.meta(write=True) as con:
            con.execute("BEGIN TRANSACTION")
            con.execute("UPDATE table_versions SET is_current = false WHERE name = ?", [tv.name])
            con.execute("UPDATE table_versions SET is_current = true WHERE name = ? AND version = ?",
                        [tv.name, tv.version])
            con.execute("COMMIT")

    def record_validation_failure(self, v: ValidationRecord) -> None:
        """Keep the outcome of a validation that blocked a publish (no table version exists for it)."""
        with self.meta(write=True) as con:
            self._insert_validation(con, v, None)

    @staticmethod
    def _insert_validation(con: duckdb.DuckDBPyConnection, v: ValidationRecord, version: int | None) -> None:
        con.execute("INSERT INTO validations VALUES (?,?,?,?,?,?,?,?)",
                    [v.build_id, v.table_name, version, v.fingerprint, v.schema_name, v.success,
                     json.dumps(v.results, default=str), utcnow()])

    def clean_staging(self, build_id: str | None = None) -> None:
        target = self.staging_dir / build_id if build_id else self.staging_dir
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        self.staging_dir.mkdir(parents=True, exist_ok=True)
