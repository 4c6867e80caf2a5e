"""`cvp clv`: choose, evaluate and fit the CLV models; predict at every cutoff; log one pyfunc model.

The purchase model chosen at t_1 (models.clv_select) is evaluated on (t_1, t_0] (models.clv_eval);
it and Gamma-Gamma are refitted at each cutoff t_k on data up to t_k and predict at t_k.
"""

from __future__ import annotations

import functools
import logging
import pickle
from pathlib import Path

import pandas as pd

from features.customer import rfm_counts, spend_counts, window_period_spend
from features.frames import single_date
from models import clv_eval, clv_intervals, clv_select
from models.clv import ClvSettings
from models.clv_select import ClvFitting, Patterns
from models.plots import clv as clv_plots
from pipelines import domain, engines, files, tracking
from pipelines.catalog import CUTOFF_OFFSETS, Catalog
from pipelines.config import Params
from pipelines.domain import clv_settings

log = logging.getLogger(__name__)

STAGE = "clv"
PYFUNC_NAME = "clv_model"
#: The features each cutoff's file is read for: what the predictions need (all cutoffs), plus the
#: holdout baseline's and the tracking curve's inputs at t_1.
PREDICTION_COLUMNS = ("customer_id", "cutoff", "frequency", "recency", "T", "monetary_value")
FEATURE_COLUMNS = {0: PREDICTION_COLUMNS, 1: (*PREDICTION_COLUMNS, "first_purchase", "avg_spend", "ipi_mean"),
                   2: PREDICTION_COLUMNS}  # fmt: skip


def read_inputs(params: Params, paths: Catalog, sources: dict[int, str]):
    """Features at t_0, t_1, t_2 (t_2 may be empty) and labels at t_1, contract-checked."""
    features = {k: paths.read(f"features_t{k}", params, FEATURE_COLUMNS[k]) for k in CUTOFF_OFFSETS}
    labels = paths.read("labels_t1", params, ("customer_id", "n_purchase_days", "spend"))
    clv_select.check_inputs(features, labels, sources, str(paths.labels_at(1)))
    return features, labels


def patterns_at(con, path: Path, table_name: str) -> Patterns:
    """The compressed tables of one features file, computed on the ibis backend ``con``."""
    table = con.read_parquet(path, table_name=table_name)
    out = Patterns(con.to_pandas(rfm_counts(table)), con.to_pandas(spend_counts(table)))
    log.info("%s: %d customers as %d (frequency, recency, T) and %d (frequency, monetary_value) patterns",
             path, out.n_customers, len(out.rfm), len(out.spend))  # fmt: skip
    return out


def engine_tables(params: Params, paths: Catalog, t0, t1) -> tuple[dict[int, Patterns], pd.DataFrame, pd.DataFrame]:
    """Per cutoff, the compressed tables; the repeat purchase days of the t_1 customers up to t_0
    counted by day (the tracking curve's actuals); the net spend per customer and discount period
    of (t_1, t_0] (the intervals' coverage). Computed by the features engine (DuckDB, or Spark with
    features.engine: pyspark) from the files: only distinct rows, one row per day and per customer
    and period reach Python, never the transactions."""
    with engines.connect(params.features) as con:
        patterns = {k: patterns_at(con, paths.features_at(k), f"clv_features_t{k}") for k in CUTOFF_OFFSETS}
        customers = con.read_parquet(paths.features_at(1), table_name="clv_customers_t1")
        customers = customers.select("customer_id", "first_purchase")
        transactions = engines.read_transactions(con, paths.path("transactions"))
        repeats = con.to_pandas(clv_eval.repeat_day_counts(transactions, customers, t0))
        spend = con.to_pandas(window_period_spend(transactions, t1.date(), params.data.horizon_days,
                                                  params.clv.discount_period_days))  # fmt: skip
    return patterns, repeats, spend


def log_model(settings: ClvSettings, model_files: dict[str, Path], f0: pd.DataFrame, pred_t0: pd.DataFrame,
              params: Params) -> None:  # fmt: skip
    """Log the pickled t_0 models (``model_files``: purchase_model, spend_model) as one pyfunc,
    registered when clv.register_model, and write registration.json beside them."""
    from models.clv_pyfunc import (PURCHASE_ARTIFACT, REQUIREMENTS, SPEND_ARTIFACT, ClvPyfuncModel, input_example,
                                   model_signature)

    model, cfg = ClvPyfuncModel.from_settings(settings), params.clv
    artifacts = {PURCHASE_ARTIFACT: model_files["purchase_model"], SPEND_ARTIFACT: model_files["spend_model"]}
    info = tracking.log_pyfunc(
        PYFUNC_NAME, model, REQUIREMENTS, cfg.model_name if cfg.register_model else None,
        artifacts={key: str(path.resolve()) for key, path in artifacts.items()},
        example=input_example(f0), signature=model_signature(model.defaults, pred_t0.head(5)),
    )  # fmt: skip
    version = info.registered_model_version if cfg.register_model else None
    tracking.write_registration(model_files["purchase_model"].parent, cfg.model_name, version, info.run_id)


def run(params: Params, paths: Catalog) -> None:
    """Fit, predict and write the stage's outputs; MLflow (set-up, the stage run, the pyfunc) works on
    a thread of its own meanwhile (tracking.in_background), and the stage ends when it is done."""
    data, cfg, settings = params.data, params.clv, clv_settings(params)
    fitting = ClvFitting.from_config(cfg.model_dump(), params.seed)
    sources = {k: str(paths.features_at(k)) for k in CUTOFF_OFFSETS}
    features, labels = read_inputs(params, paths, sources)
    f0, f1 = features[0], features[1]
    t0, t1 = single_date(f0, sources[0]), single_date(f1, sources[1])
    section = {"seed": params.seed, "horizon_days": data.horizon_days, "time_unit": data.time_unit, **cfg.model_dump()}
    tags = {f"cvp.input.features_t{k}": files.file_sha256(paths.features_at(k))[:16] for k in CUTOFF_OFFSETS}

    with tracking.in_background(functools.partial(tracking.stage_run, STAGE, params, paths, section, tags)) as later:
        patterns, repeats, period_spend = engine_tables(params, paths, t0, t1)
        fits = clv_select.fit_cutoffs(features, labels, patterns, fitting, settings, sources)
        models = {0: (fits.purchase_t0, fits.spend_t0), 1: (fits.chosen.model, fits.spend_t1)}
        compressed = {k: (patterns[k].rfm, patterns[k].spend) for k in models}
        interval_config = domain.interval_config(params)
        intervals = clv_intervals.stage_intervals(models, features, compressed, fits.predictions, labels, period_spend,
                                                  interval_config, settings)  # fmt: skip
        holdout = clv_eval.holdout_frame(f1, fits.predictions[1], labels)
        evaluation = clv_eval.evaluate(holdout, data.horizon_days, cfg.margin)
        curve = clv_eval.tracking_table(f1, None, fits.chosen.model, t0, data.days_per_unit, repeat_counts=repeats)

        for k in CUTOFF_OFFSETS:
            paths.write(f"clv_predictions_t{k}", intervals.predictions[k], params)
        files.write_text(clv_intervals.served_artifact(intervals.draws_t0, interval_config),
                         paths.path("clv_interval_draws"))  # fmt: skip
        model_files = {key: paths.path(f"clv_{key}") for key in ("purchase_model", "spend_model")}
        for key, fitted in (("purchase_model", fits.purchase_t0), ("spend_model", fits.spend_t0)):
            files.write_bytes(pickle.dumps(fitted, protocol=5), model_files[key])
        summary = clv_select.model_summary(fits, t0, data.time_unit, data.days_per_unit, data.horizon_days, model_files)
        files.write_json(summary, paths.path("clv_model_summary"))
        bgnbd = clv_select.bgnbd_block(fits.name, fits.purchase_t0, patterns[0], fitting)
        metrics = clv_select.clv_metrics(fits, t0, t1, f0, bgnbd, evaluation["summary"], data.time_unit,
                                         data.horizon_days)  # fmt: skip
        metrics["intervals"] = intervals.metrics
        files.write_json(metrics, paths.metrics_file(STAGE))

        out = paths.plots_dir(STAGE)
        files.write_csv(intervals.table.round(10), out / "interval_coverage.csv")
        for stem, table in clv_eval.plot_tables(evaluation, curve, fits.selection).items():
            files.write_csv(table, out / f"{stem}.csv")
        matrices = clv_eval.purchase_matrices(fits.purchase_t0, f0["frequency"], f0["T"], settings.horizon_units)
        figures = clv_plots.figures(evaluation, curve, matrices, fits.name, t1, data.time_unit, data.horizon_days)
        for stem, figure in figures.items():
            files.save_figure(figure, out / f"{stem}.png")
        later(log_run, settings, model_files, f0.head(5), fits, metrics, out, paths, params)
    log.info("clv: %s, %d customers scored at %s, total CLV %.2f", fits.name, len(fits.predictions[0]),
             metrics["as_of"], metrics["predictions"]["t0"]["total_clv"])  # fmt: skip


def log_run(settings, model_files, f0_head, fits, metrics, out, paths, params) -> None:
    """Everything the stage logs to its MLflow run (on the MLflow thread)."""
    import mlflow

    tracking.log_metrics(metrics)
    mlflow.set_tag("cvp.clv.model", fits.name)
    mlflow.log_artifacts(str(out), artifact_path="plots")
    mlflow.log_artifact(str(paths.path("clv_model_summary")))
    log_model(settings, model_files, f0_head, fits.predictions[0], params)
