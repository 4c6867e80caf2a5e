"""`cvp backtest`: the CLV and churn holdout metrics over a range of past scoring dates.

For every as_of in ``[start, end]``, ``every`` days apart, the stages ingest, features, clv and
churn run in this process on a fresh scratch directory (a catalog of its own; the parsed params
with ``data.as_of`` set and model registration off), never on the project's data/. Each date's
holdout metrics are read back from that directory's metrics/clv.json and metrics/churn.json into
one table row (models/backtest.py).

Outputs under the project root: reports/backtest.csv, reports/backtest.png, metrics/backtest.json.
MLflow: a parent run "backtest" with one child run per as_of; the stage runs of a date nest under
its child run (the scratch catalog's ``pipeline_run_id``); the table and plot are logged to the parent.
"""

from __future__ import annotations

import datetime as dt
import importlib
import logging
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from features.errors import DataError
from models import backtest as rules
from models.plots.backtest import metrics_over_time
from pipelines import files, tracking
from pipelines.catalog import Catalog
from pipelines.config import ConfigError, Params, parse_params
from pipelines.sources import LIFETIMES_PREFIX

log = logging.getLogger(__name__)

STAGE = "backtest"
STAGES = ("ingest", "features", "clv", "churn")


def scratch_params(params: Params, as_of: dt.date, root: Path, store: Path) -> dict[str, Any]:
    """The params of one as_of (a mapping, written to the scratch directory for the record):
    registration off, the source and the MLflow store as absolute paths."""
    raw = params.model_dump(mode="json")
    raw["data"]["as_of"] = as_of.isoformat()
    if not raw["data"]["path"].startswith(LIFETIMES_PREFIX) and not Path(raw["data"]["path"]).is_absolute():
        raw["data"]["path"] = str(root.resolve() / raw["data"]["path"])
    raw["clv"]["register_model"] = raw["churn"]["register_model"] = False
    raw["mlflow"]["tracking_dir"] = str(store)
    return raw


def run_stages_for(as_of: dt.date, raw: dict[str, Any], paths: Catalog) -> tuple[dict, dict]:
    """Run the stages for one as_of on the scratch catalog ``paths``; return the (clv, churn) metrics."""
    files.write_text(yaml.safe_dump(raw, sort_keys=False), paths.params_file)
    params = parse_params(raw, str(paths.params_file))
    for name in STAGES:
        log.info("backtest %s: stage %s", as_of, name)
        importlib.import_module(f"pipelines.{name}").run(params, paths)
        if name == "features":
            last_day = paths.read("transactions", params, columns=["timestamp"])["timestamp"].max()
            rules.check_date_usable(as_of, last_day, len(paths.read("features_t1", params, columns=["customer_id"])))
    return paths.read_json("metrics_clv"), paths.read_json("metrics_churn")


def backtest_date(as_of: dt.date, raw: dict[str, Any], paths: Catalog, client: Any, experiment_id: str, parent: str) -> dict:
    """One as_of in a scratch directory under its own child run; its table row. Raises DateSkipped."""
    tags = {"mlflow.parentRunId": parent, "cvp.kind": "backtest_date", "cvp.as_of": as_of.isoformat()}
    child = client.create_run(experiment_id, run_name=f"as_of {as_of}", tags=tags).info.run_id
    try:
        with tempfile.TemporaryDirectory(prefix=f"cvp-backtest-{as_of}-", ignore_cleanup_errors=True) as workdir:
            clv, churn = run_stages_for(as_of, raw, paths.under(workdir, Path(workdir) / "params.yaml", child))
    except rules.DateSkipped as exc:
        log.warning("backtest: skipping as_of %s: %s", as_of, exc)
        client.set_tag(child, "cvp.skipped", str(exc)[:500])
        client.set_terminated(child, "KILLED")
        raise
    except BaseException:
        client.set_terminated(child, "FAILED")
        raise
    row = rules.metrics_row(as_of, clv, churn)
    tracking.log_metrics_to(child, row)
    client.set_tag(child, "cvp.clv_model", str(row["clv_model"]))
    client.set_terminated(child, "FINISHED")
    return row


def run(params: Params, paths: Catalog, start: dt.date, end: dt.date, every_days: int | None = None) -> pd.DataFrame:
    """Backtest every as_of in [start, end], ``every_days`` apart (default data.horizon_days);
    return the metrics table (one row per as_of that could be evaluated)."""
    import mlflow

    every = every_days or params.data.horizon_days
    try:
        dates = rules.as_of_dates(start, end, every)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    store = tracking.tracking_dir(params, paths.root)
    experiment_id = tracking.configure(params, paths.root)
    client = mlflow.MlflowClient()
    tags = {"cvp.kind": STAGE, "git_commit": tracking.git_commit(paths.root)}
    parent = client.create_run(experiment_id, run_name=STAGE, tags=tags).info.run_id
    client.log_param(parent, "dates", ",".join(d.isoformat() for d in dates)[:500])
    client.log_param(parent, "every_days", every)
    log.info("backtest: %d as_of dates from %s to %s every %d days (MLflow run %s)", len(dates), start, end, every, parent)
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    status = "FAILED"
    try:
        for i, as_of in enumerate(dates, 1):
            log.info("backtest %d/%d: as_of %s", i, len(dates), as_of)
            try:
                rows.append(backtest_date(as_of, scratch_params(params, as_of, paths.root, store), paths, client, experiment_id, parent))
            except rules.DateSkipped as exc:
                skipped[as_of.isoformat()] = str(exc)
        if not rows:
            raise DataError(f"backtest: no as_of between {start} and {end} could be evaluated (outside the data or no customers at t_1); "
                            "pick dates inside the source's range")  # fmt: skip
        table = pd.DataFrame(rows)
        files.write_csv(table, paths.BACKTEST_TABLE)
        files.save_figure(metrics_over_time(table), paths.BACKTEST_PLOT)
        report = {"dates": [r["as_of"] for r in rows], "every_days": every, "skipped": skipped, "rows": rows, "mlflow_run_id": parent}
        files.write_json(report, paths.BACKTEST_REPORT)
        for target in (paths.BACKTEST_TABLE, paths.BACKTEST_PLOT):
            client.log_artifact(parent, str(target))
        status = "FINISHED"
        log.info("backtest: %d dates evaluated, %d skipped; wrote %s, %s, %s", len(rows), len(skipped),
                 paths.BACKTEST_TABLE, paths.BACKTEST_PLOT, paths.BACKTEST_REPORT)  # fmt: skip
        return table
    finally:
        client.set_terminated(parent, status)
