"""Atomic, deterministic file output: write to a temporary sibling, then rename over the target.

A stage killed mid-write leaves the previous file (or none) in place, never a partial one.
The temporary file it leaves (``.<name>.<pid>.<random>.tmp``, beside the target) is removed by
the next write of the same target once its writer's process is gone, so stale temporary files
neither pile up nor stay inside a DVC-tracked output directory (where they would change its hash).
The temporary file is fsynced before the rename and the directory after it, so a power loss or
kernel crash cannot leave an empty file under the target's name either.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.frames import fixed_size_tables

log = logging.getLogger(__name__)

PROGRESS_EVERY_ROWS = 2_000_000


@contextlib.contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target`` atomically."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates the file owner-only; give outputs the usual permissions.
        os.chmod(tmp_path, 0o666 & ~_umask())
        _fsync_file(tmp_path)
        os.replace(tmp_path, target)
        _fsync_directory(target.parent)
    finally:
        tmp_path.unlink(missing_ok=True)


def _fsync_file(path: Path) -> None:
    """Force the file's data to disk, so a crash after the rename cannot leave an empty or partial
    file under the target's name (the writers have closed, hence flushed, their own handles)."""
    fd = os.open(path, os.O_RDWR)  # Windows refuses to fsync a read-only descriptor
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(directory: Path) -> None:
    """Force the directory entry of a rename to disk (POSIX); skipped where directories cannot be
    opened or synced (Windows, some network filesystems)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# One layer of temporary name around ``inner``: ".<inner>.<pid>.<random>.tmp" (mkstemp's random
# part has no dot). Export stages a file in a temporary path and writes that atomically too, which
# nests two layers.
_TEMP_NAME = re.compile(r"\.(?P<inner>.+)\.(?P<pid>\d+)\.[^.]+\.tmp")


def _temp_writer_pids(name: str, target_name: str) -> list[int] | None:
    """The pids in ``name`` if it is a (possibly nested) temporary file of ``target_name``, else None."""
    pids = []
    while match := _TEMP_NAME.fullmatch(name):
        pids.append(int(match["pid"]))
        name = match["inner"]
        if name == target_name:
            return pids
    return None


def _process_exists(pid: int) -> bool:
    if pid == os.getpid() or os.name == "nt":  # on Windows os.kill(pid, 0) would end the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, owned by someone else
        return True
    return True


def remove_stale_temps(target: Path | str) -> list[Path]:
    """Delete the temporary files of ``target`` left by writers whose process no longer exists
    (killed mid-write); return them. A temporary file of a running process (this one included)
    is kept, so a concurrent writer is never disturbed; a reused pid only keeps a stale file."""
    target = Path(target)
    removed = []
    with os.scandir(target.parent) as entries:
        names = [entry.name for entry in entries if entry.name.startswith(".") and entry.name.endswith(".tmp")]
    for name in sorted(names):
        pids = _temp_writer_pids(name, target.name)
        if pids and not any(_process_exists(pid) for pid in pids):
            (target.parent / name).unlink(missing_ok=True)
            removed.append(target.parent / name)
            log.info("removed %s, left by a writer that was killed (pid %s)", target.parent / name, pids[-1])
    return removed


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_parquet(df: pd.DataFrame, target: Path | str) -> Path:
    """Write a frame to Parquet atomically; byte-identical for identical frames."""
    with atomic_path(target) as tmp:
        df.to_parquet(tmp, index=False, engine="pyarrow", compression="zstd")
    return Path(target)


#: Frames from this many rows are written by DuckDB when every column allows (:func:`csv_columns_sql`).
CSV_ENGINE_MIN_ROWS = 10_000


def write_csv(df: pd.DataFrame, target: Path | str) -> Path:
    """Write a frame as CSV atomically, the bytes of pandas' ``to_csv(index=False, lineterminator="\\n")``.

    Frames of at least :data:`CSV_ENGINE_MIN_ROWS` rows whose every column DuckDB writes to the same
    bytes go through DuckDB's CSV writer (several times faster on large frames); the others, pandas.
    """
    with atomic_path(target) as tmp:
        columns = csv_columns_sql(df) if len(df) >= CSV_ENGINE_MIN_ROWS else None
        if columns is None:
            df.to_csv(tmp, index=False, lineterminator="\n")
        else:
            _duckdb_csv(df, columns, tmp)
    return Path(target)


def _duckdb_csv(df: pd.DataFrame, columns: list[str], path: Path) -> None:
    import duckdb

    with duckdb.connect() as con:
        con.execute("SET enable_progress_bar = false")
        con.register("frame", df)
        target = str(path).replace("'", "''")
        con.execute(f"COPY (SELECT {', '.join(columns)} FROM frame) TO '{target}' (HEADER, DELIMITER ',', NEW_LINE '\\n')")


# DuckDB quotes text holding '#' or a carriage return, and the empty string, where pandas' csv
# module does not; such a column (or name) goes through pandas.
_DUCKDB_QUOTES_APART = r"[#\r]"


def _plain_text(values: pd.Series) -> bool:
    """True when DuckDB and pandas write every (non-missing) value of this text column alike."""
    text = values.dropna()
    if pd.api.types.infer_dtype(text, skipna=True) not in ("string", "empty"):
        return False
    text = text.astype(str)
    return not ((text == "").any() or text.str.contains(_DUCKDB_QUOTES_APART, regex=True).any())


def csv_columns_sql(df: pd.DataFrame) -> list[str] | None:
    """DuckDB select expressions writing each column as pandas' to_csv does, or None if a column or
    its name has no such expression: float64 (DuckDB writes the shortest repr, as Python does; NaN
    as empty), integers, bools (True/False), text and text categoricals (missing as empty), and
    dates without a time of day (datetime64 at midnight, written YYYY-MM-DD as pandas does)."""
    names = [str(c) for c in df.columns]
    if len(names) < 2 or len(set(names)) != len(names) or not _plain_text(pd.Series(names)):
        return None  # one column: pandas writes a missing value as "", not as an empty line
    out = []
    for name, (_, column) in zip(names, df.items(), strict=True):
        ident = '"' + name.replace('"', '""') + '"'
        dtype = column.dtype
        if dtype == "float64" or (dtype.kind in "iu" and isinstance(dtype, np.dtype)):
            out.append(ident)
        elif dtype == "bool":
            out.append(f"CASE WHEN {ident} THEN 'True' ELSE 'False' END AS {ident}")
        elif isinstance(dtype, pd.CategoricalDtype):
            if not _plain_text(pd.Series(dtype.categories)):
                return None
            out.append(f"CAST({ident} AS VARCHAR) AS {ident}")
        elif pd.api.types.is_string_dtype(dtype) or dtype == object:
            if not _plain_text(column):
                return None
            out.append(ident)
        elif isinstance(dtype, np.dtype) and dtype.kind == "M":
            values = column.dropna()
            if not (values == values.dt.normalize()).all():
                return None
            out.append(f"strftime(CAST({ident} AS DATE), '%Y-%m-%d') AS {ident}")
        else:
            return None
    return out


def write_parquet_stream(
    tables: Iterable[pa.Table | pa.RecordBatch],
    target: Path | str,
    schema: pa.Schema,
    row_group_rows: int = 1 << 18,
    validate: Callable[[pa.Table], None] | None = None,
    what: str = "rows",
) -> int:
    """Write a stream of Arrow tables to Parquet atomically, in row groups of exactly
    ``row_group_rows`` rows (the last may be shorter), so identical data gives identical bytes
    whatever the upstream batch sizes. ``validate`` is called on every row group before it is
    written. Returns the number of rows written."""
    written = 0
    next_report = PROGRESS_EVERY_ROWS
    with atomic_path(target) as tmp:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for table in fixed_size_tables(tables, row_group_rows):
                table = table.cast(schema)
                if validate is not None:
                    validate(table)
                writer.write_table(table, row_group_size=row_group_rows)
                written += table.num_rows
                if written >= next_report:
                    log.info("%s: %d %s written", Path(target).name, written, what)
                    next_report += PROGRESS_EVERY_ROWS
            if written == 0:
                writer.write_table(schema.empty_table())
    return written


def _clean(value: Any) -> Any:
    """JSON-safe, stable values: NaN/inf become null, numpy scalars become Python ones."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return float(f"{value:.10g}")
    return value


def write_json(obj: Any, target: Path | str) -> Path:
    """Write JSON atomically with sorted keys and floats rounded to 10 significant digits."""
    text = json.dumps(_clean(obj), indent=2, sort_keys=True) + "\n"
    return write_text(text, target)


def write_text(text: str, target: Path | str) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text)
    return Path(target)


def write_bytes(data: bytes, target: Path | str) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def read_json(path: Path | str) -> Any:
    return json.loads(Path(path).read_text())


def file_sha256(path: Path | str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def frame_sha256(df: pd.DataFrame) -> str:
    """Content hash of a frame (values and column names, order-sensitive)."""
    hashed = pd.util.hash_pandas_object(df, index=False).to_numpy()
    digest = hashlib.sha256(hashed.tobytes())
    digest.update("|".join(map(str, df.columns)).encode())
    return digest.hexdigest()


FIGURE_DPI = 110  # every PNG the pipeline writes (plots/, reports/)


def png_bytes(fig: Any, dpi: int = FIGURE_DPI) -> bytes:
    """A matplotlib Figure as PNG bytes, without the Software metadata (so identical figures give
    identical bytes); the one PNG encoder (files and figures embedded in HTML pages)."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    return buffer.getvalue()


def save_figure(fig: Any, target: Path | str, dpi: int = FIGURE_DPI) -> Path:
    """Write a matplotlib Figure as PNG atomically (:func:`png_bytes`)."""
    return write_bytes(png_bytes(fig, dpi), target)
