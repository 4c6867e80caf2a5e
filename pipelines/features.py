"""`cvp features`: customer features at t_k = as_of - k * horizon (k = 0, 1, 2) and window labels.

Reads data/interim/transactions.parquet with the engine of ``params.features`` (embedded DuckDB
by default, pipelines.engines) and writes data/features/features_t{k}.parquet, labels_t{k}.parquet
(k >= 1) and metrics/features.json. The feature definitions live in features/customer.py.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

import ibis
import pandas as pd

from features import customer as fc
from features.customer import FeatureSpec
from features.errors import DataError
from pipelines import domain, engines, files, tracking
from pipelines.catalog import CUTOFF_OFFSETS, Catalog
from pipelines.config import Params

log = logging.getLogger(__name__)

STAGE = "features"
LABELLED_OFFSETS = tuple(k for k in CUTOFF_OFFSETS if k >= 1)
ROW_GROUP_ROWS = 1 << 17  # rows per Parquet row group, and per validated chunk


Inputs = tuple[ibis.Table, dict[str, Any], FeatureSpec, dict[int, dt.date]]


def inputs(con: ibis.BaseBackend, params: Params, paths: Catalog) -> Inputs:
    """The checked transactions table, its summary, the feature spec and the cutoff dates
    (as_of = data.as_of, or the last transaction's day)."""
    path = paths.TRANSACTIONS
    if not path.exists():
        raise DataError(f"{path} not found; run `cvp ingest` first")
    tx = engines.read_transactions(con, path)
    summary = con.to_pandas(fc.transactions_summary(tx)).iloc[0].to_dict()
    problem = fc.transactions_problem(summary)
    if problem:
        raise DataError(f"{path}: {problem}")
    last_day = pd.Timestamp(summary["last_timestamp"]).date()
    as_of = params.data.as_of or last_day
    if as_of > last_day:
        log.warning("data.as_of %s is after the last transaction (%s)", as_of, last_day)
    return tx, summary, domain.feature_spec(params, summary), fc.cutoff_dates(as_of, params.data.horizon_days, CUTOFF_OFFSETS)


def run(params: Params, paths: Catalog) -> None:
    """Compute and write the features and labels of every cutoff, metrics and the MLflow run."""
    started = time.perf_counter()
    data = params.data
    section = {"features": params.features.model_dump(mode="json"),
               "data": {"as_of": data.as_of, "horizon_days": data.horizon_days, "time_unit": data.time_unit}}
    with engines.connect(params.features, paths.root) as con:
        tx, summary, spec, cutoffs = inputs(con, params, paths)
        log.info("cutoffs %s, %d input rows, %s", ", ".join(f"t{k}={c}" for k, c in cutoffs.items()), summary["n_rows"], spec)
        tags = {"input_sha256": files.file_sha256(paths.TRANSACTIONS)}
        with tracking.stage_record(STAGE, params, paths, section=section, tags=tags) as record:
            metrics = {
                "as_of": cutoffs[0].isoformat(),
                "horizon_days": data.horizon_days,
                "time_unit": data.time_unit,
                "rows_input": int(summary["n_rows"]),
                "columns_mapped": {"order_id": spec.has_order_id, "quantity": spec.has_quantity, "cost": spec.has_cost},
                "decimal_sums": spec.decimal_sums,
                "cutoffs": build(con, tx, cutoffs, spec, paths),
            }
            files.write_json(metrics, paths.metrics_file(STAGE))
            record.log_metrics(metrics)
    log.info("features done in %.1f s", time.perf_counter() - started)


def build(con: ibis.BaseBackend, tx: ibis.Table, cutoffs: dict[int, dt.date], spec: FeatureSpec, paths: Catalog) -> dict[str, Any]:
    """Write the features (and labels) of every cutoff; return their metrics by 't{k}'.

    The day table of all rows is computed once and cached (a temporary table on DuckDB, a
    persisted DataFrame on Spark); each cutoff only aggregates its days."""
    started = time.perf_counter()
    with engines.cached(con, fc.customer_days(tx, spec), "customer_days") as days:
        log.info("day table cached (%.1f s)", time.perf_counter() - started)
        return {f"t{k}": write_cutoff(con, days, k, cutoff, spec, paths) for k, cutoff in cutoffs.items()}


def write_cutoff(
    con: ibis.BaseBackend, days: ibis.Table, k: int, cutoff: dt.date, spec: FeatureSpec, paths: Catalog
) -> dict[str, Any]:
    """Write features_t{k}.parquet (and labels_t{k}.parquet for k >= 1) from the day table
    (``customer_days``); return the cutoff's metrics."""
    started = time.perf_counter()
    target = paths.features_at(k)
    features = fc.features_from_days(days, cutoff, spec)
    n = engines.write_validated(con, features, fc.features_schema(spec.windows_days), target, ROW_GROUP_ROWS)
    if n == 0:
        log.warning(
            "t%d = %s: no customer has a purchase on or before it; wrote an empty %s (the models train on "
            "t_1 and t_2: a later data.as_of or a shorter data.horizon_days gives them customers)", k, cutoff, target,
        )  # fmt: skip
    written = con.read_parquet(target, table_name=f"features_t{k}")
    summary = engines.one_row(con, fc.features_summary(written))
    entry: dict[str, Any] = {
        "cutoff": cutoff.isoformat(),
        "customers": summary["customers"],
        "repeat_buyer_share": _share(summary["repeat_buyers"], summary["customers"]),
        "rows_used": engines.count(con, fc.rows_in_day_table(days, None, cutoff)),
    }
    if k in LABELLED_OFFSETS:
        end = cutoff + dt.timedelta(days=spec.horizon_days)
        labels = fc.labels_from_days(days, written, cutoff, spec.horizon_days, spec.decimal_sums)
        engines.write_validated(con, labels, fc.LABELS_SCHEMA, paths.labels_at(k), ROW_GROUP_ROWS)
        label_summary = engines.one_row(con, fc.labels_summary(con.read_parquet(paths.labels_at(k), table_name=f"labels_t{k}")))
        entry |= {
            "label_window": [cutoff.isoformat(), end.isoformat()],
            "label_positive_rate": _share(label_summary["purchasers"], label_summary["customers"]),
            "label_rows_used": engines.count(con, fc.rows_in_day_table(days, cutoff, end)),
        }
    log.info("t%d = %s: %d customers (%.1f s)", k, cutoff, n, time.perf_counter() - started)
    return entry


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None
