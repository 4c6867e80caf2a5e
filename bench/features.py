"""Benchmark: the features stage against lifetimes' summary_data_from_transaction_data.

For each size, synthetic transactions (pipelines.generate.write_synthetic, cleaned by the
ingest stage; both cached in the work directory) are summarised three ways, each in its own
subprocess so that its peak memory (ru_maxrss) is its own:

- ``stage``: the whole features stage, `pipelines.features.run`: features at the three cutoffs
  t0, t1, t2, labels of t1 and t2, every row group validated and written, metrics (the MLflow
  store is created beforehand, not timed);
- ``as_of``: the features at the as_of cutoff only, validated and written;
- ``lifetimes``: read customer_id, timestamp, amount into pandas, then
  `summary_data_from_transaction_data(freq='D', freq_multiplier=7, observation_period_end=as_of,
  monetary_value_col='amount')`, which computes frequency, recency, T, monetary_value at as_of.

Times exclude interpreter start-up and imports. The report also checks that frequency, recency,
T and monetary_value agree with lifetimes for the customers without returns (lifetimes has no
notion of returns). Prints a table and writes bench/out/features.json.

    python -m bench.features [--sizes 1e6,1e7] [--seed 42] [--threads N] [--memory-limit 768MB]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WORKDIR = ROOT / "bench" / "out" / "features"
DEFAULT_OUT = ROOT / "bench" / "out" / "features.json"
KINDS = ("stage", "as_of", "lifetimes")
DAYS_PER_WEEK = 7


# --------------------------------------------------------------------------- child processes


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _load_params(workdir: Path):
    from pipelines.config import load_params

    return load_params(workdir / "params.yaml")


def _catalog(workdir: Path):
    from pipelines.catalog import Catalog

    return Catalog(workdir, workdir / "params.yaml")


def prepare(workdir: Path, rows: int, seed: int) -> dict:
    """Generate the raw file and ingest it into data/interim/transactions.parquet (cached)."""
    from pipelines.generate import write_synthetic
    from pipelines.ingest import ingest

    stamp = workdir / "prepared.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("request") == [rows, seed]:
        return json.loads(stamp.read_text())
    summary = write_synthetic(workdir / "raw.parquet", rows, seed)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["data"].update(summary.data_params(), path="raw.parquet")
    (workdir / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    paths = _catalog(workdir)
    metrics = ingest(_load_params(workdir).data, paths)
    info = {"request": [rows, seed], "raw_rows": summary.rows, "customers": summary.customers,
            "rows": metrics["rows_accepted"], "transactions_mb": paths.TRANSACTIONS.stat().st_size / 2**20}  # fmt: skip
    stamp.write_text(json.dumps(info))
    return info


def run_stage(workdir: Path) -> dict:
    from pipelines import features, tracking

    params = _load_params(workdir)
    tracking.configure(params, workdir)  # creates the MLflow store: set-up, not feature work
    started = time.perf_counter()
    features.run(params, _catalog(workdir))
    return {"seconds": time.perf_counter() - started}


def run_as_of(workdir: Path) -> dict:
    from features.customer import customer_features, features_schema
    from pipelines import engines, features, files

    params, paths = _load_params(workdir), _catalog(workdir)
    as_of = dt_date(files.read_json(paths.metrics_file("features"))["as_of"])
    started = time.perf_counter()
    with engines.connect(params.features, workdir) as con:
        tx, _, spec, _ = features.inputs(con, params, paths)
        expr = customer_features(tx, as_of, spec)
        customers = engines.write_validated(con, expr, features_schema(spec.windows_days), workdir / "as_of_features.parquet",
                                            features.ROW_GROUP_ROWS)  # fmt: skip
    return {"seconds": time.perf_counter() - started, "customers": customers}


def lifetimes_summary(transactions: Path, as_of: str, freq_multiplier: int = DAYS_PER_WEEK):
    """Read customer_id, timestamp, amount of ``transactions`` into pandas and run lifetimes'
    summary_data_from_transaction_data at ``as_of`` (freq 'D' divided by ``freq_multiplier``:
    7 gives weeks, 1 days). Returns (summary indexed by customer_id, load seconds, summary seconds)."""
    import warnings

    import pandas as pd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lifetimes imports pkg_resources and sets a pandas option
        from lifetimes.utils import summary_data_from_transaction_data

    started = time.perf_counter()
    tx = pd.read_parquet(transactions, columns=["customer_id", "timestamp", "amount"])
    loaded = time.perf_counter()
    summary = summary_data_from_transaction_data(
        tx, "customer_id", "timestamp", monetary_value_col="amount", freq="D",
        freq_multiplier=freq_multiplier, observation_period_end=as_of,
    )  # fmt: skip
    return summary, loaded - started, time.perf_counter() - loaded


def run_lifetimes(workdir: Path) -> dict:
    from pipelines import files

    paths = _catalog(workdir)
    as_of = files.read_json(paths.metrics_file("features"))["as_of"]
    summary, load_seconds, summary_seconds = lifetimes_summary(paths.TRANSACTIONS, as_of)
    summary.reset_index().to_parquet(workdir / "lifetimes_summary.parquet", index=False)
    return {"seconds": load_seconds + summary_seconds, "load_seconds": load_seconds, "summary_seconds": summary_seconds,
            "customers": len(summary)}  # fmt: skip


def dt_date(text: str):
    import datetime as dt

    return dt.date.fromisoformat(text)


def child(kind: str, workdir: Path, rows: int, seed: int) -> None:
    """Run one measurement in this process and print its result as the last line of stdout."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    runners = {"prepare": lambda: prepare(workdir, rows, seed), "stage": lambda: run_stage(workdir),
               "as_of": lambda: run_as_of(workdir), "lifetimes": lambda: run_lifetimes(workdir)}
    result = runners[kind]()
    result["peak_rss_mb"] = _peak_rss_mb()
    print(json.dumps(result))


# --------------------------------------------------------------------------- parent


def _spawn(kind: str, workdir: Path, rows: int, seed: int, log_file: Path) -> dict:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}", "PYTHONPATH": str(ROOT)}
    env.pop("CVP_PIPELINE_RUN_ID", None)
    command = [sys.executable, "-m", "bench.features", "--child", kind, "--workdir", str(workdir),
               "--sizes", str(rows), "--seed", str(seed)]  # fmt: skip
    started = time.perf_counter()
    with open(log_file, "a") as log:
        proc = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"bench.features: the {kind} run failed (exit {proc.returncode}); see {log_file}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_seconds"] = time.perf_counter() - started
    return result


def _set_engine(workdir: Path, threads: int | None, memory_limit: str | None) -> None:
    path = workdir / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["features"].update(threads=threads, memory_limit=memory_limit)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def agreement(workdir: Path) -> dict:
    """Largest relative difference to lifetimes over customers without return rows, per column."""
    import ibis

    con = ibis.duckdb.connect()
    tx = con.read_parquet(workdir / "data" / "interim" / "transactions.parquet")
    ours = con.read_parquet(workdir / "data" / "features" / "features_t0.parquet")
    ref = con.read_parquet(workdir / "lifetimes_summary.parquet")
    with_returns = tx.filter(tx.amount < 0).select("customer_id").distinct()
    clean = ours.anti_join(with_returns, "customer_id")
    joined = clean.join(ref, "customer_id")
    out = {"customers_compared": joined.count()}
    for column in ("frequency", "recency", "T", "monetary_value"):
        diff = (joined[column].cast("float64") - joined[f"{column}_right"]).abs()
        out[f"max_rel_diff_{column}"] = (diff / ibis.greatest(joined[f"{column}_right"].abs(), 1e-12)).max()
    result = {k: con.execute(v) for k, v in out.items()}
    con.disconnect()
    return {k: (float(v) if "diff" in k else int(v)) for k, v in result.items()}


def bench_size(rows: int, args: argparse.Namespace) -> dict:
    workdir = args.workdir / f"rows_{rows}"
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "dvc.yaml").write_text("stages: {}\n")  # the project root of the runs is the work dir
    log_file = workdir / "bench.log"
    prepared = _spawn("prepare", workdir, rows, args.seed, log_file)
    _set_engine(workdir, args.threads, args.memory_limit)
    result = {"rows": prepared["rows"], "customers": prepared["customers"], "transactions_mb": prepared["transactions_mb"]}
    for kind in KINDS:  # stage first: it writes metrics/features.json (as_of) the others read
        print(f"  rows={rows:,}: running {kind} ...", flush=True)
        result[kind] = _spawn(kind, workdir, rows, args.seed, log_file)
    result["speedup_stage"] = result["lifetimes"]["seconds"] / result["stage"]["seconds"]
    result["speedup_as_of"] = result["lifetimes"]["seconds"] / result["as_of"]["seconds"]
    result["agreement"] = agreement(workdir)
    return result


def print_table(results: dict) -> None:
    print(f"{'rows':>12} {'customers':>10} | {'stage s':>8} {'MB':>6} | {'as_of s':>8} {'MB':>6} | "
          f"{'lifetimes s':>11} {'MB':>6} | {'x stage':>7} {'x as_of':>7}")  # fmt: skip
    for r in results.values():
        s, a, lt = r["stage"], r["as_of"], r["lifetimes"]
        print(f"{r['rows']:>12,} {r['customers']:>10,} | {s['seconds']:>8.1f} {s['peak_rss_mb']:>6.0f} | "
              f"{a['seconds']:>8.1f} {a['peak_rss_mb']:>6.0f} | {lt['seconds']:>11.1f} {lt['peak_rss_mb']:>6.0f} | "
              f"{r['speedup_stage']:>7.1f} {r['speedup_as_of']:>7.1f}")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1e6", help="comma-separated row counts, e.g. 1e6,1e7")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=None, help="DuckDB threads (default: all cores)")
    parser.add_argument("--memory-limit", default="768MB", help="DuckDB memory limit (features.memory_limit)")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="cache of generated data and runs")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--child", choices=("prepare", *KINDS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.workdir = args.workdir.resolve()
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    if args.child:
        child(args.child, args.workdir, sizes[0], args.seed)
        return

    from pipelines.files import write_json

    settings = {"seed": args.seed, "threads": args.threads, "memory_limit": args.memory_limit, "cpus": os.cpu_count()}
    results: dict[str, dict] = {}
    for rows in sizes:
        print(f"benchmarking {rows:,} rows (work dir {args.workdir})", flush=True)
        results[str(rows)] = bench_size(rows, args)
        write_json({"settings": settings, "sizes": results}, args.out)  # partial results survive
    print_table(results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
