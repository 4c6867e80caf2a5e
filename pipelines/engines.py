"""The ibis backend that executes the feature expressions, from ``params.features``.

``duckdb`` (default) is embedded and needs nothing else; ``threads``, ``memory_limit`` and
``temp_directory`` bound what it uses (above the memory limit it spills to the temporary
directory). ``pyspark`` runs the same expressions on Spark and needs the ``spark`` extra.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import ibis
import pyarrow as pa

from pipelines import spark
from pipelines.config import ConfigError, FeaturesParams

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
def _duckdb(params: FeaturesParams) -> Iterator[ibis.BaseBackend]:
    with contextlib.ExitStack() as stack:
        if params.temp_directory:
            spill = Path(params.temp_directory)
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
def _pyspark(params: FeaturesParams) -> Iterator[ibis.BaseBackend]:
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
def connect(params: FeaturesParams) -> Iterator[ibis.BaseBackend]:
    """An ibis backend for ``params.engine``, closed (and its spill directory removed) on exit."""
    opener = {"duckdb": _duckdb, "pyspark": _pyspark}[params.engine]
    with opener(params) as con:
        yield con
