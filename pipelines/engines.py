"""The ibis backends the stages execute their expressions on, and the queries that need one.

Features: ``params.features.engine`` picks the backend. ``duckdb`` (default) is embedded and
needs nothing else; ``threads``, ``memory_limit`` and ``temp_directory`` bound what it uses
(above the memory limit it spills to the temporary directory). ``pyspark`` runs the same
expressions on Spark and needs the ``spark`` extra.

Ingest always runs on an in-memory DuckDB in UTC (``duckdb_connection``): the source is parsed
once into a temporary table, the rejected rows' reasons go to a small second table
(``classify_source``), and results are streamed out as Arrow record batches.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import ibis
import ibis.expr.types as ir
import pandera.pandas as pa_schema
import pyarrow as pa

from features.customer import arrow_schema, chunk_validator, transaction_problems
from features.errors import DataError
from features.ingest import (
    IngestRules,
    accepted_summary,
    accepted_transactions,
    attach_reasons,
    parse,
    reason_counts,
    rejected_samples,
    rejections,
)
from pipelines import spark
from pipelines.config import ConfigError, FeaturesParams
from pipelines.files import write_parquet_stream
from pipelines.sources import RawSource, first_line, scan_error, sql_text

log = logging.getLogger(__name__)


def duckdb_config(params: FeaturesParams, temp_directory: Path) -> dict[str, object]:
    """DuckDB settings from params: unset keys keep DuckDB's defaults (all cores, 80% of RAM)."""
    config: dict[str, object] = {"temp_directory": str(temp_directory)}
    if params.threads is not None:
        config["threads"] = params.threads
    if params.memory_limit is not None:
        config["memory_limit"] = params.memory_limit
    return config


@contextlib.contextmanager
def _duckdb(params: FeaturesParams, root: Path) -> Iterator[ibis.BaseBackend]:
    with contextlib.ExitStack() as stack:
        if params.temp_directory:
            spill = root / params.temp_directory  # an absolute temp_directory stays as it is
            spill.mkdir(parents=True, exist_ok=True)
        else:
            spill = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cvp-duckdb-")))
        config = duckdb_config(params, spill)
        try:
            con = ibis.duckdb.connect(**config)
        except Exception as exc:  # duckdb rejects e.g. a malformed memory_limit
            reason = str(exc).splitlines()[0]
            raise ConfigError(f"features: DuckDB rejected the settings {config} ({reason}); fix them in params.yaml") from None
        stack.callback(con.disconnect)
        con.raw_sql("SET enable_progress_bar = false")  # no terminal output from long queries
        log.info("DuckDB engine: %s", config)
        yield con


@contextlib.contextmanager
def _pyspark(params: FeaturesParams, root: Path) -> Iterator[ibis.BaseBackend]:
    with spark.session(params) as session:
        yield ibis.pyspark.connect(session)


def record_batches(con: ibis.BaseBackend, expr: ibis.Table, rows: int) -> Iterable[pa.RecordBatch]:
    """Stream an expression's result as Arrow record batches of about ``rows`` rows, in order."""
    if con.name == "duckdb":
        # ibis 12's DuckDB to_pyarrow_batches calls an API DuckDB 2 removed: do what it does
        # (register in-memory tables, compile) and read DuckDB's own Arrow reader.
        con._run_pre_execute_hooks(expr)
        return con.con.sql(con.compile(expr)).to_arrow_reader(rows)
    return con.to_pyarrow_batches(expr, chunk_size=rows)


@contextlib.contextmanager
def cached(con: ibis.BaseBackend, expr: ibis.Table, name: str) -> Iterator[ibis.Table]:
    """``expr`` computed once and kept for the block: a temporary table on DuckDB, ibis'
    cache (a persisted DataFrame) elsewhere; dropped on exit."""
    if con.name != "duckdb":
        with expr.cache() as table:
            yield table
        return
    drop = f'DROP TABLE IF EXISTS "{name}"'  # ibis 12's drop_table emits SQL DuckDB 2 rejects
    con.raw_sql(drop)
    try:
        yield con.create_table(name, expr, temp=True)
    finally:
        con.raw_sql(drop)


@contextlib.contextmanager
def connect(params: FeaturesParams, root: Path | str = ".") -> Iterator[ibis.BaseBackend]:
    """An ibis backend for ``params.engine``, closed (and its spill directory removed) on exit;
    a relative ``temp_directory`` is taken from the project ``root``."""
    opener = {"duckdb": _duckdb, "pyspark": _pyspark}[params.engine]
    with opener(params, Path(root)) as con:
        yield con


def one_row(con: ibis.BaseBackend, expr: ir.Table) -> dict[str, Any]:
    """The single row of an aggregate expression as plain Python values."""
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in con.to_pandas(expr).iloc[0].items()}


def count(con: ibis.BaseBackend, expr: ir.Value) -> int:
    """An integer scalar expression's value."""
    return int(con.execute(expr))


# --------------------------------------------------------------------------- features


def read_transactions(con: ibis.BaseBackend, path: Path) -> ir.Table:
    """The ingest output as an ibis table (not loaded into memory), its schema checked."""
    tx = con.read_parquet(path, table_name="transactions")
    problems = transaction_problems(tx.schema())
    if problems:
        raise DataError(f"{path}: {problems[0]}; re-run `cvp ingest` to rebuild it")
    return tx


def write_validated(con: ibis.BaseBackend, expr: ir.Table, schema: pa_schema.DataFrameSchema, target: Path, rows: int) -> int:
    """Stream ``expr`` to Parquet atomically in row groups of ``rows`` rows, each validated
    (features.customer.chunk_validator); return the row count.

    Memory stays bounded by one row group, whatever the number of customers; fixed row groups
    make identical results byte-identical files."""
    return write_parquet_stream(
        record_batches(con, expr, rows), target, arrow_schema(schema), row_group_rows=rows,
        validate=chunk_validator(schema), what="customers",
    )  # fmt: skip


# --------------------------------------------------------------------------- ingest


@contextlib.contextmanager
def duckdb_connection(threads: int | None = None, memory_limit: str | None = None) -> Iterator[ibis.BaseBackend]:
    """A fresh in-memory DuckDB connection in UTC that spills to a temporary directory (removed on
    exit) above ``memory_limit`` (e.g. "4GB"); None keeps DuckDB's defaults (all cores, 80% of RAM)."""
    with tempfile.TemporaryDirectory(prefix="cvp-ingest-") as spill:
        con = ibis.duckdb.connect(temp_directory=spill)
        try:
            con.raw_sql("SET TimeZone = 'UTC'")
            con.raw_sql("SET enable_progress_bar = false")
            for key, setting, value in (("ingest_threads", "threads", threads), ("ingest_memory_limit", "memory_limit", memory_limit)):
                if value is not None:
                    try:
                        con.raw_sql(f"SET {setting} = {sql_text(str(value))}")
                    except duckdb.Error as exc:
                        raise ConfigError(f"data.{key}: DuckDB refused {value!r} ({first_line(exc)}); fix it in params.yaml") from None
            yield con
        finally:
            con.disconnect()


def check_timezone(con: ibis.BaseBackend, timezone: str | None) -> None:
    """ConfigError unless DuckDB knows ``timezone`` (data.timezone)."""
    if timezone is None:
        return
    try:
        con.con.sql(f"SELECT timezone('UTC', timezone({sql_text(timezone)}, TIMESTAMP '2000-01-01'))").fetchall()
    except duckdb.Error:
        raise ConfigError(
            f"data.timezone: unknown time zone {timezone!r}; use an IANA name such as Europe/Berlin or America/New_York, or null for UTC"
        ) from None


def classify_source(con: ibis.BaseBackend, source: RawSource, rules: IngestRules) -> tuple[ir.Table, ir.Table]:
    """Scan and parse the source once into a temporary table ``parsed``, keep the (small) table
    ``rejections`` beside it; return the parsed table and the classified one (their join)."""
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


def classified_counts(con: ibis.BaseBackend, parsed: ir.Table, classified: ir.Table) -> tuple[int, list[tuple[str | None, int]], dict]:
    """(rows read, (reason, rows) pairs with None = accepted, the accepted rows' summary row)."""
    rows_in = con.to_pyarrow(parsed.count()).as_py()
    pairs = [(row["reason"], row["n"]) for row in con.to_pyarrow(reason_counts(classified)).to_pylist()]
    summary = con.to_pyarrow(accepted_summary(accepted_transactions(classified))).to_pylist()[0]
    return rows_in, pairs, summary


def rejected_sample_rows(con: ibis.BaseBackend, names: list[str], per_reason: int) -> list[dict]:
    """The first ``per_reason`` rejected rows of every reason (after ``classify_source``), with
    the ``names`` columns as raw text."""
    return con.to_pyarrow(rejected_samples(con.table("parsed"), con.table("rejections"), names, per_reason)).to_pylist()
