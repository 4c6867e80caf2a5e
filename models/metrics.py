"""Binary classification metrics for churn scores: scikit-learn's where it has them.

Every function takes ``y_true`` (0/1, 1 = the positive class, e.g. churned) and a score or a
probability of the positive class (higher = more likely positive); inputs are checked once here
(0/1 labels, no NaN, probabilities in [0, 1]) so every metric refuses the same bad input.
Hand-written, each for the reason on its line: the sample-weighted AUC/Brier closures of the
paired bootstrap, the tie-sharing top-share measures (lift, capture, gains), the reliability
table (with bin edges and counts) and the plot grids.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from sklearn import metrics as skm

TOP_DECILE = 0.10
RELIABILITY_BINS = 10


def _as_arrays(y_true, score) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.float64).ravel()
    s = np.asarray(score, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"y_true and score differ in length ({y.size} vs {s.size})")
    if y.size == 0:
        raise ValueError("no observations")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("y_true must hold only 0 and 1")
    if np.isnan(s).any():
        raise ValueError("score holds NaN")
    return y, s


def _both_classes(y: np.ndarray) -> bool:
    return 0 < y.sum() < y.size


def _check_probability(p: np.ndarray) -> None:
    if p.min() < 0 or p.max() > 1:
        raise ValueError("probabilities must lie in [0, 1]")


def roc_curve_points(y_true, score) -> pd.DataFrame:
    """ROC curve: one point per distinct score plus (0, 0); columns fpr, tpr, threshold."""
    y, s = _as_arrays(y_true, score)
    if not _both_classes(y):
        raise ValueError("ROC needs both classes in y_true")
    fpr, tpr, thresholds = skm.roc_curve(y, s, drop_intermediate=False)
    return pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": thresholds})


def roc_auc(y_true, score) -> float:
    """Area under the ROC curve (tied scores count one half); NaN with one class."""
    y, s = _as_arrays(y_true, score)
    if not _both_classes(y):
        return float("nan")
    return float(skm.roc_auc_score(y, s))


def weighted_roc_auc(y_true, score) -> Callable[[np.ndarray], float]:
    """``roc_auc`` of the rows repeated ``w`` times, as a function of the weights ``w``.

    Hand-written for the bootstrap: the scores are sorted once and each call is O(n), where
    roc_auc_score(sample_weight=w) sorts again for every resample. Ties count one half; NaN
    when the weights leave one class.
    """
    y, s = _as_arrays(y_true, score)
    order = np.argsort(s, kind="stable")
    s_sorted, positive = s[order], y[order]
    starts = np.r_[0, np.flatnonzero(np.diff(s_sorted)) + 1]

    def auc(w: np.ndarray) -> float:
        ws = np.asarray(w, dtype=float)[order]
        pos = np.add.reduceat(ws * positive, starts)
        neg = np.add.reduceat(ws * (1.0 - positive), starts)
        n_pos, n_neg = pos.sum(), neg.sum()
        if n_pos == 0 or n_neg == 0:
            return float("nan")
        below = np.cumsum(neg) - neg
        return float(np.sum(pos * (below + 0.5 * neg)) / (n_pos * n_neg))

    return auc


def weighted_brier(y_true, probability) -> Callable[[np.ndarray], float]:
    """``brier`` of the rows repeated ``w`` times, as a function of the weights ``w``.

    Hand-written for the bootstrap: the squared errors are computed once, each resample is one
    dot product (brier_score_loss re-validates its inputs on every call)."""
    y, p = _as_arrays(y_true, probability)
    _check_probability(p)
    loss = (p - y) ** 2
    return lambda w: float(np.dot(np.asarray(w, dtype=float), loss) / np.sum(w))


def precision_recall_points(y_true, score) -> pd.DataFrame:
    """Precision and recall at each distinct score (descending); columns precision, recall, threshold."""
    y, s = _as_arrays(y_true, score)
    if y.sum() == 0:
        raise ValueError("precision-recall needs at least one positive")
    precision, recall, thresholds = skm.precision_recall_curve(y, s)
    # scikit-learn lists the thresholds ascending and appends the point (precision 1, recall 0)
    return pd.DataFrame({"precision": precision[-2::-1], "recall": recall[-2::-1], "threshold": thresholds[::-1]})


def average_precision(y_true, score) -> float:
    """Average precision: sum over thresholds of (recall gain) x precision, no interpolation."""
    y, s = _as_arrays(y_true, score)
    if y.sum() == 0:
        return float("nan")
    return float(skm.average_precision_score(y, s))


def brier(y_true, probability) -> float:
    """Mean squared difference between the probability and the 0/1 outcome."""
    y, p = _as_arrays(y_true, probability)
    _check_probability(p)
    return float(skm.brier_score_loss(y, p))


def log_loss(y_true, probability) -> float:
    """Mean negative log-likelihood (natural log); p clipped to [eps, 1 - eps] (float64 eps)."""
    y, p = _as_arrays(y_true, probability)
    _check_probability(p)
    return float(skm.log_loss(y, p, labels=[0.0, 1.0]))


def _top_counts(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, positives) at or above each distinct score, scores descending."""
    order = np.argsort(-s, kind="stable")
    s_sorted = s[order]
    last_of_group = np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.size - 1]
    return last_of_group + 1.0, np.cumsum(y[order])[last_of_group]


def expected_positives_in_top(y_true, score, share: float = TOP_DECILE) -> tuple[float, float]:
    """(size, expected positives) of the top ``share`` of rows by score.

    Size = share x n (fractional sizes allowed). Hand-written (no scikit-learn equivalent): the
    tied group straddling the boundary contributes its positive rate times the part of it that
    falls inside, i.e. the expectation under random tie-breaking, so the result does not depend
    on row order.
    """
    y, s = _as_arrays(y_true, score)
    if not 0 < share <= 1:
        raise ValueError("share must be in (0, 1]")
    size = share * y.size
    return size, _positives_in_top(_top_counts(y, s), size)


def _positives_in_top(counts: tuple[np.ndarray, np.ndarray], size: float) -> float:
    """Expected positives among the ``size`` top rows (see :func:`expected_positives_in_top`)."""
    n_at_or_above, tp = counts
    boundary = int(np.searchsorted(n_at_or_above, size, side="left"))
    n_above = n_at_or_above[boundary - 1] if boundary > 0 else 0
    pos_above = tp[boundary - 1] if boundary > 0 else 0.0
    group_n = n_at_or_above[boundary] - n_above
    group_pos = tp[boundary] - pos_above
    return float(pos_above + (size - n_above) / group_n * group_pos)


def _capture_and_lift(y: np.ndarray, counts: tuple[np.ndarray, np.ndarray], share: float) -> tuple[float, float]:
    """(share of all positives, cumulative lift) of the top ``share`` of rows; NaN without positives."""
    if y.sum() == 0:
        return float("nan"), float("nan")
    if not 0 < share <= 1:
        raise ValueError("share must be in (0, 1]")
    size = share * y.size
    positives = _positives_in_top(counts, size)
    return float(positives / y.sum()), float((positives / size) / y.mean())


def top_share_lift(y_true, score, share: float = TOP_DECILE) -> float:
    """Positive rate in the top ``share`` by score divided by the overall positive rate (ties shared)."""
    y, s = _as_arrays(y_true, score)
    return _capture_and_lift(y, _top_counts(y, s), share)[1]


def top_share_capture(y_true, score, share: float = TOP_DECILE) -> float:
    """Share of all positives found in the top ``share`` by score (cumulative gain, ties shared)."""
    y, s = _as_arrays(y_true, score)
    return _capture_and_lift(y, _top_counts(y, s), share)[0]


def reliability_curve(y_true, probability, n_bins: int = RELIABILITY_BINS) -> pd.DataFrame:
    """Reliability diagram on equal-width bins of [0, 1]: one row per non-empty bin.

    Columns: bin (0-based), bin_lower, bin_upper, mean_predicted, fraction_positive, count.
    The binning of ``sklearn.calibration.calibration_curve(strategy="uniform")`` (a probability
    on an inner edge goes to the lower bin); hand-written because that returns neither the bin
    edges nor the counts the table and the plot show.
    """
    y, p = _as_arrays(y_true, probability)
    _check_probability(p)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ids = np.searchsorted(edges[1:-1], p, side="left")
    count = np.bincount(ids, minlength=n_bins)
    sum_p = np.bincount(ids, weights=p, minlength=n_bins)
    sum_y = np.bincount(ids, weights=y, minlength=n_bins)
    keep = count > 0
    bins = np.arange(n_bins)[keep]
    return pd.DataFrame(
        {
            "bin": bins,
            "bin_lower": edges[:-1][keep],
            "bin_upper": edges[1:][keep],
            "mean_predicted": sum_p[keep] / count[keep],
            "fraction_positive": sum_y[keep] / count[keep],
            "count": count[keep],
        }
    )


def cumulative_gains(y_true, score, n_groups: int = 10) -> pd.DataFrame:
    """Cumulative capture and lift when targeting the top 1/n_groups, 2/n_groups, ... of rows
    (ties shared, as in top_share_lift). Columns: share_targeted, capture, lift."""
    y, s = _as_arrays(y_true, score)
    counts = _top_counts(y, s)  # sorted once for every share
    rows = []
    for g in range(1, n_groups + 1):
        capture, lift = _capture_and_lift(y, counts, g / n_groups)
        rows.append({"share_targeted": g / n_groups, "capture": capture, "lift": lift})
    return pd.DataFrame(rows)


def classification_summary(y_true, score, probability=None) -> dict[str, float | None]:
    """Ranking metrics from ``score``; probability metrics from ``probability`` (None -> null).

    Keys: roc_auc, average_precision, brier, log_loss, top_decile_lift, top_decile_capture,
    n, positive_rate.
    """
    y, s = _as_arrays(y_true, score)
    out: dict[str, float | None] = {
        "n": int(y.size),
        "positive_rate": float(y.mean()),
        "roc_auc": roc_auc(y, s),
        "average_precision": average_precision(y, s),
        "top_decile_lift": top_share_lift(y, s),
        "top_decile_capture": top_share_capture(y, s),
        "brier": None,
        "log_loss": None,
    }
    if probability is not None:
        out["brier"] = brier(y, probability)
        out["log_loss"] = log_loss(y, probability)
    return out


def roc_on_grid(y_true, score, n_points: int = 101) -> pd.DataFrame:
    """ROC curve resampled at evenly spaced false-positive rates (linear interpolation), for
    small plot tables; columns fpr, tpr."""
    pts = roc_curve_points(y_true, score)  # fpr is non-decreasing: np.interp follows the polyline
    grid = np.linspace(0.0, 1.0, n_points)
    return pd.DataFrame({"fpr": grid, "tpr": np.interp(grid, pts["fpr"].to_numpy(), pts["tpr"].to_numpy())})


def pr_on_grid(y_true, score, n_points: int = 100) -> pd.DataFrame:
    """Interpolated precision-recall curve at recall = 1/n, 2/n, ..., 1: the best precision
    reachable at that recall or more; columns recall, precision."""
    pts = precision_recall_points(y_true, score)
    recall, precision = pts["recall"].to_numpy(), pts["precision"].to_numpy()
    best_from = np.maximum.accumulate(precision[::-1])[::-1]  # max precision at recall >= r_i
    grid = np.linspace(1.0 / n_points, 1.0, n_points)
    idx = np.searchsorted(recall, grid - 1e-12, side="left")
    return pd.DataFrame({"recall": grid, "precision": best_from[np.minimum(idx, recall.size - 1)]})
