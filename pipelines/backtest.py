"""`cvp backtest`: the CLV and churn holdout metrics over a range of past scoring dates.

For every as_of in ``[start, end]``, ``every`` days apart, the stages ingest, features, clv and
churn run in a fresh scratch directory (a copy of the params with ``data.as_of`` set and model
registration off), never in the project's data/. Each date's holdout metrics are read back from
that directory's metrics/clv.json and metrics/churn.json into one table row.

Outputs (project-relative): reports/backtest.csv, reports/backtest.png, metrics/backtest.json.
MLflow: a parent run "backtest" with one child run per as_of; the stage runs of a date nest
under its child run (``CVP_PIPELINE_RUN_ID``), and the table and plot are logged to the parent.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from features.errors import DataError
from pipelines import io, paths, tracking
from pipelines.config import ConfigError, Params

log = logging.getLogger(__name__)

STAGE = "backtest"
STAGES = ("ingest", "features", "clv", "churn")
TABLE = paths.REPORTS / "backtest.csv"
PLOT = paths.REPORTS / "backtest.png"
REPORT = paths.metrics_file(STAGE)
LIBRARY_SOURCE = "lifetimes:"


class DateSkipped(Exception):
    """This as_of cannot be backtested (outside the data, or no customers at t_1)."""


def as_of_dates(start: dt.date, end: dt.date, every_days: int) -> list[dt.date]:
    """start, start + every_days, ... up to and including end."""
    if every_days < 1:
        raise ConfigError(f"--every must be at least 1 day, not {every_days}")
    if end < start:
        raise ConfigError(f"--to {end} is before --from {start}; swap them")
    count = (end - start).days // every_days + 1
    return [start + dt.timedelta(days=i * every_days) for i in range(count)]


def scratch_params(raw: dict[str, Any], as_of: dt.date, project: Path, store: Path) -> dict[str, Any]:
    """The project's params for one as_of: registration off, the source and the MLflow store as
    absolute paths (the stages run in another directory)."""
    out = yaml.safe_load(yaml.safe_dump(raw))
    out["data"]["as_of"] = as_of.isoformat()
    source = str(out["data"]["path"])
    if not source.startswith(LIBRARY_SOURCE) and not Path(source).is_absolute():
        out["data"]["path"] = str(project / source)
    out["clv"]["register_model"] = False
    out["churn"]["register_model"] = False
    out.setdefault("mlflow", {})["tracking_dir"] = str(store)
    return out


@contextlib.contextmanager
def pinned_parent_run(run_id: str) -> Iterator[None]:
    """Nest stage runs under ``run_id`` while the block runs; restore the environment after."""
    before = os.environ.get(tracking.PARENT_ENV)
    os.environ[tracking.PARENT_ENV] = run_id
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(tracking.PARENT_ENV, None)
        else:
            os.environ[tracking.PARENT_ENV] = before


def check_date_usable(as_of: dt.date) -> None:
    """Raise DateSkipped when as_of is after the last transaction or nobody had bought by t_1
    (run in the scratch directory after the features stage)."""
    last_day = pd.read_parquet(paths.TRANSACTIONS, columns=["timestamp"])["timestamp"].max()
    if pd.isna(last_day) or as_of > last_day.date():
        raise DateSkipped(f"as_of {as_of} is after the last transaction ({None if pd.isna(last_day) else last_day.date()})")
    if pd.read_parquet(paths.features_at(1), columns=["customer_id"]).empty:
        raise DateSkipped(f"no customers at t_1 = {as_of} minus one horizon (too early in the data)")


def run_stages_for(as_of: dt.date, params_raw: dict[str, Any], workdir: Path) -> tuple[dict, dict]:
    """Run the stages for one as_of with ``workdir`` as the current directory; return the
    (clv, churn) metrics files."""
    from pipelines.cli import run_stage

    params_file = Path("params.yaml")
    with contextlib.chdir(workdir):
        io.write_text(yaml.safe_dump(params_raw, sort_keys=False), params_file)
        for name in STAGES:
            log.info("backtest %s: stage %s", as_of, name)
            run_stage(name, params_file)
            if name == "features":
                check_date_usable(as_of)
        return io.read_json(paths.metrics_file("clv")), io.read_json(paths.metrics_file("churn"))


def metrics_row(as_of: dt.date, clv: dict[str, Any], churn: dict[str, Any]) -> dict[str, Any]:
    """One table row: the CLV holdout metrics (model and baseline) and each churn model's."""
    holdout = clv["holdout"]
    row: dict[str, Any] = {
        "as_of": as_of.isoformat(),
        "holdout_cutoff": clv.get("holdout_cutoff"),
        "n_customers": holdout.get("n_customers"),
        "clv_model": clv.get("model"),
        "churn_evaluation": churn.get("evaluation"),
        "churn_source": churn.get("churn_source"),
    }
    for side in ("model", "baseline"):
        row[f"clv_{side}_purchases_mae"] = holdout["purchases"][side]["mae"]
        row[f"clv_{side}_spearman_rho"] = holdout["ranking"][side]["spearman_rho"]
        row[f"clv_{side}_top20_capture"] = holdout["ranking"][side]["top20_capture"]
    for model, values in sorted(churn["models"].items()):
        for metric in ("roc_auc", "brier"):
            value = values.get(metric)
            row[f"churn_{model}_{metric}"] = math.nan if value is None else value
    return row


def plot_table(table: pd.DataFrame, target: Path) -> None:
    """Four panels over as_of: CLV purchases MAE, CLV Spearman, churn ROC-AUC, churn Brier."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = pd.to_datetime(table["as_of"])
    panels = (
        ("CLV holdout purchases MAE", "clv_", "_purchases_mae"),
        ("CLV Spearman rho (CLV vs holdout spend)", "clv_", "_spearman_rho"),
        ("churn ROC-AUC", "churn_", "_roc_auc"),
        ("churn Brier score", "churn_", "_brier"),
    )
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    for ax, (title, prefix, suffix) in zip(axes.flat, panels):
        for column in table.columns:
            if column.startswith(prefix) and column.endswith(suffix) and table[column].notna().any():
                ax.plot(x, table[column], marker="o", label=column[len(prefix) : -len(suffix)])
        ax.set_title(title)
        ax.set_xlabel("as_of")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    fig.tight_layout()
    with io.atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)


def run(
    params: Params,
    params_path: Path = Path("params.yaml"),
    start: dt.date | None = None,
    end: dt.date | None = None,
    every_days: int | None = None,
) -> pd.DataFrame:
    """Backtest every as_of in [start, end], ``every_days`` apart (default data.horizon_days);
    return the metrics table (one row per as_of that could be evaluated)."""
    import mlflow
    from mlflow.entities import Metric, RunTag

    if start is None or end is None:
        raise ConfigError("backtest needs --from and --to dates (YYYY-MM-DD)")
    every = every_days or params.data.horizon_days
    dates = as_of_dates(start, end, every)
    project = Path.cwd().resolve()
    raw = yaml.safe_load(Path(params_path).read_text())
    store = tracking.tracking_dir(params)

    experiment_id = tracking.configure(params)
    client = mlflow.MlflowClient()
    parent = client.create_run(
        experiment_id,
        run_name=STAGE,
        tags={"cvp.kind": STAGE, "git_commit": tracking.git_commit()},
    ).info.run_id
    client.log_param(parent, "dates", ",".join(d.isoformat() for d in dates)[:500])
    client.log_param(parent, "every_days", every)
    log.info("backtest: %d as_of dates from %s to %s every %d days (MLflow run %s)", len(dates), start, end, every, parent)

    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    status = "FAILED"
    try:
        for i, as_of in enumerate(dates, 1):
            log.info("backtest %d/%d: as_of %s", i, len(dates), as_of)
            child = client.create_run(
                experiment_id,
                run_name=f"as_of {as_of}",
                tags={"mlflow.parentRunId": parent, "cvp.kind": "backtest_date", "cvp.as_of": as_of.isoformat()},
            ).info.run_id
            workdir = Path(tempfile.mkdtemp(prefix=f"cvp-backtest-{as_of}-"))
            try:
                with pinned_parent_run(child):
                    clv, churn = run_stages_for(as_of, scratch_params(raw, as_of, project, store), workdir)
            except DateSkipped as exc:
                log.warning("backtest: skipping as_of %s: %s", as_of, exc)
                skipped[as_of.isoformat()] = str(exc)
                client.set_tag(child, "cvp.skipped", str(exc)[:500])
                client.set_terminated(child, "KILLED")
                continue
            except BaseException:
                client.set_terminated(child, "FAILED")
                raise
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
            row = metrics_row(as_of, clv, churn)
            rows.append(row)
            numeric = {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and math.isfinite(v)}
            now_ms = int(time.time() * 1000)
            client.log_batch(
                child,
                metrics=[Metric(k, v, now_ms, 0) for k, v in numeric.items()],
                tags=[RunTag("cvp.clv_model", str(row["clv_model"]))],
            )
            client.set_terminated(child, "FINISHED")
        if not rows:
            raise DataError(
                f"backtest: no as_of between {start} and {end} could be evaluated (outside the data or no customers at t_1); pick dates inside the source's range"
            )
        table = pd.DataFrame(rows)
        io.write_csv(table, TABLE)
        plot_table(table, PLOT)
        io.write_json(
            {"dates": [r["as_of"] for r in rows], "every_days": every, "skipped": skipped, "rows": rows, "mlflow_run_id": parent},
            REPORT,
        )
        client.log_artifact(parent, str(TABLE))
        client.log_artifact(parent, str(PLOT))
        status = "FINISHED"
        log.info("backtest: %d dates evaluated, %d skipped; wrote %s, %s, %s", len(rows), len(skipped), TABLE, PLOT, REPORT)
        return table
    finally:
        client.set_terminated(parent, status)
