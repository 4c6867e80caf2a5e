"""`cvp generate`: write seeded synthetic transactions (features.synthetic) to Parquet or CSV.

The file is streamed chunk by chunk (memory bounded by ``chunk_rows``) and written atomically.
Beside it, ``<file>.json`` records the row and customer counts, the seed, the true population
parameters and the params.yaml ``data`` mapping that reads the file.

    from pipelines.generate import write_synthetic
    summary = write_synthetic("data/raw/synthetic_1m.parquet", 1_000_000, seed=42)
    summary.params.bgnbd("W")   # true r, alpha, a, b in weeks
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv

from features.behaviours import Behaviours
from features.errors import DataError
from features.synthetic import (
    COLUMNS,
    DEFAULT_CHUNK_ROWS,
    OUTPUT_COLUMNS,
    TIMESTAMP_FORMAT,
    SyntheticParams,
    iter_transaction_tables,
    plan,
)
from pipelines.files import write_parquet_stream
from pipelines.files import atomic_path, write_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyntheticSummary:
    """What ``write_synthetic`` wrote."""

    path: Path
    rows: int
    customers: int
    seed: int
    params: SyntheticParams  # true parameters (alpha re-calibrated when customers were given)
    seconds: float

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("inf")

    def data_params(self) -> dict:
        """The params.yaml ``data`` keys that read this file (path relative as written)."""
        return {"path": self.path.as_posix(), "columns": dict(COLUMNS), "timestamp_format": TIMESTAMP_FORMAT}


def write_synthetic(
    path: Path | str,
    n_rows: int,
    seed: int,
    n_customers: int | None = None,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    params: SyntheticParams | None = None,
    noise_rate: float | None = None,
    behaviours: Behaviours | None = None,
    truth_path: Path | str | None = None,
    world: str = "default",
) -> SyntheticSummary:
    """Write ~``n_rows`` synthetic transactions to ``path`` (.parquet, or .csv / .csv.gz).

    ``noise_rate`` overrides ``params.noise_rate`` (noise rows per clean row; 0 = clean data).
    Identical arguments give identical rows (and, for Parquet with the same ``chunk_rows``,
    identical bytes). ``behaviours`` switches on features.behaviours (default: none, the pure
    BG/NBD + Gamma-Gamma world); ``truth_path`` (.parquet or .csv) receives one row per customer
    with the ground truth (features.synthetic.customer_truth). ``world`` names the preset the
    ``params`` and ``behaviours`` come from (features.synthetic.WORLD_PRESETS; recorded unless default).
    """
    path = Path(path)
    kind = _output_kind(path)
    truth_kind = None if truth_path is None else _output_kind(Path(truth_path))
    params = params or SyntheticParams()
    if noise_rate is not None:
        params = SyntheticParams(**{**asdict(params), "noise_rate": noise_rate})
    try:
        plan_ = plan(n_rows, seed, n_customers, params, behaviours)
        truth: list[pa.Table] | None = None if truth_path is None else []
        tables = iter_transaction_tables(n_rows, seed, n_customers, chunk_rows=chunk_rows, params=params,
                                         behaviours=behaviours, truth_sink=truth)
    except ValueError as exc:
        raise DataError(str(exc)) from None
    log.info("generating ~%d rows for %d customers (seed %d) to %s", n_rows, plan_.n_customers, seed, path)
    started = time.perf_counter()
    schema = pa.schema([(name, pa.string()) for name in OUTPUT_COLUMNS])
    if kind == "parquet":
        rows = write_parquet_stream(tables, path, schema, row_group_rows=chunk_rows, what="synthetic rows")
    else:
        rows = _write_csv_stream(tables, path, schema)
    seconds = time.perf_counter() - started
    summary = SyntheticSummary(path=path, rows=rows, customers=plan_.n_customers, seed=seed,
                               params=plan_.params, seconds=seconds)
    meta = {"rows": rows, "customers": plan_.n_customers, "seed": seed, "requested_rows": n_rows,
            "params": plan_.params.to_dict(), "data": summary.data_params()}
    if world != "default":
        meta["world"] = world
    if plan_.behaviours.active:
        meta["behaviours"] = plan_.behaviours.to_dict()
    write_json(meta, path.with_name(path.name + ".json"))
    if truth is not None:
        _write_truth(pa.concat_tables(truth), Path(truth_path), truth_kind)
    log.info("wrote %d rows in %.1f s (%.0f rows/s)", rows, seconds, summary.rows_per_second)
    return summary


def _output_kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    raise DataError(f"{path}: unknown output type; use a .parquet, .csv or .csv.gz file name")


def _write_csv_stream(tables, path: Path, schema: pa.Schema) -> int:
    rows = 0
    with atomic_path(path) as tmp:
        sink = pa.CompressedOutputStream(str(tmp), "gzip") if path.name.lower().endswith(".gz") else pa.OSFile(str(tmp), "wb")
        with sink, pacsv.CSVWriter(sink, schema) as writer:
            for table in tables:
                writer.write_table(table.select(schema.names).cast(schema))
                rows += table.num_rows
    return rows


def _write_truth(table: pa.Table, path: Path, kind: str) -> None:
    """The per-customer ground truth, atomically (Parquet, or CSV with ISO timestamps)."""
    if kind == "parquet":
        write_parquet_stream([table], path, table.schema, row_group_rows=max(1, table.num_rows), what="truth rows")
        return
    with atomic_path(path) as tmp:
        sink = pa.CompressedOutputStream(str(tmp), "gzip") if path.name.lower().endswith(".gz") else pa.OSFile(str(tmp), "wb")
        with sink:
            pacsv.write_csv(table, sink)
    log.info("wrote the ground truth of %d customers to %s", table.num_rows, path)
