"""The value model: each customer's margin over the next horizon, learnt from their history (pure).

Target (:func:`realised_value`): the margin a customer actually brought in (t_k, t_k + horizon],
in the units of the CLV model's ``clv`` column (docs/clv.md): ``clv.margin`` x net spend in the
window x the mean discount factor of the window's discount periods (``clv.discount_rate`` per
year, discounted once per ``clv.discount_period_days``, as models/clv.py discounts expected
purchases), i.e. the window's spend discounted as if it were spread evenly over the window
(the labels hold the window's total, not when in it the spend fell). For a 91-day horizon and
10% a year that factor is 0.985: rankings are the spend's, amounts compare with ``clv``.

:class:`ValueModel` is a scikit-learn regressor of that target from the features at the cutoff
(behavioural and RFM columns of ``features_t{k}``) plus the BTYD outputs at the same cutoff
(``clv_predictions_t{k}``: p_alive, expected_purchases, p_no_purchase, clv, expected_avg_spend;
:func:`prepare_value_features`). It is a zero-inflated two-part model by default: a LightGBM
classifier of P(any positive value) times a LightGBM regressor of the value of the buyers, fitted
on log1p(value) with Duan's smearing factor so the expectation is not biased low; ``kind="single"``
is one LightGBM regressor of the value itself (squared error).

:func:`forecast_metrics` and :func:`compare_forecasts` are the holdout metrics: Spearman with the
realised value, the share of realised value held by the top 20% by prediction, the normalized
Gini and the table of mean predicted vs realised value per predicted decile.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin

from features.errors import DataError
from models import segments as seg
from models.churn import (capped_rows, check_no_window_columns, encode_columns, lightgbm_settings, prepare_features,
                          text_categories)
from models.clv import _period_ends_days, period_discount_factors, period_discount_rate

log = logging.getLogger(__name__)

KINDS = ("two_part", "single")
#: BTYD outputs used as features besides models.churn.CLV_FEATURES (expected_purchases, p_alive,
#: p_no_purchase, clv), which prepare_features joins.
EXTRA_CLV_FEATURES = ("expected_avg_spend",)
#: The BTYD columns the boosting starts from (ValueModel boost_from_btyd).
BTYD_START = ("clv", "p_no_purchase")
PROBABILITY_FLOOR = 1e-6
DECILES = 10
#: Fewest customers with a positive value the two-part model's spend regressor needs (fewer: the
#: regressor is a constant, the buyers' smeared mean).
MIN_BUYERS = 10


# --------------------------------------------------------------------------- target and inputs


def mean_discount_factor(horizon_days: float, annual_rate: float, period_days: float) -> float:
    """Mean of (1 + period rate)^-i over the horizon's days, period i = 1, 2, ... covering
    ``period_days`` days each (the last one cut at the horizon), weighted by the days it covers."""
    ends = _period_ends_days(horizon_days, period_days)
    factors = period_discount_factors(len(ends), period_discount_rate(annual_rate, period_days))
    return float(np.sum(np.diff(ends, prepend=0.0) * factors) / horizon_days)


def realised_value(labels: pd.DataFrame, margin: float, discount: float) -> pd.Series:
    """margin x window spend x ``discount`` (:func:`mean_discount_factor`), indexed by customer_id (text)."""
    spend = labels.set_index(labels["customer_id"].astype(str))["spend"].astype("float64")
    return (spend * margin * discount).rename("value").rename_axis("customer_id").sort_index()


def prepare_value_features(features: pd.DataFrame, clv: pd.DataFrame) -> pd.DataFrame:
    """The model input at one cutoff: models.churn.prepare_features (features + BTYD outputs,
    index customer_id, dates as day counts) plus ``expected_avg_spend``. No churn probability:
    there is none at t2 to train on, and t1's is the out-of-time prediction of a model trained
    on (t2, t1], so the evaluation model could not see it the way the final one would."""
    missing = [c for c in EXTRA_CLV_FEATURES if c not in clv.columns]
    if missing:
        raise DataError(f"clv predictions: missing column(s) {missing}; rerun `cvp clv`")
    X = prepare_features(features, clv)
    extra = clv.assign(customer_id=clv["customer_id"].astype(str)).set_index("customer_id")[list(EXTRA_CLV_FEATURES)]
    return X.join(extra.astype("float64"), how="left")


# --------------------------------------------------------------------------- the model


class ValueModel(RegressorMixin, BaseEstimator):
    """Predicted margin over the next horizon (the target of :func:`realised_value`).

    ``kind="two_part"``: P(value > 0) from a LightGBM classifier times E[value | value > 0] from a
    LightGBM regressor fitted on the buyers' log1p(value), back-transformed with Duan's smearing
    factor (the buyers' mean of exp(residual)) so the expectation is not biased low. With fewer
    than MIN_BUYERS buyers the second part is the buyers' mean value. ``kind="single"``: one
    LightGBM regressor of the value (squared error). Predictions are clipped at 0.

    Deterministic: fixed thread count, ``deterministic=True``, row-wise histograms, seeds from
    ``random_state``. ``min_child_samples`` is the cap of a leaf minimum scaling with the fit's
    rows when ``min_child_share`` is set (models.churn.scaled_min_child_samples).
    ``max_fit_customers``: a fit on more customers uses a seeded sample of this many, stratified by
    buyer / non-buyer (None: everyone); the cost of LightGBM then stops growing with the base.

    Fitted attributes: feature_names_in_, n_features_in_, categories_, classifier_ (None for
    single, or when every or no customer bought: then p_buy_ is that constant), regressor_ (None
    when the buyers are too few), smearing_, buyer_mean_, p_buy_, n_fit_, n_buyers_.
    """

    def __init__(
        self,
        kind: str = "two_part",
        n_estimators: int = 300,
        learning_rate: float = 0.02,
        num_leaves: int = 4,
        min_child_samples: int = 100,
        min_child_share: float | None = 0.02,
        subsample: float = 0.8,
        subsample_freq: int = 1,
        colsample_bytree: float = 0.8,
        reg_lambda: float = 1.0,
        random_state: int = 42,
        n_jobs: int = 2,
        boost_from_btyd: bool = True,
        max_fit_customers: int | None = 200_000,
    ):
        self.kind = kind
        self.boost_from_btyd = boost_from_btyd
        self.max_fit_customers = max_fit_customers
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.min_child_share = min_child_share
        self.subsample = subsample
        self.subsample_freq = subsample_freq
        self.colsample_bytree = colsample_bytree
        self.reg_lambda = reg_lambda
        self.random_state = random_state
        self.n_jobs = n_jobs

    def _transform(self, X: pd.DataFrame) -> pd.DataFrame:
        """Training columns in training order; categories fixed to those seen in training."""
        return encode_columns(X, self.feature_names_in_, self.categories_, "value")

    def _init_scores(self, X: pd.DataFrame) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(purchase, value) start of the boosting: the BTYD model's own prediction on the model's
        scale when ``boost_from_btyd`` (logit of 1 - p_no_purchase; log1p of clv / (1 - p_no_purchase),
        the value given a purchase; single: clv), else (None, None): LightGBM starts from the mean."""
        if not self.boost_from_btyd:
            return None, None
        missing = [c for c in BTYD_START if c not in X.columns]
        if missing:
            raise DataError(f"features: missing BTYD column(s) {missing} to boost from; join the CLV predictions or set boost_from_btyd=False")
        clv = pd.to_numeric(X["clv"]).to_numpy(dtype=np.float64)
        if self.kind == "single":
            return None, clv
        p_buy = np.clip(1.0 - pd.to_numeric(X["p_no_purchase"]).to_numpy(dtype=np.float64), PROBABILITY_FLOOR,
                        1.0 - PROBABILITY_FLOOR)  # fmt: skip
        return np.log(p_buy) - np.log1p(-p_buy), np.log1p(np.clip(clv / p_buy, 0.0, None))

    def fit(self, X: pd.DataFrame, y) -> "ValueModel":
        """Fit on a prepared frame (:func:`prepare_value_features`) and the realised value per customer
        (a Series is aligned on X's index)."""
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS} (got {self.kind!r})")
        if not isinstance(X, pd.DataFrame):
            raise TypeError("X must be a pandas DataFrame of features")
        check_no_window_columns(X.columns)
        target = y.reindex(X.index) if isinstance(y, pd.Series) else pd.Series(np.asarray(y, dtype=float), index=X.index)
        values = target.to_numpy(dtype=np.float64)
        if values.shape != (len(X),) or not np.isfinite(values).all():
            raise DataError("value target: one finite value per customer of the features is required; rebuild the labels")
        if len(X) == 0:
            raise DataError("value model: no customers to fit")
        self.feature_names_in_ = np.array(X.columns, dtype=object)
        self.n_features_in_ = X.shape[1]
        self.categories_ = text_categories(X)
        rows = capped_rows(np.arange(len(values)), (values > 0).astype(int), self.max_fit_customers, self.random_state)
        if len(rows) < len(values):
            log.info("value model: fitting on a seeded sample of %d of %d customers (max_fit_customers), stratified "
                     "by buyer", len(rows), len(values))
            X, values = X.iloc[rows], values[rows]
        Xt = self._transform(X)
        start_buy, start_value = self._init_scores(X)
        self.n_fit_ = len(values)
        self.classifier_, self.regressor_, self.smearing_ = None, None, 1.0
        if self.kind == "single":
            self.n_buyers_ = int((values > 0).sum())
            self.p_buy_, self.buyer_mean_ = 1.0, float(values.mean())
            self.regressor_ = lgb.LGBMRegressor(objective="regression", **lightgbm_settings(self, len(values))).fit(
                Xt, values, init_score=start_value
            )
            return self
        bought = values > 0
        self.n_buyers_ = int(bought.sum())
        self.p_buy_ = float(bought.mean())
        if 0 < self.n_buyers_ < len(values):
            self.classifier_ = lgb.LGBMClassifier(objective="binary", **lightgbm_settings(self, len(values))).fit(
                Xt, bought.astype(int), init_score=start_buy
            )
        self.buyer_mean_ = float(values[bought].mean()) if self.n_buyers_ else 0.0
        if self.n_buyers_ >= MIN_BUYERS:
            log_value = np.log1p(values[bought])
            start = None if start_value is None else start_value[bought]
            self.regressor_ = lgb.LGBMRegressor(objective="regression", **lightgbm_settings(self, self.n_buyers_)).fit(
                Xt.loc[bought], log_value, init_score=start
            )
            residual = log_value - self._raw(self.regressor_, Xt.loc[bought], start)
            self.smearing_ = float(np.mean(np.exp(residual)))
        return self

    @staticmethod
    def _raw(model, Xt: pd.DataFrame, start: np.ndarray | None) -> np.ndarray:
        """The model's raw score (log-odds, log value or value) plus the start it was boosted from."""
        raw = np.asarray(model.predict(Xt, raw_score=True), dtype=np.float64)
        return raw if start is None else raw + start

    def _check_fitted(self) -> None:
        if not hasattr(self, "n_fit_"):
            raise AttributeError("ValueModel is not fitted yet; call fit first")

    def predict_purchase_probability(self, X: pd.DataFrame) -> np.ndarray:
        """P(value > 0 in the next horizon) (two-part; 1 for single)."""
        self._check_fitted()
        if self.classifier_ is None:
            return np.full(len(X), self.p_buy_)
        margin = self._raw(self.classifier_, self._transform(X), self._init_scores(X)[0])
        return 1.0 / (1.0 + np.exp(-margin))

    def predict_buyer_value(self, X: pd.DataFrame) -> np.ndarray:
        """E[value | value > 0] (two-part): expm1 of the smeared log prediction, at least 0."""
        self._check_fitted()
        if self.kind == "single" or self.regressor_ is None:
            return np.full(len(X), self.buyer_mean_)
        log_value = self._raw(self.regressor_, self._transform(X), self._init_scores(X)[1])
        return np.clip(np.exp(log_value) * self.smearing_ - 1.0, 0.0, None)

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """Expected margin over the next horizon, at least 0."""
        self._check_fitted()
        if self.kind == "single":
            return np.clip(self._raw(self.regressor_, self._transform(X), self._init_scores(X)[1]), 0.0, None)
        return self.predict_purchase_probability(X) * self.predict_buyer_value(X)

    def feature_importance(self) -> pd.DataFrame:
        """Gain importance of each part (columns feature, purchase, value), sorted by their sum."""
        self._check_fitted()
        parts = {"purchase": self.classifier_, "value": self.regressor_}
        table = pd.DataFrame({"feature": self.feature_names_in_})
        for name, model in parts.items():
            gain = model.booster_.feature_importance("gain") if model is not None else np.zeros(len(table))
            table[name] = np.asarray(gain, dtype=float)
        total = table["purchase"] + table["value"]
        return table.assign(_t=total).sort_values(["_t", "feature"], ascending=[False, True]).drop(columns="_t").reset_index(drop=True)


# --------------------------------------------------------------------------- holdout metrics


def normalized_gini(actual: pd.Series, score: pd.Series, customer_id: pd.Series) -> float:
    """Gini of the realised amounts ordered by ``score`` over that of the perfect order.

    Customers ranked by ``score`` descending (ties by customer_id, models.segments.value_rank);
    G(order) = mean of the cumulative share of the total amount over the ranks - (n + 1) / (2n).
    1 = the perfect ranking, 0 = random, -1 = reversed; NaN when the total is not positive.
    """
    amount = actual.to_numpy(dtype=float)
    n, total = amount.size, float(amount.sum())
    if n == 0 or total <= 0:
        return float("nan")

    def raw(order_by: pd.Series) -> float:
        ordered = np.empty(n)
        ordered[seg.value_rank(order_by, customer_id)] = amount
        return float(np.cumsum(ordered).mean() / total - (n + 1) / (2 * n))

    best = raw(actual)
    return float(raw(score) / best) if best > 0 else float("nan")


def decile_calibration(actual: pd.Series, score: pd.Series, customer_id: pd.Series, groups: int = DECILES) -> pd.DataFrame:
    """Mean predicted and realised value per predicted decile (decile 1 = highest predictions; ranks
    by models.segments.value_rank, group = floor(rank x groups / n)). Columns decile, customers,
    mean_predicted, mean_realised."""
    n = len(score)
    rank = seg.value_rank(score, customer_id)
    group = (rank * groups) // max(n, 1) + 1
    frame = pd.DataFrame({"decile": group, "predicted": score.to_numpy(dtype=float), "realised": actual.to_numpy(dtype=float)})
    table = frame.groupby("decile", sort=True).agg(
        customers=("predicted", "size"), mean_predicted=("predicted", "mean"), mean_realised=("realised", "mean")
    )
    return table.reset_index()


def forecast_metrics(actual: pd.Series, score: pd.Series, customer_id: pd.Series, top_share: float = seg.TOP_SHARE) -> dict:
    """Spearman, top-share capture (models.segments.rank_forecasts), normalized Gini, total predicted
    over total realised, and the mean absolute error of the decile means."""
    ranked = seg.rank_forecasts(actual, {"f": score}, customer_id, top_share)["f"]
    deciles = decile_calibration(actual, score, customer_id)
    total = float(actual.sum())
    return {
        "spearman": ranked["spearman"],
        "top_share_capture": ranked["top_share_capture"],
        "normalized_gini": normalized_gini(actual, score, customer_id),
        "total_ratio": float(score.sum()) / total if total else float("nan"),
        "decile_mae": float((deciles["mean_predicted"] - deciles["mean_realised"]).abs().mean()),
    }


def compare_forecasts(
    actual: pd.Series, forecasts: Mapping[str, pd.Series], customer_id: pd.Series, top_share: float = seg.TOP_SHARE
) -> dict[str, dict]:
    """:func:`forecast_metrics` of each forecast (all aligned with ``actual``) plus ``oracle``: the
    top-share capture of the perfect ranking."""
    out = {name: forecast_metrics(actual, score, customer_id, top_share) for name, score in forecasts.items()}
    out["oracle"] = {"top_share_capture": seg.top_share_of_total(actual, actual, customer_id, top_share)}
    return out


def model_wins(comparison: Mapping[str, Mapping[str, float]], intervals: Mapping[str, tuple[float, float]] | None,
               metric: str, min_gain: float) -> tuple[bool, str]:  # fmt: skip
    """(wins, why): the value model's ``metric`` beats every reference (the other forecasts of
    ``comparison`` besides oracle) by more than ``min_gain``, and, with ``intervals`` (the paired
    bootstrap interval of each gain), the lower end of every interval is above 0."""
    mine = comparison["value_model"][metric]
    references = [r for r in comparison if r not in ("value_model", "oracle")]
    gains = {ref: mine - comparison[ref][metric] for ref in references}
    if not np.isfinite(mine) or any(not np.isfinite(g) for g in gains.values()):
        return False, f"{metric} is not finite on the holdout"
    worst = min(gains, key=gains.get)
    head = f"holdout {metric} {mine:.4f} vs {worst} {comparison[worst][metric]:.4f} (gain {gains[worst]:+.4f})"
    if gains[worst] <= min_gain:
        return False, f"{head}: not more than value.min_gain={min_gain}"
    unsure = [ref for ref in references if intervals and not intervals[ref][0] > 0]
    if unsure:
        low = intervals[unsure[0]][0]
        return False, f"{head}: the gain's interval over {unsure[0]} reaches {low:+.4f}, not above 0"
    return True, f"{head}: more than value.min_gain={min_gain}" + (", interval above 0" if intervals else "")

METRICS = {"spearman", "top_share_capture", "normalized_gini"}
BOOTSTRAP_RESAMPLES = 200


def metric_value(metric: str, actual: pd.Series, score: pd.Series, customer_id: pd.Series) -> float:
    """One ranking metric of ``score`` against ``actual`` (see :func:`forecast_metrics`)."""
    if metric == "spearman":  # as seg.rank_forecasts computes it, without the captures it also computes
        from scipy.stats import spearmanr

        return float(spearmanr(score.to_numpy(dtype=float), actual.to_numpy(dtype=float)).statistic)
    if metric == "top_share_capture":
        return seg.top_share_of_total(score, actual, customer_id)
    if metric == "normalized_gini":
        return normalized_gini(actual, score, customer_id)
    raise ValueError(f"unknown metric {metric!r}; use one of {sorted(METRICS)}")


def bootstrap_gain(actual: pd.Series, score: pd.Series, reference: pd.Series, customer_id: pd.Series, metric: str,
                   level: float, seed: int, resamples: int = BOOTSTRAP_RESAMPLES,
                   max_customers: int | None = None) -> tuple[float, float]:  # fmt: skip
    """Central ``level`` interval of metric(score) - metric(reference) over paired resamples of the
    customers (the same customers for both; a seeded sample of ``max_customers`` when more)."""
    rng = np.random.default_rng(seed)
    n = len(actual)
    size = n if max_customers is None else min(n, max_customers)
    a, s, r = (x.reset_index(drop=True) for x in (actual, score, reference))
    gains = np.empty(resamples)
    columns = [x.to_numpy(dtype=float) for x in (a, s, r)]
    if metric == "spearman" and all(np.isfinite(c).all() for c in columns):
        ranks = [_RankLevels(c) for c in columns]
        for i in range(resamples):
            take = rng.integers(0, n, size)
            ra, rs, rr = (levels.average_ranks(take) for levels in ranks)
            gains[i] = _pearson(ra, rs) - _pearson(ra, rr)
        return _central_interval(gains, level)
    ids = customer_id.reset_index(drop=True).astype(str)
    for i in range(resamples):
        take = np.sort(rng.integers(0, n, size))
        # a customer drawn twice counts twice; distinct ids keep the tie-break by customer_id well defined
        # (Spearman has no tie-break by customer: its ids are not built)
        cid = None if metric == "spearman" else pd.Series(ids.to_numpy()[take]) + "#" + pd.Series(np.arange(size)).astype(str)
        sub = [x.iloc[take].reset_index(drop=True) for x in (a, s, r)]
        gains[i] = metric_value(metric, sub[0], sub[1], cid) - metric_value(metric, sub[0], sub[2], cid)
    return _central_interval(gains, level)


def _central_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2.0
    low, high = np.nanquantile(values, [tail, 1.0 - tail])
    return float(low), float(high)


class _RankLevels:
    """A column's distinct values, so that the average ranks (ties share their mean rank, as
    scipy's rankdata gives them) of a resample come from counts per value, O(distinct values)
    instead of a sort; a resample much smaller than the column is ranked by sorting it."""

    def __init__(self, values: np.ndarray):
        self.values = values
        self.levels, self.code = np.unique(values, return_inverse=True)

    def average_ranks(self, take: np.ndarray) -> np.ndarray:
        if len(self.levels) > 4 * len(take):
            from scipy.stats import rankdata

            return rankdata(self.values[take])
        code = self.code[take]
        counts = np.bincount(code, minlength=len(self.levels))
        below = np.cumsum(counts) - counts
        return (below + (counts + 1) / 2.0)[code]


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation (of ranks: Spearman's); NaN when either is constant, as scipy gives it.
    Element-wise sums, not BLAS dot products: on a busy machine BLAS threads wait for a core."""
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt(np.sum(x * x) * np.sum(y * y))
    return float(np.sum(x * y) / denominator) if denominator > 0 else float("nan")
