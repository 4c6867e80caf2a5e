"""Drift checks: PSI against hand computations, and the row-count, quarantine and date checks."""

import datetime as dt
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from models import drift
from models.drift import Check, DataProfile, DriftThresholds
from pipelines.config import DriftParams

#: The thresholds of the default config (retrain.drift), written out: the dataclass has no defaults.
THRESHOLDS = DriftThresholds(
    max_psi=0.25, psi_bins=10, psi_epsilon=1e-4, max_row_drop=0.10, max_row_growth=None,
    max_quarantine_increase=0.02, max_start_shift_days=0,
)  # fmt: skip


def _normal_sample(n: int = 1000) -> np.ndarray:
    """Evenly spaced standard-normal quantiles: a deterministic 'sample'."""
    return norm.ppf((np.arange(n) + 0.5) / n)


def test_psi_of_identical_samples_is_zero():
    sample = _normal_sample()
    assert drift.psi_numeric(sample, sample.copy()) == 0.0
    assert drift.psi_categorical(list("aabbbc"), list("cbbaab")) == 0.0


def test_psi_of_a_shift_by_a_quarter_matches_the_hand_computation():
    # Reference 0..99, 4 bins: numpy's linear quantiles give edges 24.75, 49.5, 74.25 and
    # shares (.25, .25, .25, .25). Shifted by 25 the current 25..124 has shares (0, .25, .25, .5);
    # the empty bin's share is raised to epsilon.
    reference = np.arange(100.0)
    np.testing.assert_allclose(drift.quantile_edges(reference, 4), [24.75, 49.5, 74.25])
    eps = 1e-4
    expected = (eps - 0.25) * math.log(eps / 0.25) + (0.5 - 0.25) * math.log(0.5 / 0.25)
    assert drift.psi_numeric(reference, reference + 25, n_bins=4, epsilon=eps) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(2.12852, abs=1e-5)


def test_psi_grows_with_the_shift():
    reference = _normal_sample()
    values = [drift.psi_numeric(reference, reference + s) for s in (0.0, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6)]
    assert values[0] == 0.0
    assert all(a < b for a, b in zip(values, values[1:]))


def test_psi_of_a_small_normal_shift_matches_the_binned_expectation():
    # Bins at the reference's deciles; a shift of 0.2 sd moves each bin's share to
    # Phi(e_i - 0.2) - Phi(e_{i-1} - 0.2). Compare with the PSI of those exact shares.
    reference = _normal_sample(100_000)
    edges = np.r_[-np.inf, norm.ppf(np.arange(1, 10) / 10), np.inf]
    shifted = np.diff(norm.cdf(edges - 0.2))
    expected = float(np.sum((shifted - 0.1) * np.log(shifted / 0.1)))
    assert drift.psi_numeric(reference, reference + 0.2) == pytest.approx(expected, rel=1e-3)


def test_psi_counts_missing_values_as_their_own_bin():
    reference = np.array([1.0, 2.0, 3.0, 4.0])
    current = np.array([1.0, 2.0, np.nan, np.nan])
    # 2 bins (edge 2.5), plus a missing bin: ref (.5, .5, 0), cur (.5, 0, .5).
    eps = 1e-4
    expected = (eps - 0.5) * math.log(eps / 0.5) + (0.5 - eps) * math.log(0.5 / eps)
    assert drift.psi_numeric(reference, current, n_bins=2, epsilon=eps) == pytest.approx(expected)


def test_psi_of_ties_collapses_bins_instead_of_leaving_them_empty():
    reference = np.array([0.0] * 8 + [1.0, 2.0])
    # Deciles 1..7 are all 0; the 8th and 9th interpolate (0.2 and 1.1 with numpy's linear rule).
    np.testing.assert_allclose(drift.quantile_edges(reference, 10), [0.0, 0.2, 1.1])
    assert drift.psi_numeric(reference, reference[::-1]) == 0.0


def test_categorical_psi_matches_the_hand_computation():
    # ref: a .5, b .5; cur: a .25, b .25, c .5 (c unseen before -> epsilon in the reference).
    eps = 1e-4
    expected = 2 * (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.5 - eps) * math.log(0.5 / eps)
    got = drift.psi_categorical(["a", "b"], ["a", "b", "c", "c"], epsilon=eps)
    assert got == pytest.approx(expected)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=50),
    st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=50),
)
def test_psi_is_never_negative(reference, current):
    assert drift.psi_numeric(reference, current) >= 0.0


def test_psi_by_column_picks_numeric_or_categorical_and_names_a_missing_column():
    ref = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "state": ["new", "new", "old", "old"]})
    cur = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "state": ["new", "old", "old", "old"]})
    got = drift.psi_by_column(ref, cur, ["x", "state"])
    assert got["x"] == 0.0
    assert got["state"] == pytest.approx(drift.psi_categorical(ref["state"], cur["state"]))
    with pytest.raises(KeyError, match="'y' missing from the reference"):
        drift.psi_by_column(ref, cur, ["y"])


def _profile(rows=1000, quarantined=10, start="1997-01-01", end="1998-03-31", as_of="1998-03-31"):
    d = dt.date.fromisoformat
    return DataProfile(rows, quarantined, d(start), d(end), d(as_of))


def test_profile_of_transactions_takes_days_counts_and_defaults_as_of_to_the_last_day():
    ts = pd.Series(pd.to_datetime(["1997-01-01 10:00", "1997-03-02 00:00", "1997-02-01 23:59"]))
    prof = drift.profile_transactions(ts, quarantined=1, as_of=None)
    assert prof == _profile(rows=3, quarantined=1, start="1997-01-01", end="1997-03-02", as_of="1997-03-02")
    assert prof.quarantine_share == 0.25
    assert DataProfile.from_dict(prof.to_dict()) == prof


def test_row_count_checks_fail_on_a_large_drop_or_growth():
    old = _profile(rows=1000)
    drop = drift.row_count_checks(old, _profile(rows=850), max_drop=0.10, max_growth=1.0)
    assert [(c.name, round(c.value, 6), c.passed) for c in drop] == [("rows.drop", 0.15, False), ("rows.growth", -0.15, True)]
    ok = drift.row_count_checks(old, _profile(rows=950), max_drop=0.10, max_growth=None)
    assert [(c.name, c.passed) for c in ok] == [("rows.drop", True)]
    grown = drift.row_count_checks(old, _profile(rows=2500), max_drop=0.10, max_growth=1.0)
    assert [c.passed for c in grown] == [True, False]


def test_quarantine_check_is_in_share_points():
    old = _profile(rows=990, quarantined=10)  # 1 %
    new = _profile(rows=960, quarantined=40)  # 4 %
    check = drift.quarantine_check(old, new, max_increase=0.02)
    assert check.value == pytest.approx(0.03)
    assert not check.passed
    assert drift.quarantine_check(old, new, max_increase=0.05).passed


@pytest.mark.parametrize(
    ("new", "failing"),
    [
        (_profile(end="1998-06-30", as_of="1998-06-30"), set()),
        (_profile(end="1998-03-30"), {"dates.end_not_earlier"}),
        (_profile(start="1998-04-01", end="1998-06-30", as_of="1998-06-30"), {"dates.overlaps_old", "dates.start_shift"}),
        (_profile(as_of="1998-01-31"), {"dates.as_of_not_earlier"}),
        (_profile(start="1997-06-01"), {"dates.start_shift"}),
        (_profile(start="1996-06-01"), set()),  # backfilled history is fine
    ],
)
def test_date_range_checks(new, failing):
    checks = drift.date_range_checks(_profile(), new, max_start_shift_days=0)
    assert {c.name for c in checks if not c.passed} == failing


def test_check_rules_and_nan():
    assert Check("a", 0.25, 0.25, "max").passed
    assert not Check("a", 0.26, 0.25, "max").passed
    assert Check("b", 0.0, 0.0, "min").passed
    assert not Check("b", -1.0, 0.0, "min").passed
    assert not Check("c", float("nan"), 1.0, "max").passed
    assert Check("psi.x", 0.41, 0.25, "max").describe() == "psi.x = 0.41 > 0.25"


def test_drift_report_collects_every_check_and_names_the_failures():
    ref = pd.DataFrame({"x": _normal_sample()})
    cur = pd.DataFrame({"x": _normal_sample() + 1.0})
    report = drift.drift_report(ref, cur, _profile(), _profile(rows=700), ["x"], THRESHOLDS)
    assert not report.passed
    assert [c.name for c in report.failures] == ["psi.x", "rows.drop"]
    assert report.summary().startswith("psi.x = ")
    assert "rows.drop = 0.3 > 0.1" in report.summary()
    as_dict = report.to_dict()
    assert as_dict["passed"] is False
    assert set(as_dict["checks"]) == {
        "psi.x", "rows.drop", "quarantine_share.increase",
        "dates.end_not_earlier", "dates.overlaps_old", "dates.as_of_not_earlier", "dates.start_shift",
    }
    same = drift.drift_report(ref, ref, _profile(), _profile(), ["x"], THRESHOLDS)
    assert same.passed and same.summary() == "no drift (7 checks passed)"


def test_the_psi_function_defaults_and_the_written_out_thresholds_are_the_configs():
    """The PSI functions keep a default bin count and epsilon for direct use: the config's."""
    config = DriftParams().model_dump(exclude={"psi_columns"})
    assert (drift.DEFAULT_BINS, drift.DEFAULT_EPSILON) == (config["psi_bins"], config["psi_epsilon"])
    assert DriftThresholds(**config) == THRESHOLDS
