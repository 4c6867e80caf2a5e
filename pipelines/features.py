"""`cvp features`: customer features at t_k = as_of - k * horizon (k = 0, 1, 2) and window labels.

Reads data/interim/transactions.parquet with the engine of ``params.features`` (embedded DuckDB
by default) and writes data/features/features_t{k}.parquet, labels_t{k}.parquet (k >= 1) and
metrics/features.json. The feature definitions live in features/customer.py.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ibis
import pandas as pd
import pandera.pandas as pa
import pyarrow

from features.customer import (
    LABELS_SCHEMA,
    MAX_ABS_VALUE,
    FeatureSpec,
    arrow_schema,
    customer_days,
    features_from_days,
    features_schema,
    features_summary,
    labels_from_days,
    labels_summary,
    needs_decimal_sums,
    rows_in_day_table,
    transaction_problems,
    transactions_summary,
)
from features.errors import DataError
from pipelines import engines, io, paths, tracking
from pipelines.config import Params
from pipelines.io import write_parquet_stream

log = logging.getLogger(__name__)

LABELLED_OFFSETS = tuple(k for k in paths.CUTOFF_OFFSETS if k >= 1)
ROW_GROUP_ROWS = 1 << 17  # rows per Parquet row group, and per validated chunk


def cutoff_dates(as_of: dt.date, horizon_days: int) -> dict[int, dt.date]:
    """t_k = as_of - k * horizon_days for every offset k in paths.CUTOFF_OFFSETS."""
    return {k: as_of - dt.timedelta(days=k * horizon_days) for k in paths.CUTOFF_OFFSETS}


def load_transactions(con: ibis.BaseBackend, path: Path) -> ibis.Table:
    """The ingest output as an ibis table (not loaded into memory), schema checked."""
    if not path.exists():
        raise DataError(f"{path} not found; run `cvp ingest` first")
    tx = con.read_parquet(path, table_name="transactions")
    problems = transaction_problems(tx.schema())
    if problems:
        raise DataError(f"{path}: {problems[0]}; re-run `cvp ingest` to rebuild it")
    return tx


def check_transactions(con: ibis.BaseBackend, tx: ibis.Table, path: Path) -> dict[str, Any]:
    """One pass over the rows: counts, date range, null/non-finite values. Raises DataError."""
    summary = con.to_pandas(transactions_summary(tx)).iloc[0].to_dict()
    if summary["n_rows"] == 0:
        raise DataError(f"{path} has no rows; check data.path and the quarantine report of `cvp ingest`")
    for column, count in (
        ("customer_id", summary["null_customer_id"]),
        ("timestamp", summary["null_timestamp"]),
        ("amount", summary["bad_amount"]),
    ):
        if count:
            raise DataError(f"{path}: {count} rows with a missing or non-finite '{column}'; re-run `cvp ingest`")
    for column in ("amount", "quantity", "cost"):
        largest = summary.get(f"max_abs_{column}")
        if largest is not None and pd.notna(largest) and largest >= MAX_ABS_VALUE:
            raise DataError(
                f"{path}: column '{column}' has |value| {largest:g} >= {MAX_ABS_VALUE:g} per row; "
                "check the unit of the source column"
            )
    return summary


def feature_spec(params: Params, summary: dict[str, Any]) -> FeatureSpec:
    """Spec from params; an optional column counts as mapped when it has any non-null value;
    sums run on DECIMAL only when the data is too large for exact float64 unit sums."""
    return FeatureSpec(
        horizon_days=params.data.horizon_days,
        days_per_unit=params.data.days_per_unit,
        windows_days=params.features.windows_days,
        trend_days=params.features.trend_days,
        has_order_id=bool(summary.get("n_order_id", 0)),
        has_quantity=bool(summary.get("n_quantity", 0)),
        has_cost=bool(summary.get("n_cost", 0)),
        decimal_sums=needs_decimal_sums(summary),
    )


def _validated_chunks(schema: pa.DataFrameSchema) -> Callable[[pyarrow.Table], None]:
    """A check for each row group before it is written: the pandera schema, and ids increasing
    across row groups (within one, the schema checks order and uniqueness)."""
    last_id: str | None = None

    def check(table: pyarrow.Table) -> None:
        nonlocal last_id
        frame = schema.validate(table.to_pandas())
        if len(frame):
            if last_id is not None and not frame["customer_id"].iloc[0] > last_id:
                raise RuntimeError(f"{schema.name}: rows not sorted by customer_id across row groups")
            last_id = frame["customer_id"].iloc[-1]

    return check


def write_validated(con: ibis.BaseBackend, expr: ibis.Table, schema: pa.DataFrameSchema, target: Path) -> int:
    """Stream ``expr`` to Parquet atomically in fixed row groups, each validated; return the row count.

    Memory stays bounded by one row group, whatever the number of customers; fixed row groups
    make identical results byte-identical files."""
    return write_parquet_stream(
        engines.record_batches(con, expr, ROW_GROUP_ROWS), target, arrow_schema(schema), row_group_rows=ROW_GROUP_ROWS,
        validate=_validated_chunks(schema), what="customers",
    )  # fmt: skip


def _one_row(con: ibis.BaseBackend, expr: ibis.Table) -> dict[str, Any]:
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in con.to_pandas(expr).iloc[0].items()}


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def write_cutoff(
    con: ibis.BaseBackend, tx: ibis.Table, k: int, cutoff: dt.date, spec: FeatureSpec, days: ibis.Table | None = None
) -> dict[str, Any]:
    """Write features_t{k}.parquet (and labels_t{k}.parquet for k >= 1); return the cutoff's metrics.

    ``days`` is ``customer_days(tx, spec)``, computed once and shared by the cutoffs (``build``);
    every output filters it to the cutoff or label window before aggregating per customer."""
    started = time.perf_counter()
    days = customer_days(tx, spec) if days is None else days
    target = paths.features_at(k)
    n = write_validated(con, features_from_days(days, cutoff, spec), features_schema(spec.windows_days), target)
    if n == 0:
        log.warning(
            "t%d = %s: no customer has a purchase on or before it; wrote an empty %s (the models train on "
            "t_1 and t_2: a later data.as_of or a shorter data.horizon_days gives them customers)", k, cutoff, target,
        )  # fmt: skip
    written = con.read_parquet(target, table_name=f"features_t{k}")
    summary = _one_row(con, features_summary(written))
    entry: dict[str, Any] = {
        "cutoff": cutoff.isoformat(),
        "customers": summary["customers"],
        "repeat_buyer_share": _share(summary["repeat_buyers"], summary["customers"]),
        "rows_used": _rows(con, days, None, cutoff),
    }
    if k in LABELLED_OFFSETS:
        end = cutoff + dt.timedelta(days=spec.horizon_days)
        labels = labels_from_days(days, written, cutoff, spec.horizon_days, spec.decimal_sums)
        write_validated(con, labels, LABELS_SCHEMA, paths.labels_at(k))
        label_summary = _one_row(con, labels_summary(con.read_parquet(paths.labels_at(k), table_name=f"labels_t{k}")))
        entry |= {
            "label_window": [cutoff.isoformat(), end.isoformat()],
            "label_positive_rate": _share(label_summary["purchasers"], label_summary["customers"]),
            "label_rows_used": _rows(con, days, cutoff, end),
        }
    log.info("t%d = %s: %d customers (%.1f s)", k, cutoff, n, time.perf_counter() - started)
    return entry


def _rows(con: ibis.BaseBackend, days: ibis.Table, after: dt.date | None, until: dt.date) -> int:
    return int(con.execute(rows_in_day_table(days, after, until)))


def build(con: ibis.BaseBackend, tx: ibis.Table, cutoffs: dict[int, dt.date], spec: FeatureSpec) -> dict[str, Any]:
    """Write the features (and labels) of every cutoff; return their metrics by 't{k}'.

    The day table of all rows is computed once and cached (a temporary table on DuckDB, a
    persisted DataFrame on Spark); each cutoff only aggregates its days."""
    started = time.perf_counter()
    with engines.cached(con, customer_days(tx, spec), "customer_days") as days:
        log.info("day table cached (%.1f s)", time.perf_counter() - started)
        return {f"t{k}": write_cutoff(con, tx, k, cutoff, spec, days) for k, cutoff in cutoffs.items()}


def run(params: Params, params_path: Path = Path("params.yaml")) -> None:
    """Compute and write the features and labels of every cutoff, metrics and the MLflow run."""
    started = time.perf_counter()
    section = {
        "features": params.features.model_dump(mode="json"),
        "data": {"as_of": params.data.as_of, "horizon_days": params.data.horizon_days, "time_unit": params.data.time_unit},
    }
    with engines.connect(params.features) as con:
        tx = load_transactions(con, paths.TRANSACTIONS)
        summary = check_transactions(con, tx, paths.TRANSACTIONS)
        last_day = pd.Timestamp(summary["last_timestamp"]).date()
        as_of = params.data.as_of or last_day
        if as_of > last_day:
            log.warning("data.as_of %s is after the last transaction (%s)", as_of, last_day)
        spec = feature_spec(params, summary)
        cutoffs = cutoff_dates(as_of, params.data.horizon_days)
        log.info("cutoffs %s, %d input rows, %s", ", ".join(f"t{k}={c}" for k, c in cutoffs.items()), summary["n_rows"], spec)
        tags = {"input_sha256": io.file_sha256(paths.TRANSACTIONS)}
        with tracking.stage_run("features", params, section=section, tags=tags, params_path=params_path):
            metrics = {
                "as_of": as_of.isoformat(),
                "horizon_days": params.data.horizon_days,
                "time_unit": params.data.time_unit,
                "rows_input": int(summary["n_rows"]),
                "columns_mapped": {"order_id": spec.has_order_id, "quantity": spec.has_quantity, "cost": spec.has_cost},
                "decimal_sums": spec.decimal_sums,
                "cutoffs": build(con, tx, cutoffs, spec),
            }
            io.write_json(metrics, paths.metrics_file("features"))
            tracking.log_metrics(metrics)
    log.info("features done in %.1f s", time.perf_counter() - started)
