"""Stage `ingest`: validate raw transactions; accepted rows to data/interim, bad rows to quarantine.

Reads ``data`` from params. The source (pipelines.sources) is scanned by DuckDB and classified
row by row (features.ingest, run by pipelines.engines); both outputs are streamed to Parquet in
fixed-size row groups, every row group validated with pandera before it is written, so the
Python side holds at most one row group.

Before anything is written the stage refuses, with one line (DataError, exit 2), a source
without rows, a rejected share above ``data.max_rejected_share``, no accepted row, or only
returns (features.ingest_report); a rejected share within the limit is a WARNING with the same
figures. Rows dated after the run date (UTC) are quarantined as ``implausible_timestamp``, so a
typo dated 2099 never becomes the scoring date.
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import ibis
import ibis.expr.types as ir
import pyarrow as pa

from features import ingest_report as report
from features.ingest import (
    TRANSACTIONS_ARROW,
    TRANSACTIONS_SCHEMA,
    accepted_transactions,
    rejected_arrow_schema,
    rejected_rows,
    rejected_schema,
)
from pipelines import domain, engines, files, tracking
from pipelines.catalog import Catalog
from pipelines.config import DataParams, Params
from pipelines.sources import RawSource, input_sha256, open_source

log = logging.getLogger(__name__)

STAGE = "ingest"
ROW_GROUP_ROWS = 1 << 18  # rows per Parquet row group (and per validated chunk)


def ingest(data: DataParams, paths: Catalog, today: dt.date | None = None) -> dict:
    """Read, classify and write both outputs of the project at ``paths``; return the metrics
    (without MLflow). ``today`` is the run date (default: UTC today)."""
    started = time.perf_counter()
    rules = domain.ingest_rules(data, today)
    with engines.duckdb_connection(data.ingest_threads, data.ingest_memory_limit) as con, \
            tempfile.TemporaryDirectory(prefix="cvp-ingest-text-") as scratch:
        engines.check_timezone(con, data.timezone)
        source = open_source(data.path, data.columns, con, paths.root, encoding=data.encoding, scratch=Path(scratch))
        log.info("reading %s (%d file(s))", source.label, len(source.files))
        sha = input_sha256(source.files, paths.root)
        parsed, classified = engines.classify_source(con, source, rules)
        metrics = report.ingest_metrics(*engines.classified_counts(con, parsed, classified))
        _log_counts(metrics)
        samples = _samples(con, source, data) if metrics["rows_rejected"] else {}
        warning = report.check_outcome(metrics, samples, source.label, data.max_rejected_share, data.columns.amount)
        if warning:
            log.warning("%s, the rows are in %s", warning, paths.QUARANTINE)
        metrics["rejected_sample_rows"] = report.sample_source_rows(samples)
        _write(con, source, classified, metrics, paths)
    log.info("ingest done in %.1f s: %s, %s", time.perf_counter() - started, paths.TRANSACTIONS, paths.QUARANTINE)
    return {**metrics, "input": source.label, "input_sha256": sha}


def run(params: Params, paths: Catalog) -> None:
    """Ingest ``params.data`` into the project at ``paths``; metrics file and MLflow run."""
    metrics = ingest(params.data, paths)
    tags = {"input_sha256": metrics["input_sha256"]}
    with tracking.stage_record(STAGE, params, paths, section=params.data.model_dump(mode="json"), tags=tags) as record:
        record.log_metrics(metrics)
    files.write_json(metrics, paths.metrics_file(STAGE))


def _log_counts(metrics: dict) -> None:
    log.info("rows read: %d; accepted %d, rejected %d", metrics["rows_in"], metrics["rows_accepted"], metrics["rows_rejected"])
    for reason, n in metrics["rejected_by_reason"].items():
        if n:
            log.info("rejected %-22s %d", reason, n)


def _samples(con: ibis.BaseBackend, source: RawSource, data: DataParams) -> dict[str, list[dict]]:
    """The first rejected rows of every reason, with the mapped source columns' raw text."""
    names = list(dict.fromkeys(data.columns.mapped().values()))
    rows = engines.rejected_sample_rows(con, names, report.SAMPLES_PER_REASON)
    return report.samples_by_reason(rows, names, several_files=len(source.files) > 1)


def _write(con: ibis.BaseBackend, source: RawSource, classified: ir.Table, metrics: dict, paths: Catalog) -> None:
    """Stream the accepted rows and the quarantine, each row group validated; check the counts."""
    raw, with_file = source.raw_columns, source.has_source_file
    outputs = (
        (accepted_transactions(classified), paths.TRANSACTIONS, TRANSACTIONS_ARROW, TRANSACTIONS_SCHEMA, "accepted rows"),
        (rejected_rows(classified, raw), paths.QUARANTINE, rejected_arrow_schema(raw, with_file),
         rejected_schema(raw, with_file), "rejected rows"),
    )  # fmt: skip
    written = [
        files.write_parquet_stream(engines.record_batches(con, expr, ROW_GROUP_ROWS), target, arrow, row_group_rows=ROW_GROUP_ROWS,
                                   validate=_validator(schema), what=what)
        for expr, target, arrow, schema, what in outputs
    ]  # fmt: skip
    if written != [metrics["rows_accepted"], metrics["rows_rejected"]]:
        raise RuntimeError(f"row accounting broken: wrote {written[0]} + {written[1]}, counted {metrics['rows_in']}")


def _validator(schema) -> Callable[[pa.Table], None]:
    return lambda table: schema.validate(table.to_pandas(), lazy=False, inplace=True)  # a fresh frame: no copy
