"""The churn behaviours of the synthetic world (features/behaviours.py) and its ground truth:
parsing, determinism, each mechanism visible in the rows, and the truth agreeing with the rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from features.behaviours import BEHAVIOURS, DECLINE_ORDERS, SEASON_DAYS, Behaviours, parse_behaviours
from features.synthetic import SyntheticParams, generate_transactions
from tests import inprocess

CLEAN = SyntheticParams(noise_rate=0.0)


def world(text: str, seed: int = 5, customers: int = 6_000) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows with is_return, truth indexed by customer_id) of a clean world with ``text`` switched on."""
    sink: list[pa.Table] = []
    rows = generate_transactions(60_000, seed=seed, n_customers=customers, params=CLEAN, include_truth=True,
                                 behaviours=parse_behaviours(text), truth_sink=sink)  # fmt: skip
    rows = rows.assign(ts=pd.to_datetime(rows["timestamp"]), value=rows["amount"].astype(float))
    return rows, pa.concat_tables(sink).to_pandas().set_index("customer_id")


def orders_of(rows: pd.DataFrame) -> pd.DataFrame:
    buys = rows[~rows["is_return"]]
    return buys.groupby(["customer_id", "order_id"]).agg(ts=("ts", "first"), value=("value", "sum")).reset_index()


def test_parse_behaviours():
    assert parse_behaviours(None) == parse_behaviours("") == Behaviours()
    assert parse_behaviours("all") == Behaviours(**dict.fromkeys(BEHAVIOURS, 1.0))
    assert parse_behaviours("slowdown, basket=2.5") == Behaviours(slowdown=1.0, basket=2.5)
    assert parse_behaviours("all,returns=0") == Behaviours(slowdown=1, basket=1, seasonal=1, growth=1)
    with pytest.raises(ValueError, match="unknown behaviour 'gaps'"):
        parse_behaviours("gaps")
    with pytest.raises(ValueError, match="not a number"):
        parse_behaviours("basket=lots")


def test_behaviour_world_is_seeded_and_differs_from_the_default():
    a, truth_a = world("all", customers=1_000)
    b, truth_b = world("all", customers=1_000)
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(truth_a, truth_b)
    pure, truth_pure = world("", customers=1_000)
    assert not pure.equals(a)
    assert not truth_pure.filter(like="behaviour_").to_numpy().any()


def test_truth_agrees_with_the_rows():
    rows, truth = world("all")
    per = orders_of(rows).groupby("customer_id")["ts"].max()
    assert truth.index.equals(per.index)  # one truth row per customer, every customer bought
    gone = truth[~truth["alive_at_end"]]
    assert 0.3 < len(gone) / len(truth) < 0.8
    # a customer who left bought for the last time at the dropout (timestamps to the second)
    assert (per.loc[gone.index] - gone["dropout_at"]).abs().max() <= pd.Timedelta(seconds=1)
    assert truth.loc[truth["alive_at_end"], "dropout_at"].isna().all()
    for name in BEHAVIOURS:
        assert 0.1 < truth[f"behaviour_{name}"].mean() < 0.6


def _last_gap_ratio(orders: pd.DataFrame, ids: pd.Index) -> float:
    """Median over customers of the last gap / the mean of the earlier gaps."""
    o = orders[orders["customer_id"].isin(ids)].sort_values(["customer_id", "ts"])
    gaps = o.groupby("customer_id")["ts"].diff().dt.total_seconds().dropna()
    by = gaps.groupby(o.loc[gaps.index, "customer_id"])
    ok = by.size() >= 2 * DECLINE_ORDERS
    return float((by.last() / by.apply(lambda g: g.iloc[:-DECLINE_ORDERS].mean()))[ok].median())


def test_slowdown_lengthens_the_last_gaps_of_leavers_only():
    rows, truth = world("slowdown")
    orders = orders_of(rows)
    gone = ~truth["alive_at_end"]
    slowed = _last_gap_ratio(orders, truth.index[gone & truth["behaviour_slowdown"]])
    plain = _last_gap_ratio(orders, truth.index[gone & ~truth["behaviour_slowdown"]])
    assert slowed > 1.6 * plain  # the last gap x 2 at strength 1


def test_basket_shrinks_the_last_orders_of_leavers():
    rows, truth = world("basket")
    orders = orders_of(rows).sort_values(["customer_id", "ts"])
    last = orders.groupby("customer_id")["value"].last() / orders.groupby("customer_id")["value"].mean()
    gone = ~truth["alive_at_end"]
    shrunk = last[gone & truth["behaviour_basket"]].mean()
    plain = last[gone & ~truth["behaviour_basket"]].mean()
    assert shrunk < 0.8 * plain  # exp(-0.75) = 0.47 on the last order, before averaging


def test_serial_returners_return_more_and_leave_more():
    rows, truth = world("returns")
    returned = rows.groupby("customer_id")["is_return"].mean()
    flagged = truth["behaviour_returns"]
    assert returned[flagged].mean() > 5 * returned[~flagged].mean()
    assert (rows.loc[rows["is_return"], "value"] < 0).all()
    assert truth.loc[flagged, "dropout_prob"].mean() > 1.5 * truth.loc[~flagged, "dropout_prob"].mean()


def test_seasonal_buyers_buy_only_in_their_window():
    rows, truth = world("seasonal")
    seasonal = truth.index[truth["behaviour_seasonal"]]
    own = rows[rows["customer_id"].isin(seasonal) & ~rows["is_return"]]
    day_of_year = (own["ts"] - own["ts"].dt.to_period("Y").dt.start_time).dt.total_seconds() / 86400
    start = truth.loc[own["customer_id"], "season_start_day"].to_numpy()
    assert ((day_of_year.to_numpy() >= start) & (day_of_year.to_numpy() < start + SEASON_DAYS + 1)).all()
    assert truth.loc[~truth["behaviour_seasonal"], "season_start_day"].isna().all()


def test_growers_spend_more_over_time_and_stay():
    rows, truth = world("growth")
    orders = orders_of(rows).sort_values(["customer_id", "ts"])
    per = orders.groupby("customer_id").agg(n=("value", "size"), first=("value", "first"), last=("value", "last"))
    per = per[per["n"] >= 4]
    growers = truth.loc[per.index, "behaviour_growth"]
    ratio = np.log(per["last"] / per["first"])
    assert ratio[growers].mean() > ratio[~growers].mean() + 0.1
    assert truth.loc[truth["behaviour_growth"], "alive_at_end"].mean() > truth.loc[~truth["behaviour_growth"], "alive_at_end"].mean()


def test_cli_generate_with_behaviours_and_truth(tmp_path):
    done = inprocess.cvp(tmp_path, "generate", "--rows", "3000", "--customers", "300", "--out", "tx.csv", "--seed", "8",
                         "--behaviours", "all", "--truth", "truth.parquet")  # fmt: skip
    assert done.returncode == 0, done.stderr
    truth = pd.read_parquet(tmp_path / "truth.parquet")
    assert len(truth) == 300 and truth["customer_id"].is_unique
    bad = inprocess.cvp(tmp_path, "generate", "--rows", "10", "--out", "tx.csv", "--behaviours", "gaps")
    assert bad.returncode == 2 and "unknown behaviour 'gaps'" in bad.stderr
