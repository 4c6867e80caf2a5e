"""Churn classifier: LightGBM on customer features + CLV-model outputs, with calibration.

Churned = no purchase day in (cutoff, cutoff + horizon]. Features come only from data up to
the cutoff; :func:`check_time_honest` and :func:`check_no_window_columns` refuse inputs that
break that rule. The estimator follows scikit-learn conventions; its probabilities are
P(churn) (the positive class is churned = 1). :func:`choose_churn_source` guards the output:
a constant classifier, or one that ranks worse than the best CLV baseline, gives way to that
baseline calibrated on the training labels (:class:`CalibratedBaseline`).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import expit, logit
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.isotonic import IsotonicRegression
from sklearn.model_selection import StratifiedKFold, train_test_split

from features.errors import DataError
from features.frames import join_on_id, single_date
from models import metrics

log = logging.getLogger(__name__)

ID_COLUMNS = ("customer_id", "cutoff", "model")
CLV_FEATURES = ("expected_purchases", "p_alive", "p_no_purchase", "clv")
# Dates become "days before the cutoff"; a date whose day count is already a feature is dropped.
DATE_AS_DAYS = {"first_purchase": "days_since_first", "last_purchase": "days_since_last"}
# Column names that describe the label window rather than the history before the cutoff.
WINDOW_NAME = re.compile(
    r"(label|target|churn|purchased|future|holdout|window|"
    r"after_cutoff|post_cutoff|(^|_)next(_|$)|(^|_)fwd(_|$)|(^|_)y_true$)",
    re.IGNORECASE,
)
CALIBRATION_METHODS = ("none", "sigmoid", "isotonic")  # auto prefers earlier ones on ties
MIN_CALIBRATION_CLASS = 4  # churned and retained customers needed to hold out a calibration set


# --------------------------------------------------------------------------- labels & checks


def churn_labels(labels: pd.DataFrame) -> pd.Series:
    """churned (int8) = 1 - purchased, indexed by customer_id, sorted."""
    purchased = labels.set_index("customer_id")["purchased"].sort_index()
    if not purchased.isin((0, 1)).all():
        raise DataError("labels: column 'purchased' must hold only 0 and 1; rebuild the labels with `cvp features`")
    return (1 - purchased.astype(np.int8)).astype(np.int8).rename("churned")


def check_time_honest(
    features: pd.DataFrame,
    source: str,
    labels: pd.DataFrame | None = None,
    clv: pd.DataFrame | None = None,
) -> pd.Timestamp:
    """Check that nothing after the cutoff reached the features; return the cutoff.

    Features must have one cutoff, no purchase date after it and non-negative day counts;
    the labels and CLV predictions (fitted at the same cutoff) must carry the same cutoff
    and the same customers.
    """
    cutoff = single_date(features, source)
    for col in ("first_purchase", "last_purchase"):
        if col in features and (pd.to_datetime(features[col]) > cutoff).any():
            raise DataError(
                f"{source}: column '{col}' has dates after the cutoff {cutoff.date()}; "
                "features must use data up to the cutoff only"
            )
    for col in ("days_since_first", "days_since_last"):
        if col in features and (features[col] < 0).any():
            raise DataError(f"{source}: column '{col}' is negative; features must use data up to the cutoff only")
    ids = pd.Index(features["customer_id"])
    for name, other in (("labels", labels), ("clv predictions", clv)):
        if other is None:
            continue
        other_cutoff = single_date(other, f"{source} {name}")
        if other_cutoff != cutoff:
            raise DataError(
                f"{source}: {name} cutoff {other_cutoff.date()} differs from the features' cutoff {cutoff.date()}; "
                "rebuild both at the same cutoff"
            )
        missing = ids.difference(pd.Index(other["customer_id"]))
        if len(missing):
            raise DataError(
                f"{source}: {len(missing)} customer(s) have no {name} (e.g. '{missing[0]}'); "
                "rebuild them from the same features"
            )
    return cutoff


def check_no_window_columns(columns: Iterable[str]) -> None:
    """Refuse feature columns whose name suggests information from the label window."""
    leaky = [c for c in columns if WINDOW_NAME.search(str(c))]
    if leaky:
        raise DataError(
            f"feature column(s) {leaky} look like label-window information; features may only use data up to the cutoff: "
            "remove or rename them"
        )


# --------------------------------------------------------------------------- feature prep


def _is_date(values: pd.Series) -> bool:
    """True for datetime64 columns and for object columns of dates (``datetime.date``, as Arrow's
    date32 arrives in pandas): both are turned into day counts, never into categories."""
    if pd.api.types.is_datetime64_any_dtype(values):
        return True
    return values.dtype == object and pd.api.types.infer_dtype(values, skipna=True) in ("date", "datetime")


def prepare_features(features: pd.DataFrame, clv: pd.DataFrame | None = None) -> pd.DataFrame:
    """Model input: one row per customer (index customer_id, sorted), no ids, no raw dates.

    Joins the CLV outputs (expected_purchases, p_alive, p_no_purchase, clv); turns date
    columns (datetime64, or objects holding dates) into days before the cutoff (dropped when
    that day count is already a feature);
    numbers become float64, text becomes ``category`` (the classifier fixes the categories).
    """
    frame = features
    if not frame["customer_id"].is_unique:
        raise DataError("features: column 'customer_id' has duplicates; one row per customer is required")
    if clv is not None:
        missing = [c for c in CLV_FEATURES if c not in clv]
        if missing:
            raise DataError(f"clv predictions: missing column(s) {missing}; rerun `cvp clv`")
        clash = [c for c in CLV_FEATURES if c in frame]
        if clash:
            raise DataError(f"features: column(s) {clash} clash with the CLV outputs; rename them")
        frame = join_on_id(frame, clv[["customer_id", *CLV_FEATURES]], how="left")
    cutoff = pd.to_datetime(frame["cutoff"])
    out = {}
    for col in frame.columns:
        if col in ID_COLUMNS:
            continue
        values = frame[col]
        if _is_date(values):
            target = DATE_AS_DAYS.get(col, f"{col}_days_before_cutoff")
            if target not in frame:
                out[target] = (cutoff - pd.to_datetime(values)).dt.days.astype("float64")
        elif pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
            out[col] = values.astype("float64")
        else:
            out[col] = values.astype("object").astype("category")
    X = pd.DataFrame(out).set_axis(pd.Index(frame["customer_id"].astype(str), name="customer_id"), axis=0)
    check_no_window_columns(X.columns)
    return X.sort_index()


# --------------------------------------------------------------------------- splits


def split_customers(y: pd.Series, test_fraction: float, seed: int) -> tuple[pd.Index, pd.Index]:
    """Stratified random split of customers (the index of ``y``) into (train, test) ids."""
    train, test = train_test_split(
        y.index.to_numpy(), test_size=test_fraction, random_state=seed, stratify=y.to_numpy()
    )
    return pd.Index(np.sort(train), name=y.index.name), pd.Index(np.sort(test), name=y.index.name)


def customer_folds(y: pd.Series, n_folds: int, seed: int) -> list[tuple[pd.Index, pd.Index]]:
    """Stratified K-fold over customers: list of (train ids, test ids)."""
    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    ids = y.index.to_numpy()
    return [
        (pd.Index(ids[tr], name=y.index.name), pd.Index(ids[te], name=y.index.name))
        for tr, te in folds.split(ids, y.to_numpy())
    ]


# --------------------------------------------------------------------------- calibration


class SigmoidCalibrator:
    """Platt scaling: P = 1 / (1 + exp(-(a * margin + b))), fitted by maximum likelihood.

    Kept by hand: scikit-learn's Platt scaler (``_SigmoidCalibration``) is private, and an
    unpenalised LogisticRegression on the margin moves the recorded selection Brier scores
    (metrics/churn.json) in the 10th digit."""

    def fit(self, margin: np.ndarray, y: np.ndarray) -> "SigmoidCalibrator":
        m, t = np.asarray(margin, float), np.asarray(y, float)

        def loss(ab: np.ndarray) -> tuple[float, np.ndarray]:
            z = ab[0] * m + ab[1]
            p = expit(z)
            nll = np.sum(np.logaddexp(0, z) - t * z)
            grad = p - t
            return float(nll), np.array([np.sum(grad * m), np.sum(grad)])

        result = minimize(loss, x0=np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
        self.a_, self.b_ = float(result.x[0]), float(result.x[1])
        return self

    def predict(self, margin: np.ndarray) -> np.ndarray:
        return expit(self.a_ * np.asarray(margin, float) + self.b_)


class IsotonicCalibrator:
    """Non-decreasing step map from a score to a probability (clipped outside the fitted range)."""

    def fit(self, score: np.ndarray, y: np.ndarray) -> "IsotonicCalibrator":
        self.isotonic_ = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
        self.isotonic_.fit(np.asarray(score, float), np.asarray(y, float))
        return self

    def predict(self, score: np.ndarray) -> np.ndarray:
        return self.isotonic_.predict(np.asarray(score, float))


def choose_n_trees(curve: np.ndarray, tolerance: float | None) -> int:
    """Number of trees from an out-of-time learning curve (log loss after 1, 2, ... trees):
    the fewest whose loss is within ``tolerance`` (log-loss units) of the curve's minimum;
    ``None`` keeps every tree of the curve (the cap).

    Tolerance 0 is early stopping at the minimum; a positive tolerance stops where the curve
    has flattened (CDNOW: 0.29971 at tree 300, 0.29970 at 295 (the minimum); 1M synthetic
    customers: tolerance 0.0002 keeps 264 of 300).
    """
    curve = np.asarray(curve, dtype=np.float64)
    if curve.size == 0 or not np.isfinite(curve).all():
        raise ValueError("the learning curve must hold one finite log loss per tree")
    if tolerance is None:
        return int(curve.size)
    return int(np.flatnonzero(curve <= curve.min() + tolerance)[0]) + 1


def capped_rows(positions: np.ndarray, y: np.ndarray, cap: int | None, seed: int) -> np.ndarray:
    """``positions`` (sorted row numbers), or a seeded sample of ``cap`` of them stratified by
    the 0/1 labels ``y`` (of all rows) when there are more; returned sorted."""
    positions = np.asarray(positions)
    if cap is None or len(positions) <= cap:
        return positions
    kept, _ = train_test_split(positions, train_size=cap, random_state=seed, stratify=y[positions])
    return np.sort(kept)


def _make_calibrator(method: str) -> SigmoidCalibrator | IsotonicCalibrator:
    return SigmoidCalibrator() if method == "sigmoid" else IsotonicCalibrator()


def choose_calibration(margin: np.ndarray, y: np.ndarray, seed: int) -> tuple[str, dict[str, float]]:
    """Pick none / sigmoid / isotonic by Brier, cross-fitted on two halves of the held-out part.

    Each calibrator is fitted on one half and scored on the other, both ways, and compared
    with the raw LightGBM probability on the same customers. A calibrator is chosen only when
    it beats the raw probability by more than one standard error of the paired per-customer
    difference (the one-standard-error rule): a gain smaller than its noise does not carry over
    to new customers or periods. Among those that pass, the lowest Brier wins; else 'none'.
    Returns the method and {method: pooled Brier, '<method>_gain_se': standard error}.
    """
    raw_loss = (expit(margin) - y) ** 2
    scores = {"none": float(raw_loss.mean())}
    ys = pd.Series(y, index=pd.RangeIndex(len(y)))
    if ys.value_counts().min() < 2:
        return "none", scores
    halves = customer_folds(ys, 2, seed)
    passing = []
    for method in ("sigmoid", "isotonic"):
        pooled = np.empty(len(y))
        for fit_idx, eval_idx in halves:
            pooled[eval_idx] = _make_calibrator(method).fit(margin[fit_idx], y[fit_idx]).predict(margin[eval_idx])
        gain = raw_loss - (pooled - y) ** 2
        se = float(gain.std(ddof=1) / np.sqrt(len(gain)))
        scores[method], scores[f"{method}_gain_se"] = metrics.brier(y, pooled), se
        if gain.mean() > se:
            passing.append(method)
    best = min(passing, key=lambda m: (scores[m], CALIBRATION_METHODS.index(m)), default="none")
    return best, scores


# --------------------------------------------------------------------------- complexity

BOOST_FROM = ("expected_purchases", "p_no_purchase")  # the CLV baselines (columns) the boosting may start from
BOOST_CLIP = 1e-6  # the boosting start is the logit of the baseline's probability clipped to [1e-6, 1 - 1e-6]

MIN_CHILD_FLOOR = 5  # fewest customers in a leaf whatever the share says (a leaf of 1-4 is noise)


def scaled_min_child_samples(n_customers: int, cap: int, share: float | None) -> int:
    """Fewest customers per leaf for a fit on ``n_customers``: ``share`` of them, rounded up,
    at least MIN_CHILD_FLOOR (or ``cap`` when smaller) and at most ``cap``.

    ``share`` None keeps ``cap`` as an absolute number. A fixed leaf minimum tuned on a large
    base (300 on CDNOW's 16,499 fit customers) leaves 100-1,000 customers without a single
    split, and the classifier then predicts one constant for everyone.
    """
    if share is None:
        return int(cap)
    wanted = math.ceil(round(share * n_customers, 9))  # round first: 0.05 * 180 must give 9, not 10
    return int(min(cap, max(MIN_CHILD_FLOOR, wanted)))


# --------------------------------------------------------------------------- estimator


def _as_text(values: pd.Series) -> list[str | None]:
    """Category values as strings (None for missing), so categories compare across frames."""
    return [None if pd.isna(v) else str(v) for v in values.astype("object")]


def text_categories(X: pd.DataFrame) -> dict[str, list[str]]:
    """The categories a model fixes at fit time: each categorical column's values, as sorted text."""
    return {c: sorted({v for v in _as_text(X[c]) if v is not None})
            for c in X.columns if isinstance(X[c].dtype, pd.CategoricalDtype)}  # fmt: skip


def encode_columns(X: pd.DataFrame, feature_names, categories: Mapping[str, list[str]], model: str) -> pd.DataFrame:
    """A fitted model's input: ``feature_names`` in training order, categorical columns fixed to
    ``categories`` (unseen values become missing), numbers as float64; a one-line DataError naming
    the ``model`` when a training column is absent."""
    missing = [c for c in feature_names if c not in X.columns]
    if missing:
        raise DataError(f"features: missing column(s) {missing} that the {model} model was trained on; rebuild the features")
    out = {}
    for col in feature_names:
        if col in categories:
            known = set(categories[col])
            values = [v if v in known else None for v in _as_text(X[col])]
            out[col] = pd.Categorical(values, categories=categories[col])
        else:
            out[col] = pd.to_numeric(X[col], errors="raise").astype("float64")
    return pd.DataFrame(out, index=X.index)


def lightgbm_settings(model, n_rows: int) -> dict:
    """LightGBM keyword arguments from a project estimator's parameters (n_estimators, learning_rate,
    num_leaves, min_child_samples / min_child_share, subsample, subsample_freq, colsample_bytree,
    reg_lambda, random_state, n_jobs) for a fit on ``n_rows``: the leaf minimum scaled by
    :func:`scaled_min_child_samples`; deterministic, row-wise histograms, quiet."""
    return dict(
        n_estimators=model.n_estimators, learning_rate=model.learning_rate, num_leaves=model.num_leaves,
        min_child_samples=scaled_min_child_samples(n_rows, model.min_child_samples, model.min_child_share),
        subsample=model.subsample, subsample_freq=model.subsample_freq, colsample_bytree=model.colsample_bytree,
        reg_lambda=model.reg_lambda, random_state=model.random_state, n_jobs=model.n_jobs, deterministic=True,
        force_row_wise=True, verbose=-1,
    )  # fmt: skip


def _aligned_labels(y, index: pd.Index) -> pd.Series:
    """0/1 labels as an int8 Series on ``index`` (a Series is aligned by label, else by position)."""
    if isinstance(y, pd.Series) and not y.index.equals(index):
        y = y.reindex(index)
        if y.isna().any():
            raise DataError("churn labels: some customers of the features have no label; rebuild the labels")
    values = np.asarray(y, dtype=np.float64)
    if values.shape != (len(index),) or not np.isin(values, (0.0, 1.0)).all():
        raise DataError("churn labels must be one 0/1 value per customer of the features")
    return pd.Series(values.astype(np.int8), index=index)


class ChurnClassifier(ClassifierMixin, BaseEstimator):
    """LightGBM churn classifier with a held-out calibration step.

    LightGBM is fitted on (1 - calibration_fraction) of the customers; the rest fits the
    calibration map (``calibration`` = isotonic | sigmoid | none | auto, where auto picks by
    Brier, see :func:`choose_calibration`). When auto settles on none, LightGBM is refitted on
    all customers. Training is deterministic: fixed thread count, ``deterministic=True``,
    row-wise histograms, every seed from ``random_state``.

    ``n_estimators`` is the number of trees, or with ``fit(..., eval_set=(X, y))`` (the
    out-of-time customers) their cap: the first LightGBM fit records its log loss on the eval
    set after each tree (``learning_curve_``) and keeps the fewest trees within
    ``tree_tolerance`` of the curve's minimum (:func:`choose_n_trees`); the calibration choice
    and the refit then use that many (``n_trees_``). Without an eval set, or with
    ``tree_tolerance`` None, ``n_trees_`` is ``n_estimators`` and no curve is recorded (scoring
    the eval set after every tree nearly doubles the cost of that fit). ``max_fit_customers`` caps the customers of each LightGBM
    fit (a seeded sample stratified by label; None: no cap): the trees are shallow and the
    learning rate small, so beyond some hundred thousand customers more rows cost time and
    change little.

    ``boost_from`` (``p_no_purchase`` | ``expected_purchases`` | None) starts every customer's
    boosting at that CLV baseline's log-odds of churn (LightGBM ``init_score``; the probability
    clipped to [BOOST_CLIP, 1 - BOOST_CLIP]), so the trees learn corrections to the baseline and
    a model whose trees add nothing predicts the baseline itself. The start is part of every
    margin (:meth:`predict_margin`): at fit, on the eval set's learning curve, in the calibration
    map's input and in every prediction; the LightGBM booster alone holds only the corrections.

    ``min_child_samples`` is LightGBM's leaf minimum; with ``min_child_share`` set it is the cap
    of a minimum that scales with the customers of each fit (:func:`scaled_min_child_samples`).
    With fewer than 4 churned or retained customers ``auto`` holds nothing out (method none).

    Fitted attributes: feature_names_in_, categories_, booster_ (lightgbm.LGBMClassifier),
    calibrator_ (None when the method is none), calibration_method_, calibration_scores_,
    classes_, n_fit_, n_calibration_, min_child_samples_ (the leaf minimum of the last fit),
    n_trees_, learning_curve_ (None without an eval set).

    The __init__ defaults are the typed config's (churn.lightgbm, churn.calibration*, seed in
    pipelines/config.py; tests/test_churn_model.py checks they agree); the stage passes those values.
    """

    def __init__(
        self,
        n_estimators: int = 300,
        learning_rate: float = 0.02,
        num_leaves: int = 4,
        min_child_samples: int = 300,
        min_child_share: float | None = 0.05,
        subsample: float = 0.8,
        subsample_freq: int = 1,
        colsample_bytree: float = 0.8,
        reg_lambda: float = 1.0,
        calibration: str = "auto",
        calibration_fraction: float = 0.3,
        random_state: int = 42,
        n_jobs: int = 2,
        tree_tolerance: float | None = None,
        max_fit_customers: int | None = 200000,
        boost_from: str | None = "p_no_purchase",
    ):
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.min_child_share = min_child_share
        self.subsample = subsample
        self.subsample_freq = subsample_freq
        self.colsample_bytree = colsample_bytree
        self.reg_lambda = reg_lambda
        self.calibration = calibration
        self.calibration_fraction = calibration_fraction
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.tree_tolerance = tree_tolerance
        self.max_fit_customers = max_fit_customers
        self.boost_from = boost_from

    # -- fitting

    def _init_score(self, Xt: pd.DataFrame) -> np.ndarray | None:
        """Where the boosting starts for each row of a transformed frame: the log-odds of the CLV
        baseline ``boost_from`` (its probability clipped to [BOOST_CLIP, 1 - BOOST_CLIP]); None
        (``boost_from`` None) starts from LightGBM's average."""
        column = getattr(self, "boost_from", None)  # a model pickled before boosting (a champion) has no start
        if column is None:
            return None
        if column not in BOOST_FROM:
            raise ValueError(f"boost_from must be one of {list(BOOST_FROM)} or None (got {self.boost_from!r})")
        if column not in Xt.columns:
            raise DataError(
                f"features: column '{column}' is missing, the churn classifier boosts from it (boost_from="
                f"{self.boost_from}); join the CLV predictions or set churn.lightgbm.boost_from: null"
            )
        probability = _baseline_probability(Xt, self.boost_from)
        if not np.isfinite(probability).all():
            raise DataError(
                f"features: column '{column}' has missing or infinite values; the churn classifier boosts from it "
                "(boost_from): rebuild the CLV predictions or set churn.lightgbm.boost_from: null"
            )
        return logit(np.clip(probability, BOOST_CLIP, 1 - BOOST_CLIP))

    def _lightgbm(self, n_customers: int, n_trees: int | None = None) -> lgb.LGBMClassifier:
        """LightGBM for a fit on ``n_customers`` (the leaf minimum scales with it, see
        :func:`scaled_min_child_samples`) with ``n_trees`` trees (default ``n_estimators``);
        records the leaf minimum used in ``min_child_samples_``."""
        settings = lightgbm_settings(self, n_customers)
        self.min_child_samples_ = settings["min_child_samples"]
        if n_trees is not None:
            settings["n_estimators"] = n_trees
        return lgb.LGBMClassifier(objective="binary", **settings)

    def fit(self, X: pd.DataFrame, y, eval_set: tuple[pd.DataFrame, object] | None = None) -> "ChurnClassifier":
        """Fit on a prepared feature frame (see :func:`prepare_features`) and 0/1 churn labels.

        ``eval_set`` (features, labels of other customers, e.g. the next period's) makes
        ``n_estimators`` a cap: the number of trees is chosen on its learning curve (see the class)."""
        if self.calibration not in (*CALIBRATION_METHODS, "auto"):
            raise ValueError(f"calibration must be auto, isotonic, sigmoid or none (got {self.calibration!r})")
        if not isinstance(X, pd.DataFrame):
            raise TypeError("X must be a pandas DataFrame of features")
        check_no_window_columns(X.columns)
        y = _aligned_labels(y, X.index)
        if set(np.unique(y)) != {0, 1}:
            raise DataError("churn labels hold one class only; a classifier needs churned and retained customers")
        self.feature_names_in_ = np.array(X.columns, dtype=object)
        self.n_features_in_ = X.shape[1]
        self.categories_ = text_categories(X)
        self.classes_ = np.array([0, 1])
        Xt = self._transform(X)
        too_few = int(y.value_counts().min()) < MIN_CALIBRATION_CLASS
        if self.calibration == "none" or (self.calibration == "auto" and too_few):
            if self.calibration == "auto":
                log.info("fewer than %d churned or retained customers: no calibration hold-out (auto -> none)",
                         MIN_CALIBRATION_CLASS)
            fit_ids, cal_ids = y.index, y.index[:0]
        else:
            fit_ids, cal_ids = self._calibration_split(y)
        labels = y.to_numpy()
        fit_pos = capped_rows(y.index.get_indexer(fit_ids), labels, self.max_fit_customers, self.random_state)
        self.n_trees_, self.learning_curve_ = self.n_estimators, None
        start = self._init_score(Xt)
        start_fit = None if start is None else start[fit_pos]
        if eval_set is None or self.tree_tolerance is None:  # no choice to make: no curve (it costs ~a fit)
            self.booster_ = self._lightgbm(len(fit_pos)).fit(
                Xt.iloc[fit_pos], y.iloc[fit_pos].to_numpy(), init_score=start_fit
            )
        else:
            X_eval = self._transform(eval_set[0])
            y_eval = _aligned_labels(eval_set[1], X_eval.index).to_numpy()
            eval_pos = capped_rows(np.arange(len(y_eval)), y_eval, self.max_fit_customers, self.random_state)
            if len(eval_pos) < len(y_eval):  # the curve of a seeded sample of the eval customers
                X_eval, y_eval = X_eval.iloc[eval_pos], y_eval[eval_pos]
            start_eval = self._init_score(X_eval)
            self.booster_ = self._lightgbm(len(fit_pos)).fit(
                Xt.iloc[fit_pos], y.iloc[fit_pos].to_numpy(), init_score=start_fit, eval_X=X_eval, eval_y=y_eval,
                eval_init_score=None if start_eval is None else [start_eval], eval_metric="binary_logloss",
            )
            self.learning_curve_ = np.asarray(self.booster_.evals_result_["valid_0"]["binary_logloss"], dtype=np.float64)
            self.n_trees_ = choose_n_trees(self.learning_curve_, self.tree_tolerance)
            log.info("trees: %d of at most %d (out-of-time log loss %.5f; %.5f at %d trees)", self.n_trees_,
                     self.n_estimators, self.learning_curve_[self.n_trees_ - 1], self.learning_curve_[-1],
                     len(self.learning_curve_))  # fmt: skip
        self.n_fit_, self.n_calibration_ = len(fit_pos), len(cal_ids)
        self.calibrator_ = None
        self.calibration_scores_: dict[str, float] = {}
        self.calibration_method_ = "none"
        if len(cal_ids):
            cal_pos = y.index.get_indexer(cal_ids)
            margin = self._margin(Xt.iloc[cal_pos])
            y_cal = y.iloc[cal_pos].to_numpy()
            if self.calibration == "auto":
                self.calibration_method_, self.calibration_scores_ = choose_calibration(margin, y_cal, self.random_state)
            else:
                self.calibration_method_ = self.calibration
            if self.calibration_method_ != "none":
                self.calibrator_ = _make_calibrator(self.calibration_method_).fit(margin, y_cal)
            else:  # nothing to calibrate: the held-out customers go back into the LightGBM fit
                all_pos = capped_rows(np.arange(len(y)), labels, self.max_fit_customers, self.random_state)
                X_all = Xt if len(all_pos) == len(y) else Xt.iloc[all_pos]
                start_all = None if start is None else start[all_pos]
                self.booster_ = self._lightgbm(len(all_pos), self.n_trees_).fit(X_all, labels[all_pos], init_score=start_all)
                self.n_fit_ = len(all_pos)
        log.debug(
            "churn classifier: %d fit, %d calibration rows, calibration %s",
            self.n_fit_, self.n_calibration_, self.calibration_method_,
        )
        return self

    def _calibration_split(self, y: pd.Series) -> tuple[pd.Index, pd.Index]:
        counts = y.value_counts()
        if counts.min() < MIN_CALIBRATION_CLASS:
            raise DataError(
                f"too few churned or retained customers to hold out a calibration set ({counts.get(1, 0)} churned, "
                f"{counts.get(0, 0)} retained; {MIN_CALIBRATION_CLASS} of each needed): set churn.calibration: none or auto"
            )
        # The split of split_customers, by position (matching ids with isin is slow on text ids);
        # kept in the original row order (sorted customer ids) for reproducible LightGBM input.
        positions = pd.Series(y.to_numpy(), index=pd.RangeIndex(len(y)))
        fit_pos, cal_pos = split_customers(positions, self.calibration_fraction, self.random_state)
        return y.index[fit_pos.to_numpy()], y.index[cal_pos.to_numpy()]

    # -- prediction

    def _check_fitted(self) -> None:
        if not hasattr(self, "booster_"):
            raise AttributeError("ChurnClassifier is not fitted yet; call fit first")

    def _transform(self, X: pd.DataFrame) -> pd.DataFrame:
        """Columns in training order; categories fixed to those seen in training; numbers as float64."""
        return encode_columns(X, self.feature_names_in_, self.categories_, "churn")

    def _margin(self, Xt: pd.DataFrame) -> np.ndarray:
        """Log-odds of churn: the start of the boosting (:meth:`_init_score`, 0 when ``boost_from``
        is None) plus the raw score of the first ``n_trees_`` trees (all of them unless an eval set
        chose fewer). Every prediction goes through here, so the start is never left out."""
        trees = getattr(self, "n_trees_", None)
        raw = np.asarray(self.booster_.predict(Xt, raw_score=True, num_iteration=trees), dtype=np.float64)
        start = self._init_score(Xt)
        return raw if start is None else raw + start

    def predict_margin(self, X: pd.DataFrame) -> np.ndarray:
        """Log-odds of churn before calibration: the CLV baseline's start (``boost_from``) plus the trees."""
        self._check_fitted()
        return self._margin(self._transform(X))

    def predict_proba_raw(self, X: pd.DataFrame) -> np.ndarray:
        """Uncalibrated P(churn): the sigmoid of :meth:`predict_margin`, shape (n,)."""
        return expit(self.predict_margin(X))

    def _calibrated(self, margin: np.ndarray) -> np.ndarray:
        p = expit(margin) if self.calibrator_ is None else self.calibrator_.predict(margin)
        return np.clip(p, 0.0, 1.0)

    def predict_churn_probability(self, X: pd.DataFrame) -> np.ndarray:
        """Calibrated P(churn), shape (n,) (the raw one when calibration is none)."""
        return self._calibrated(self.predict_margin(X))

    def predict_raw_and_calibrated(self, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(:meth:`predict_proba_raw`, :meth:`predict_churn_probability`) from one pass of the trees."""
        margin = self.predict_margin(X)
        return expit(margin), self._calibrated(margin)

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """Calibrated class probabilities, columns (retained, churned)."""
        p = self.predict_churn_probability(X)
        return np.column_stack([1.0 - p, p])

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return (self.predict_churn_probability(X) >= 0.5).astype(np.int8)

    # -- explanation

    def feature_importance(self) -> pd.DataFrame:
        """Total gain per feature (columns feature, gain), largest first, ties by name."""
        self._check_fitted()
        gain = self.booster_.booster_.feature_importance(importance_type="gain")
        frame = pd.DataFrame({"feature": list(self.feature_names_in_), "gain": gain.astype(float)})
        return frame.sort_values(["gain", "feature"], ascending=[False, True], kind="stable").reset_index(drop=True)

    def shap_values(self, X: pd.DataFrame) -> pd.DataFrame:
        """TreeSHAP contributions in log-odds units: one column per feature plus 'bias'.

        Each row sums to the margin (:meth:`predict_margin`): with ``boost_from`` set, 'bias' holds
        the customer's start (the CLV baseline's log-odds) plus the trees' constant, and the feature
        columns what the trees add to that start.
        """
        self._check_fitted()
        Xt = self._transform(X)
        contrib = np.array(
            self.booster_.predict(Xt, pred_contrib=True, num_iteration=getattr(self, "n_trees_", None)), dtype=np.float64
        )
        start = self._init_score(Xt)
        if start is not None:
            contrib[:, -1] += start
        return pd.DataFrame(contrib, index=X.index, columns=[*self.feature_names_in_, "bias"])


# --------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class Scored:
    """A churn score (higher = more churn) and, when defined, a churn probability."""

    score: np.ndarray
    probability: np.ndarray | None


def fit_recency_map(days_since_last: np.ndarray, churned: np.ndarray) -> IsotonicCalibrator:
    """Monotone map days since last purchase -> churn probability (isotonic, on training data)."""
    return IsotonicCalibrator().fit(days_since_last, churned)


def baseline_predictions(X: pd.DataFrame, recency_map: IsotonicCalibrator | None) -> dict[str, Scored]:
    """Baselines on the rows of a prepared feature frame.

    - p_no_purchase: the CLV model's P(no purchase in the window), used as a churn probability.
    - expected_purchases: score -E[purchases]; probability exp(-E[purchases]) (Poisson P(0)).
    - recency: days_since_last; probability from ``recency_map`` (None -> no probability).
    - p_alive (diagnostic): 1 - P(alive) as a ranking score only (P(alive) is not a probability
      of buying in the window, so it gets no Brier or log loss).
    """
    expected = X["expected_purchases"].to_numpy(float)
    days = X["days_since_last"].to_numpy(float)
    dead = 1.0 - X["p_alive"].to_numpy(float)
    return {
        "baseline_p_no_purchase": Scored(X["p_no_purchase"].to_numpy(float), X["p_no_purchase"].to_numpy(float)),
        "baseline_expected_purchases": Scored(-expected, np.exp(-expected)),
        "baseline_recency": Scored(days, None if recency_map is None else recency_map.predict(days)),
        "diagnostic_p_alive": Scored(dead, None),
    }


PROBABILISTIC_BASELINES = ("baseline_p_no_purchase", "baseline_expected_purchases")


def evaluate_scores(y: np.ndarray, scored: dict[str, Scored]) -> dict[str, dict]:
    """Metrics summary (see :func:`models.metrics.classification_summary`) per model."""
    return {name: metrics.classification_summary(y, s.score, s.probability) for name, s in scored.items()}


def compare_with_baselines(
    results: dict[str, dict], classifier: str = "classifier_calibrated", auc_tolerance: float = 0.005
) -> dict:
    """The two claims: classifier Brier < best probabilistic baseline Brier, and classifier
    ROC-AUC >= best probabilistic baseline ROC-AUC - tolerance."""
    by_brier = min(PROBABILISTIC_BASELINES, key=lambda b: results[b]["brier"])
    by_auc = max(PROBABILISTIC_BASELINES, key=lambda b: results[b]["roc_auc"])
    clf = results[classifier]
    return {
        "classifier": classifier,
        "best_baseline_by_brier": by_brier,
        "best_baseline_brier": results[by_brier]["brier"],
        "classifier_brier": clf["brier"],
        "brier_improvement": results[by_brier]["brier"] - clf["brier"],
        "classifier_beats_baseline_brier": bool(clf["brier"] < results[by_brier]["brier"]),
        "best_baseline_by_auc": by_auc,
        "best_baseline_auc": results[by_auc]["roc_auc"],
        "classifier_auc": clf["roc_auc"],
        "auc_difference": clf["roc_auc"] - results[by_auc]["roc_auc"],
        "auc_tolerance": auc_tolerance,
        "classifier_auc_within_tolerance": bool(clf["roc_auc"] >= results[by_auc]["roc_auc"] - auc_tolerance),
    }


Pair = tuple[np.ndarray, np.ndarray, Callable[[np.ndarray, np.ndarray], Callable[[np.ndarray], float]]]


def paired_bootstrap(y: np.ndarray, pairs: list[Pair], n_resamples: int, seed: int,
                     level: float = 0.95) -> list[tuple[float, float]]:  # fmt: skip
    """Percentile intervals of metric(y, a) - metric(y, b) for each (a, b, weighted_metric) of
    ``pairs``, over customers resampled with replacement. Every difference sees the same
    resamples (one draw per resample, shared), so the result for a pair does not depend on the
    other pairs. ``weighted_metric(y, score)`` returns the metric as a function of per-customer
    draw counts (metrics.weighted_brier, metrics.weighted_roc_auc), so a resample costs one pass
    over the customers, not a sort."""
    rng = np.random.default_rng(seed)
    n = len(y)
    metrics_ab = [(weighted_metric(y, a), weighted_metric(y, b)) for a, b, weighted_metric in pairs]
    diffs = np.empty((len(pairs), n_resamples))
    for i in range(n_resamples):
        drawn = np.bincount(rng.integers(0, n, n), minlength=n)
        for j, (metric_a, metric_b) in enumerate(metrics_ab):
            diffs[j, i] = metric_a(drawn) - metric_b(drawn)
    tail = (1 - level) / 2
    return [tuple(float(q) for q in np.quantile(row, [tail, 1 - tail])) for row in diffs]


def bootstrap_difference(
    y: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    weighted_metric: Callable[[np.ndarray, np.ndarray], Callable[[np.ndarray], float]],
    n_resamples: int,
    seed: int,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile interval of metric(y, a) - metric(y, b) (paired: both scores see the same
    resample); one pair of :func:`paired_bootstrap`."""
    return paired_bootstrap(y, [(a, b, weighted_metric)], n_resamples, seed, level)[0]


def comparison_intervals(
    y: np.ndarray, scored: dict[str, Scored], comparison: dict, n_resamples: int, seed: int, sample: int | None = None
) -> dict:
    """95% paired-bootstrap intervals of the two compared differences (classifier - baseline).

    With more than ``sample`` test customers (None: no limit) the resamples are drawn from a
    seeded sample of ``sample`` of them and the interval is rescaled to the whole test set (an
    m-out-of-n bootstrap: around the full-set difference, its half-widths times sqrt(m / n)).
    A resample costs one pass over its customers, so this keeps the intervals' cost flat as the
    base grows; below the sample size every customer is used and nothing is rescaled.
    """
    clf = scored[comparison["classifier"]]
    brier_ref = scored[comparison["best_baseline_by_brier"]]
    auc_ref = scored[comparison["best_baseline_by_auc"]]
    pairs = [(clf.probability, brier_ref.probability, metrics.weighted_brier),
             (clf.score, auc_ref.score, metrics.weighted_roc_auc)]  # fmt: skip
    y = np.asarray(y)
    n = len(y)
    if sample is None or n <= sample:
        brier_ci, auc_ci = paired_bootstrap(y, pairs, n_resamples, seed)
        m = n
    else:
        rows = np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))
        m, scale = sample, math.sqrt(sample / n)
        sub = [(np.asarray(a)[rows], np.asarray(b)[rows], wm) for a, b, wm in pairs]
        intervals = paired_bootstrap(y[rows], sub, n_resamples, seed)
        brier_ci, auc_ci = (
            tuple(_difference(y, full) + (q - _difference(y[rows], part)) * scale for q in ci)
            for ci, full, part in zip(intervals, pairs, sub)
        )
    return {
        "n_resamples": n_resamples,
        "resampled_customers": m,
        "brier_difference_ci95": list(brier_ci),
        "auc_difference_ci95": list(auc_ci),
    }


def _difference(y: np.ndarray, pair: Pair) -> float:
    """metric(y, a) - metric(y, b) on every customer once (through the weighted metric, as the bootstrap)."""
    a, b, weighted_metric = pair
    ones = np.ones(len(y))
    return weighted_metric(y, a)(ones) - weighted_metric(y, b)(ones)


# --------------------------------------------------------------------------- churn source guard

CONSTANT_STD = 1e-9  # a churn probability whose standard deviation is below this is one number for everyone
LOGIT_CLIP = 1e-12  # baseline probabilities are clipped to [LOGIT_CLIP, 1 - LOGIT_CLIP] before the logit
CLASSIFIER_SOURCE = "classifier"


def _baseline_probability(X: pd.DataFrame, baseline: str) -> np.ndarray:
    """A CLV baseline's own churn probability: P(no purchase) or exp(-E[purchases])."""
    if baseline == "p_no_purchase":
        return X["p_no_purchase"].to_numpy(float)
    if baseline == "expected_purchases":
        return np.exp(-X["expected_purchases"].to_numpy(float))
    names = [b.removeprefix("baseline_") for b in PROBABILISTIC_BASELINES]
    raise ValueError(f"baseline must be one of {names} (got {baseline!r})")


class CalibratedBaseline(ClassifierMixin, BaseEstimator):
    """A CLV baseline as the churn model: the fallback when the classifier is not trusted.

    P(churn) = expit(a * logit(p) + b), where p is the baseline's own probability
    (``p_no_purchase``: the CLV model's P(no purchase in the window); ``expected_purchases``:
    exp(-E[purchases])), clipped to [1e-12, 1 - 1e-12]. a and b are fitted by maximum
    likelihood on the training labels (Platt scaling). With a > 0 the map is increasing, so
    the baseline's ranking, hence its ROC-AUC, is kept; when the fit gives a <= 0 or the labels
    hold one class, p itself is used (a = 1, b = 0, ``calibrated_`` False).

    Same prediction interface as :class:`ChurnClassifier` (prepared features in). Fitted
    attributes: a_, b_, calibrated_, n_fit_, classes_, feature_names_in_.
    """

    def __init__(self, baseline: str = "p_no_purchase"):
        self.baseline = baseline

    def _margin(self, X: pd.DataFrame) -> np.ndarray:
        return logit(np.clip(_baseline_probability(X, self.baseline), LOGIT_CLIP, 1 - LOGIT_CLIP))

    def fit(self, X: pd.DataFrame, y) -> "CalibratedBaseline":
        """Fit the calibration map on a prepared feature frame and 0/1 churn labels."""
        margin = self._margin(X)
        y = _aligned_labels(y, X.index).to_numpy()
        self.a_, self.b_, self.calibrated_ = 1.0, 0.0, False
        if np.unique(y).size == 2:
            platt = SigmoidCalibrator().fit(margin, y)
            if platt.a_ > 0:
                self.a_, self.b_, self.calibrated_ = platt.a_, platt.b_, True
        self.classes_ = np.array([0, 1])
        self.n_fit_ = len(y)
        self.feature_names_in_ = np.array([self.baseline], dtype=object)  # the baseline's CLV column
        self.n_features_in_ = 1
        return self

    def predict_churn_probability(self, X: pd.DataFrame) -> np.ndarray:
        """Calibrated P(churn), shape (n,)."""
        if not hasattr(self, "a_"):
            raise AttributeError("CalibratedBaseline is not fitted yet; call fit first")
        return np.clip(expit(self.a_ * self._margin(X) + self.b_), 0.0, 1.0)

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """Class probabilities, columns (retained, churned)."""
        p = self.predict_churn_probability(X)
        return np.column_stack([1.0 - p, p])

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return (self.predict_churn_probability(X) >= 0.5).astype(np.int8)


def is_constant(probability: np.ndarray) -> bool:
    """True when a score tells customers apart by nothing: one value, or a spread below CONSTANT_STD."""
    p = np.asarray(probability, dtype=np.float64)
    return p.size == 0 or np.unique(p).size == 1 or float(np.std(p)) < CONSTANT_STD


def baseline_source(comparison: dict) -> str:
    """``baseline:<name>`` of the best probabilistic CLV baseline by ROC-AUC (see :func:`compare_with_baselines`)."""
    return "baseline:" + comparison["best_baseline_by_auc"].removeprefix("baseline_")


def choose_churn_source(comparison: dict, classifier_probabilities: dict[str, np.ndarray]) -> tuple[str, str]:
    """Which churn probability to export, and why: ``classifier`` or ``baseline:<name>``.

    The classifier is exported only when none of its probabilities (``{where: values}``, e.g.
    the scored customers and the test customers) is constant and its ROC-AUC is within the
    tolerance of the best CLV baseline's (``comparison["classifier_auc_within_tolerance"]``);
    otherwise the best baseline by ROC-AUC, which then needs calibrating (:class:`CalibratedBaseline`).
    """
    fallback = baseline_source(comparison)
    for where, probability in classifier_probabilities.items():
        if is_constant(probability):
            value = f"{float(np.asarray(probability, float)[0]):.4f}" if len(probability) else "none"
            return fallback, f"the classifier's churn probability is constant {where} ({value} for every customer)"
    clf, ref, tol = comparison["classifier_auc"], comparison["best_baseline_auc"], comparison["auc_tolerance"]
    best = fallback.removeprefix("baseline:")
    if not comparison["classifier_auc_within_tolerance"]:
        return fallback, (
            f"classifier ROC-AUC {clf:.4f} trails the best CLV baseline {best} ({ref:.4f}) "
            f"by more than churn.auc_tolerance={tol:g}"
        )
    return CLASSIFIER_SOURCE, (
        f"classifier ROC-AUC {clf:.4f} is not below the best CLV baseline {best} ({ref:.4f}) "
        f"by more than churn.auc_tolerance={tol:g}"
    )
