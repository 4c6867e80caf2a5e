"""`cvp value`: the value model (models/value.py), evaluated out of time against the BTYD CLV.

Evaluation (when t2 is usable; models/value_eval.py): train on features_t2 + clv_predictions_t2
against the value realised in (t2, t1], test on every t1 customer against the value realised in
(t1, t0], next to the BTYD CLV, the combined growth potential and the quick estimate. The model
"wins" when its ``value.win_metric`` beats the CLV's and the combined rule's by more than
``value.min_gain`` (the lower end of the gain's bootstrap interval, ``value.win_interval``);
segment uses it for growth potential only then (``segment.growth_potential: auto``). Final fit
at t1, scoring t0, when segment will use it (auto and it won, or value); else the t0
predictions are the BTYD CLV and no final model is fitted. Without a usable t2 nothing is evaluated, the predictions are still written
and metrics/value.json says why the model cannot be used (docs/value.md).
"""

from __future__ import annotations

import functools
import logging
import pickle

import pandas as pd

from features.errors import DataError
from models import value as vm
from models import value_eval as ve
from models.plots import value as value_plots
from pipelines import files, tracking
from pipelines.catalog import Catalog
from pipelines.config import Params

log = logging.getLogger(__name__)

STAGE = "value"
LOGGED_METRICS = ("use", "comparison", "evaluation", "final_model")
#: What the stage reads of clv_predictions_t0 when no final model needs the t0 features.
T0_CLV_COLUMNS = ("customer_id", "cutoff", "clv")


def model_factory(params: Params):
    """Factory of unfitted value models configured from params.value.lightgbm and params.seed."""
    return functools.partial(vm.ValueModel, **params.value.lightgbm.model_dump(), random_state=params.seed)


def load_cutoff(paths: Catalog, params: Params, k: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series | None]:
    """(raw features, model input X, realised value or None) at t_k, contract-checked."""
    features, clv = paths.read(f"features_t{k}", params), paths.read(f"clv_predictions_t{k}", params)
    if features.empty or clv.empty:
        return features, pd.DataFrame(), None
    X, cfg = vm.prepare_value_features(features, clv), params.clv
    if not k:
        return features, X, None
    discount = vm.mean_discount_factor(params.data.horizon_days, cfg.discount_rate, cfg.discount_period_days)
    y = vm.realised_value(paths.read(f"labels_t{k}", params), cfg.margin, discount).reindex(X.index)
    if y.isna().any():
        raise DataError(f"{paths.labels_at(k)}: no label for customer '{y.index[y.isna()][0]}'; re-run `cvp features`")
    return features, X, y


def clv_by_customer(clv: pd.DataFrame) -> pd.Series:
    """The BTYD CLV indexed by customer_id (text), as the model input X carries it."""
    return pd.Series(clv["clv"].to_numpy(dtype="float64"), index=pd.Index(clv["customer_id"].astype(str), name="customer_id"), name="clv")


def t2_snapshot(paths: Catalog, params: Params) -> tuple[pd.DataFrame, pd.Series | None, str | None]:
    """(X, y, None) at t2 when it can train the evaluation model, else (empty, None, reason)."""
    absent = [str(paths.path(key)) for key in ("features_t2", "labels_t2", "clv_predictions_t2") if not paths.path(key).exists()]
    if absent:
        return pd.DataFrame(), None, f"{absent[0]} not found"
    _, X, y = load_cutoff(paths, params, 2)
    problem = ve.training_problem(X, y, 2, params.value.min_train_customers, params.value.min_train_buyers)
    return (pd.DataFrame(), None, problem) if problem else (X, y, None)


def evaluate(params: Params, paths: Catalog, features1: pd.DataFrame, X1: pd.DataFrame, y1: pd.Series) -> tuple:
    """(metrics blocks, t1 predictions, t1 source, decile table, reason when not evaluated)."""
    cfg = params.value
    X2, y2, reason = (pd.DataFrame(), None, "value.enabled is false") if not cfg.enabled else t2_snapshot(paths, params)
    if reason is not None:
        log.warning("value model not evaluated: %s; it cannot be used for growth potential", reason)
        blocks = {"evaluation": {"mode": "none", "reason": reason}, "comparison": {}}
        return blocks, X1["clv"], ve.CLV_SOURCE, ve.empty_deciles(), reason
    churn_file = paths.path("churn_predictions_t1")
    churn = paths.read("churn_predictions_t1", params) if churn_file.exists() else None
    references = ve.reference_forecasts(features1, X1, churn, params.data.horizon_days, params.clv.margin)
    blocks, predicted, deciles = ve.evaluate(
        model_factory(params), X2, y2, X1, y1, references, win_metric=cfg.win_metric,
        min_gain=cfg.min_gain, win_interval=cfg.win_interval, seed=params.seed, bootstrap_sample=cfg.bootstrap_sample,
    )  # fmt: skip
    return blocks, predicted, ve.MODEL_SOURCE, deciles, None


def run(params: Params, paths: Catalog) -> None:
    """Evaluate (t2 -> t1) when possible, fit at t1, score t0; write predictions, model, metrics, plots."""
    cfg = params.value
    section = {"value": cfg.model_dump(), "seed": params.seed, "horizon_days": params.data.horizon_days}
    with tracking.in_background(functools.partial(tracking.stage_run, STAGE, params, paths, section)) as later:
        clv0 = paths.read("clv_predictions_t0", params, columns=T0_CLV_COLUMNS)
        features1, X1, y1 = load_cutoff(paths, params, 1)
        if clv0.empty or X1.empty:
            raise DataError(f"{paths.clv_predictions_at(0 if clv0.empty else 1)}: no customers or predictions; "
                            "run `cvp clv` on more history or a later data.as_of")  # fmt: skip
        t0, t1 = pd.Timestamp(clv0["cutoff"].iloc[0]), pd.Timestamp(features1["cutoff"].iloc[0])
        blocks, predicted_t1, source_t1, deciles, reason = evaluate(params, paths, features1, X1, y1)
        use, reason = (blocks["evaluation"]["wins"], blocks["evaluation"]["verdict"]) if reason is None else (False, reason)
        problem = ve.training_problem(X1, y1, 1, cfg.min_train_customers, cfg.min_train_buyers) if cfg.enabled else reason
        unused = ve.unused_reason(params.segment.growth_potential, bool(use))
        final = None if problem or unused else model_factory(params)().fit(X1, y1)
        if problem:
            log.warning("value model not fitted at t1: %s; its predictions are the BTYD CLV", problem)
            predicted_t0, source_t0, use, reason = clv_by_customer(clv0), ve.CLV_SOURCE, False, problem
        elif unused:
            log.info("value model not fitted at t1: %s; its t0 predictions are the BTYD CLV", unused)
            predicted_t0, source_t0 = clv_by_customer(clv0), ve.CLV_SOURCE
        else:  # the t0 features are read only here: without a final model nothing needs them
            X0 = load_cutoff(paths, params, 0)[1]
            predicted_t0, source_t0 = pd.Series(final.predict(X0), index=X0.index), ve.MODEL_SOURCE
        summary = {
            "as_of": str(t0.date()), "enabled": cfg.enabled, "use": bool(use), "reason": reason, **blocks,
            "win_metric": cfg.win_metric, "min_gain": cfg.min_gain, "win_interval": cfg.win_interval,
            "final_model": ve.final_description(final, t1, problem or unused),
            "predictions": {f"t{k}": {"customers": len(v), "source": s, "total": float(v.sum())}
                            for k, v, s in ((0, predicted_t0, source_t0), (1, predicted_t1, source_t1))},
        }  # fmt: skip
        log.info("value model %s for growth potential: %s", "used" if use else "not used", reason)
        paths.write("value_predictions_t0", ve.predictions_frame(predicted_t0, t0, source_t0), params)
        paths.write("value_predictions_t1", ve.predictions_frame(predicted_t1, t1, source_t1), params)
        files.write_bytes(pickle.dumps(final, protocol=5), paths.path("value_model"))
        files.write_json(summary, paths.metrics_file(STAGE))
        write_plots(paths, deciles, final, reason if blocks["evaluation"]["mode"] == "none" else None)
        tags = {"cvp.value.use": str(bool(use)).lower(), "cvp.value.evaluation": blocks["evaluation"]["mode"]}
        later(tracking.log_stage_results, STAGE, paths, {k: summary[k] for k in LOGGED_METRICS}, tags)


def write_plots(paths: Catalog, deciles: pd.DataFrame, final, note: str | None) -> None:
    """plots/value: decile_calibration.csv/.png (the holdout) and importance.csv (the final model)."""
    out = paths.plots_dir(STAGE)
    files.write_csv(deciles.round(10), out / "decile_calibration.csv")
    importance = final.feature_importance() if final is not None else pd.DataFrame(columns=["feature", "purchase", "value"])
    files.write_csv(importance.round(6), out / "importance.csv")
    files.save_figure(value_plots.decile_calibration(deciles, note), out / "decile_calibration.png")
