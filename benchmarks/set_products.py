"""Derived tables of a scored set at scale: DuckDB (the SQL the ops run) next to pandas and polars, same run.

    python benchmarks/set_products.py                      # 100K prompts x 64 responses, 2 threads
    python benchmarks/set_products.py --prompts 20000 --threads 2 --json out.json

A synthetic Xwin-Set (scores rounded to 2 decimals, so ties occur) is written to Parquet first (not timed). Each
side then reads that file and writes every derived table to Parquet (zstd): rs_best_of_{1..64}, dpo_pairs_{worst,
random_lower, rank_k, mean_minus_2sd, margin (capped at 8 per prompt)}, wind_groups, bon_curve(+_per_prompt).
The DuckDB side runs the ops' own SQL (xwin_data.ops.sets.products / set_curves) the way `ctx.write_sql` does
(COPY ... TO parquet, with the same options); the pandas side is what a careful pandas user would write
(vectorised groupby / sort / merge, numpy for the order-statistic dot products, `df.to_parquet`); the polars side
uses the lazy API (scan_parquet, window expressions over prompt_id, joins, sink_parquet) with POLARS_MAX_THREADS
equal to DuckDB's threads. Each side runs in a process of its own (peak RSS from wait4). All sides write the same
columns (checked), and the outputs are compared with DuckDB's before the timings are printed.
Targets: DuckDB >= 10x pandas, every table family at least as fast as polars, < 60 s in all on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from math import comb
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

NS = [1, 2, 4, 8, 16, 32, 64]
STRATEGIES = ["worst", "random_lower", "rank_k", "mean_minus_2sd", "margin"]
K, MARGIN, CAP, SD_MULT = 2, 1.0, 8, 2.0
# Both sides write these columns (the ops' output schemas), so both do the same Parquet work.
RS_COLUMNS = ["id", "messages", "prompt_id", "response_id", "sample_index", "score", "n", "n_available"]
DPO_COLUMNS = ["id", "prompt_id", "prompt", "chosen", "rejected", "chosen_id", "rejected_id", "chosen_score",
               "rejected_score", "chosen_rank", "rejected_rank", "group_size", "strategy"]
WIND_COLUMNS = ["id", "prompt_id", "prompt", "completion", "response", "response_id", "sample_index", "score",
                "group_size", "win_rate"]
MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


# ------------------------------------------------------------------------------------------------ data
def synthetic_set(path: Path, prompts: int, m: int, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    pid_idx = np.repeat(np.arange(prompts), m)
    score = np.round(rng.normal(size=prompts * m) + 0.5 * rng.normal(size=prompts)[pid_idx], 2)
    pids = pa.array([f"p{i:07d}" for i in range(prompts)])
    prompt = pa.array([[{"role": "user", "content": f"Question {i}: explain topic {i % 977} in a few sentences."}]
                       for i in range(prompts)], MESSAGES)
    take = pa.array(pid_idx)
    table = pa.table({
        "prompt_id": pids.take(take), "prompt": prompt.take(take),
        "response_id": pa.array([f"p{i:07d}#{j}" for i in range(prompts) for j in range(m)]),
        "sample_index": pa.array(np.tile(np.arange(m), prompts), pa.int32()),
        "response": pa.array([f"Answer {j} to question {i}: a short synthetic response of a few words."
                              for i in range(prompts) for j in range(m)]),
        "tokens": pa.array(rng.integers(5, 200, prompts * m), pa.int32()),
        "score": pa.array(score, pa.float64()),
    })
    pq.write_table(table, path, row_group_size=122_880, compression="zstd")
    return table.num_rows


# ------------------------------------------------------------------------------------------------ DuckDB
def run_duckdb(src_path: Path, out: Path, threads: int) -> dict[str, float]:
    import duckdb

    from xwin_data.core.context import PARQUET_COPY_OPTIONS
    from xwin_data.ops.sets.curves import (bon_overall_sql, bon_per_prompt_sql, prepare_bon, prepare_wind,
                                          wind_groups_sql)
    from xwin_data.ops.sets.products import DpoParams, dpo_table_sql, prepare_dpo, prepare_rs, rs_table_sql

    out.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(":memory:", config={"memory_limit": "8GB", "temp_directory": str(out / "tmp")})
    con.execute(f"SET threads = {threads}")
    con.execute("SET preserve_insertion_order = true")
    con.execute(f"CREATE VIEW xwin_set AS SELECT * FROM read_parquet('{src_path}')")
    times: dict[str, float] = {}

    def copy(sql: str, name: str) -> None:
        con.execute(f"COPY ({sql}) TO '{out / name}.parquet' ({PARQUET_COPY_OPTIONS})").fetchall()

    t = time.perf_counter()
    prepare_rs(con, "xwin_set", NS)
    for n in NS:
        copy(rs_table_sql(n), f"rs_best_of_{n}")
    times["rs_best_of_n"] = time.perf_counter() - t

    t = time.perf_counter()
    prepare_dpo(con, "xwin_set", DpoParams(strategies=STRATEGIES, k=K, margin=MARGIN, max_pairs_per_prompt=CAP,
                                          sd_multiplier=SD_MULT))
    for s in STRATEGIES:
        copy(dpo_table_sql(s), f"dpo_pairs_{s}")
    times["dpo_pairs"] = time.perf_counter() - t

    t = time.perf_counter()
    prepare_wind(con, "xwin_set")
    copy(wind_groups_sql("xwin_set"), "wind_groups")
    times["wind_groups"] = time.perf_counter() - t

    t = time.perf_counter()
    prepare_bon(con, "xwin_set", 64)
    copy(bon_per_prompt_sql(), "bon_curve_per_prompt")
    copy(bon_overall_sql(f"read_parquet('{out / 'bon_curve_per_prompt.parquet'}')"), "bon_curve")
    times["bon_curve"] = time.perf_counter() - t
    con.close()
    return times


# ------------------------------------------------------------------------------------------------ pandas
def _assistant(texts) -> list:
    return [[{"role": "assistant", "content": t}] for t in texts]


def _write(df, path: Path) -> None:
    df.to_parquet(path, compression="zstd", index=False)


def run_pandas(src_path: Path, out: Path) -> dict[str, float]:
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    t = time.perf_counter()
    df = pd.read_parquet(src_path)
    narrow = df[["prompt_id", "response_id", "sample_index", "score"]]
    times["read"] = time.perf_counter() - t

    def texts(ids) -> pd.DataFrame:
        return df[df["response_id"].isin(ids)][["response_id", "prompt", "response"]].set_index("response_id")

    t = time.perf_counter()
    ordered = narrow.sort_values(["prompt_id", "score", "sample_index"], ascending=[True, False, True])
    for n in NS:
        first = ordered[ordered["sample_index"] < n]
        best = first.drop_duplicates("prompt_id").copy()
        best["n_available"] = best["prompt_id"].map(first.groupby("prompt_id").size())
        tx = texts(best["response_id"]).loc[best["response_id"]]
        best["messages"] = [list(p) + [{"role": "assistant", "content": r}]
                            for p, r in zip(tx["prompt"], tx["response"])]
        best["id"], best["n"] = best["prompt_id"], n
        _write(best[RS_COLUMNS], out / f"rs_best_of_{n}.parquet")
    times["rs_best_of_n"] = time.perf_counter() - t

    t = time.perf_counter()
    r = ordered.copy()
    g = r.groupby("prompt_id", sort=False)["score"]
    r["rnk"] = r.groupby("prompt_id", sort=False).cumcount() + 1
    r["m"] = g.transform("size")
    r["mu"] = g.transform("mean")
    r["sd"] = g.transform("std", ddof=0)
    r["best"] = g.transform("max")
    r["n_best"] = (r["score"] == r["best"]).groupby(r["prompt_id"], sort=False).transform("sum")
    chosen = r[r["rnk"] == 1].set_index("prompt_id")
    lower = r[r["score"] < r["best"]]
    picks = {
        "worst": lower[lower["rnk"] == lower["m"]],
        "rank_k": lower[lower["rnk"] == K],
    }
    groups = chosen[chosen["m"] > chosen["n_best"]]
    rng = np.random.default_rng(0)
    u = rng.random(len(groups))
    want = (groups["n_best"].to_numpy() + 1 + np.minimum(np.floor(u * (groups["m"] - groups["n_best"]).to_numpy()),
                                                         (groups["m"] - groups["n_best"]).to_numpy() - 1))
    key = pd.DataFrame({"prompt_id": groups.index, "rnk": want.astype("int64")})
    picks["random_lower"] = lower.merge(key, on=["prompt_id", "rnk"])
    dist = lower.assign(d=(lower["score"] - (lower["mu"] - SD_MULT * lower["sd"])).abs())
    picks["mean_minus_2sd"] = dist.sort_values(["prompt_id", "d", "score", "rnk"]).drop_duplicates("prompt_id")
    top = r[r["rnk"] <= CAP]
    bottom = r[r["rnk"] > r["m"] - CAP]
    cand = top.merge(bottom, on="prompt_id", suffixes=("_c", "_r"))
    cand = cand[cand["score_c"] - cand["score_r"] >= MARGIN].assign(diff=lambda x: x["score_c"] - x["score_r"])
    cand = cand.sort_values(["prompt_id", "diff", "rnk_c", "rnk_r"], ascending=[True, False, True, False])
    margin = cand[cand.groupby("prompt_id", sort=False).cumcount() < CAP]
    tx = texts(pd.concat([chosen["response_id"], lower["response_id"]]).unique())
    for s in STRATEGIES:
        if s == "margin":
            pairs = pd.DataFrame({"prompt_id": margin["prompt_id"].to_numpy(),
                                  "chosen_id": margin["response_id_c"].to_numpy(),
                                  "rejected_id": margin["response_id_r"].to_numpy(),
                                  "chosen_score": margin["score_c"].to_numpy(),
                                  "rejected_score": margin["score_r"].to_numpy(),
                                  "chosen_rank": margin["rnk_c"].to_numpy(),
                                  "rejected_rank": margin["rnk_r"].to_numpy(),
                                  "group_size": margin["m_c"].to_numpy()})
            ctx = texts(pd.unique(pairs[["chosen_id", "rejected_id"]].to_numpy().ravel()))
        else:
            p = picks[s]
            c = chosen.loc[p["prompt_id"]]
            pairs = pd.DataFrame({"prompt_id": p["prompt_id"].to_numpy(), "chosen_id": c["response_id"].to_numpy(),
                                  "rejected_id": p["response_id"].to_numpy(), "chosen_score": c["score"].to_numpy(),
                                  "rejected_score": p["score"].to_numpy(), "chosen_rank": c["rnk"].to_numpy(),
                                  "rejected_rank": p["rnk"].to_numpy(), "group_size": p["m"].to_numpy()})
            ctx = tx
        cc, rr = ctx.loc[pairs["chosen_id"]], ctx.loc[pairs["rejected_id"]]
        pairs["prompt"] = cc["prompt"].to_numpy()
        pairs["chosen"] = _assistant(cc["response"])
        pairs["rejected"] = _assistant(rr["response"])
        pairs["strategy"] = s
        pairs["id"] = pairs["prompt_id"] + ":" + pairs["chosen_id"] + ":" + pairs["rejected_id"]
        _write(pairs[DPO_COLUMNS], out / f"dpo_pairs_{s}.parquet")
    times["dpo_pairs"] = time.perf_counter() - t

    t = time.perf_counter()
    w = df.copy()
    gs = w.groupby("prompt_id", sort=False)["score"]
    w["group_size"] = gs.transform("size")
    w["win_rate"] = (gs.rank(method="average") - 1) / (w["group_size"] - 1)
    w = w[w["group_size"] >= 2]
    w["completion"] = _assistant(w["response"])
    w["id"] = w["response_id"]
    _write(w[WIND_COLUMNS], out / "wind_groups.parquet")
    times["wind_groups"] = time.perf_counter() - t

    t = time.perf_counter()
    s = narrow.sort_values(["prompt_id", "score"])
    s["m"] = s.groupby("prompt_id", sort=False)["score"].transform("size")
    s["twice_mid"] = 2 * s.groupby("prompt_id", sort=False)["score"].rank(method="average") - 1
    frames = []
    for m, part in s.groupby("m"):
        m = int(m)
        scores = part["score"].to_numpy().reshape(-1, m)
        mids = part["twice_mid"].to_numpy().reshape(-1, m)
        weights = np.array([[comb(k - 1, n - 1) / comb(m, n) for k in range(1, m + 1)] for n in range(1, m + 1)])
        ids = part["prompt_id"].to_numpy()[::m]
        frames.append(pd.DataFrame({"prompt_id": np.repeat(ids, m), "m": m, "n": np.tile(np.arange(1, m + 1), len(ids)),
                                    "expected_best_score": (scores @ weights.T).ravel(),
                                    "win_rate_vs_best_of_1": (mids @ weights.T).ravel() * 0.5 / m}))
    per_prompt = pd.concat(frames, ignore_index=True)
    _write(per_prompt, out / "bon_curve_per_prompt.parquet")
    overall = per_prompt.groupby("n").agg(mean_best_score=("expected_best_score", "mean"),
                                          win_rate_vs_best_of_1=("win_rate_vs_best_of_1", "mean"),
                                          n_prompts=("prompt_id", "size"),
                                          sd_best_score=("expected_best_score", "std")).reset_index()
    _write(overall, out / "bon_curve.parquet")
    times["bon_curve"] = time.perf_counter() - t
    return times


# ------------------------------------------------------------------------------------------------ polars
def run_polars(src_path: Path, out: Path) -> dict[str, float]:
    """The same tables with polars' lazy API (scan_parquet, window expressions, joins, sink_parquet), the way a
    careful polars user writes them; the best-of-n order-statistic weights go through numpy as on the pandas side.
    Threads: POLARS_MAX_THREADS, set by main before polars is imported."""
    import polars as pl

    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    lf = pl.scan_parquet(src_path)
    narrow = lf.select("prompt_id", "response_id", "sample_index", "score")
    texts = lf.select("response_id", "prompt", "response")

    def assistant(col: str) -> pl.Expr:
        return pl.concat_list(pl.struct(role=pl.lit("assistant"), content=pl.col(col)))

    def sink(frame: pl.LazyFrame, name: str) -> None:
        frame.sink_parquet(out / f"{name}.parquet", compression="zstd")

    t = time.perf_counter()
    for n in NS:
        best = (narrow.filter(pl.col("sample_index") < n).group_by("prompt_id")
                .agg(pl.col("response_id", "sample_index", "score").sort_by(["score", "sample_index"],
                                                                           descending=[True, False]).first(),
                     pl.len().alias("n_available")))
        rs = (best.join(texts, on="response_id")
              .with_columns(id=pl.col("prompt_id"), n=pl.lit(n),
                            messages=pl.concat_list(pl.col("prompt"), assistant("response")))
              .sort("prompt_id").select(RS_COLUMNS))
        sink(rs, f"rs_best_of_{n}")
    times["rs_best_of_n"] = time.perf_counter() - t

    t = time.perf_counter()
    ranked = (narrow.sort(["prompt_id", "score", "sample_index"], descending=[False, True, False])
              .with_columns(rnk=pl.int_range(1, pl.len() + 1).over("prompt_id"), m=pl.len().over("prompt_id"),
                            mu=pl.col("score").mean().over("prompt_id"),
                            sd=pl.col("score").std(ddof=0).over("prompt_id"),
                            best=pl.col("score").max().over("prompt_id"))
              .with_columns(n_best=(pl.col("score") == pl.col("best")).sum().over("prompt_id"))).collect()
    chosen = ranked.filter(pl.col("rnk") == 1)
    lower = ranked.filter(pl.col("score") < pl.col("best"))
    u = pl.col("prompt_id").hash(0).cast(pl.Float64) / 2.0**64
    rand_rank = (pl.col("n_best") + 1 + pl.min_horizontal((u * (pl.col("m") - pl.col("n_best"))).floor().cast(pl.Int64),
                                                          pl.col("m") - pl.col("n_best") - 1))
    picks = {
        "worst": lower.filter(pl.col("rnk") == pl.col("m")),
        "random_lower": lower.filter(pl.col("rnk") == rand_rank),
        "rank_k": lower.filter(pl.col("rnk") == K),
        "mean_minus_2sd": (lower.with_columns(d=(pl.col("score") - (pl.col("mu") - SD_MULT * pl.col("sd"))).abs())
                           .sort(["prompt_id", "d", "score", "rnk"]).unique("prompt_id", keep="first",
                                                                              maintain_order=True)),
    }
    top = ranked.filter(pl.col("rnk") <= CAP).select("prompt_id", "response_id", "score", "rnk", "m")
    bottom = ranked.filter(pl.col("rnk") > pl.col("m") - CAP).select("prompt_id", "response_id", "score", "rnk")
    margin = (top.join(bottom, on="prompt_id", suffix="_r")
              .filter(pl.col("score") - pl.col("score_r") >= MARGIN)
              .with_columns(diff=pl.col("score") - pl.col("score_r"))
              .sort(["prompt_id", "diff", "rnk", "rnk_r"], descending=[False, True, False, True])
              .filter(pl.int_range(pl.len()).over("prompt_id") < CAP))
    c = chosen.select("prompt_id", chosen_id="response_id", chosen_score="score", chosen_rank="rnk")
    pairs_of = {s: p.join(c, on="prompt_id").select("prompt_id", "chosen_id", "chosen_score", "chosen_rank",
                                                     rejected_id="response_id", rejected_score="score",
                                                     rejected_rank="rnk", group_size="m")
                for s, p in picks.items()}
    pairs_of["margin"] = margin.select("prompt_id", chosen_id="response_id", chosen_score="score", chosen_rank="rnk",
                                       rejected_id="response_id_r", rejected_score="score_r", rejected_rank="rnk_r",
                                       group_size="m")
    tx = texts.select("response_id", "prompt", "response")
    for s in STRATEGIES:
        pairs = (pairs_of[s].lazy()
                 .join(tx, left_on="chosen_id", right_on="response_id")
                 .join(tx.select("response_id", rejected_text="response"), left_on="rejected_id",
                       right_on="response_id")
                 .with_columns(chosen=assistant("response"), rejected=assistant("rejected_text"),
                               strategy=pl.lit(s),
                               id=pl.concat_str("prompt_id", "chosen_id", "rejected_id", separator=":"))
                 .sort(["prompt_id", "chosen_rank", "rejected_rank"]).select(DPO_COLUMNS))
        sink(pairs, f"dpo_pairs_{s}")
    times["dpo_pairs"] = time.perf_counter() - t

    t = time.perf_counter()
    wind = (lf.with_columns(group_size=pl.len().over("prompt_id"))
            .filter(pl.col("group_size") >= 2)
            .with_columns(win_rate=(pl.col("score").rank("average").over("prompt_id") - 1) / (pl.col("group_size") - 1),
                          completion=assistant("response"), id=pl.col("response_id"))
            .select(WIND_COLUMNS))
    sink(wind, "wind_groups")
    times["wind_groups"] = time.perf_counter() - t

    t = time.perf_counter()
    s = (narrow.sort(["prompt_id", "score"])
         .with_columns(m=pl.len().over("prompt_id"),
                       twice_mid=2 * pl.col("score").rank("average").over("prompt_id") - 1)
         .select("prompt_id", "score", "m", "twice_mid").collect())
    frames = []
    for (m,), part in s.group_by("m", maintain_order=True):
        m = int(m)
        scores = part["score"].to_numpy().reshape(-1, m)
        mids = part["twice_mid"].to_numpy().reshape(-1, m)
        weights = np.array([[comb(k - 1, n - 1) / comb(m, n) for k in range(1, m + 1)] for n in range(1, m + 1)])
        ids = part["prompt_id"].to_numpy()[::m]
        frames.append(pl.DataFrame({"prompt_id": np.repeat(ids, m), "m": np.full(len(ids) * m, m),
                                    "n": np.tile(np.arange(1, m + 1), len(ids)),
                                    "expected_best_score": (scores @ weights.T).ravel(),
                                    "win_rate_vs_best_of_1": (mids @ weights.T).ravel() * 0.5 / m}))
    per_prompt = pl.concat(frames)
    per_prompt.write_parquet(out / "bon_curve_per_prompt.parquet", compression="zstd")
    overall = (per_prompt.group_by("n").agg(mean_best_score=pl.col("expected_best_score").mean(),
                                            win_rate_vs_best_of_1=pl.col("win_rate_vs_best_of_1").mean(),
                                            n_prompts=pl.len(), sd_best_score=pl.col("expected_best_score").std())
               .sort("n"))
    overall.write_parquet(out / "bon_curve.parquet", compression="zstd")
    times["bon_curve"] = time.perf_counter() - t
    return times


# ------------------------------------------------------------------------------------------------ checks
def compare(a: Path, b: Path) -> dict[str, str]:
    """Both sides made the same tables (random_lower: same validity, different random streams)."""
    import duckdb

    con = duckdb.connect()
    rd = lambda d, t: f"read_parquet('{d / t}.parquet')"  # noqa: E731
    checks = {}
    names = [f"rs_best_of_{n}" for n in NS] + [f"dpo_pairs_{s}" for s in STRATEGIES] + [
        "wind_groups", "bon_curve_per_prompt", "bon_curve"]
    for t in names:  # same columns and rows on both sides: the same job, not a lighter one
        cols = [pq.read_schema(d / f"{t}.parquet").names for d in (a, b)]
        rows = [pq.ParquetFile(d / f"{t}.parquet").metadata.num_rows for d in (a, b)]
        if cols[0] != cols[1] or rows[0] != rows[1]:
            checks[f"{t} shape"] = f"columns {cols[0]} vs {cols[1]}, rows {rows[0]} vs {rows[1]}"
    if not checks:
        checks["columns and row counts"] = f"same in all {len(names)} tables"
    for n in NS:
        q = "SELECT prompt_id, response_id FROM {} EXCEPT ALL SELECT prompt_id, response_id FROM {}"
        diff = con.execute(q.format(rd(a, f"rs_best_of_{n}"), rd(b, f"rs_best_of_{n}"))).fetchall()
        checks[f"rs_best_of_{n}"] = "same" if not diff else f"{len(diff)} differ"
    for s in ["worst", "rank_k", "mean_minus_2sd", "margin"]:
        q = "SELECT chosen_id, rejected_id FROM {} EXCEPT ALL SELECT chosen_id, rejected_id FROM {}"
        d1 = con.execute(q.format(rd(a, f"dpo_pairs_{s}"), rd(b, f"dpo_pairs_{s}"))).fetchall()
        d2 = con.execute(q.format(rd(b, f"dpo_pairs_{s}"), rd(a, f"dpo_pairs_{s}"))).fetchall()
        checks[f"dpo_pairs_{s}"] = "same" if not d1 and not d2 else f"{len(d1)}/{len(d2)} differ"
    bad = con.execute(f"SELECT count(*) FROM {rd(a, 'dpo_pairs_random_lower')} WHERE chosen_score <= rejected_score"
                      ).fetchall()[0][0]
    n_a, n_b = (con.execute(f"SELECT count(*) FROM {rd(d, 'dpo_pairs_random_lower')}").fetchall()[0][0] for d in (a, b))
    checks["dpo_pairs_random_lower"] = "same count, all valid" if (n_a == n_b and not bad) else f"{n_a} vs {n_b}, {bad} bad"
    err = con.execute(f"SELECT max(abs(x.win_rate - y.win_rate)), count(*) FROM {rd(a, 'wind_groups')} x "
                      f"JOIN {rd(b, 'wind_groups')} y USING (response_id)").fetchall()[0]
    checks["wind_groups"] = f"max |diff| {err[0]:.1e} over {err[1]:,} rows"
    err = con.execute(f"SELECT max(abs(x.expected_best_score - y.expected_best_score)), "
                      f"max(abs(x.win_rate_vs_best_of_1 - y.win_rate_vs_best_of_1)), count(*) "
                      f"FROM {rd(a, 'bon_curve_per_prompt')} x JOIN {rd(b, 'bon_curve_per_prompt')} y "
                      f"USING (prompt_id, n)").fetchall()[0]
    checks["bon_curve_per_prompt"] = f"max |diff| {max(err[0], err[1]):.1e} over {err[2]:,} rows"
    return checks


def run_side(side: str, src: Path, out: Path, threads: int) -> tuple[dict[str, float], float]:
    """One side in a fresh process (its own thread settings, its own peak RSS from wait4)."""
    times_path = out.with_suffix(".json")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "POLARS_MAX_THREADS": str(threads)}
    proc = subprocess.Popen([sys.executable, __file__, "--side", side, str(src), str(out), str(threads),
                             str(times_path)], env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    if status:
        raise SystemExit(f"{side} side failed ({status})")
    return json.loads(times_path.read_text()), usage.ru_maxrss / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=100_000)
    ap.add_argument("--m", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-pandas", action="store_true")
    ap.add_argument("--skip-polars", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--side", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        side, src, out, threads = args.side[0], Path(args.side[1]), Path(args.side[2]), int(args.side[3])
        fn = {"duckdb": lambda: run_duckdb(src, out, threads), "pandas": lambda: run_pandas(src, out),
              "polars": lambda: run_polars(src, out)}[side]
        Path(args.side[4]).write_text(json.dumps(fn()))
        return
    sides = ["duckdb"] + ([] if args.skip_pandas else ["pandas"]) + ([] if args.skip_polars else ["polars"])
    times: dict[str, dict[str, float]] = {}
    peaks: dict[str, float] = {}
    checks: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory(prefix="xwin-bench-") as tmp:
        root = Path(tmp)
        src = root / "xwin_set.parquet"
        t = time.perf_counter()
        rows = synthetic_set(src, args.prompts, args.m)
        print(f"synthetic set: {args.prompts:,} prompts x {args.m} = {rows:,} rows "
              f"({src.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t:.1f}s")
        for side in sides:
            times[side], peaks[side] = run_side(side, src, root / side, args.threads)
        for side in sides[1:]:
            checks[side] = compare(root / "duckdb", root / side)
    duck = times["duckdb"]
    total = {side: sum(v for k, v in times[side].items() if k != "read") for side in sides}
    header = "".join(f"{side + ' s':>10}" for side in sides) + "".join(f"{side + '/duck':>13}" for side in sides[1:])
    print(f"\n{'table family':<16}{header}")
    for name in duck:
        line = "".join(f"{times[side].get(name, float('nan')):>10.2f}" for side in sides)
        line += "".join(f"{times[side][name] / duck[name]:>13.2f}" for side in sides[1:])
        print(f"{name:<16}{line}")
    if "pandas" in times:
        print(f"{'pandas read':<16}{'':>10}{times['pandas']['read']:>10.2f}")
    line = "".join(f"{total[side]:>10.2f}" for side in sides) + "".join(f"{total[side] / total['duckdb']:>13.2f}"
                                                                          for side in sides[1:])
    print(f"{'total':<16}{line}")
    print(f"{'peak RSS GB':<16}" + "".join(f"{peaks[side]:>10.2f}" for side in sides))
    for side, found in checks.items():
        print(f"\noutputs compared, duckdb vs {side}:")
        for k, v in found.items():
            print(f"  {k:<24} {v}")
    print(f"\ntargets: duckdb total < 60 s: {'met' if total['duckdb'] < 60 else 'MISSED'} ({total['duckdb']:.1f}s on "
          f"{args.threads} threads)"
          + (f"; >= 10x pandas: {'met' if total['pandas'] >= 10 * total['duckdb'] else 'MISSED'} "
             f"({total['pandas'] / total['duckdb']:.1f}x)" if "pandas" in total else "")
          + (f"; every family at least as fast as polars: "
             f"{'met' if all(times['polars'][k] >= duck[k] for k in duck) else 'MISSED'}" if "polars" in total else ""))
    if args.json:
        args.json.write_text(json.dumps({"prompts": args.prompts, "m": args.m, "threads": args.threads,
                                         "times": times, "peak_rss_gb": peaks, "checks": checks}, indent=2))


if __name__ == "__main__":
    main()
