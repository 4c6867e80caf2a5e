"""`cvp export`: batch scores for CRM systems (Parquet, CSV, SQL table) and the HTML report.

One row per customer of features_t0 (models/scores.py holds the contract). The files and the
report are staged beside their targets and renamed only after the SQL transaction
(pipelines/database.py) commits, so a failed run leaves the previous outputs everywhere.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from pathlib import Path

import pandas as pd

from models.scores import assemble_scores, columns_from, export_metrics
from pipelines import database, files, report, tracking
from pipelines.catalog import Catalog
from pipelines.config import Params

log = logging.getLogger(__name__)

STAGE = "export"

# Input role -> (catalog key, the columns the export takes from it).
INPUTS = {
    "features": ("features_t0", ("customer_id", "cutoff", *columns_from("features"))),
    "clv": ("clv_predictions_t0", ("customer_id", "cutoff", *columns_from("clv"))),
    "churn": ("churn_predictions_t0", ("customer_id", "cutoff", *columns_from("churn"))),
    "segments": ("segments", ("customer_id", "as_of", *columns_from("segment"))),
}


def build_scores(params: Params, paths: Catalog) -> pd.DataFrame:
    """Read the scoring-date outputs and assemble the validated export frame."""
    frames = {role: paths.read(key, params, columns=columns) for role, (key, columns) in INPUTS.items()}
    labels = {role: str(paths.path(key)) for role, (key, _) in INPUTS.items()}
    version = tracking.scoring_model_version(paths)
    return assemble_scores(frames["features"], frames["clv"], frames["churn"], frames["segments"], version, labels)


def log_to_mlflow(record: tracking.StageRecord, rendered: report.RenderedReport, metrics: dict, write: database.TableWrite,
                  seconds: float, paths: Catalog) -> None:
    """Figures, report, segment summary (unless the segment stage logged it), counts and the hash."""
    record.log_metrics({"rows": metrics["rows"], "headline": metrics["headline"]})
    record.log_metrics({"table.replaced": write.replaced, "table.inserted": write.inserted, "table.total": write.total,
                        "table.seconds": write.seconds, "seconds": seconds})  # fmt: skip
    record.set_tags({"cvp.scores_sha256": metrics["scores_sha256"], "cvp.model_version": metrics["model_version"]})
    record.log_dict(metrics, "export.json")
    with tempfile.TemporaryDirectory() as tmp:
        for name, png in rendered.figures.items():
            (Path(tmp) / f"{name}.png").write_bytes(png)
        record.log_artifacts(tmp, "figures")
    record.log_artifact(paths.REPORT_HTML, "report")
    record.log_artifact(paths.MODELS_HTML, "report")
    if paths.SEGMENT_SUMMARY.exists():
        record.log_artifact(paths.SEGMENT_SUMMARY, "segments", unless_logged_by=("segment", "summary"))


def run(params: Params, paths: Catalog) -> None:
    """Assemble, validate and write the scores (files + SQL table), the report and the metrics."""
    started = time.perf_counter()
    export = params.export
    scores = build_scores(params, paths)
    log.info("assembled %d customer scores at %s (%s)", len(scores), scores["as_of"].iloc[0].date(), scores["model_version"].iloc[0])
    url = database.masked_url(database.configured_url(export, paths))
    with tracking.stage_record(STAGE, params, paths, section={**export.model_dump(), "database_url": url}) as record:
        rendered = report.render_report(
            scores, report.load_sources(paths), export.table, f"{params.data.horizon_days} days", report.page_settings(params)
        )
        with contextlib.ExitStack() as staged:
            def stage(target: Path) -> Path:
                return staged.enter_context(files.atomic_path(target))

            parquet = stage(paths.SCORES_PARQUET)
            files.write_parquet(scores, parquet)
            files.write_csv(scores, stage(paths.SCORES_CSV))
            files.write_text(rendered.html, stage(paths.REPORT_HTML))
            files.write_text(rendered.models_html, stage(paths.MODELS_HTML))
            for target, frame in report.list_paths(rendered, paths.SEGMENT_LISTS).items():
                files.write_csv(frame, stage(target))
            digest = files.file_sha256(parquet)
            # Last step before the renames: if the transaction fails, no file is replaced.
            write = database.write_table(export, scores, paths)
        metrics = export_metrics(scores, {"url": url, "table": export.table}, digest)
        files.write_json(metrics, paths.metrics_file(STAGE))
        seconds = time.perf_counter() - started
        log_to_mlflow(record, rendered, metrics, write, seconds, paths)
    log.info(
        "exported %d rows to %s, %s and %s (table %s) in %.1f s; reports %s and %s, lists in %s/",
        metrics["rows"], paths.SCORES_PARQUET, paths.SCORES_CSV, url, export.table,
        seconds, paths.REPORT_HTML, paths.MODELS_HTML, paths.SEGMENT_LISTS,
    )  # fmt: skip
