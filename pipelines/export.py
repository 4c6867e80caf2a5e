"""`cvp export`: batch scores for CRM systems (Parquet, CSV, SQL table) and the HTML report.

One row per customer of features_t0 (models/scores.py holds the contract). The files and the
report are staged beside their targets and renamed only after the SQL transaction commits, so
a failed run leaves the previous outputs everywhere. In the database, the rows of this as_of
are replaced in one transaction (DELETE then bulk INSERT); rows of other dates stay.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from features.errors import DataError
from models.scores import COLUMN_NAMES, SCORE_COLUMNS, assemble_scores
from models.segments import label_counts
from pipelines import io, paths, report, tracking
from pipelines.config import ConfigError, ExportParams, Params

log = logging.getLogger(__name__)

STAGE = "export"

# Input role -> (file, stage that writes it).
INPUTS: dict[str, tuple[Path, str]] = {
    "features": (paths.features_at(0), "features"),
    "clv": (paths.clv_predictions_at(0), "clv"),
    "churn": (paths.churn_predictions_at(0), "churn"),
    "segments": (paths.SEGMENTS, "segment"),
}

SQL_TYPES = {
    "str": lambda: sa.String(255),
    "datetime64[us]": sa.Date,
    "int64": sa.BigInteger,
    "float64": sa.Double,
}


# --------------------------------------------------------------------------- inputs


def read_input(path: Path, stage: str) -> pd.DataFrame:
    """One stage output; a missing file is a DataError saying which stage to run."""
    if not path.exists():
        raise DataError(f"{path}: not found; run `cvp {stage}` (or `dvc repro`) first")
    return pd.read_parquet(path)


def build_scores() -> pd.DataFrame:
    """Read the scoring-date outputs and assemble the validated export frame."""
    frames = {role: read_input(path, stage) for role, (path, stage) in INPUTS.items()}
    version = tracking.scoring_model_version()
    return assemble_scores(
        frames["features"],
        frames["clv"],
        frames["churn"],
        frames["segments"],
        version,
        labels={role: str(path) for role, (path, _) in INPUTS.items()},
    )


# --------------------------------------------------------------------------- database


def configured_url(export: ExportParams) -> str:
    """The database URL as configured (default: the project's SQLite file), before ${VAR} expansion."""
    return export.database_url or f"sqlite:///{paths.DEFAULT_DATABASE.as_posix()}"


def masked_url(url: str | sa.URL) -> str:
    """The URL with its password replaced by ***, safe for logs and metrics."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<unparseable url>"


def database_url(export: ExportParams, root: Path) -> sa.URL:
    """The URL to connect to: ${VAR} expanded, relative SQLite paths taken from ``root``."""
    raw = os.path.expandvars(configured_url(export))
    try:
        url = sa.make_url(raw)
    except sa.exc.ArgumentError:
        raise ConfigError(
            f"export.database_url: cannot parse {masked_url(configured_url(export))!r}; "
            "use a SQLAlchemy URL such as postgresql+psycopg://user:pass@host:5432/db"
        ) from None
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        database = Path(url.database)
        if not database.is_absolute():
            database = root / database
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


def write_table(export: ExportParams, scores: pd.DataFrame, root: Path) -> TableWrite:
    """Connect to the configured database and replace this as_of's rows; connection problems are
    a ConfigError naming the (masked) URL."""
    url = database_url(export, root)
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


# --------------------------------------------------------------------------- metrics


def headline(scores: pd.DataFrame) -> dict:
    """The few numbers a reader wants first: totals and means over the scored customers."""
    counts = label_counts(scores)
    return {
        "total_clv": round(float(scores["clv"].sum()), 2),
        "total_current_value": round(float(scores["current_value"].sum()), 2),
        "total_growth_potential": round(float(scores["growth_potential"].sum()), 2),
        "expected_purchases": round(float(scores["expected_purchases"].sum()), 2),
        "mean_p_alive": float(scores["p_alive"].mean()),
        "mean_churn_probability": float(scores["churn_probability"].mean()),
        # every label listed (0 when empty), so metric keys never disappear between runs
        "customers_by_quadrant": counts["quadrant"],
        "customers_by_tier": counts["tier"],
    }


def export_metrics(scores: pd.DataFrame, export: ExportParams, parquet_sha256: str) -> dict:
    """metrics/export.json: deterministic for the same inputs (no timings, no table history)."""
    return {
        "rows": len(scores),
        "as_of": scores["as_of"].iloc[0].date().isoformat(),
        "database": {"url": masked_url(configured_url(export)), "table": export.table},
        "scores_sha256": parquet_sha256,
        "model_version": scores["model_version"].iloc[0],
        "headline": headline(scores),
    }


# --------------------------------------------------------------------------- MLflow


def _segment_summary_logged(mlflow_run) -> bool:
    """True when the segment stage run of the same pipeline run logged the segment summary."""
    import mlflow

    parent = mlflow_run.data.tags.get("mlflow.parentRunId")
    if not parent:
        return False
    siblings = mlflow.search_runs(
        experiment_ids=[mlflow_run.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent}' and tags.`cvp.stage` = 'segment'",
        output_format="list",
    )
    client = mlflow.MlflowClient()
    return any(
        "summary" in artifact.path for sibling in siblings for artifact in client.list_artifacts(sibling.info.run_id)
    )


def log_to_mlflow(mlflow_run, rendered: report.RenderedReport, metrics: dict, write: TableWrite, seconds: float) -> None:
    """Figures, report, segment summary (unless the segment stage logged it), counts and the hash."""
    import mlflow

    tracking.log_metrics({"rows": metrics["rows"], "headline": metrics["headline"]})
    mlflow.log_metrics(
        {
            "table.replaced": write.replaced, "table.inserted": write.inserted, "table.total": write.total,
            "table.seconds": write.seconds, "seconds": seconds,
        }  # fmt: skip
    )
    mlflow.set_tags({"cvp.scores_sha256": metrics["scores_sha256"], "cvp.model_version": metrics["model_version"]})
    mlflow.log_dict(metrics, "export.json")
    with tempfile.TemporaryDirectory() as tmp:
        for name, png in rendered.figures.items():
            (Path(tmp) / f"{name}.png").write_bytes(png)
        mlflow.log_artifacts(tmp, "figures")
    mlflow.log_artifact(str(paths.REPORT_HTML), "report")
    mlflow.log_artifact(str(report.MODELS_HTML), "report")
    if paths.SEGMENT_SUMMARY.exists() and not _segment_summary_logged(mlflow_run):
        mlflow.log_artifact(str(paths.SEGMENT_SUMMARY), "segments")


# --------------------------------------------------------------------------- stage


def run(params: Params, params_path: Path = Path("params.yaml")) -> None:
    """Assemble, validate and write the scores (files + SQL table), the report and the metrics."""
    started = time.perf_counter()
    export = params.export
    scores = build_scores()
    as_of, version = scores["as_of"].iloc[0].date(), scores["model_version"].iloc[0]
    log.info("assembled %d customer scores at %s (%s)", len(scores), as_of, version)
    section = {**export.model_dump(), "database_url": masked_url(configured_url(export))}
    with tracking.stage_run(STAGE, params, section=section, params_path=params_path) as mlflow_run:
        rendered = report.render_report(
            scores, report.load_sources(), export.table, f"{params.data.horizon_days} days", report.page_settings(params)
        )
        with contextlib.ExitStack() as staged:
            parquet = staged.enter_context(io.atomic_path(paths.SCORES_PARQUET))
            csv = staged.enter_context(io.atomic_path(paths.SCORES_CSV))
            html = staged.enter_context(io.atomic_path(paths.REPORT_HTML))
            io.write_parquet(scores, parquet)
            io.write_csv(scores, csv)
            io.write_text(rendered.html, html)
            io.write_text(rendered.models_html, staged.enter_context(io.atomic_path(report.MODELS_HTML)))
            for target, frame in report.list_paths(rendered).items():
                io.write_csv(frame, staged.enter_context(io.atomic_path(target)))
            digest = io.file_sha256(parquet)
            # Last step before the renames: if the transaction fails, no file is replaced.
            write = write_table(export, scores, tracking.project_root())
        metrics = export_metrics(scores, export, digest)
        io.write_json(metrics, paths.metrics_file(STAGE))
        seconds = time.perf_counter() - started
        log_to_mlflow(mlflow_run, rendered, metrics, write, seconds)
    log.info(
        "exported %d rows to %s, %s and %s (table %s) in %.1f s; reports %s and %s, lists in %s/",
        metrics["rows"], paths.SCORES_PARQUET, paths.SCORES_CSV, metrics["database"]["url"], export.table,
        seconds, paths.REPORT_HTML, report.MODELS_HTML, report.LISTS_DIR,
    )
