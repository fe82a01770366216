"""Derived tables of a scored set at scale: DuckDB (the SQL the ops run) next to a pandas implementation, same run.

    python benchmarks/set_products.py                      # 100K prompts x 64 responses, 2 threads
    python benchmarks/set_products.py --prompts 20000 --threads 2 --json out.json

A synthetic Xwin-Set (scores rounded to 2 decimals, so ties occur) is written to Parquet first (not timed). Each
side then reads that file and writes every derived table to Parquet (zstd): rs_best_of_{1..64}, dpo_pairs_{worst,
random_lower, rank_k, mean_minus_2sd, margin (capped at 8 per prompt)}, wind_groups, bon_curve(+_per_prompt).
The DuckDB side runs the ops' own SQL (xwin_data.ops.sets.products / set_curves) the way `ctx.write_sql` does
(COPY ... TO parquet, with the same options); the pandas side is what a careful pandas user would write
(vectorised groupby / sort / merge, numpy for the order-statistic dot products, `df.to_parquet`). Both sides write
the same columns (checked), and the outputs are compared before the timings are printed.
Target: DuckDB >= 10x pandas and < 60 s in all on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=100_000)
    ap.add_argument("--m", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-pandas", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    with tempfile.TemporaryDirectory(prefix="xwin-bench-") as tmp:
        root = Path(tmp)
        src = root / "xwin_set.parquet"
        t = time.perf_counter()
        rows = synthetic_set(src, args.prompts, args.m)
        print(f"synthetic set: {args.prompts:,} prompts x {args.m} = {rows:,} rows "
              f"({src.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t:.1f}s")
        duck = run_duckdb(src, root / "duckdb", args.threads)
        pand = {} if args.skip_pandas else run_pandas(src, root / "pandas")
        checks = {} if args.skip_pandas else compare(root / "duckdb", root / "pandas")
    total_duck = sum(duck.values())
    total_pandas = sum(pand.values())
    print(f"\n{'table family':<16}{'duckdb s':>10}{'pandas s':>10}{'ratio':>8}")
    for name in duck:
        p = pand.get(name)
        print(f"{name:<16}{duck[name]:>10.2f}{(p or float('nan')):>10.2f}{(p / duck[name] if p else float('nan')):>8.1f}")
    if pand:
        print(f"{'pandas read':<16}{'':>10}{pand['read']:>10.2f}")
        print(f"{'total':<16}{total_duck:>10.2f}{total_pandas:>10.2f}{total_pandas / total_duck:>8.1f}")
        print("\noutputs compared:")
        for k, v in checks.items():
            print(f"  {k:<24} {v}")
    else:
        print(f"{'total':<16}{total_duck:>10.2f}")
    print(f"\ntargets: duckdb total < 60 s: {'met' if total_duck < 60 else 'MISSED'} ({total_duck:.1f}s on "
          f"{args.threads} threads)" + (f"; >= 10x pandas: {'met' if total_pandas >= 10 * total_duck else 'MISSED'} "
                                        f"({total_pandas / total_duck:.1f}x)" if pand else ""))
    if args.json:
        args.json.write_text(json.dumps({"prompts": args.prompts, "m": args.m, "threads": args.threads,
                                         "duckdb": duck, "pandas": pand, "checks": checks}, indent=2))


if __name__ == "__main__":
    main()
