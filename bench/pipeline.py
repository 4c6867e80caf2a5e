"""Benchmark: the whole pipeline (`dvc repro` on DuckDB) against the plain lifetimes route, and the
features stage on Spark, at 1M and 10M transactions.

For each size, seeded synthetic transactions (pipelines.generate.write_synthetic, ten rows per
customer by default: 1M rows ~ 100k customers, 10M rows ~ 1M customers) are generated once and
cached under bench/out/data/ (not timed). Then, each route in its own process tree:

- ``pipeline``: a fresh copy of the project (dvc.yaml, params.yaml, code) in the work directory,
  its own MLflow store, params.yaml ``data`` pointing at the generated file (as_of = the last day
  of the generated period, horizon and time unit as in params.yaml), `dvc init --no-scm` (not
  timed), then `dvc repro` as `make run` runs it (``cvp warm dvc repro``: the stages in forks of
  one warm process; ``--cold``: a plain `dvc repro`) timed: total, and per stage from the moment DVC announces each stage
  (so a stage's time includes DVC's hashing and caching of its outputs). Each `cvp` stage
  command also reports where its time went (pipelines.profile, through CVP_PROFILE): start-up,
  imports, read, compute, write, MLflow; ``dvc`` is the rest of the stage's wall time. The BTYD
  part is what `dvc repro clv` runs: DVC's start-up, fingerprint, ingest, features and clv;
- ``lifetimes``: the plain lifetimes route on the transactions the pipeline's ingest accepted:
  `summary_data_from_transaction_data` (days), BetaGeoFitter fitted on every customer,
  GammaGammaFitter on the repeat customers (with positive mean spend), `customer_lifetime_value`
  (3 periods of 30 days, 10% a year) for every customer (bench.features / bench.clv code);
- ``scoring``: `cvp score` after the pipeline: the registered scores model (the whole chain)
  applied to features_t0, written to Parquet (scheduled scoring without retraining);
- ``cdnow`` (once, before the sizes; ``--no-cdnow`` skips it): what `make run` runs on the bundled
  CDNOW data (check-params, dvc repro, the summary) in a fresh project copy, from scratch and then
  with nothing changed (the environment already installed);
- ``spark_features``: `cvp features` with ``features.engine: pyspark`` (``local[2]``) on the
  same ingested transactions, the JVM included; its files are compared with DuckDB's. Skipped,
  with the reason, when Java or pyspark is missing or with ``--no-spark``.

Wall seconds are those of the whole command (interpreter start-up and imports included). Peak
memory is the larger of (1) the peak of the summed RSS of the command's process tree, polled
every 0.1 s with psutil (the warm server and its forks both count the pages they share, so this
is an upper bound), and (2) the largest max RSS of any single process of the tree that its
parent waited for (os.wait4 rusage). GB means 10^9 bytes. Ratios are against ``lifetimes``.
Results go to bench/results.json (merged by size with an existing file, so a later
``--features-only`` run adds to it), with the machine, versions, the targets and pass/fail.

The out-of-core route, ``--features-only``: `dvc repro ingest`, then `dvc repro -s features`,
each measured on its own, with ``data.ingest_memory_limit`` and ``features.memory_limit`` set to
``--memory-limit`` (default 6GB there) and DuckDB's spill directory watched:

    python -m bench.pipeline [--sizes 1e6,1e7] [--seed 42] [--workdir DIR] [--out bench/results.json]
    python -m bench.pipeline --sizes 1e8 --features-only [--memory-limit 6GB]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT / "bench" / "out" / "data"
DEFAULT_WORKDIR = Path(tempfile.gettempdir()) / "cvp-bench"
DEFAULT_OUT = ROOT / "bench" / "results.json"
PROJECT_FILES = ("dvc.yaml", "params.yaml", "pyproject.toml", ".dvcignore")
PROJECT_DIRS = ("features", "models", "pipelines", "notebooks")  # the stages' code (data/interim/code/<stage>.json) and notebook
BIN = Path(sys.executable).parent
RESULT_PREFIX = "BENCH-RESULT "
STAGE_LINE = re.compile(r"^Running stage '([^']+)'")
GB = 10**9
POLL_SECONDS = 0.1
SPILL_POLL_SECONDS = 1.0
VERSIONS = ("duckdb", "ibis-framework", "pyarrow", "pandas", "numpy", "scipy", "lifetimes", "lightgbm",
            "mlflow", "dvc", "pyspark", "psutil")  # fmt: skip

# Targets (GB = 10^9 bytes, the stricter reading). `size`/`route`/`measure` say where the measure is
# (no `size`: a route of its own, e.g. the CDNOW runs); `limit` is an upper bound.
TARGETS = (
    {"id": "e2e_10m_seconds", "size": "10000000", "route": "pipeline", "measure": "seconds", "limit": 70.0,
     "what": "whole dvc repro, 10M transactions / 1M customers: wall time <= 70 s"},
    {"id": "e2e_10m_peak", "size": "10000000", "route": "pipeline", "measure": "peak_bytes", "limit": 4 * GB,
     "what": "whole dvc repro, 10M transactions / 1M customers: peak memory <= 4 GB"},
    {"id": "e2e_1m_seconds", "size": "1000000", "route": "pipeline", "measure": "seconds", "limit": 15.0,
     "what": "whole dvc repro, 1M transactions / 100k customers: wall time <= 15 s"},
    {"id": "btyd_10m_ratio", "size": "10000000", "route": "pipeline", "measure": "btyd_ratio_vs_lifetimes", "limit": 0.5,
     "what": "BTYD part (fingerprint, ingest, features, clv) vs the plain lifetimes route, 10M: >= 2x faster"},
    {"id": "scoring_10m_seconds", "size": "10000000", "route": "scoring", "measure": "seconds", "limit": 25.0,
     "what": "cvp score with the registered scores model (features_t0 -> export rows), 10M: <= 25 s"},
    {"id": "cdnow_from_scratch", "route": "cdnow", "measure": "from_scratch_seconds", "limit": 15.0,
     "what": "CDNOW: make run after install, from scratch: <= 15 s"},
    {"id": "cdnow_no_change", "route": "cdnow", "measure": "no_change_seconds", "limit": 3.0,
     "what": "CDNOW: make run with nothing changed: <= 3 s"},
    {"id": "features_100m_out_of_core", "size": "100000000", "route": "features_only", "measure": "features_peak_bytes",
     "limit": 8 * GB, "what": "features stage on DuckDB, 100M transactions: completes out of core, peak memory under 8 GB"},
)  # fmt: skip
#: The stages of `dvc repro clv`: the BTYD part of the pipeline.
BTYD_STAGES = ("fingerprint", "ingest", "features", "clv")
PROFILE_FILE = "profile.jsonl"  # each stage command's breakdown (pipelines.profile, CVP_PROFILE)


# --------------------------------------------------------------------------- measuring a command


@dataclass
class Measured:
    """One command's wall time, memory and the time each announced stage started."""

    seconds: float
    returncode: int
    peak_tree_bytes: int  # peak of the summed RSS of the process tree (polled)
    max_process_bytes: int  # largest max RSS of one process the command waited for (rusage)
    peak_spill_bytes: int  # peak size of the watched directory (TMPDIR: DuckDB's spill files; 0 if none)
    stage_starts: list[tuple[str, float]] = field(default_factory=list)  # (stage, seconds from start)
    samples: list[tuple[float, int]] = field(default_factory=list)  # (seconds from start, tree RSS)
    result: dict | None = None  # the child's BENCH-RESULT line, if any

    @property
    def peak_bytes(self) -> int:
        return max(self.peak_tree_bytes, self.max_process_bytes)

    def stages(self) -> dict[str, dict]:
        """Seconds and polled peak tree RSS from each stage's announcement to the next (the last
        to the end of the command)."""
        bounds = [*self.stage_starts, ("", self.seconds)]
        out = {}
        for (name, start), (_, end) in zip(bounds, bounds[1:]):
            peak = max((rss for t, rss in self.samples if start <= t <= end), default=0)
            out[name] = {"seconds": end - start, "peak_tree_bytes": peak}
        return out


def _tree_rss(root) -> int:
    import psutil

    total = 0
    for proc in (root, *root.children(recursive=True)):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            total += proc.memory_info().rss
    return total


def _dir_bytes(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512  # allocated, not apparent, size
    return total


def measure(command: list[str], cwd: Path, env: dict[str, str], log_file: Path, spill_dir: Path | None = None) -> Measured:
    """Run ``command``; stdout and stderr go to ``log_file``, scanned for DVC's stage lines and the
    child's result line. The process tree is polled for RSS (and ``spill_dir`` for its size)."""
    samples: list[tuple[float, int]] = []
    spill_peak = [0]
    stop = threading.Event()
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def poll_memory() -> None:
        try:
            import psutil

            root = psutil.Process(proc.pid)
        except Exception:  # psutil missing or the process already gone: rusage only
            return
        while not stop.is_set():
            try:
                samples.append((time.perf_counter() - started, _tree_rss(root)))
            except Exception:  # the root exited between two calls
                break
            stop.wait(POLL_SECONDS)

    def poll_spill() -> None:
        while spill_dir is not None and not stop.is_set():
            spill_peak[0] = max(spill_peak[0], _dir_bytes(spill_dir))
            stop.wait(SPILL_POLL_SECONDS)

    pollers = [threading.Thread(target=poll_memory, daemon=True), threading.Thread(target=poll_spill, daemon=True)]
    for thread in pollers:
        thread.start()
    stage_starts: list[tuple[str, float]] = []
    result = None
    with open(log_file, "ab") as log, proc.stdout:
        log.write(f"\n$ {' '.join(command)}   (cwd {cwd})\n".encode())
        for raw in proc.stdout:
            now = time.perf_counter() - started
            log.write(raw)
            line = raw.decode(errors="replace").rstrip("\n")
            if match := STAGE_LINE.match(line):
                stage_starts.append((match.group(1), now))
            elif line.startswith(RESULT_PREFIX):
                result = json.loads(line[len(RESULT_PREFIX) :])
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    stop.set()
    for thread in pollers:
        thread.join()
    return Measured(
        seconds=seconds, returncode=proc.returncode, peak_tree_bytes=max((rss for _, rss in samples), default=0),
        max_process_bytes=usage.ru_maxrss * 1024, peak_spill_bytes=spill_peak[0],  # Linux: KiB
        stage_starts=stage_starts, samples=samples, result=result,
    )  # fmt: skip


def route_entry(m: Measured, command: list[str], log_file: Path) -> dict:
    entry = {
        "command": " ".join(Path(command[0]).name if i == 0 else c for i, c in enumerate(command)),
        "ok": m.returncode == 0, "seconds": m.seconds, "peak_bytes": m.peak_bytes,
        "peak_tree_bytes": m.peak_tree_bytes, "max_process_bytes": m.max_process_bytes, "log": str(log_file),
    }  # fmt: skip
    if m.returncode != 0:
        entry["error"] = f"exit code {m.returncode}; see {log_file}"
    if m.peak_spill_bytes:
        entry["peak_spill_bytes"] = m.peak_spill_bytes
    return entry


# --------------------------------------------------------------------------- data and project copies


def ensure_data(rows: int, customers: int, seed: int) -> dict:
    """The generated file for (rows, customers, seed), generated once; returns its description."""
    from pipelines.generate import write_synthetic

    DATA_DIR.mkdir(parents=True, exist_ok=True)
    path = DATA_DIR / f"synthetic_{rows}_c{customers}_s{seed}.parquet"
    stamp = path.with_name(path.name + ".bench.json")
    if path.exists() and stamp.exists():
        return json.loads(stamp.read_text())
    print(f"  generating {rows:,} rows for {customers:,} customers -> {path} (not timed)", flush=True)
    summary = write_synthetic(path, rows, seed, customers)
    start = summary.params.start
    info = {
        "path": str(path), "rows": summary.rows, "customers": summary.customers, "seed": seed,
        "generation_seconds": summary.seconds, "file_bytes": path.stat().st_size,
        "period": [start.isoformat(), (summary.params.end - dt.timedelta(days=1)).isoformat()],
        "data": {**summary.data_params(), "path": str(path)},
    }  # fmt: skip
    stamp.write_text(json.dumps(info, indent=2))
    return info


def make_project(dest: Path, data: dict, memory_limit: str | None) -> Path:
    """A fresh copy of the project whose params read ``data``; returns its params file."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in PROJECT_FILES:
        shutil.copy2(ROOT / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "artifacts", "champion")
    for name in PROJECT_DIRS:
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    # as_of: the last day of the generated period (a customer acquired on it has T = 0); t_2 is
    # two horizons earlier, well inside the two-year period.
    params["data"].update(data["data"], as_of=data["period"][1])
    if memory_limit:
        params["data"]["ingest_memory_limit"] = memory_limit
        params["features"]["memory_limit"] = memory_limit
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (dest / "tracking").mkdir()
    return dest / "params.yaml"


def project_env(project: Path, tmpdir: Path) -> dict[str, str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'tracking' / 'mlflow.db'}",
           "TMPDIR": str(tmpdir)}  # fmt: skip
    for name in ("MLFLOW_REGISTRY_URI", "CVP_PIPELINE_RUN_ID", "CVP_SPARK_MASTER"):
        env.pop(name, None)
    tmpdir.mkdir(parents=True, exist_ok=True)
    return env


def run_checked(command: list[str], cwd: Path, env: dict[str, str]) -> None:
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"bench.pipeline: {' '.join(command)} failed in {cwd}:\n{proc.stderr[-2000:]}")


# --------------------------------------------------------------------------- routes


def repro_command(cold: bool = False) -> list[str]:
    """`dvc repro` as `make run` runs it, in a warm stage server (pipelines/warm.py), or ``cold``:
    a plain `dvc repro`, each stage a process of its own."""
    dvc = [str(BIN / "dvc"), "repro"]
    return dvc if cold else [str(BIN / "cvp"), "warm", *dvc]


def bench_pipeline(project: Path, env: dict[str, str], log_file: Path, cold: bool = False) -> dict:
    """(a) `dvc repro` of the whole pipeline in the project copy (:func:`repro_command`)."""
    run_checked([str(BIN / "dvc"), "init", "--no-scm", "-q"], project, env)
    command = repro_command(cold)
    profile = log_file.with_name(PROFILE_FILE)
    profile.unlink(missing_ok=True)
    m = measure(command, project, {**env, "CVP_PROFILE": str(profile)}, log_file, spill_dir=Path(env["TMPDIR"]))
    entry = route_entry(m, command, log_file)
    stages = m.stages()
    entry["dvc_startup_seconds"] = m.stage_starts[0][1] if m.stage_starts else None
    entry["stages"] = {name: s["seconds"] for name, s in stages.items()}
    entry["stage_peak_tree_bytes"] = {name: s["peak_tree_bytes"] for name, s in stages.items()}
    entry["stage_breakdown"] = stage_breakdown(entry["stages"], profile)
    btyd = [entry["stages"].get(name) for name in BTYD_STAGES]
    if all(b is not None for b in btyd):
        entry["btyd_seconds"] = (entry["dvc_startup_seconds"] or 0.0) + sum(btyd)
    if m.returncode == 0:
        ingest = json.loads((project / "metrics" / "ingest.json").read_text())
        entry["rows_accepted"], entry["customers"] = ingest["rows_accepted"], ingest["n_customers"]
    return entry


def read_profile(profile: Path) -> dict[str, dict]:
    """{command name: its breakdown line} from a CVP_PROFILE file (the last line of each command)."""
    if not profile.exists():
        return {}
    lines = [json.loads(line) for line in profile.read_text().splitlines() if line.strip()]
    return {line["command"].split()[-1]: line for line in lines}


def stage_breakdown(stage_seconds: dict[str, float], profile: Path) -> dict[str, dict[str, float]]:
    """Per stage: the command's own breakdown (start-up, imports, read, compute, write, mlflow;
    pipelines.profile) plus ``dvc``: the rest of the stage's wall time as DVC announced it (its
    hashing, caching and lock-file work, and the command's process exit)."""
    lines = read_profile(profile)
    out = {}
    for stage, seconds in stage_seconds.items():
        line = lines.get(stage)
        if line is None:
            out[stage] = {"total": round(seconds, 3)}
            continue
        out[stage] = {**line["seconds"], "dvc": round(max(0.0, seconds - line["total_s"]), 3), "total": round(seconds, 3)}
    return out


def bench_scoring(project: Path, env: dict[str, str], log_file: Path) -> dict:
    """`cvp score`: the registered scores model (the whole chain) applied to features_t0."""
    out = log_file.with_name("scoring.parquet")
    command = [str(BIN / "cvp"), "score", "--out", str(out)]
    m = measure(command, project, env, log_file)
    entry = route_entry(m, command, log_file)
    if m.returncode == 0:
        import pyarrow.parquet as pq

        entry["rows"] = pq.read_metadata(out).num_rows
    return entry


def bench_cdnow(workdir: Path, log_file: Path, cold: bool = False) -> dict:
    """CDNOW (the default params): what `make run` runs (check-params, dvc repro, the summary)
    in a fresh project copy, timed from scratch and then with nothing changed."""
    project = workdir / "project"
    if project.exists():
        shutil.rmtree(project)
    project.mkdir(parents=True)
    for name in PROJECT_FILES:
        shutil.copy2(ROOT / name, project / name)
    ignore = shutil.ignore_patterns("__pycache__", "artifacts", "champion")
    for name in PROJECT_DIRS:
        shutil.copytree(ROOT / name, project / name, ignore=ignore)
    env = project_env(project, workdir / "tmp")
    run_checked([str(BIN / "dvc"), "init", "--no-scm", "-q"], project, env)
    repro = " ".join(repro_command(cold))
    script = f"{BIN / 'cvp'} check-params && {repro} && {BIN / 'python'} -m pipelines.summary"
    entry: dict = {"command": f"cvp check-params && {'' if cold else 'cvp warm '}dvc repro && python -m pipelines.summary",
                   "ok": True}  # fmt: skip
    profile = log_file.with_name(PROFILE_FILE)
    profile.unlink(missing_ok=True)
    for key in ("from_scratch_seconds", "no_change_seconds"):
        m = measure(["bash", "-c", script], project, {**env, "CVP_PROFILE": str(profile)}, log_file)
        entry[key] = m.seconds
        if key == "from_scratch_seconds":
            entry["stages"] = {name: s["seconds"] for name, s in m.stages().items()}
            entry["stage_breakdown"] = stage_breakdown(entry["stages"], profile)
        entry["peak_bytes"] = max(entry.get("peak_bytes", 0), m.peak_bytes)
        if m.returncode != 0:
            entry.update(ok=False, error=f"{key}: exit code {m.returncode}; see {log_file}")
            break
    return entry


def bench_features_only(project: Path, env: dict[str, str], log_file: Path) -> dict:
    """`dvc repro ingest`, then `dvc repro -s features`, each measured on its own."""
    run_checked([str(BIN / "dvc"), "init", "--no-scm", "-q"], project, env)
    entry: dict = {"ok": True, "stages": {}, "stage_peak_bytes": {}, "stage_peak_spill_bytes": {}, "stage_commands": {}}
    for stage, command in (("ingest", ["dvc", "repro", "ingest"]), ("features", ["dvc", "repro", "-s", "features"])):
        print(f"    {' '.join(command)} ...", flush=True)
        m = measure([str(BIN / command[0]), *command[1:]], project, env, log_file, spill_dir=Path(env["TMPDIR"]))
        part = route_entry(m, command, log_file)
        entry["stage_commands"][stage] = part
        entry["stages"][stage] = m.seconds
        entry["stage_peak_bytes"][stage] = m.peak_bytes
        entry["stage_peak_spill_bytes"][stage] = m.peak_spill_bytes
        if not part["ok"]:
            entry.update(ok=False, error=f"{stage}: {part['error']}")
            break
    entry["seconds"] = sum(entry["stages"].values())
    entry["peak_bytes"] = max(entry["stage_peak_bytes"].values())
    entry["features_peak_bytes"] = entry["stage_peak_bytes"].get("features") if entry["ok"] else None
    if entry["ok"]:
        ingest = json.loads((project / "metrics" / "ingest.json").read_text())
        entry["rows_accepted"], entry["customers"] = ingest["rows_accepted"], ingest["n_customers"]
    return entry


def bench_lifetimes(project: Path, as_of: str, env: dict[str, str], log_file: Path) -> dict:
    """(b) the plain lifetimes route, in a child process (see ``child_lifetimes``)."""
    command = [sys.executable, "-m", "bench.pipeline", "--child", "lifetimes", "--project", str(project), "--as-of", as_of]
    m = measure(command, ROOT, env, log_file)
    entry = route_entry(m, command, log_file)
    if m.result:
        entry.update(m.result)
    return entry


def child_lifetimes(project: Path, as_of: str) -> dict:
    """Summary util, BG/NBD fit on every customer, Gamma-Gamma fit on repeat customers and
    customer_lifetime_value for every customer, on the ingested transactions (days)."""
    started = time.perf_counter()
    from bench.clv import plain_lifetimes_route
    from bench.features import lifetimes_summary
    from pipelines.catalog import Catalog

    imported = time.perf_counter()
    summary, load_seconds, summary_seconds = lifetimes_summary(Catalog(project).TRANSACTIONS, as_of, freq_multiplier=1)
    route = plain_lifetimes_route(summary)
    steps = route["seconds"]
    return {
        "work_seconds": time.perf_counter() - imported, "import_seconds": imported - started,
        "stages": {"load_transactions": load_seconds, "summary_data_from_transaction_data": summary_seconds,
                   "fit_bgnbd": steps["fit_purchase"], "fit_gamma_gamma": steps["fit_spend"],
                   "customer_lifetime_value": steps["predict"]},
        "customers": len(summary), "gamma_gamma_customers": int(((summary["frequency"] > 0) & (summary["monetary_value"] > 0)).sum()),
        "params": {**route["purchase_params"], **route["spend_params"]}, "total_clv": float(route["clv"].sum()),
    }  # fmt: skip


def spark_missing() -> str | None:
    """Why the Spark route cannot run here, or None."""
    if importlib.util.find_spec("pyspark") is None:
        return "pyspark is not installed (make env-spark)"
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        return "Java is not installed (Spark 4 needs Java 17 or 21)"
    return None


def bench_spark(project: Path, workdir: Path, driver_memory: str | None, log_file: Path) -> dict:
    """(c) `cvp features` on Spark local[2] on the ingested transactions of ``project``."""
    reason = spark_missing()
    if reason:
        return {"skipped": reason}
    from pipelines import files

    if workdir.exists():
        shutil.rmtree(workdir)
    transactions = workdir / "data" / "interim" / "transactions.parquet"
    transactions.parent.mkdir(parents=True)
    os.symlink(project / "data" / "interim" / "transactions.parquet", transactions)
    (workdir / "dvc.yaml").write_text("stages: {}\n")  # the project root of the run
    (workdir / "tracking").mkdir()
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["features"].update(engine="pyspark", spark_master="local[2]")
    if driver_memory:
        params["features"]["spark_conf"] = {**(params["features"].get("spark_conf") or {}), "spark.driver.memory": driver_memory}
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = project_env(workdir, workdir / "tmp")
    command = [str(BIN / "cvp"), "features"]
    m = measure(command, workdir, env, log_file)
    entry = route_entry(m, command, log_file)
    entry.update(master="local[2]", driver_memory=driver_memory or "Spark default (1g)")
    if m.returncode == 0:
        names = sorted(p.name for p in (project / "data" / "features").glob("*.parquet"))
        entry["identical_to_duckdb"] = all(
            files.file_sha256(workdir / "data" / "features" / name) == files.file_sha256(project / "data" / "features" / name)
            for name in names
        )
    return entry


# --------------------------------------------------------------------------- one size


def bench_size(rows: int, args: argparse.Namespace) -> dict:
    customers = max(1, rows // args.rows_per_customer)
    data = ensure_data(rows, customers, args.seed)
    print(f"  data: {data['rows']:,} rows, {data['customers']:,} customers, period {data['period'][0]}..{data['period'][1]}",
          flush=True)  # fmt: skip
    workdir = args.workdir / f"rows_{rows}"
    workdir.mkdir(parents=True, exist_ok=True)
    log_file = workdir / "bench.log"
    log_file.write_text("")
    project = workdir / "project"
    make_project(project, data, args.memory_limit)
    env = project_env(project, workdir / "tmp")
    result: dict = {
        "data": {k: data[k] for k in ("rows", "customers", "seed", "generation_seconds", "file_bytes", "period", "path")},
        "as_of": data["period"][1], "work_dir": str(workdir),
    }  # fmt: skip
    context = {"memory_limit": args.memory_limit, "measured_at": dt.datetime.now().isoformat(timespec="seconds"),
               "load_average_before": [round(x, 2) for x in os.getloadavg()]}  # fmt: skip
    if args.features_only:
        print("  (features only) dvc repro ingest; dvc repro -s features ...", flush=True)
        result["features_only"] = {**context, **bench_features_only(project, env, log_file)}
        return result
    print("  (a) dvc repro ...", flush=True)
    result["pipeline"] = {**context, **bench_pipeline(project, env, log_file, args.cold)}
    if not result["pipeline"]["ok"]:
        print(f"  (a) failed: {result['pipeline']['error']}", flush=True)
        return result
    print("  (b) plain lifetimes route ...", flush=True)
    result["lifetimes"] = bench_lifetimes(project, data["period"][1], env, log_file)
    print("  (d) cvp score with the registered scores model ...", flush=True)
    result["scoring"] = bench_scoring(project, env, log_file)
    if args.no_spark:
        result["spark_features"] = {"skipped": "--no-spark"}
    else:
        print("  (c) features on Spark local[2] ...", flush=True)
        result["spark_features"] = bench_spark(project, workdir / "spark", args.spark_driver_memory, log_file)
    if "skipped" in result["spark_features"]:
        print(f"  (c) skipped: {result['spark_features']['skipped']}", flush=True)
    add_ratios(result)
    return result


def add_ratios(result: dict) -> None:
    """Each route's seconds and peak against the plain lifetimes route (and Spark's features
    against the pipeline's features stage)."""
    ref = result.get("lifetimes") or {}
    if not ref.get("ok"):
        return
    for name in ("pipeline", "spark_features", "scoring"):
        route = result.get(name) or {}
        if route.get("ok"):
            route["ratio_vs_lifetimes"] = {"seconds": route["seconds"] / ref["seconds"], "peak": route["peak_bytes"] / ref["peak_bytes"]}
    pipeline = result.get("pipeline") or {}
    if pipeline.get("btyd_seconds"):
        pipeline["btyd_ratio_vs_lifetimes"] = pipeline["btyd_seconds"] / ref["seconds"]
    pipeline, spark = result.get("pipeline") or {}, result.get("spark_features") or {}
    if spark.get("ok") and pipeline.get("ok"):
        duck = pipeline["stages"]["features"]
        spark["ratio_vs_duckdb_features_stage"] = spark["seconds"] / duck
        pipeline["features_and_clv_seconds"] = duck + pipeline["stages"]["clv"]


# --------------------------------------------------------------------------- report


def machine_info() -> dict:
    import psutil

    versions = {}
    for name in VERSIONS:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    java = None
    if shutil.which("java"):
        proc = subprocess.run(["java", "-version"], capture_output=True, text=True)
        java = (proc.stderr or proc.stdout).splitlines()[0] if (proc.stderr or proc.stdout) else None
    return {
        "cores": os.cpu_count(), "ram_bytes": psutil.virtual_memory().total, "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(), "python": platform.python_version(),
        "java": java, "versions": versions,
    }  # fmt: skip


def evaluate_targets(report: dict) -> list[dict]:
    out = []
    for target in TARGETS:
        where = (report.get("sizes") or {}).get(target["size"]) or {} if "size" in target else report
        route = where.get(target["route"]) or {}
        measured = route.get(target["measure"]) if route.get("ok") else None
        if route and not route.get("ok"):
            verdict, note = False, route.get("error", "failed")
        elif measured is None:
            verdict, note = None, "not measured"
        else:
            verdict, note = measured <= target["limit"], None
        entry = {**target, "measured": measured, "pass": verdict}
        if note:
            entry["note"] = note
        out.append(entry)
    return out


STEP_ORDER = ("fingerprint", "ingest", "features", "clv", "churn", "value", "segment", "export", "notebook", "load_transactions",
              "summary_data_from_transaction_data", "fit_bgnbd", "fit_gamma_gamma", "customer_lifetime_value")  # fmt: skip


def _order(step: str) -> int:
    return STEP_ORDER.index(step) if step in STEP_ORDER else len(STEP_ORDER)


def _gb(value) -> str:
    return f"{value / GB:.2f}" if value else "-"


def print_breakdown(breakdown: dict[str, dict[str, float]]) -> None:
    """Per stage: seconds per category (pipelines.profile) and DVC's share."""
    columns = ("start-up", "imports", "read", "compute", "write", "mlflow", "dvc", "total")
    print(" " * 29 + f"{'stage':<12}" + "".join(f"{c:>9}" for c in columns))
    for stage, seconds in sorted(breakdown.items(), key=lambda kv: _order(kv[0])):
        cells = "".join(f"{seconds[c]:>9.1f}" if c in seconds else f"{'-':>9}" for c in columns)
        print(" " * 29 + f"{stage:<12}" + cells)


def print_table(sizes: dict, targets: list[dict], cdnow: dict | None = None) -> None:
    print()
    if cdnow:
        if cdnow.get("ok"):
            print(f"CDNOW make run: from scratch {cdnow['from_scratch_seconds']:.1f} s, nothing changed {cdnow['no_change_seconds']:.1f} s")
            print_breakdown(cdnow.get("stage_breakdown") or {})
        else:
            print(f"CDNOW make run FAILED: {cdnow.get('error')}")
    print(f"{'rows':>12} {'customers':>10}  {'route':<34} {'wall s':>8} {'peak GB':>8} {'x time':>7} {'x peak':>7}")
    for size, result in sorted(sizes.items(), key=lambda kv: int(kv[0])):
        customers = result["data"]["customers"]
        rows = [("pipeline", "(a) dvc repro, DuckDB"), ("lifetimes", "(b) plain lifetimes"),
                ("scoring", "(d) cvp score, registered model"),
                ("spark_features", "(c) features stage, Spark local[2]"),
                ("features_only", f"ingest+features, DuckDB {(result.get('features_only') or {}).get('memory_limit')}")]  # fmt: skip
        for key, label in rows:
            route = result.get(key)
            if route is None:
                continue
            head = f"{int(size):>12,} {customers:>10,}  {label:<34}"
            if "skipped" in route:
                print(f"{head} skipped: {route['skipped']}")
                continue
            if not route.get("ok"):
                print(f"{head} FAILED: {route.get('error')}")
                continue
            ratio = route.get("ratio_vs_lifetimes") or {}
            x_time = f"{ratio['seconds']:.2f}" if ratio else ("1.00" if key == "lifetimes" else "")
            x_peak = f"{ratio['peak']:.2f}" if ratio else ("1.00" if key == "lifetimes" else "")
            print(f"{head} {route['seconds']:>8.1f} {_gb(route['peak_bytes']):>8} {x_time:>7} {x_peak:>7}")
            stages = sorted((route.get("stages") or {}).items(), key=lambda kv: _order(kv[0]))
            if route.get("stage_breakdown"):
                print_breakdown(route["stage_breakdown"])
            elif stages:
                print(" " * 26 + "   " + ", ".join(f"{name} {s:.1f}" for name, s in stages))
            if route.get("btyd_ratio_vs_lifetimes"):
                print(" " * 29 + f"BTYD part (dvc repro clv) {route['btyd_seconds']:.1f} s: "
                      f"{route['btyd_ratio_vs_lifetimes']:.2f}x the plain lifetimes route")  # fmt: skip
            if key == "spark_features" and "ratio_vs_duckdb_features_stage" in route:
                print(" " * 26 + f"   {route['ratio_vs_duckdb_features_stage']:.2f}x the DuckDB features stage; "
                      f"files identical to DuckDB's: {route.get('identical_to_duckdb')}")  # fmt: skip
            if key == "features_only":
                spill = route.get("stage_peak_spill_bytes") or {}
                peaks = route.get("stage_peak_bytes") or {}
                print(" " * 26 + "   peak GB " + ", ".join(f"{n} {_gb(peaks[n])}" for n in sorted(peaks, key=_order))
                      + "; spilled GB " + ", ".join(f"{n} {_gb(spill[n])}" for n in sorted(spill, key=_order)))  # fmt: skip
    print("\ntargets:")
    for t in targets:
        verdict = {True: "PASS", False: "FAIL", None: "not measured"}[t["pass"]]
        measured = t["measured"]
        if measured is None:
            shown = "-"
        elif t["measure"].endswith("seconds"):
            shown = f"{measured:.1f} s"
        elif "ratio" in t["measure"]:
            shown = f"{measured:.2f}x"
        else:
            shown = f"{measured / GB:.2f} GB"
        print(f"  {verdict:<12} {t['what']} (measured {shown})")


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1e6,1e7", help="comma-separated transaction (row) counts, e.g. 1e6,1e7; '' = CDNOW only")
    parser.add_argument("--rows-per-customer", type=int, default=10, help="customers = rows / this (default 10)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--features-only", action="store_true",
                        help="only ingest + features on DuckDB, with a memory limit (the out-of-core route)")  # fmt: skip
    parser.add_argument("--memory-limit", default=None,
                        help="DuckDB memory limit for ingest and features (default: params.yaml's; 6GB with --features-only)")  # fmt: skip
    parser.add_argument("--spark-driver-memory", default="4g", help="spark.driver.memory of route (c); '' = Spark's default")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="project copies and logs (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--no-spark", action="store_true", help="skip route (c), the features stage on Spark")
    parser.add_argument("--no-cdnow", action="store_true", help="skip the CDNOW make-run route (from scratch, then unchanged)")
    parser.add_argument("--cold", action="store_true",
                        help="plain `dvc repro` (each stage its own process) instead of `make run`'s `cvp warm dvc repro`")
    parser.add_argument("--child", choices=("lifetimes",), help=argparse.SUPPRESS)
    parser.add_argument("--project", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--as-of", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(RESULT_PREFIX + json.dumps(child_lifetimes(args.project, args.as_of)), flush=True)
        return None
    if args.features_only and args.memory_limit is None:
        args.memory_limit = "6GB"
    args.workdir = args.workdir.resolve()
    sizes = [int(float(s)) for s in args.sizes.split(",") if s.strip()]  # "" = the CDNOW route only

    from pipelines.files import write_json

    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    report = {"machine": machine_info(), "sizes": previous.get("sizes", {}),
              "note": "indicative: measured on a shared 2-core machine; wall seconds include interpreter start-up"}  # fmt: skip
    if not (args.features_only or args.no_cdnow):
        print("benchmarking CDNOW: make run from scratch, then with nothing changed", flush=True)
        cdnow_dir = args.workdir / "cdnow"
        cdnow_dir.mkdir(parents=True, exist_ok=True)
        report["cdnow"] = bench_cdnow(cdnow_dir, cdnow_dir / "bench.log", args.cold)
        report["targets"] = evaluate_targets(report)
        write_json(report, args.out)
    for rows in sizes:
        print(f"benchmarking {rows:,} rows (work dir {args.workdir / f'rows_{rows}'})", flush=True)
        entry = bench_size(rows, args)
        if args.features_only:  # keep this size's full-pipeline results, replace its features-only one
            report["sizes"].setdefault(str(rows), {}).update(entry)
        else:  # keep this size's features-only result, replace the rest
            kept = {k: v for k, v in report["sizes"].get(str(rows), {}).items() if k == "features_only"}
            report["sizes"][str(rows)] = {**entry, **kept}
        report["targets"] = evaluate_targets(report)
        write_json(report, args.out)  # partial results survive
    print_table({str(r): report["sizes"][str(r)] for r in sizes}, report["targets"], report.get("cdnow"))
    print(f"\nwrote {args.out}")
    return report


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    main()
