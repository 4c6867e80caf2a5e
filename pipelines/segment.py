"""`cvp segment`: value-potential quadrants, tiers, pyramid, ABC, lifecycle and relationship levels.

Reads the features, CLV predictions and churn probabilities at as_of (t0), labels every
customer with the rules in models/segments.py, and checks on the last complete horizon (t1,
out-of-time predictions against the spend actually made) whether the combined growth
potential ranks customers at least as well as the CLV model alone (models/segment_eval.py).
Logs the whole scoring chain (models/scores_pyfunc.py) as one served model.
"""

from __future__ import annotations

import functools
import json
import logging
import warnings
from pathlib import Path

import pandas as pd

from features.errors import DataError
from models import segment_eval as ev
from models import segments as seg
from models.plots import segment as plots
from pipelines import domain, files, tracking
from pipelines.catalog import Catalog
from pipelines.config import Params

log = logging.getLogger(__name__)

STAGE = "segment"
# The inputs at t0 and t1 by catalog key, with the columns the stage reads from each.
SCORING = dict(zip(("features_t0", "clv_predictions_t0", "churn_predictions_t0"), ev.SCORING_COLUMNS.values()))
HOLDOUT = dict(zip(("labels_t1", "clv_predictions_t1", "churn_predictions_t1"), ev.HOLDOUT_COLUMNS.values()))
def read_inputs(keys: dict[str, tuple[str, ...]], params: Params, paths: Catalog) -> list[tuple[str, pd.DataFrame]]:
    """(file, frame) of each artifact, with the columns the stage uses, contract-checked."""
    return [(str(paths.path(key)), paths.read(key, params, columns=columns)) for key, columns in keys.items()]


def holdout_inputs(params: Params, paths: Catalog) -> pd.DataFrame | None:
    """Labels, CLV and out-of-time churn predictions at t1; None (with a warning) when absent or empty."""
    absent = [str(paths.path(key)) for key in HOLDOUT if not paths.path(key).exists()]
    if absent:
        log.warning("holdout comparison skipped: %s not found", ", ".join(absent))
        return None
    return ev.holdout_frame(*read_inputs(HOLDOUT, params, paths))


def write_plots(
    result: seg.SegmentResult, summary: pd.DataFrame, conc: dict, seed: int, paths: Catalog, scatter_sample_size: int
) -> Path:
    """plots/segment/: the Lorenz curve's points (CSV) and every figure of models/plots/segment.py
    (the scatter on a ``seed``-ed sample of at most ``scatter_sample_size`` customers)."""
    out = paths.plots_dir(STAGE)
    curve = seg.lorenz_curve(result.customers["value"]).round(10)
    files.write_csv(curve, out / "lorenz.csv")
    for name, figure in plots.figures(result, summary, curve, conc, seed, scatter_sample_size).items():
        files.save_figure(figure, out / f"{name}.png")
    return out


def log_scores_model(params: Params, paths: Catalog, rules: seg.SegmentRules, version: str):
    """Log the scoring chain as one pyfunc (registered as segment.model_name when asked). Its
    output example is what the chain answers for the first rows of features_t0, so a broken
    chain fails here, not at serving time."""
    from mlflow.pyfunc import PythonModelContext

    from models import scores_pyfunc  # imports MLflow: here, on the stage's MLflow thread

    chain = {  # the served chain's artifacts: catalog keys of the files the clv, churn and segment stages wrote
        scores_pyfunc.PURCHASE_ARTIFACT: "clv_purchase_model",
        scores_pyfunc.SPEND_ARTIFACT: "clv_spend_model",
        scores_pyfunc.CHURN_ARTIFACT: "churn_model",
        scores_pyfunc.REFERENCE_ARTIFACT: "segment_reference",
        scores_pyfunc.INTERVAL_ARTIFACT: "clv_interval_draws",
    }
    if rules.growth_potential == "value":  # the value model is in the chain only then
        chain[scores_pyfunc.VALUE_ARTIFACT] = "value_model"
    artifacts = {key: paths.path(artifact) for key, artifact in chain.items()}
    absent = [str(p) for p in artifacts.values() if not p.exists()]
    if absent:
        raise DataError(f"{absent[0]}: not found; run `cvp clv`, `cvp churn` and `cvp value` first")
    artifacts = {key: str(p.resolve()) for key, p in artifacts.items()}
    model = scores_pyfunc.ScoresPyfuncModel(rules, domain.clv_settings(params), version)
    example = paths.read("features_t0", params).head(5)
    model.load_context(PythonModelContext(artifacts=artifacts, model_config=None))
    cfg = params.segment
    return tracking.log_pyfunc(
        "scores_model", model, scores_pyfunc.REQUIREMENTS, cfg.model_name if cfg.register_model else None,
        artifacts=artifacts, example=example, output=model.predict(None, example),
    )  # fmt: skip


def log_results(paths: Catalog, summary: pd.DataFrame, metrics: dict, tags: dict) -> None:
    """The stage's summary table, then its tags, metrics, metrics file and plots, in its MLflow run."""
    import mlflow

    with warnings.catch_warnings():  # mlflow's select_dtypes call warns under pandas 3
        warnings.filterwarnings("ignore", message=".*'str' dtypes are included by select_dtypes")
        mlflow.log_table(summary, artifact_file="summary.json")
    tracking.log_stage_results(STAGE, paths, {k: v for k, v in metrics.items() if k != "as_of"}, tags)


def log_model(params: Params, paths: Catalog, rules: seg.SegmentRules) -> None:
    """The scoring chain as one pyfunc (:func:`log_scores_model`) and its registration.json."""
    cfg = params.segment
    info = log_scores_model(params, paths, rules, tracking.scoring_model_version(paths))
    version = info.registered_model_version if cfg.register_model else None
    tracking.write_registration(paths.SEGMENT_MODEL_DIR, cfg.model_name, version, info.run_id)


def run(params: Params, paths: Catalog) -> None:
    """Label every customer at as_of, write segments + summary, metrics, plots. MLflow (set-up, the
    stage run, the scoring chain's pyfunc) works on a thread of its own meanwhile (tracking.in_background)."""
    cfg = params.segment
    value_file = paths.path("metrics_value")
    source = ev.growth_potential_source(cfg.growth_potential, files.read_json(value_file) if value_file.exists() else None,
                                        str(value_file))  # fmt: skip
    rules = domain.segment_rules(params, source["value_model_won"])
    section = {"segment": cfg.model_dump(), "clv.margin": params.clv.margin}
    with tracking.in_background(functools.partial(tracking.stage_run, STAGE, params, paths, section)) as later:
        value = read_inputs({"value_predictions_t0": ev.VALUE_COLUMNS}, params, paths) if rules.growth_potential == "value" else []
        scoring = ev.scoring_frame(*read_inputs(SCORING, params, paths), *value)
        as_of = pd.Timestamp(scoring["cutoff"].iloc[0])
        log.info("segmenting %d customers at %s (growth potential: %s; %s)", len(scoring), as_of.date(),
                 rules.growth_potential, source["reason"])  # fmt: skip
        result = seg.segment_customers(scoring, rules)
        summary = seg.summarise_segments(result.customers).round(10)
        holdout = ev.holdout_comparison(holdout_inputs(params, paths))
        metrics = ev.segment_metrics(result, rules, as_of, holdout, source=source)

        paths.write("segments", ev.segments_table(result.customers, as_of), params)
        paths.write("segment_summary", summary, params)
        files.write_json(metrics, paths.metrics_file(STAGE))
        # Exact floats (not write_json's rounding): the boundaries are compared with values as computed.
        files.write_text(json.dumps(result.reference.to_dict(), indent=2, sort_keys=True) + "\n", paths.SEGMENT_REFERENCE)
        if cfg.log_model:  # the chain needs the reference just written
            later(log_model, params, paths, rules)
        plots_dir = write_plots(result, summary, metrics["concentration"], params.seed, paths, cfg.scatter_sample_size)
        log.info("wrote %s, %s and %s", paths.SEGMENTS, paths.SEGMENT_SUMMARY, plots_dir)
        later(log_results, paths, summary, metrics, {"cvp.input_sha256": files.frame_sha256(scoring)})
    if not cfg.log_model:
        tracking.write_registration(paths.SEGMENT_MODEL_DIR, cfg.model_name, None, None)
