"""Data drift between the champion's training data and a new data set, as a structured report.

Every check holds a value, the threshold it is held to, the direction of the rule ("max":
value <= threshold passes, "min": value >= threshold passes) and whether it passed, so a
retraining run can stop on any failure and still record what it measured.

Checks:
- population stability index (PSI) per feature: numeric features on quantile bins of the
  reference, categorical features on their categories, missing values as a bin of their own;
- accepted row count: relative change (new / old - 1);
- quarantined-row share: change in share points (new share - old share);
- date ranges: the new data must not end before the old, nor start after the old ends, nor
  lose more than a given number of days at its start; the scoring date must not go back.

PSI = sum over bins of (current share - reference share) * ln(current share / reference share),
with shares of empty bins raised to ``epsilon`` so the logarithm stays finite. A common reading:
< 0.1 stable, 0.1-0.25 moderate shift, > 0.25 large shift.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

DEFAULT_BINS = 10
DEFAULT_EPSILON = 1e-4


@dataclass(frozen=True)
class Check:
    """One drift check. ``rule`` "max": passes when value <= threshold; "min": value >= threshold."""

    name: str
    value: float
    threshold: float
    rule: Literal["max", "min"]

    @property
    def passed(self) -> bool:
        if math.isnan(self.value):
            return False
        return self.value <= self.threshold if self.rule == "max" else self.value >= self.threshold

    def describe(self) -> str:
        """E.g. 'psi.frequency = 0.41 > 0.25' for a failure, '<=' for a pass."""
        ok = {"max": "<=", "min": ">="}[self.rule]
        bad = {"max": ">", "min": "<"}[self.rule]
        return f"{self.name} = {self.value:.4g} {ok if self.passed else bad} {self.threshold:.4g}"

    def to_dict(self) -> dict[str, object]:
        return {"value": self.value, "threshold": self.threshold, "rule": self.rule, "passed": self.passed}


@dataclass(frozen=True)
class DriftReport:
    """All checks of one comparison; ``passed`` only when every check passed."""

    checks: tuple[Check, ...]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.passed)

    def summary(self) -> str:
        """One line naming every failed check, or 'no drift' when all passed."""
        if self.passed:
            return f"no drift ({len(self.checks)} checks passed)"
        return "; ".join(c.describe() for c in self.failures)

    def to_dict(self) -> dict[str, object]:
        return {"passed": self.passed, "checks": {c.name: c.to_dict() for c in self.checks}}


# --- population stability index ------------------------------------------------------------


def _psi_from_shares(reference: np.ndarray, current: np.ndarray, epsilon: float) -> float:
    ref = np.maximum(reference, epsilon)
    cur = np.maximum(current, epsilon)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def quantile_edges(reference: np.ndarray, n_bins: int = DEFAULT_BINS) -> np.ndarray:
    """Inner bin edges at the reference's 1/n, ..., (n-1)/n quantiles (NaN ignored), deduplicated.

    Bins are right-closed: (-inf, e_1], (e_1, e_2], ..., (e_last, inf). Ties collapse edges, so a
    feature with many zeros gets fewer bins rather than empty ones.
    """
    if n_bins < 2:
        raise ValueError("n_bins must be at least 2")
    values = np.asarray(reference, dtype=np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return np.empty(0)
    return np.unique(np.quantile(values, np.arange(1, n_bins) / n_bins))


def _numeric_shares(values: np.ndarray, edges: np.ndarray, with_missing: bool) -> np.ndarray:
    missing = np.isnan(values)
    bins = np.searchsorted(edges, values[~missing], side="left")
    counts = np.bincount(bins, minlength=edges.size + 1).astype(np.float64)
    if with_missing:
        counts = np.append(counts, missing.sum())
    return counts / values.size


def psi_numeric(
    reference: Sequence[float] | np.ndarray | pd.Series,
    current: Sequence[float] | np.ndarray | pd.Series,
    n_bins: int = DEFAULT_BINS,
    epsilon: float = DEFAULT_EPSILON,
) -> float:
    """PSI of a numeric feature on quantile bins of ``reference``; missing values form one more bin."""
    ref = np.asarray(pd.to_numeric(pd.Series(reference), errors="coerce"), dtype=np.float64)
    cur = np.asarray(pd.to_numeric(pd.Series(current), errors="coerce"), dtype=np.float64)
    if ref.size == 0 or cur.size == 0:
        raise ValueError("PSI needs at least one reference and one current value")
    edges = quantile_edges(ref, n_bins)
    with_missing = bool(np.isnan(ref).any() or np.isnan(cur).any())
    return _psi_from_shares(
        _numeric_shares(ref, edges, with_missing), _numeric_shares(cur, edges, with_missing), epsilon
    )


def psi_categorical(
    reference: Iterable[object], current: Iterable[object], epsilon: float = DEFAULT_EPSILON
) -> float:
    """PSI of a categorical feature over the union of categories seen; missing is a category."""
    ref = pd.Series(list(reference), dtype="object").fillna("<missing>").astype(str)
    cur = pd.Series(list(current), dtype="object").fillna("<missing>").astype(str)
    if ref.empty or cur.empty:
        raise ValueError("PSI needs at least one reference and one current value")
    categories = sorted(set(ref) | set(cur))
    ref_share = ref.value_counts(normalize=True).reindex(categories, fill_value=0.0).to_numpy()
    cur_share = cur.value_counts(normalize=True).reindex(categories, fill_value=0.0).to_numpy()
    return _psi_from_shares(ref_share, cur_share, epsilon)


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def psi_by_column(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: Sequence[str],
    n_bins: int = DEFAULT_BINS,
    epsilon: float = DEFAULT_EPSILON,
) -> dict[str, float]:
    """PSI per column (numeric or categorical by the reference's dtype), in the order given.

    Raises KeyError naming the first column missing from either frame.
    """
    out: dict[str, float] = {}
    for column in columns:
        for name, frame in (("reference", reference), ("current", current)):
            if column not in frame.columns:
                raise KeyError(f"column '{column}' missing from the {name} features")
        if _is_numeric(reference[column]):
            out[column] = psi_numeric(reference[column], current[column], n_bins, epsilon)
        else:
            out[column] = psi_categorical(reference[column], current[column], epsilon)
    return out


def psi_checks(psi: dict[str, float], max_psi: float) -> list[Check]:
    """One 'psi.<column>' check per feature: PSI must not exceed ``max_psi``."""
    return [Check(f"psi.{column}", value, max_psi, "max") for column, value in psi.items()]


# --- data set profile ----------------------------------------------------------------------


@dataclass(frozen=True)
class DataProfile:
    """What the drift checks need to know about one data set (no rows, only counts and dates)."""

    rows: int  # accepted transaction rows
    quarantined: int  # rows sent to quarantine
    start: dt.date  # first accepted transaction day
    end: dt.date  # last accepted transaction day
    as_of: dt.date  # scoring date (t_0)

    @property
    def quarantine_share(self) -> float:
        """Quarantined rows as a share of all input rows (0 when there were none)."""
        total = self.rows + self.quarantined
        return self.quarantined / total if total else 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "rows": self.rows,
            "quarantined": self.quarantined,
            "quarantine_share": self.quarantine_share,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "as_of": self.as_of.isoformat(),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, object]) -> "DataProfile":
        return cls(
            rows=int(raw["rows"]),
            quarantined=int(raw["quarantined"]),
            start=dt.date.fromisoformat(str(raw["start"])),
            end=dt.date.fromisoformat(str(raw["end"])),
            as_of=dt.date.fromisoformat(str(raw["as_of"])),
        )


def profile_transactions(timestamps: pd.Series, quarantined: int, as_of: dt.date | None) -> DataProfile:
    """Profile of accepted transactions (their timestamps), the quarantined row count and as_of.

    ``as_of`` None means the last transaction day, as in the pipeline.
    """
    if timestamps.empty:
        raise ValueError("no accepted transactions to profile")
    days = pd.to_datetime(timestamps).dt.normalize()
    start, end = days.min().date(), days.max().date()
    return DataProfile(int(timestamps.size), int(quarantined), start, end, as_of or end)


def relative_change(old: float, new: float) -> float:
    """new / old - 1 (e.g. -0.25 = a quarter fewer); +inf when old is 0 and new is not."""
    if old == 0:
        return 0.0 if new == 0 else math.inf
    return new / old - 1.0


def row_count_checks(old: DataProfile, new: DataProfile, max_drop: float, max_growth: float | None) -> list[Check]:
    """Accepted rows may shrink by at most ``max_drop`` (share) and grow by at most ``max_growth``."""
    change = relative_change(old.rows, new.rows)
    checks = [Check("rows.drop", -change, max_drop, "max")]
    if max_growth is not None:
        checks.append(Check("rows.growth", change, max_growth, "max"))
    return checks


def quarantine_check(old: DataProfile, new: DataProfile, max_increase: float) -> Check:
    """The quarantined share may rise by at most ``max_increase`` share points (0.02 = 2 points)."""
    return Check("quarantine_share.increase", new.quarantine_share - old.quarantine_share, max_increase, "max")


def date_range_checks(old: DataProfile, new: DataProfile, max_start_shift_days: int | None) -> list[Check]:
    """Date-range checks, values in days.

    - end_not_earlier: new end - old end >= 0 (the source did not lose its recent rows);
    - overlaps_old: old end - new start >= 0 (the new data does not start after the old ends);
    - as_of_not_earlier: new as_of - old as_of >= 0 (scores never go back in time);
    - start_shift: new start - old start <= max_start_shift_days (history not truncated), when set.
    """
    checks = [
        Check("dates.end_not_earlier", float((new.end - old.end).days), 0.0, "min"),
        Check("dates.overlaps_old", float((old.end - new.start).days), 0.0, "min"),
        Check("dates.as_of_not_earlier", float((new.as_of - old.as_of).days), 0.0, "min"),
    ]
    if max_start_shift_days is not None:
        checks.append(Check("dates.start_shift", float((new.start - old.start).days), float(max_start_shift_days), "max"))
    return checks


@dataclass(frozen=True)
class DriftThresholds:
    """Limits of every check (see the check functions for units); the values, and their
    defaults, come from the typed config (``retrain.drift``)."""

    max_psi: float
    psi_bins: int
    psi_epsilon: float
    max_row_drop: float
    max_row_growth: float | None
    max_quarantine_increase: float
    max_start_shift_days: int | None


def drift_report(
    reference_features: pd.DataFrame,
    current_features: pd.DataFrame,
    reference_profile: DataProfile,
    current_profile: DataProfile,
    psi_columns: Sequence[str],
    thresholds: DriftThresholds,
) -> DriftReport:
    """Every drift check of the new data against the champion's: PSI, rows, quarantine, dates."""
    psi = psi_by_column(reference_features, current_features, psi_columns, thresholds.psi_bins, thresholds.psi_epsilon)
    checks = [
        *psi_checks(psi, thresholds.max_psi),
        *row_count_checks(reference_profile, current_profile, thresholds.max_row_drop, thresholds.max_row_growth),
        quarantine_check(reference_profile, current_profile, thresholds.max_quarantine_increase),
        *date_range_checks(reference_profile, current_profile, thresholds.max_start_shift_days),
    ]
    return DriftReport(tuple(checks))
