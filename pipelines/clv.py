"""`cvp clv`: choose, evaluate and fit the CLV models; predict at every cutoff; log one pyfunc model.

1. Model choice (``clv.model: auto``): every candidate of the BG/NBD family is fitted at t_1
   and predicts the purchase days of (t_1, t_0]; the lowest per-customer MAE wins.
2. Holdout evaluation of the chosen model fitted at t_1 against labels_t1, next to the
   quick estimate CLV = (T/t) * s.
3. The chosen model and Gamma-Gamma are refitted at each cutoff t_k on data up to t_k and
   predict at t_k (data/clv/predictions_t{k}.parquet), so downstream stages can use them
   without leakage.
4. Metrics, plots, the pickled t_0 models and an MLflow pyfunc model (registered if asked).
"""

from __future__ import annotations

import importlib.metadata
import logging
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa

from features.customer import rfm_counts, spend_counts
from features.errors import DataError
from models import clv_eval
from models.clv import ClvSettings, FitError, PurchaseModel, SpendModel, compress
from pipelines import clv_plots, engines, io, paths, tracking
from pipelines.config import ClvParams, Params

log = logging.getLogger(__name__)

STAGE = "clv"
PURCHASE_PICKLE = paths.CLV_MODEL_DIR / "purchase_model.pkl"
SPEND_PICKLE = paths.CLV_MODEL_DIR / "spend_model.pkl"
MODEL_SUMMARY = paths.CLV_MODEL_DIR / "model.json"
REGISTRATION = paths.registration_file(paths.CLV_MODEL_DIR)
PYFUNC_NAME = "clv_model"
BGNBD_PARAMS = ("r", "alpha", "a", "b")
PIP_PACKAGES = ("lifetimes", "pandas", "numpy", "scipy", "mpmath", "scikit-learn", "mlflow", "cloudpickle")

# --------------------------------------------------------------------------- contracts

_sorted_by_id = pa.Check(lambda df: df["customer_id"].is_monotonic_increasing, error="rows sorted by customer_id")

FEATURES_INPUT = pa.DataFrameSchema(
    {
        "customer_id": pa.Column("str", unique=True),
        "cutoff": pa.Column(pa.DateTime),
        "first_purchase": pa.Column(pa.DateTime),
        "frequency": pa.Column("int64", pa.Check.ge(0)),
        "recency": pa.Column("float64", pa.Check.ge(0)),
        "T": pa.Column("float64", pa.Check.ge(0)),
        "monetary_value": pa.Column("float64"),
        "avg_spend": pa.Column("float64"),
        "ipi_mean": pa.Column("float64", pa.Check.gt(0), nullable=True),
    },
    checks=[_sorted_by_id],
    name="features (columns the clv stage reads)",
)
LABELS_INPUT = pa.DataFrameSchema(
    {
        "customer_id": pa.Column("str", unique=True),
        "n_purchase_days": pa.Column("int64", pa.Check.ge(0)),
        "spend": pa.Column("float64"),
    },
    checks=[_sorted_by_id],
    name="labels (columns the clv stage reads)",
)
TRANSACTIONS_INPUT = pa.DataFrameSchema(
    {"customer_id": pa.Column("str"), "timestamp": pa.Column(pa.DateTime), "amount": pa.Column("float64")},
    name="transactions (columns the clv stage reads)",
)

PREDICTION_DTYPES = {
    "customer_id": "str", "cutoff": "datetime64[us]", "model": "str", "p_alive": "float64",
    "expected_purchases": "float64", "p_no_purchase": "float64", "expected_avg_spend": "float64",
    "clv": "float64",
}  # fmt: skip
_probability = [pa.Check.ge(0), pa.Check.le(1)]
PREDICTIONS_SCHEMA = pa.DataFrameSchema(
    {
        "customer_id": pa.Column("str", unique=True),
        "cutoff": pa.Column("datetime64[us]"),
        "model": pa.Column("str", pa.Check.isin(clv_eval.CANDIDATE_ORDER)),
        "p_alive": pa.Column("float64", _probability),
        "expected_purchases": pa.Column("float64", pa.Check.ge(0)),
        "p_no_purchase": pa.Column("float64", _probability),
        "expected_avg_spend": pa.Column("float64"),
        "clv": pa.Column("float64"),
    },
    strict=True,
    ordered=True,
    checks=[
        _sorted_by_id,
        pa.Check(lambda df: df["cutoff"].nunique() <= 1, error="one cutoff per file"),
        pa.Check(lambda df: df["model"].nunique() <= 1, error="one model per file"),
    ],
    name="clv predictions",
)

# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class StageInputs:
    """Validated inputs: features at t_0, t_1, t_2 (t_2 may be empty), labels at t_1, transactions."""

    features: dict[int, pd.DataFrame]
    labels_t1: pd.DataFrame
    transactions: pd.DataFrame


def _first_line(exc: Exception) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


def read_validated(path: Path, schema: pa.DataFrameSchema, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Read a Parquet input and check it against ``schema``; DataError naming the file otherwise."""
    if not path.exists():
        raise DataError(f"{path}: not found; run `cvp features` (and `cvp ingest`) first")
    frame = pd.read_parquet(path, columns=list(columns) if columns else None)
    try:
        return schema.validate(frame).reset_index(drop=True)
    except (pa.errors.SchemaError, pa.errors.SchemaErrors) as exc:
        raise DataError(f"{path}: does not match the {schema.name} contract: {_first_line(exc)}") from None


def load_inputs() -> StageInputs:
    features = {}
    for k in paths.CUTOFF_OFFSETS:
        features[k] = read_validated(paths.features_at(k), FEATURES_INPUT)
        log.info("features_t%d: %d customers", k, len(features[k]))
    for k in (0, 1):
        if features[k].empty:
            raise DataError(
                f"{paths.features_at(k)}: no customers; the CLV models need purchases on or before t_{k} "
                "(check data.as_of and data.horizon_days)"
            )
    labels = read_validated(paths.labels_at(1), LABELS_INPUT)
    if not labels["customer_id"].equals(features[1]["customer_id"]):
        raise DataError(f"{paths.labels_at(1)}: customers differ from {paths.features_at(1)}; rerun `cvp features`")
    transactions = read_validated(paths.TRANSACTIONS, TRANSACTIONS_INPUT, columns=list(TRANSACTIONS_INPUT.columns))
    return StageInputs(features, labels, transactions)


def cutoff_of(features: pd.DataFrame, k: int) -> pd.Timestamp:
    values = features["cutoff"].unique()
    if len(values) != 1:
        raise DataError(f"{paths.features_at(k)}: expected one cutoff, found {len(values)}")
    return pd.Timestamp(values[0])


# --------------------------------------------------------------------------- sufficient statistics


@dataclass(frozen=True)
class Patterns:
    """What the fits need from one features file: distinct (frequency, recency, T) and distinct
    (frequency, monetary_value), each with its customer ``count``."""

    rfm: pd.DataFrame
    spend: pd.DataFrame


def fit_patterns(params: Params) -> dict[int, Patterns]:
    """Per cutoff, the compressed tables, computed by the features engine (DuckDB, or Spark with
    features.engine: pyspark) from the features files: only distinct rows reach Python."""
    out = {}
    with engines.connect(params.features) as con:
        for k in paths.CUTOFF_OFFSETS:
            out[k] = patterns_at(con, paths.features_at(k), f"clv_features_t{k}")
            log.info("t_%d: %d customers as %d (frequency, recency, T) and %d (frequency, monetary_value) patterns",
                     k, int(out[k].rfm["count"].sum()), len(out[k].rfm), len(out[k].spend))  # fmt: skip
    return out


def patterns_at(con, path: Path, table_name: str) -> Patterns:
    """The compressed tables of one features file, computed on the ibis backend ``con``."""
    table = con.read_parquet(path, table_name=table_name)
    return Patterns(con.to_pandas(rfm_counts(table)), con.to_pandas(spend_counts(table)))


def patterns_of(features: pd.DataFrame) -> Patterns:
    """The same tables from a features frame already in memory."""
    return Patterns(compress(features, ["frequency", "recency", "T"]), compress(features, ["frequency", "monetary_value"]))


# --------------------------------------------------------------------------- fitting


def new_purchase_model(name: str, cfg: ClvParams, seed: int) -> PurchaseModel:
    return PurchaseModel(model=name, penalizer=cfg.penalizer, retry_penalizer=cfg.retry_penalizer, random_state=seed,
                         max_iterations=cfg.fit_max_iterations, time_budget_s=cfg.fit_time_budget_s)


def fit_purchase(model: PurchaseModel, patterns: Patterns) -> PurchaseModel:
    rfm = patterns.rfm
    return model.fit(rfm["frequency"], rfm["recency"], rfm["T"], weights=rfm["count"])


def fit_spend(cfg: ClvParams, patterns: Patterns) -> SpendModel:
    model = SpendModel(penalizer=cfg.spend_penalizer, correlation_warn=cfg.spend_correlation_warn,
                       retry_penalizer=cfg.spend_retry_penalizer, fallback=cfg.spend_fallback)
    spend = patterns.spend
    return model.fit(spend["frequency"], spend["monetary_value"], weights=spend["count"])


def fit_both(name: str, patterns: Patterns, k: int, params: Params) -> tuple[PurchaseModel, SpendModel]:
    """The purchase model ``name`` and Gamma-Gamma fitted on features_t{k}; FitError if either fails."""
    log.info("fitting %s and Gamma-Gamma at t_%d on %d customers", name, k, int(patterns.rfm["count"].sum()))
    purchase = fit_purchase(new_purchase_model(name, params.clv, params.seed), patterns)
    return purchase, fit_spend(params.clv, patterns)


def too_few_customers(k: int, n_customers: int, cfg: ClvParams, details: str) -> DataError:
    """The error of a failed fit on a base smaller than clv.min_customers: the size is the cause to name."""
    later = ", which moves t_1 later" if k == 1 else ""
    return DataError(
        f"{paths.features_at(k)}: {n_customers} customers at t_{k} are too few to fit a purchase model "
        f"(fits are reliable from clv.min_customers={cfg.min_customers}); use a larger customer base or a "
        f"shorter data.horizon_days{later} (details: {details})"
    )


def fit_failed(k: int, n_customers: int, cfg: ClvParams, exc: FitError) -> DataError:
    """A fit at t_k that failed, as one line naming the features file (and the size, on a small base)."""
    if n_customers < cfg.min_customers:
        return too_few_customers(k, n_customers, cfg, str(exc))
    return DataError(f"{paths.features_at(k)}: {exc}")


def choose_purchase_model(
    cfg: ClvParams,
    seed: int,
    features: pd.DataFrame,
    labels: pd.DataFrame,
    horizon_units: float,
    make_model: Callable[[str], Any] | None = None,
    patterns: Patterns | None = None,
) -> tuple[clv_eval.Candidate, dict]:
    """The purchase model fitted at t_1 that the stage uses, and the model_selection report.

    ``clv.model: auto`` compares every candidate on the holdout; a named model is the only one. A
    candidate that cannot be fitted (or runs over ``clv.fit_time_budget_s``) is skipped, with the
    reason in the report.
    With more than ``clv.selection_max_customers`` customers, the candidates are compared on a
    seeded sample of that many and the chosen one is then fitted on everyone (``patterns``).
    """
    make_model = make_model or (lambda name: new_purchase_model(name, cfg, seed))
    names = clv_eval.CANDIDATE_ORDER if cfg.model == "auto" else (cfg.model,)
    actual = labels["n_purchase_days"].to_numpy()
    sampled = cfg.model == "auto" and len(features) > cfg.selection_max_customers
    if sampled:
        rows = np.sort(np.random.default_rng(seed).choice(len(features), cfg.selection_max_customers, replace=False))
        log.info("comparing the candidates on %d of the %d customers at t_1 (clv.selection_max_customers)",
                 len(rows), len(features))  # fmt: skip
        sample = features.iloc[rows]
        candidates = clv_eval.compare_candidates(names, sample, actual[rows], horizon_units, make_model,
                                                 patterns_of(sample).rfm)  # fmt: skip
    else:
        rfm = patterns.rfm if patterns is not None else None
        candidates = clv_eval.compare_candidates(names, features, actual, horizon_units, make_model, rfm)
    errors = {c.name: (c.errors["mae"] if c.errors else None) for c in candidates}
    if all(v is None for v in errors.values()):
        reasons = "; ".join(f"{c.name}: {c.failure}" for c in candidates)
        if len(features) < cfg.min_customers:
            raise too_few_customers(1, len(features), cfg, reasons)
        raise DataError(
            f"{paths.features_at(1)}: no purchase model could be fitted ({reasons}); try a larger clv.penalizer or "
            "clv.retry_penalizer (e.g. 0.01), a larger clv.fit_time_budget_s, or another clv.model"
        )
    chosen = clv_eval.select_candidate(errors)
    report = clv_eval.selection_report(candidates, chosen, "auto" if cfg.model == "auto" else "configured")
    table = clv_eval.selection_table(report).to_string(index=False)
    log.info("model selection (%s), holdout (t_1, t_0]:\n%s\nchosen: %s", report["method"], table, chosen)
    winner = next(c for c in candidates if c.name == chosen)
    if sampled:
        report["sample_customers"] = int(cfg.selection_max_customers)
        everyone = patterns if patterns is not None else patterns_of(features)
        winner = replace(winner, model=fit_purchase(make_model(chosen), everyone))
    return winner, report


# --------------------------------------------------------------------------- predictions


def to_predictions(frame: pd.DataFrame) -> pd.DataFrame:
    """A predictions frame in the contract's column order and dtypes, sorted, validated."""
    out = frame.loc[:, list(PREDICTION_DTYPES)].astype(PREDICTION_DTYPES)
    out = out.sort_values("customer_id", kind="stable").reset_index(drop=True)
    return PREDICTIONS_SCHEMA.validate(out)


def clv_settings(params: Params) -> ClvSettings:
    return ClvSettings(
        days_per_unit=params.data.days_per_unit,
        horizon_days=params.data.horizon_days,
        margin=params.clv.margin,
        discount_rate=params.clv.discount_rate,
        discount_period_days=params.clv.discount_period_days,
    )


def predict_at(purchase: PurchaseModel, spend: SpendModel, features: pd.DataFrame, params: Params) -> pd.DataFrame:
    return to_predictions(clv_settings(params).predict(purchase, spend, features))


def empty_predictions() -> pd.DataFrame:
    return to_predictions(pd.DataFrame({c: pd.Series([], dtype=t) for c, t in PREDICTION_DTYPES.items()}))


def predict_t2(features: pd.DataFrame, patterns: Patterns, name: str, params: Params) -> tuple[pd.DataFrame, str | None]:
    """Predictions at t_2 from models fitted up to t_2; empty (with the reason) when they cannot be fitted."""
    reason = None
    if len(features) < params.clv.min_customers:
        reason = f"{len(features)} customers at t_2, fewer than clv.min_customers={params.clv.min_customers}"
    else:
        try:
            return predict_at(*fit_both(name, patterns, 2, params), features, params), None
        except FitError as exc:
            reason = str(exc)
    log.warning("t_2 not fitted: %s; writing an empty predictions file", reason)
    return empty_predictions(), reason


def prediction_summary(pred: pd.DataFrame) -> dict:
    return {
        "n_customers": int(len(pred)),
        "total_clv": float(pred["clv"].sum()),
        "total_expected_purchases": float(pred["expected_purchases"].sum()),
        "mean_p_alive": float(pred["p_alive"].mean()),
    }


# --------------------------------------------------------------------------- evaluation


def holdout_frame(features: pd.DataFrame, predictions: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """One row per t_1 customer: features, the model's t_1 predictions and the actual holdout."""
    predicted = predictions[["customer_id", "expected_purchases", "expected_avg_spend", "clv"]]
    actual = labels.rename(columns={"n_purchase_days": "actual_purchases", "spend": "actual_spend"})
    frame = features[["customer_id", "frequency", "ipi_mean", "avg_spend"]]
    frame = frame.merge(predicted, on="customer_id", validate="one_to_one")
    actual = actual[["customer_id", "actual_purchases", "actual_spend"]]
    return frame.merge(actual, on="customer_id", validate="one_to_one")


def tracking_table(inputs: StageInputs, purchase: PurchaseModel, t0: pd.Timestamp, days_per_unit: float):
    """Weekly cumulative repeat purchases of the t_1 customers up to t_0, actual vs the model fitted at t_1."""
    features = inputs.features[1]
    first = features.set_index("customer_id")["first_purchase"]
    repeats = clv_eval.repeat_purchase_days(inputs.transactions, first, t0)
    expected = purchase.expected_purchases_unconditional
    return clv_eval.tracking_curve(features["first_purchase"], repeats, expected, days_per_unit, t0)


def evaluate(inputs: StageInputs, chosen: clv_eval.Candidate, predictions_t1: pd.DataFrame, t0: pd.Timestamp,
             params: Params) -> dict:  # fmt: skip
    """Holdout numbers (model and baseline), calibration table, gains curve and tracking table."""
    frame = holdout_frame(inputs.features[1], predictions_t1, inputs.labels_t1)
    horizon, margin = params.data.horizon_days, params.clv.margin
    summary = clv_eval.holdout_summary(frame, horizon, margin)
    calibration = clv_eval.calibration_holdout_table(
        frame["frequency"], frame["expected_purchases"], frame["actual_purchases"]
    )
    baseline = clv_eval.baseline_frame(frame["ipi_mean"], frame["avg_spend"], horizon, margin)
    gains = clv_eval.gains_curve({"model": frame["clv"], "baseline": baseline["clv"]}, frame["actual_spend"])
    log.info(
        "holdout (%d customers): purchases MAE model %.4f vs baseline %.4f; spend Spearman model %.3f vs baseline %.3f",
        summary["n_customers"], summary["purchases"]["model"]["mae"], summary["purchases"]["baseline"]["mae"],
        summary["ranking"]["model"]["spearman_rho"], summary["ranking"]["baseline"]["spearman_rho"],
    )  # fmt: skip
    return {
        "summary": {**summary, "calibration": calibration.to_dict(orient="records")},
        "calibration": calibration,
        "gains": gains,
        "tracking": tracking_table(inputs, chosen.model, t0, params.data.days_per_unit),
    }


# --------------------------------------------------------------------------- outputs


def purchase_block(model: PurchaseModel) -> dict:
    return {**model.params_, "log_likelihood": model.log_likelihood_, "penalizer": model.penalizer_}


def bgnbd_block(chosen: str, chosen_t0: PurchaseModel, patterns: Patterns, params: Params) -> dict:
    """BG/NBD parameters at t_0: the chosen model's, or a BG/NBD fitted for reference."""
    if chosen == "bgnbd":
        return purchase_block(chosen_t0)
    try:
        return purchase_block(fit_purchase(new_purchase_model("bgnbd", params.clv, params.seed), patterns))
    except FitError as exc:
        log.warning("reference BG/NBD fit at t_0 failed: %s", exc)
        return {**dict.fromkeys(BGNBD_PARAMS), "error": str(exc)}


def model_summary(name: str, purchase: PurchaseModel, spend: SpendModel, t0: pd.Timestamp, params: Params) -> dict:
    return {
        "model": name,
        "cutoff": t0.date().isoformat(),
        "time_unit": params.data.time_unit,
        "days_per_unit": params.data.days_per_unit,
        "horizon_days": params.data.horizon_days,
        "purchase_params": purchase.params_,
        "spend_params": spend.params_,
        "penalizer": purchase.penalizer_,
        "time_scale": purchase.time_scale_,
        "n_customers": purchase.n_customers_,
        "n_spend_customers": spend.n_fit_,
        "files": {"purchase_model": PURCHASE_PICKLE.name, "spend_model": SPEND_PICKLE.name},
    }


def stage_metrics(name: str, cutoffs: dict, purchase_t0: PurchaseModel, spend_t0: SpendModel, f0: pd.DataFrame,
                  patterns: Patterns, selection: dict, holdout: dict, predictions: dict, params: Params) -> dict:  # fmt: skip
    """metrics/clv.json: t_0 parameters, model selection, holdout evaluation, prediction totals."""
    return {
        "model": name,
        "as_of": cutoffs[0].date().isoformat(),
        "holdout_cutoff": cutoffs[1].date().isoformat(),
        "time_unit": params.data.time_unit,
        "horizon_days": params.data.horizon_days,
        "bgnbd": bgnbd_block(name, purchase_t0, patterns, params),
        name: purchase_block(purchase_t0),
        "gamma_gamma": {**spend_t0.params_, "population_mean_spend": spend_t0.population_mean_spend_,
                        "penalizer": spend_t0.penalizer_, "source": spend_t0.source_,
                        **({"fit_failure": spend_t0.fit_failure_} if spend_t0.fit_failure_ else {})},
        "n_customers": int(len(f0)),
        "n_repeat_customers": int((f0["frequency"] > 0).sum()),
        "frequency_spend_corr": spend_t0.frequency_spend_corr_,
        "n_excluded_gamma_gamma": int(spend_t0.n_excluded_),
        "model_selection": selection,
        "holdout": holdout,
        "predictions": {f"t{k}": prediction_summary(pred) for k, pred in sorted(predictions.items())},
    }


def _write_table(frame: pd.DataFrame, target: Path) -> None:
    """A plot's data as CSV, floats rounded to 10 decimals (no last-bit noise like 1.0000000000000002)."""
    io.write_csv(frame.round(10), target)


def write_plots(evaluation: dict, chosen: str, t1: pd.Timestamp, params: Params) -> None:
    out = paths.plots_dir(STAGE)
    unit = "weeks" if params.data.time_unit == "W" else "days"
    horizon = params.data.horizon_days
    calibration, tracking_curve, gains = evaluation["calibration"], evaluation["tracking"], evaluation["gains"]
    expected, alive, t_max = evaluation["matrices"]
    _write_table(calibration, out / "calibration_holdout.csv")
    clv_plots.save_png(clv_plots.calibration_holdout(calibration, chosen), out / "calibration_holdout.png")
    _write_table(tracking_curve, out / "tracking.csv")
    clv_plots.save_png(clv_plots.tracking(tracking_curve, t1, chosen), out / "tracking.png")
    title = f"Expected purchase days in the next {horizon} days ({chosen})"
    figure = clv_plots.heatmap(expected, title, "expected purchase days", t_max, unit)
    clv_plots.save_png(figure, out / "frequency_recency.png")
    figure = clv_plots.heatmap(alive, f"P(alive) ({chosen})", "P(alive)", t_max, unit)
    clv_plots.save_png(figure, out / "p_alive_matrix.png")
    _write_table(gains, out / "model_vs_baseline.csv")
    figure = clv_plots.model_vs_baseline(gains, evaluation["summary"]["ranking"])
    clv_plots.save_png(figure, out / "model_vs_baseline.png")
    _write_table(evaluation["selection"], out / "model_selection.csv")


def pip_requirements() -> list[str]:
    return [f"{pkg}=={importlib.metadata.version(pkg)}" for pkg in PIP_PACKAGES]


def log_pyfunc_model(features_t0: pd.DataFrame, predictions_t0: pd.DataFrame, params: Params):
    """Log the t_0 models as one pyfunc (registered when clv.register_model); returns the ModelInfo.

    The class is loaded from the installed project package (models.clv_pyfunc, models.clv).
    """
    import mlflow

    from models.clv_pyfunc import PURCHASE_ARTIFACT, SPEND_ARTIFACT, ClvPyfuncModel, input_example, model_signature

    cfg = params.clv
    defaults = {
        "horizon_days": params.data.horizon_days,
        "discount_rate": cfg.discount_rate,
        "margin": cfg.margin,
        "discount_period_days": cfg.discount_period_days,
    }
    return mlflow.pyfunc.log_model(
        name=PYFUNC_NAME,
        python_model=ClvPyfuncModel(params.data.days_per_unit, defaults),
        artifacts={PURCHASE_ARTIFACT: str(PURCHASE_PICKLE.resolve()), SPEND_ARTIFACT: str(SPEND_PICKLE.resolve())},
        signature=model_signature(defaults, predictions_t0.head(5)),
        input_example=input_example(features_t0),
        pip_requirements=pip_requirements(),
        registered_model_name=cfg.model_name if cfg.register_model else None,
    )


def write_registration(info, params: Params) -> None:
    """registration.json for a registered model; a stale one is removed when not registering."""
    if params.clv.register_model and info.registered_model_version is not None:
        version = str(info.registered_model_version)
        io.write_json({"name": params.clv.model_name, "version": version, "run_id": info.run_id}, REGISTRATION)
        log.info("registered %s version %s", params.clv.model_name, version)
    else:
        REGISTRATION.unlink(missing_ok=True)


# --------------------------------------------------------------------------- stage


def run(params: Params, params_path: Path = Path("params.yaml")) -> None:
    cfg, seed = params.clv, params.seed
    horizon_units = params.data.horizon_days / params.data.days_per_unit
    inputs = load_inputs()
    cutoffs = {k: cutoff_of(inputs.features[k], k) for k in (0, 1)}
    section = {"seed": seed, "horizon_days": params.data.horizon_days, "time_unit": params.data.time_unit,
               **cfg.model_dump()}  # fmt: skip
    tags = {f"cvp.input.features_t{k}": io.file_sha256(paths.features_at(k))[:16] for k in paths.CUTOFF_OFFSETS}

    with tracking.stage_run(STAGE, params, section=section, tags=tags, params_path=params_path):
        import mlflow

        patterns = fit_patterns(params)

        # 1-2. choose the purchase model at t_1 and evaluate it on (t_1, t_0]
        f1 = inputs.features[1]
        chosen, selection = choose_purchase_model(cfg, seed, f1, inputs.labels_t1, horizon_units, patterns=patterns[1])
        name = chosen.name
        try:
            spend_t1 = fit_spend(cfg, patterns[1])
        except FitError as exc:
            raise fit_failed(1, len(f1), cfg, exc) from None
        predictions = {1: predict_at(chosen.model, spend_t1, f1, params)}
        evaluation = evaluate(inputs, chosen, predictions[1], cutoffs[0], params)
        evaluation["selection"] = clv_eval.selection_table(selection)

        # 3. refit at t_0 and t_2, each on data up to its cutoff
        f0 = inputs.features[0]
        try:
            purchase_t0, spend_t0 = fit_both(name, patterns[0], 0, params)
        except FitError as exc:
            raise fit_failed(0, len(f0), cfg, exc) from None
        predictions[0] = predict_at(purchase_t0, spend_t0, f0, params)
        predictions[2], skipped_t2 = predict_t2(inputs.features[2], patterns[2], name, params)
        evaluation["matrices"] = clv_eval.purchase_matrices(purchase_t0, f0["frequency"], f0["T"], horizon_units)

        for k in paths.CUTOFF_OFFSETS:
            io.write_parquet(predictions[k], paths.clv_predictions_at(k))
        io.write_bytes(pickle.dumps(purchase_t0, protocol=5), PURCHASE_PICKLE)
        io.write_bytes(pickle.dumps(spend_t0, protocol=5), SPEND_PICKLE)
        io.write_json(model_summary(name, purchase_t0, spend_t0, cutoffs[0], params), MODEL_SUMMARY)

        # 4. metrics and plots
        metrics = stage_metrics(name, cutoffs, purchase_t0, spend_t0, f0, patterns[0], selection,
                                evaluation["summary"], predictions, params)  # fmt: skip
        if skipped_t2:
            metrics["predictions"]["t2"]["skipped"] = skipped_t2
        io.write_json(metrics, paths.metrics_file(STAGE))
        write_plots(evaluation, name, cutoffs[1], params)

        # 5. MLflow: metrics, plots, one pyfunc model
        tracking.log_metrics(metrics)
        mlflow.set_tag("cvp.clv.model", name)
        mlflow.log_artifacts(str(paths.plots_dir(STAGE)), artifact_path="plots")
        mlflow.log_artifact(str(MODEL_SUMMARY))
        write_registration(log_pyfunc_model(f0, predictions[0], params), params)
    log.info("clv: %s, %d customers scored at %s, total CLV %.2f",
             name, len(predictions[0]), metrics["as_of"], metrics["predictions"]["t0"]["total_clv"])  # fmt: skip
