"""Stage `ingest`: validate raw transactions; accepted rows to data/interim, bad rows to quarantine.

Reads ``data`` from params. The source is scanned by DuckDB and parsed once into a temporary
table (features.ingest), the rejected rows' reasons go to a small second table, then both
outputs are streamed to Parquet in fixed-size row groups. Every row group is validated with
pandera before it is written (all rows are validated, one row group at a time, so the Python
side holds at most one row group; DuckDB spills to a temporary directory when needed).

Before anything is written the stage refuses, with one line (DataError, exit 2): a source
without rows, a rejected share above ``data.max_rejected_share`` (naming the top reasons, their
counts and two sample rows each), no accepted row, and accepted rows that are all returns. A
rejected share above zero and within the limit is a WARNING with the same figures. Rows dated
after the run date (UTC) are quarantined as ``implausible_timestamp``, so a typo dated 2099 never
becomes the scoring date.
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
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
    rejected_samples,
    rejected_schema,
)
from features.errors import DataError
from pipelines import paths, tracking
from pipelines.config import ConfigError, DataParams, Params
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


SAMPLES_PER_REASON = 2
TOP_REASONS = 3
SAMPLE_VALUE_CHARS = 40
# What to check for each reason, named in the rejected-share line.
REASON_HINTS: dict[str, str] = {
    "missing_customer_id": "data.columns.customer_id",
    "missing_timestamp": "data.columns.timestamp",
    "unparseable_timestamp": "data.timestamp_format (a list of formats is tried in order)",
    "implausible_timestamp": "data.valid_from/valid_to (rows dated after the run date are implausible)",
    "missing_amount": "data.columns.amount",
    "non_numeric_amount": "data.decimal and the amount format",
    "non_numeric_quantity": "data.decimal and data.columns.quantity",
    "non_numeric_cost": "data.decimal and data.columns.cost",
    "duplicate_order_line": "data.columns.order_id",
}


def run_date() -> dt.date:
    """Today in UTC: rows dated after it are quarantined."""
    return dt.datetime.now(dt.timezone.utc).date()


def valid_until(data: DataParams, today: dt.date) -> dt.date:
    """The exclusive upper bound of plausible timestamps: data.valid_to, but never later than the
    day after the run date (a transaction cannot be dated in the future)."""
    tomorrow = today + dt.timedelta(days=1)
    return tomorrow if data.valid_to is None else min(data.valid_to, tomorrow)


def rules_from_params(data: DataParams, today: dt.date | None = None) -> IngestRules:
    """The classification rules of the data params, with the run date ``today`` (default: UTC today)."""
    valid_to = valid_until(data, run_date() if today is None else today)
    if data.valid_from >= valid_to:
        raise ConfigError(f"data.valid_from {data.valid_from} is not before {valid_to} (data.valid_to or the day after the run date); fix it in params.yaml")
    return IngestRules(
        columns=data.columns.mapped(),
        timestamp_format=data.timestamp_format,
        valid_from=data.valid_from,
        valid_to=valid_to,
        timezone=data.timezone,
        decimal=data.decimal,
    )


def check_timezone(con: ibis.BaseBackend, timezone: str | None) -> None:
    """ConfigError unless DuckDB knows ``timezone`` (data.timezone)."""
    if timezone is None:
        return
    try:
        con.con.sql(f"SELECT timezone('UTC', timezone({_sql_text(timezone)}, TIMESTAMP '2000-01-01'))").fetchall()
    except duckdb.Error:
        raise ConfigError(
            f"data.timezone: unknown time zone {timezone!r}; use an IANA name such as Europe/Berlin or America/New_York, or null for UTC"
        ) from None


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


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

    rejected = sum(by_reason.values())
    return {
        "rows_in": rows_in,
        "rows_accepted": accepted,
        "rows_rejected": rejected,
        "rejected_by_reason": by_reason,
        "rejected_share": rejected / rows_in if rows_in else 0.0,
        "n_customers": int(summary["n_customers"]),
        "n_returns": int(summary["n_returns"] or 0),
        "n_zero_amount": int(summary["n_zero_amount"] or 0),
        "date_min": day(summary["date_min"]),
        "date_max": day(summary["date_max"]),
    }


def _share(share: float) -> str:
    """A share as a percentage with 3 significant digits (0.0412% for one row in 2,427)."""
    return f"{100 * share:.3g}%"


def _quoted(value: str | None) -> str:
    if value is None:
        return "null"
    text = value if len(value) <= SAMPLE_VALUE_CHARS else value[: SAMPLE_VALUE_CHARS - 3] + "..."
    return repr(text)


def sample_rows(con: ibis.BaseBackend, source: RawSource, columns: Mapping[str, str]) -> dict[str, list[dict]]:
    """The first rejected rows of every reason: {reason: [{source_row, [source_file], values}]},
    with the mapped source columns' raw text as values."""
    names = list(dict.fromkeys(columns.values()))
    expr = rejected_samples(con.table("parsed"), con.table("rejections"), names, SAMPLES_PER_REASON)
    out: dict[str, list[dict]] = {}
    for row in con.to_pyarrow(expr).to_pylist():
        entry = {"source_row": row[SOURCE_ROW], "values": {name: row[name] for name in names}}
        if SOURCE_FILE in row and len(source.files) > 1:
            entry["source_file"] = row[SOURCE_FILE]
        out.setdefault(row[REASON], []).append(entry)
    return out


def rejection_summary(metrics: dict, samples: Mapping[str, list[dict]]) -> str:
    """'<n> of <rows> rows rejected (<share>): <reason> <count> (source_row r: col='v', ...; ...), ...'
    for the TOP_REASONS reasons with the most rows."""
    by_reason = sorted(((n, r) for r, n in metrics["rejected_by_reason"].items() if n), key=lambda x: (-x[0], x[1]))
    parts = []
    for n, reason in by_reason[:TOP_REASONS]:
        shown = []
        for sample in samples.get(reason, []):
            where = f"source_row {sample['source_row']}"
            if "source_file" in sample:
                where += f" of {sample['source_file']}"
            shown.append(where + ": " + ", ".join(f"{k}={_quoted(v)}" for k, v in sample["values"].items()))
        parts.append(f"{reason} {n:,} ({'; '.join(shown)})" if shown else f"{reason} {n:,}")
    if len(by_reason) > TOP_REASONS:
        parts.append(f"{len(by_reason) - TOP_REASONS} more reason(s) with {sum(n for n, _ in by_reason[TOP_REASONS:]):,} rows")
    return (
        f"{metrics['rows_rejected']:,} of {metrics['rows_in']:,} rows rejected ({_share(metrics['rejected_share'])}): "
        + ", ".join(parts)
    )


def _hints(metrics: dict) -> str:
    top = sorted((r for r, n in metrics["rejected_by_reason"].items() if n), key=lambda r: -metrics["rejected_by_reason"][r])
    return "; ".join(dict.fromkeys(REASON_HINTS[r] for r in top[:TOP_REASONS] if r in REASON_HINTS))


def check_outcome(metrics: dict, data: DataParams, label: str, samples: Mapping[str, list[dict]]) -> None:
    """Refuse (DataError, one line) a source without rows, a rejected share above
    data.max_rejected_share, no accepted row, or only returns; warn for any other rejected row."""
    if metrics["rows_in"] == 0:
        raise DataError(f"{label}: file is empty (a header but no rows); export the transactions again or fix data.path")
    share, limit = metrics["rejected_share"], data.max_rejected_share
    if share > limit:
        raise DataError(
            f"{label}: {rejection_summary(metrics, samples)}; above data.max_rejected_share {_share(limit)}: "
            f"check {_hints(metrics)}, or raise data.max_rejected_share to accept the loss"
        )
    if metrics["rows_accepted"] == 0:
        raise DataError(f"{label}: no row accepted; {rejection_summary(metrics, samples)}; check {_hints(metrics)}")
    if metrics["n_returns"] == metrics["rows_accepted"]:
        raise DataError(
            f"{label}: all {metrics['rows_accepted']:,} accepted rows have a negative amount (returns), so no customer "
            f"has a purchase to score; check data.columns.amount ('{data.columns.amount}') and the sign of the export's amounts"
        )
    if metrics["rows_rejected"]:
        log.warning(
            "%s: %s; within data.max_rejected_share %s, the rows are in %s",
            label, rejection_summary(metrics, samples), _share(limit), paths.QUARANTINE,
        )


def ingest(data: DataParams, root: Path | None = None, today: dt.date | None = None) -> dict:
    """Read, classify and write both outputs; return the metrics (without MLflow).

    ``today`` is the run date (default: UTC today); rows dated after it are quarantined."""
    started = time.perf_counter()
    rules = rules_from_params(data, today)
    with duckdb_connection(data.ingest_threads, data.ingest_memory_limit) as con, \
            tempfile.TemporaryDirectory(prefix="cvp-ingest-text-") as scratch:
        check_timezone(con, data.timezone)
        source = open_source(data.path, data.columns, con, root=root, encoding=data.encoding, scratch=Path(scratch))
        log.info("reading %s (%d file(s))", source.label, len(source.files))
        sha = input_sha256(source.files, root=root)
        parsed, classified = _materialize(con, source, rules)
        metrics = _summary(con, parsed, classified)
        rows_in = metrics["rows_in"]
        log.info("rows read: %d; accepted %d, rejected %d", rows_in, metrics["rows_accepted"], metrics["rows_rejected"])
        for reason, n in metrics["rejected_by_reason"].items():
            if n:
                log.info("rejected %-22s %d", reason, n)
        samples = sample_rows(con, source, data.columns.mapped()) if metrics["rows_rejected"] else {}
        check_outcome(metrics, data, source.label, samples)
        metrics["rejected_sample_rows"] = {r: [x["source_row"] for x in rows] for r, rows in samples.items()}
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
