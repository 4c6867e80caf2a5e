"""Open the raw transaction source named by ``data.path`` as an ibis table on DuckDB.

Supported sources:

- ``lifetimes:CDNOW_master``: the CDNOW file bundled with lifetimes (whitespace-separated, header
  ``customer_id date number_of_cds dollar_value``), read as text so ids like "00001" keep zeros;
- ``lifetimes:CDNOW_sample``: the headerless sample (customer_id, customer_index, date,
  quantity, amount);
- a CSV (header required; ``.csv``, ``.tsv``, ``.txt``, optionally compressed) or Parquet file, or
  a glob of them, relative to the project root. Files are read in sorted path order; CSV values
  are read as text so validation is ours, Parquet columns keep their types. CSV text is decoded
  with ``data.encoding``: UTF-8 (a BOM is skipped), UTF-16 and Latin-1 by DuckDB, any other
  Python codec (cp1252 ...) by transcoding the file to UTF-8 in a scratch directory first.

Every source gets ``source_row`` (0-based row index, counting across the files of a glob) and file
sources get ``source_file`` (the path as listed, relative to the project root when inside it).
Large files are scanned by DuckDB and never loaded into pandas.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import ibis
import ibis.expr.types as ir
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.errors import DataError
from features.ingest import RESERVED_COLUMNS, SOURCE_FILE, SOURCE_ROW, missing_mapped_columns
from pipelines.config import ColumnsParams
from pipelines.files import file_sha256
from pipelines.source_files import (  # noqa: F401  (re-exported: the source's names and files live there)
    LIFETIMES_FILES,
    LIFETIMES_PREFIX,
    lifetimes_dataset,
    lifetimes_file,
    resolve_files,
)
from pipelines.source_files import file_label as _label

log = logging.getLogger(__name__)

CSV_SUFFIXES = (".csv", ".tsv", ".txt")
# Python codec name -> the name DuckDB's CSV reader decodes itself; other codecs are transcoded.
DUCKDB_ENCODINGS = {"utf-8": "utf-8", "utf-8-sig": "utf-8", "utf-16": "utf-16", "iso8859-1": "latin-1"}
COMPRESSED_SUFFIXES = (".gz", ".zst")
PARQUET_SUFFIXES = (".parquet", ".pq")


@dataclass(frozen=True)
class RawSource:
    """An opened source: the ibis table and what was read to make it."""

    table: ir.Table              # raw columns + source_row (+ source_file for file sources)
    raw_columns: tuple[str, ...]  # source columns, in file order (union over a glob)
    files: tuple[Path, ...]       # files read, in read order
    label: str                    # data.path as configured
    encoding: str = "utf-8"       # data.encoding the CSV files were decoded with
    file_labels: tuple[str, ...] = ()  # the files as named in messages (relative to the project root)

    @property
    def has_source_file(self) -> bool:
        return SOURCE_FILE in self.table.columns


def open_source(
    path: str,
    columns: ColumnsParams,
    con: ibis.BaseBackend,
    root: Path,
    encoding: str = "utf-8",
    scratch: Path | None = None,
) -> RawSource:
    """Open ``path`` (data.path, relative to the project ``root``) and check that every mapped
    column exists in every file.

    CSV files are decoded with ``encoding`` (data.encoding); encodings DuckDB cannot decode are
    transcoded to UTF-8 copies in ``scratch`` (a directory the caller removes afterwards).
    Raises DataError (one line naming the file) when a file is empty, cannot be read or decoded,
    a glob matches nothing, or a mapped column is missing.
    """
    if path.startswith(LIFETIMES_PREFIX):
        source = _open_lifetimes(path, con)
    else:
        files = resolve_files(path, root)
        kind = _file_kind(files[0], path)
        if any(_file_kind(f, path) != kind for f in files):
            raise DataError(f"{path}: the glob mixes CSV and Parquet files; point data.path at one kind")
        labels = tuple(_label(f, root) for f in files)
        read, encoding_option = files, None
        if kind == "csv":
            for file, label in zip(files, labels):
                if _is_empty_text(file):
                    raise DataError(f"{label}: file is empty; export the transactions again or fix data.path")
            read, encoding_option = _decodable_files(files, labels, encoding, scratch)
        per_file = [_file_columns(con, f, label, kind, encoding_option, encoding) for f, label in zip(read, labels)]
        for label, cols in zip(labels, per_file):
            _check_columns(label, cols, columns)
        con.raw_sql(f"CREATE OR REPLACE TEMP VIEW raw_source AS {_scan_sql(read, labels, kind, encoding_option)}")
        table = con.table("raw_source")
        raw_columns = tuple(c for c in table.columns if c not in RESERVED_COLUMNS)
        source = RawSource(table=table, raw_columns=raw_columns, files=files, label=path, encoding=encoding,
                           file_labels=labels)
    return source


def input_sha256(files: tuple[Path, ...], root: Path) -> str:
    """SHA-256 of the raw input bytes: the file's hash, or for several files the hash of the
    ``"<sha256>  <path>"`` lines (sha256sum format, sorted path order)."""
    if len(files) == 1:
        return file_sha256(files[0])
    listing = "".join(f"{file_sha256(f)}  {_label(f, root)}\n" for f in files)
    return hashlib.sha256(listing.encode()).hexdigest()


# --- lifetimes files (small: pandas, then a DuckDB table) -----------------------------------------

def _open_lifetimes(path: str, con: ibis.BaseBackend) -> RawSource:
    file, names = lifetimes_dataset(path)
    try:
        frame = pd.read_csv(
            file, sep=r"\s+", dtype=str, keep_default_na=False,
            header=None if names else 0, names=list(names) if names else None,
        )
    except (OSError, ValueError) as exc:
        raise DataError(f"{file}: cannot read ({first_line(exc)})") from None
    return _frame_source(frame, path, (file,), con)


def _frame_source(frame: pd.DataFrame, label: str, files: tuple[Path, ...], con: ibis.BaseBackend) -> RawSource:
    _check_reserved(label, frame.columns)
    raw_columns = tuple(str(c) for c in frame.columns)
    frame = frame.assign(**{SOURCE_ROW: range(len(frame))}).astype({SOURCE_ROW: "int64"})
    con.con.register("raw_source_frame", pa.Table.from_pandas(frame, preserve_index=False))
    con.raw_sql("CREATE OR REPLACE TEMP TABLE raw_source AS SELECT * FROM raw_source_frame")
    con.con.unregister("raw_source_frame")
    table = con.table("raw_source")
    return RawSource(table=table, raw_columns=raw_columns, files=files, label=label)


# --- CSV / Parquet files (DuckDB scans) -------------------------------------------------------------

def _file_kind(file: Path, path: str) -> str:
    suffixes = [s.lower() for s in file.suffixes]
    if suffixes and suffixes[-1] in COMPRESSED_SUFFIXES:
        suffixes = suffixes[:-1]
    last = suffixes[-1] if suffixes else ""
    if last in CSV_SUFFIXES:
        return "csv"
    if last in PARQUET_SUFFIXES:
        return "parquet"
    raise DataError(f"{file.name}: unknown file type (expected {', '.join(CSV_SUFFIXES + PARQUET_SUFFIXES)}); fix data.path '{path}'")


def _reader_sql(files: tuple[Path, ...], kind: str, encoding: str | None = None) -> str:
    listing = "[" + ", ".join(sql_text(str(f)) for f in files) + "]"
    if kind == "csv":
        option = f", encoding = {sql_text(encoding)}" if encoding and encoding != "utf-8" else ""
        return f"read_csv({listing}, header = true, all_varchar = true, union_by_name = true{option})"
    return f"read_parquet({listing}, union_by_name = true)"


def _file_columns(
    con: ibis.BaseBackend, file: Path, label: str, kind: str, encoding_option: str | None = None, encoding: str = "utf-8"
) -> list[str]:
    """Column names of one file (sniffed by DuckDB); DataError when it cannot be read."""
    try:
        return list(con.con.sql(f"SELECT * FROM {_reader_sql((file,), kind, encoding_option)} LIMIT 0").columns)
    except Exception as exc:  # duckdb raises many error classes for unreadable input
        if is_encoding_error(exc):
            raise encoding_error(file, label, encoding) from None
        raise DataError(f"{label}: cannot read as {kind.upper()} ({first_line(exc)})") from None


# --- text encodings and empty files --------------------------------------------------------------

def _open_bytes(file: Path) -> BinaryIO:
    """The file's (decompressed) bytes; .zst needs the zstandard package."""
    suffix = file.suffix.lower()
    if suffix == ".gz":
        return gzip.open(file, "rb")
    if suffix == ".zst":
        try:
            import zstandard
        except ImportError:
            raise DataError(f"{file.name}: reading .zst with data.encoding other than utf-8/latin-1/utf-16 "
                            "needs the zstandard package; decompress the file or install it") from None
        return zstandard.ZstdDecompressor().stream_reader(open(file, "rb"), closefd=True)
    return open(file, "rb")


def _is_empty_text(file: Path) -> bool:
    """True for a text file with no characters but whitespace (or only a BOM)."""
    if file.stat().st_size == 0:
        return True
    if file.suffix.lower() == ".zst":
        return False  # DuckDB reads it; an empty one is caught as a file without rows
    with _open_bytes(file) as handle:
        head = handle.read(4096)
    return not head.lstrip(b"\xef\xbb\xbf\xff\xfe").strip(b" \t\r\n\x00")


def duckdb_encoding(encoding: str) -> str | None:
    """The name DuckDB's CSV reader knows for a Python codec name, None if it cannot decode it."""
    return DUCKDB_ENCODINGS.get(codecs.lookup(encoding).name)


def _decodable_files(
    files: tuple[Path, ...], labels: tuple[str, ...], encoding: str, scratch: Path | None
) -> tuple[tuple[Path, ...], str | None]:
    """(files to scan, DuckDB encoding option): the files themselves when DuckDB decodes the
    encoding, else UTF-8 copies in ``scratch`` (decoded in 1 MiB chunks, memory stays small)."""
    native = duckdb_encoding(encoding)
    if native is not None:
        return files, native
    if scratch is None:
        raise ValueError("a scratch directory is needed to transcode CSV files")
    copies = []
    for i, (file, label) in enumerate(zip(files, labels)):
        target = scratch / f"{i:05d}-{file.name.removesuffix(file.suffix) if file.suffix.lower() in COMPRESSED_SUFFIXES else file.name}"
        decoder = codecs.getincrementaldecoder(encoding)("strict")
        try:
            with _open_bytes(file) as source, open(target, "w", encoding="utf-8", newline="") as out:
                while chunk := source.read(1 << 20):
                    out.write(decoder.decode(chunk))
                out.write(decoder.decode(b"", final=True))
        except UnicodeDecodeError:
            raise encoding_error(file, label, encoding) from None
        copies.append(target)
    log.info("transcoded %d file(s) from %s to UTF-8", len(copies), encoding)
    return tuple(copies), None


def is_encoding_error(exc: BaseException) -> bool:
    """True for DuckDB's error on bytes that are not valid in the CSV's encoding."""
    text = str(exc).lower()
    return "invalid unicode" in text or "not utf-8 encoded" in text


def first_undecodable_line(file: Path, encoding: str) -> tuple[int, bytes] | None:
    """(1-based line number, offending bytes) of the first line that does not decode, or None."""
    decoder = codecs.getincrementaldecoder(encoding)("strict")
    with _open_bytes(file) as handle:
        for number, line in enumerate(handle, start=1):
            try:
                decoder.decode(line)
            except UnicodeDecodeError as err:
                return number, line[err.start:err.end]
    return None


def encoding_error(file: Path, label: str, encoding: str) -> DataError:
    """One line naming the file, the first undecodable line and byte, and the data.encoding fix."""
    where = ""
    found = first_undecodable_line(file, encoding)
    if found is not None:
        number, raw = found
        where = f" (line {number} has the byte(s) {' '.join(f'0x{b:02x}' for b in raw)})"
    fix = "set data.encoding: latin-1 (or cp1252, or the encoding the file was exported in)"
    if codecs.lookup(encoding).name != "utf-8":
        fix = "set data.encoding to the encoding the file was exported in"
    return DataError(f"{label}: not valid {encoding} text{where}; {fix} in params.yaml")


def _scan_sql(files: tuple[Path, ...], labels: tuple[str, ...], kind: str, encoding: str | None = None) -> str:
    """All files as one relation, with source_row in file order and source_file.

    Parquet rows are numbered from each file's own row numbers plus the rows of the files
    before it (from the footers); CSV rows by a row_number() over the scan, which DuckDB
    returns in file order (insertion order is preserved).
    """
    names = "[" + ", ".join(sql_text(label) for label in labels) + "]"
    source_file = f"{names}[file_index::BIGINT + 1] AS {SOURCE_FILE}"
    if kind == "parquet":
        offsets = [0]
        for file in files[:-1]:
            offsets.append(offsets[-1] + pq.read_metadata(file).num_rows)
        starts = "[" + ", ".join(map(str, offsets)) + "]"
        reader = _reader_sql(files, kind).replace("union_by_name = true", "union_by_name = true, file_row_number = true")
        return (
            f"SELECT * EXCLUDE (file_row_number), "
            f"(file_row_number + {starts}[file_index::BIGINT + 1])::BIGINT AS {SOURCE_ROW}, {source_file} FROM {reader}"
        )
    return f"SELECT *, (row_number() OVER () - 1)::BIGINT AS {SOURCE_ROW}, {source_file} FROM {_reader_sql(files, kind, encoding)}"


def _check_columns(label: str, available: list[str], columns: ColumnsParams) -> None:
    _check_reserved(label, available)
    missing = missing_mapped_columns(available, columns.mapped())
    if missing:
        role, col = missing[0]
        listed = ", ".join(available) if len(available) <= 30 else ", ".join(available[:30]) + ", ..."
        hint = ""
        if len(available) == 1 and any(sep in available[0] for sep in ",;\t|"):
            hint = " (the header was not split into columns: check that the first rows all have the same number of fields)"
        raise DataError(
            f"{label}: column '{col}' (data.columns.{role}) not found; available columns: {listed}{hint}"
        )


def _check_reserved(label: str, available) -> None:
    clash = [c for c in available if c in RESERVED_COLUMNS or str(c).startswith("__cvp_")]
    if clash:
        raise DataError(f"{label}: column '{clash[0]}' is a name the pipeline adds; rename it in the source")


def sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def first_line(exc: BaseException) -> str:
    """The first line of an error message, with DuckDB's CSV column-count hint appended."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    extra = [line for line in lines[1:] if line.startswith(("Expected Number of Columns", "Original Line"))]
    return "; ".join([lines[0], *extra])


def scan_error(exc: BaseException, source: RawSource) -> DataError:
    """A DataError for an error raised while scanning the source (e.g. a malformed CSV line, or
    bytes the encoding cannot decode past the rows the CSV sniffer read)."""
    if is_encoding_error(exc):
        for file, label in zip(source.files, source.file_labels):
            if first_undecodable_line(file, source.encoding) is not None:
                return encoding_error(file, label, source.encoding)
    return DataError(f"{source.label}: cannot read ({first_line(exc)}); fix the file or data.path")
