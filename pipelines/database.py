"""The export's SQL table: the scores of one as_of replaced in one transaction.

In the database the rows of an as_of are replaced in one transaction (DELETE then bulk INSERT:
COPY on PostgreSQL, batched executemany elsewhere); rows of other dates stay, and a failure
rolls everything back, so readers see the old rows or the new ones, never a mix. The table's
columns and types come from the export contract (models/scores.py).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from features.errors import DataError
from models.scores import COLUMN_NAMES, SCORE_COLUMNS
from pipelines.catalog import Catalog
from pipelines.config import ConfigError, ExportParams

log = logging.getLogger(__name__)

SQL_TYPES = {
    "str": lambda: sa.String(255),
    "datetime64[us]": sa.Date,
    "int64": sa.BigInteger,
    "float64": sa.Double,
}


def configured_url(export: ExportParams, paths: Catalog) -> str:
    """The database URL as configured, before ${VAR} expansion; by default the project's SQLite
    file, relative to the project (so metrics and logs read the same wherever it lives)."""
    default = Path(os.path.relpath(paths.DEFAULT_DATABASE, paths.root)).as_posix()
    return export.database_url or f"sqlite:///{default}"


def masked_url(url: str | sa.URL) -> str:
    """The URL with its password replaced by ***, safe for logs and metrics."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<unparseable url>"


def database_url(export: ExportParams, paths: Catalog) -> sa.URL:
    """The URL to connect to: ${VAR} expanded, relative SQLite paths taken from the project root."""
    raw = os.path.expandvars(configured_url(export, paths))
    try:
        url = sa.make_url(raw)
    except sa.exc.ArgumentError:
        raise ConfigError(
            f"export.database_url: cannot parse {masked_url(configured_url(export, paths))!r}; "
            "use a SQLAlchemy URL such as postgresql+psycopg://user:pass@host:5432/db"
        ) from None
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        database = Path(url.database)
        if not database.is_absolute():
            database = paths.root / database
        database.parent.mkdir(parents=True, exist_ok=True)
        url = url.set(database=str(database))
    return url


def scores_table(name: str, metadata: sa.MetaData | None = None) -> sa.Table:
    """The SQL table of the export contract; primary key (as_of, customer_id)."""
    schema, _, table = name.rpartition(".")
    columns = [sa.Column(c.name, SQL_TYPES[c.dtype](), nullable=False) for c in SCORE_COLUMNS]
    return sa.Table(
        table,
        metadata or sa.MetaData(),
        *columns,
        sa.PrimaryKeyConstraint("as_of", "customer_id", name=f"{table}_pkey"),
        schema=schema or None,
    )


def sql_rows(scores: pd.DataFrame) -> list[tuple]:
    """Rows as tuples of plain Python values in contract order (dates as datetime.date)."""
    columns = [
        scores[c.name].dt.date.tolist() if c.dtype.startswith("datetime") else scores[c.name].tolist()
        for c in SCORE_COLUMNS
    ]
    return list(zip(*columns, strict=True))


def batches(rows: Sequence[tuple], size: int) -> Iterator[Sequence[tuple]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def _ensure_table(conn: sa.Connection, table: sa.Table, url: str) -> None:
    """Create the table if missing; refuse one whose columns differ from the contract."""
    inspector = sa.inspect(conn)
    if not inspector.has_table(table.name, schema=table.schema):
        log.info("creating table %s", table.fullname)
        table.create(conn)
        return
    existing = [c["name"] for c in inspector.get_columns(table.name, schema=table.schema)]
    if set(existing) != set(COLUMN_NAMES):
        missing = sorted(set(COLUMN_NAMES) - set(existing))
        extra = sorted(set(existing) - set(COLUMN_NAMES))
        raise DataError(
            f"table {table.fullname} in {url} does not match the export contract "
            f"(missing: {', '.join(missing) or '-'}; extra: {', '.join(extra) or '-'}); "
            "migrate or drop it, or set export.table to another name"
        )


def _copy_rows(conn: sa.Connection, table: sa.Table, rows: Sequence[tuple]) -> None:
    """PostgreSQL bulk load with psycopg COPY, inside the connection's open transaction."""
    from psycopg import sql

    target = sql.Identifier(*([table.schema] if table.schema else []), table.name)
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(target, sql.SQL(", ").join(map(sql.Identifier, COLUMN_NAMES)))
    dbapi_error = conn.dialect.loaded_dbapi.Error
    try:
        with conn.connection.driver_connection.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)
    except dbapi_error as exc:
        # Same exception types as the executemany path (e.g. sqlalchemy.exc.IntegrityError).
        raise sa.exc.DBAPIError.instance(f"COPY {table.fullname}", None, exc, dbapi_error) from exc


def insert_rows(conn: sa.Connection, table: sa.Table, rows: Sequence[tuple], batch_size: int) -> None:
    """Bulk insert: COPY on PostgreSQL/psycopg, else executemany in batches of ``batch_size``."""
    if conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg":
        _copy_rows(conn, table, rows)
        return
    insert = table.insert()
    positional = conn.dialect.paramstyle in ("qmark", "format", "numeric")
    if positional:
        # The driver's executemany with the statement compiled once and each column's own bind
        # processor (e.g. dates as text on SQLite): SQLAlchemy's per-row compilation takes 10x longer.
        statement = str(insert.compile(dialect=conn.dialect))
        processors = [table.c[name].type.bind_processor(conn.dialect) for name in COLUMN_NAMES]
    done = 0
    for batch in batches(rows, batch_size):
        if positional:
            columns = [list(map(f, values)) if f else values for f, values in zip(processors, zip(*batch), strict=True)]
            conn.exec_driver_sql(statement, list(zip(*columns, strict=True)))
        else:
            conn.execute(insert, [dict(zip(COLUMN_NAMES, row, strict=True)) for row in batch])
        done += len(batch)
        log.debug("inserted %d/%d rows", done, len(rows))


@dataclass(frozen=True)
class TableWrite:
    replaced: int  # rows of this as_of deleted before the insert
    inserted: int
    total: int  # rows in the table afterwards, all dates
    seconds: float  # the whole transaction, commit included


def replace_scores(engine: sa.Engine, table_name: str, scores: pd.DataFrame, batch_size: int) -> TableWrite:
    """Replace the rows of the frame's as_of in one transaction: DELETE WHERE as_of, then INSERT.

    Any failure rolls the whole transaction back, so readers see either the old rows or the new
    ones, never a mix. Rows of other dates are untouched.
    """
    table = scores_table(table_name)
    as_of = scores["as_of"].iloc[0].date()
    rows = sql_rows(scores)
    url = masked_url(engine.url)
    started = time.perf_counter()
    with engine.begin() as conn:
        _ensure_table(conn, table, url)
        replaced = conn.execute(table.delete().where(table.c.as_of == as_of)).rowcount
        insert_rows(conn, table, rows, batch_size)
        total = conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
    seconds = time.perf_counter() - started
    log.info(
        "%s: replaced %d rows of %s with %d in %.2f s (%d rows in the table)",
        table.fullname, replaced, as_of, len(rows), seconds, total,
    )  # fmt: skip
    return TableWrite(replaced=replaced, inserted=len(rows), total=total, seconds=seconds)


def write_table(export: ExportParams, scores: pd.DataFrame, paths: Catalog) -> TableWrite:
    """Connect to the configured database and replace this as_of's rows; connection problems are
    a ConfigError naming the (masked) URL."""
    url = database_url(export, paths)
    try:
        engine = sa.create_engine(url)
    except (sa.exc.NoSuchModuleError, ModuleNotFoundError) as exc:
        raise ConfigError(
            f"export.database_url: no driver for {masked_url(url)} ({exc}); use sqlite or postgresql+psycopg"
        ) from None
    try:
        return replace_scores(engine, export.table, scores, export.batch_size)
    except sa.exc.OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        raise ConfigError(
            f"export.database_url: cannot write to {masked_url(url)} ({reason}); check the URL and that the server is up"
        ) from None
    finally:
        engine.dispose()
