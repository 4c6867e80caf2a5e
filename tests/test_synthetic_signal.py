"""The churn classifier against the BTYD baselines and an oracle on synthetic worlds with known
churn behaviours (tests/signal_study.py; the measured table is in docs/churn.md).

On the pure BG/NBD world the classifier must not invent a signal (ROC-AUC within
churn.auc_tolerance of the best BTYD baseline); with each behaviour switched on it must never
trail the baseline by more than the tolerance, and the oracle (the same LightGBM given the
generator's true behaviour state) must beat the baseline, so the world does carry the signal.
The feature columns are whatever the churn stage's features are (not listed here).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.config import load_params
from tests import signal_study

CUSTOMERS = 10_000
SEED = 42


@pytest.fixture(scope="module")
def tolerance() -> float:
    return load_params().churn.auc_tolerance


@pytest.mark.slow
def test_pure_world_classifier_ties_the_baseline(tolerance):
    r = signal_study.measure("none", CUSTOMERS, SEED)
    assert abs(r["classifier"] - r["baseline"]) <= tolerance, signal_study.table([r])


@pytest.mark.slow
@pytest.mark.parametrize("world", [w for w in signal_study.WORLDS if w != "none"])
def test_classifier_keeps_up_and_the_oracle_finds_the_behaviour(world, tolerance):
    r = signal_study.measure(world, CUSTOMERS, SEED)
    assert r["classifier"] >= r["baseline"] - tolerance, signal_study.table([r])
    assert r["oracle"] > r["baseline"], signal_study.table([r])


def test_oracle_features_at_a_cutoff():
    """Hand-computed: a seasonal buyer whose 91-day season opens on day 100 (10 April 2024, a leap
    year: day 0 = 1 January) and a slowing leaver whose decline began before the cutoff."""
    truth = pd.DataFrame(
        {
            **{f"behaviour_{b}": [b == "seasonal", b == "slowdown"] for b in signal_study.BEHAVIOURS},
            "season_start_day": [100.0, np.nan],
            "slowdown_from": pd.to_datetime([None, "2024-03-01"]),
            "basket_from": pd.to_datetime([None, None]),
        },
        index=pd.Index(["a", "b"], name="customer_id"),
    )
    # window (2024-03-31, 2024-06-30]: days of the year 91..181, of which 100..181 are in season
    got = signal_study.oracle_features(truth, pd.Index(["a", "b"]), pd.Timestamp("2024-03-31"), 91)
    assert got.loc["a", "oracle_in_season_share"] == pytest.approx(82 / 91)
    assert np.isnan(got.loc["b", "oracle_in_season_share"])
    assert got["oracle_slowdown_begun"].tolist() == [0.0, 1.0]
    assert got["oracle_seasonal"].tolist() == [1.0, 0.0] and got["oracle_basket_begun"].tolist() == [0.0, 0.0]
