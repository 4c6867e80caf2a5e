"""Stage `ingest`: validate raw transactions; accepted rows to data/interim, bad rows to quarantine.

Reads ``data`` from params. The source is scanned by DuckDB and parsed once into a temporary
table (features.ingest), the rejected rows' reasons go to a small second table, then both
outputs are streamed to Parquet in fixed-size row groups. Every row group is validated with
pandera before it is written (all rows are validated, one row group at a time, so the Python
side holds at most one row group; DuckDB spills to a temporary directory when needed).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import duckdb
import ibis
import ibis.expr.types as ir
import pyarrow as pa

from features.ingest import (
    REASON,
    SOURCE_FILE,
    SOURCE_ROW,
    IngestRules,
    TRANSACTIONS_SCHEMA,
    accepted_summary,
    accepted_transactions,
    attach_reasons,
    counts_by_reason,
    parse,
    reason_counts,
    rejections,
    rejected_rows,
    rejected_schema,
)
from pipelines import paths, tracking
from pipelines.config import DataParams, Params
from pipelines.io import write_json, write_parquet_stream
from pipelines.sources import RawSource, duckdb_connection, input_sha256, open_source, scan_error

log = logging.getLogger(__name__)

ROW_GROUP_ROWS = 1 << 18  # rows per Parquet row group (and per validated chunk)

TRANSACTIONS_ARROW = pa.schema(
    [
        ("customer_id", pa.string()),
        ("timestamp", pa.timestamp("us")),
        ("amount", pa.float64()),
        ("quantity", pa.float64()),
        ("order_id", pa.string()),
        ("cost", pa.float64()),
        (SOURCE_ROW, pa.int64()),
    ]
)


def rejected_arrow_schema(raw_columns: Iterable[str], with_source_file: bool) -> pa.Schema:
    fields = [(name, pa.string()) for name in raw_columns] + [(SOURCE_ROW, pa.int64())]
    if with_source_file:
        fields.append((SOURCE_FILE, pa.string()))
    fields.append((REASON, pa.string()))
    return pa.schema(fields)


def rules_from_params(data: DataParams) -> IngestRules:
    return IngestRules(
        columns=data.columns.mapped(),
        timestamp_format=data.timestamp_format,
        valid_from=data.valid_from,
        valid_to=data.valid_to,
    )


def arrow_batches(con: ibis.BaseBackend, expr: ir.Table, batch_rows: int = ROW_GROUP_ROWS) -> Iterable[pa.RecordBatch]:
    """Stream an ibis expression's result from DuckDB as Arrow record batches, in result order."""
    return con.con.sql(con.compile(expr)).to_arrow_reader(batch_rows)


def _pandera_check(schema) -> Callable[[pa.Table], None]:
    def check(table: pa.Table) -> None:
        schema.validate(table.to_pandas(), lazy=False)

    return check


def _materialize(con: ibis.BaseBackend, source: RawSource, rules: IngestRules) -> tuple[ir.Table, ir.Table]:
    """Scan and parse the source once into a temporary DuckDB table, keep the (small) table of
    rejected rows beside it; return the parsed table and the classified one (their join)."""
    try:
        started = time.perf_counter()
        con.raw_sql(f"CREATE OR REPLACE TEMP TABLE parsed AS {con.compile(parse(source.table, rules))}")
        log.info("scanned and parsed in %.1f s", time.perf_counter() - started)
        started = time.perf_counter()
        parsed = con.table("parsed")
        con.raw_sql(f"CREATE OR REPLACE TEMP TABLE rejections AS {con.compile(rejections(parsed, rules))}")
        log.info("rules checked in %.1f s", time.perf_counter() - started)
    except (duckdb.InvalidInputException, duckdb.IOException, duckdb.ConversionException) as exc:
        raise scan_error(exc, source) from None  # malformed CSV lines, unreadable bytes
    return parsed, attach_reasons(parsed, con.table("rejections"))


def _summary(con: ibis.BaseBackend, parsed: ir.Table, classified: ir.Table) -> dict:
    """Row counts (checking rows_in = accepted + rejected) and the accepted rows' summary."""
    rows_in = con.to_pyarrow(parsed.count()).as_py()
    counts = con.to_pyarrow(reason_counts(classified)).to_pylist()
    accepted, by_reason = counts_by_reason((row[REASON], row["n"]) for row in counts)
    if accepted + sum(by_reason.values()) != rows_in:
        raise RuntimeError(f"row accounting broken: {rows_in} rows read, {accepted} accepted + {sum(by_reason.values())} rejected")
    summary = con.to_pyarrow(accepted_summary(accepted_transactions(classified))).to_pylist()[0]

    def day(value) -> str | None:
        return None if value is None else value.date().isoformat()

    return {
        "rows_in": rows_in,
        "rows_accepted": accepted,
        "rows_rejected": sum(by_reason.values()),
        "rejected_by_reason": by_reason,
        "n_customers": int(summary["n_customers"]),
        "n_returns": int(summary["n_returns"] or 0),
        "n_zero_amount": int(summary["n_zero_amount"] or 0),
        "date_min": day(summary["date_min"]),
        "date_max": day(summary["date_max"]),
    }


def ingest(data: DataParams, root: Path | None = None) -> dict:
    """Read, classify and write both outputs; return the metrics (without MLflow)."""
    started = time.perf_counter()
    with duckdb_connection(data.ingest_threads, data.ingest_memory_limit) as con:
        source = open_source(data.path, data.columns, con, root=root)
        log.info("reading %s (%d file(s))", source.label, len(source.files))
        sha = input_sha256(source.files, root=root)
        parsed, classified = _materialize(con, source, rules_from_params(data))
        metrics = _summary(con, parsed, classified)
        rows_in = metrics["rows_in"]
        log.info("rows read: %d; accepted %d, rejected %d", rows_in, metrics["rows_accepted"], metrics["rows_rejected"])
        for reason, n in metrics["rejected_by_reason"].items():
            if n:
                log.info("rejected %-22s %d", reason, n)
        n_written = write_parquet_stream(
            arrow_batches(con, accepted_transactions(classified)), paths.TRANSACTIONS, TRANSACTIONS_ARROW,
            row_group_rows=ROW_GROUP_ROWS, validate=_pandera_check(TRANSACTIONS_SCHEMA), what="accepted rows",
        )
        raw_columns, with_file = source.raw_columns, source.has_source_file
        n_quarantined = write_parquet_stream(
            arrow_batches(con, rejected_rows(classified, raw_columns)), paths.QUARANTINE,
            rejected_arrow_schema(raw_columns, with_file), row_group_rows=ROW_GROUP_ROWS,
            validate=_pandera_check(rejected_schema(raw_columns, with_file)), what="rejected rows",
        )
    if (n_written, n_quarantined) != (metrics["rows_accepted"], metrics["rows_rejected"]):
        raise RuntimeError(f"row accounting broken: wrote {n_written} + {n_quarantined}, counted {rows_in}")
    log.info("ingest done in %.1f s: %s, %s", time.perf_counter() - started, paths.TRANSACTIONS, paths.QUARANTINE)
    return {**metrics, "input": source.label, "input_sha256": sha}


def run(params: Params, params_path: Path = Path("params.yaml")) -> None:
    metrics = ingest(params.data)
    with tracking.stage_run(
        "ingest", params, section=params.data.model_dump(mode="json"),
        tags={"input_sha256": metrics["input_sha256"]}, params_path=params_path,
    ):
        tracking.log_metrics(metrics)
    write_json(metrics, paths.metrics_file("ingest"))
