"""`cvp churn`: LightGBM churn classifier on time-honest labels, compared with the CLV model.

Churned = no purchase day in (cutoff, cutoff + horizon]. The final model trains at t1 and scores
t0; the evaluation (out of time when t2 is usable, else a grouped split at t1) and the choice of
the exported probability live in models/churn_eval.py, the figures in models/plots/churn.py.
Outputs: data/churn/predictions_t{0,1}.parquet, metrics/churn.json, plots/churn/,
models/artifacts/churn/ and an MLflow run with the registered pyfunc model.
"""

from __future__ import annotations

import functools
import logging
import pickle

import pandas as pd

from models import churn_eval as ce
from models.plots import churn as churn_plots
from pipelines import files, tracking
from pipelines.catalog import Catalog
from pipelines.config import Params
from pipelines.domain import churn_classifier_factory

log = logging.getLogger(__name__)

STAGE = "churn"
LOGGED_METRICS = ("models", "comparison", "final_model", "exported", "n_train", "n_test")  # metrics/churn.json parts


def load_snapshot(paths: Catalog, params: Params, k: int) -> ce.Snapshot:
    """Features + CLV predictions (+ labels for k >= 1) at t_k, contract-checked and time-honest."""
    features, clv = paths.read(f"features_t{k}", params), paths.read(f"clv_predictions_t{k}", params)
    labels = paths.read(f"labels_t{k}", params) if k else None
    return ce.snapshot(k, features, clv, labels, str(paths.features_at(k)), str(paths.clv_predictions_at(k)))


def out_of_time_snapshot(paths: Catalog, params: Params) -> tuple[ce.Snapshot | None, str]:
    """The t2 snapshot when it is usable for an out-of-time evaluation, else (None, reason)."""
    keys = ("features_t2", "labels_t2", "clv_predictions_t2")
    absent = [str(paths.path(key)) for key in keys if not paths.path(key).exists()]
    if absent:
        return None, f"{absent[0]} not found"
    for key in keys:
        if paths.read(key, params, columns=["customer_id"]).empty:
            return None, f"{paths.path(key)} is empty"
    t2 = load_snapshot(paths, params, 2)
    cfg = params.churn
    problem = ce.out_of_time_problem(t2, cfg.min_train_customers, cfg.min_class_customers, params.data.horizon_days,
                                     str(paths.labels_at(2)))  # fmt: skip
    return (None, problem) if problem else (t2, "enough history at t2")


def evaluate(params: Params, paths: Catalog, t1: ce.Snapshot) -> ce.Evaluation:
    """Stop on one-sided t1 labels; evaluate out of time when t2 is usable, else by a grouped split."""
    ce.require_both_classes(t1, params.churn.min_class_customers, params.data.horizon_days, str(paths.labels_at(1)))
    t2, reason = out_of_time_snapshot(paths, params)
    return ce.evaluate(churn_classifier_factory(params), t1, t2, reason, params.churn.test_fraction, params.seed)


def write_model_files(paths: Catalog, exported: ce.Exported, final, train_cutoff: pd.Timestamp) -> None:
    """The pickled exported model (what segment and serving load); the classifier's booster and features.json."""
    files.write_bytes(pickle.dumps(exported.model, protocol=5), paths.path("churn_model"))
    files.write_text(final.booster_.booster_.model_to_string(), paths.path("churn_booster"))
    files.write_json(ce.model_description(exported, final, train_cutoff), paths.path("churn_features"))


def write_plots(paths: Catalog, params: Params, ev: ce.Evaluation, importance, shap, X: pd.DataFrame) -> None:
    """plots/churn: the CSV tables, then the ROC, PR, calibration, lift, importance and SHAP PNGs."""
    out, y = paths.plots_dir(STAGE), ev.y_test.to_numpy()
    tables = ce.plot_tables(y, ev.scored, importance)
    for name, table in tables.items():
        files.write_csv(table, out / f"{name}.csv")
    top, seed = params.churn.top_features, params.seed
    for name, fig in churn_plots.figures(tables, ev.results, ev.scored, y, shap, X, top, seed).items():
        files.save_figure(fig, out / name)


def log_model(params: Params, paths: Catalog, model, X0: pd.DataFrame) -> None:
    """The exported model as a pyfunc (registered when churn.register_model); registration.json."""
    import mlflow

    from models.churn_pyfunc import REQUIREMENTS, ChurnPyfuncModel, serving_example  # imports MLflow: on this thread

    cfg = params.churn
    example, output = serving_example(model, X0)
    info = tracking.log_pyfunc(
        "model", ChurnPyfuncModel(), REQUIREMENTS, cfg.model_name if cfg.register_model else None,
        artifacts={ChurnPyfuncModel.ARTIFACT: str(paths.path("churn_model"))}, example=example, output=output,
    )  # fmt: skip
    for key in ("churn_features", "churn_booster"):
        mlflow.log_artifact(str(paths.path(key)), artifact_path="model_files")
    tracking.write_registration(paths.CHURN_MODEL_DIR, cfg.model_name, info.registered_model_version, info.run_id)


def run(params: Params, paths: Catalog) -> None:
    """Evaluate, fit the final model at t1, score t0; write predictions, metrics, plots, model. MLflow
    (set-up, the stage run, the pyfunc) works on a thread of its own meanwhile (tracking.in_background)."""
    cfg = params.churn
    section = {"churn": cfg.model_dump(), "seed": params.seed, "horizon_days": params.data.horizon_days}
    with tracking.in_background(functools.partial(tracking.stage_run, STAGE, params, paths, section)) as later:
        t1, t0 = load_snapshot(paths, params, 1), load_snapshot(paths, params, 0)
        ev = evaluate(params, paths, t1)
        log.info("fitting the final model on t1 (%d customers) to score t0 (%d customers)", len(t1.X), len(t0.X))
        build = ce.final_builder(churn_classifier_factory(params), ev, t1)
        final = build().fit(t1.X, t1.y)
        scores_t0 = final.predict_churn_probability(t0.X)
        clv_t0 = str(paths.clv_predictions_at(0))
        exported = ce.choose_exported(build, ev, final, scores_t0, t1, t0, cfg.auc_tolerance, clv_t0)
        write_model_files(paths, exported, final, t1.cutoff)
        later(log_model, params, paths, exported.model, t0.X)
        importance, shap = ce.importance_table(final, t0.X, params.seed, cfg.shap_sample)
        summary = ce.stage_metrics(
            ev, final, t1, t0, scores_t0, importance, exported, horizon_days=params.data.horizon_days,
            calibration=cfg.calibration, auc_tolerance=cfg.auc_tolerance, top_features=cfg.top_features,
            seed=params.seed, bootstrap_sample=cfg.bootstrap_sample,
        )  # fmt: skip
        ce.warn_on_failed_claims(summary["comparison"])

        paths.write("churn_predictions_t0", ce.predictions_frame(pd.Series(exported.t0, t0.X.index), t0.cutoff), params)
        paths.write("churn_predictions_t1", ce.predictions_frame(exported.t1, t1.cutoff), params)
        files.write_json(summary, paths.metrics_file(STAGE))
        write_plots(paths, params, ev, importance, shap, t0.X)
        later(tracking.log_stage_results, STAGE, paths, {k: summary[k] for k in LOGGED_METRICS}, ce.run_tags(summary))
    log.info("%s", ce.outcome(summary))
