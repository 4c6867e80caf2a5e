"""Customer features (features/customer.py): purchase-day semantics, equality with lifetimes on
CDNOW, an independent pandas reference, no leakage past the cutoff, labels, sufficient statistics."""

from __future__ import annotations

import datetime as dt
import importlib.resources

import hypothesis.strategies as st
import ibis
import numpy as np
import pandas as pd
import pandera.errors
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings

from features.customer import (
    FEATURES_SCHEMA,
    FLOAT_EXACT_LIMIT,
    LABELS_SCHEMA,
    NO_RETURN_DAYS,
    FeatureSpec,
    chunk_validator,
    column_flags,
    customer_days,
    customer_features,
    cutoff_dates,
    day_number,
    feature_dtypes,
    features_from_days,
    features_schema,
    labels_from_days,
    needs_decimal_sums,
    rfm_counts,
    season_windows,
    spend_counts,
    to_contract,
    transaction_problems,
    transactions_problem,
    transactions_summary,
    window_labels,
)

CDNOW = importlib.resources.files("lifetimes.datasets")
DAY = pd.Timedelta(days=1)


# --------------------------------------------------------------------------- shared data helpers


def transactions_frame(
    customer_id, timestamp, amount, quantity=None, order_id=None, cost=None
) -> pd.DataFrame:
    """A frame in the ingest contract (interim transactions) from plain lists."""
    n = len(customer_id)
    return pd.DataFrame(
        {
            "customer_id": pd.Series(customer_id, dtype="str"),
            "timestamp": pd.to_datetime(pd.Series(timestamp), format="mixed").astype("datetime64[us]"),
            "amount": pd.Series(amount, dtype="float64"),
            "quantity": pd.Series(quantity if quantity is not None else [np.nan] * n, dtype="float64"),
            "order_id": pd.Series(order_id if order_id is not None else [None] * n, dtype="str"),
            "cost": pd.Series(cost if cost is not None else [np.nan] * n, dtype="float64"),
            "source_row": np.arange(n, dtype="int64"),
        }
    )


def cdnow_master() -> pd.DataFrame:
    """CDNOW master (23,570 customers, 69,659 rows) in the ingest contract."""
    raw = pd.read_csv(CDNOW / "CDNOW_master.txt", sep=r"\s+", dtype={"customer_id": "str", "date": "str"})
    return transactions_frame(
        raw["customer_id"], pd.to_datetime(raw["date"], format="%Y%m%d"), raw["dollar_value"], quantity=raw["number_of_cds"]
    )


def cdnow_sample() -> tuple[pd.DataFrame, pd.Series]:
    """The 1/10 CDNOW sample (2,357 customers) in the ingest contract, and its customer index
    (the ID of the published summary) -> customer_id."""
    names = ["customer_id", "customer_index", "date", "quantity", "amount"]
    raw = pd.read_csv(CDNOW / "CDNOW_sample.txt", sep=r"\s+", header=None, names=names, dtype="str")
    tx = transactions_frame(
        raw["customer_id"], pd.to_datetime(raw["date"], format="%Y%m%d"), raw["amount"].astype(float),
        quantity=raw["quantity"].astype(float),
    )  # fmt: skip
    first = raw.drop_duplicates("customer_index")
    return tx, first.set_index(first["customer_index"].astype(int))["customer_id"]


# The project's settings (params.yaml; FeatureSpec has no defaults of its own).
SETTINGS = {"horizon_days": 91, "days_per_unit": 7.0, "windows_days": (30, 90, 180, 365), "trend_days": 182, "trend_purchases": 3}


def spec_for(tx: pd.DataFrame, **kwargs) -> FeatureSpec:
    """Spec whose optional-column flags follow the data, as the stage derives them."""
    flags = {
        "has_order_id": bool(tx["order_id"].notna().any()),
        "has_quantity": bool(tx["quantity"].notna().any()),
        "has_cost": bool(tx["cost"].notna().any()),
    }
    return FeatureSpec(**(SETTINGS | flags | kwargs))


@pytest.fixture(scope="module")
def con():
    backend = ibis.duckdb.connect(threads=2)
    yield backend
    backend.disconnect()


def features_of(con, tx: pd.DataFrame, cutoff, spec: FeatureSpec | None = None) -> pd.DataFrame:
    spec = spec or spec_for(tx)
    schema = features_schema(spec.windows_days)
    out = to_contract(con.to_pandas(customer_features(ibis.memtable(tx), pd.Timestamp(cutoff).date(), spec)), schema)
    return schema.validate(out)


def labels_of(con, tx: pd.DataFrame, customers: pd.Series, cutoff, horizon_days: int) -> pd.DataFrame:
    ids = ibis.memtable(pd.DataFrame({"customer_id": customers.astype("str")}))
    expr = window_labels(ibis.memtable(tx), ids, pd.Timestamp(cutoff).date(), horizon_days)
    return LABELS_SCHEMA.validate(to_contract(con.to_pandas(expr), LABELS_SCHEMA))


def lifetimes_summary(tx: pd.DataFrame, cutoff, days_per_unit: int) -> pd.DataFrame:
    from lifetimes.utils import summary_data_from_transaction_data

    return summary_data_from_transaction_data(
        tx, "customer_id", "timestamp", monetary_value_col="amount", freq="D",
        freq_multiplier=days_per_unit, observation_period_end=cutoff,
    )  # fmt: skip


# --------------------------------------------------------------------------- hand-computed example


@pytest.fixture(scope="module")
def small_tx() -> pd.DataFrame:
    # Customer a: 3 purchase days (one with two rows and a netted return), a return-only day,
    # a zero-amount day and rows after the cutoff. Customer b: only returns (no purchase day).
    # Customer c: a single purchase on the cutoff day itself, late in the evening.
    return transactions_frame(
        ["a", "a", "a", "a", "a", "a", "a", "b", "c", "a"],
        ["2020-01-01 09:00", "2020-01-11 10:00", "2020-01-11 18:00", "2020-01-11 19:00",
         "2020-02-01", "2020-03-01", "2020-03-31", "2020-03-01", "2020-03-31 23:59", "2020-04-01"],
        [10.0, 20.0, 5.0, -3.0, -4.0, 0.0, 7.5, -9.0, 12.0, 100.0],
        quantity=[1, 2, 1, -1, -1, 1, 3, -1, 2, 9],
        order_id=["o1", "o2", "o2", "o2", "r1", "o3", "o4", "r2", "o5", "o6"],
        cost=[6.0, 12.0, 3.0, -2.0, -2.5, 0.0, 4.0, -5.0, 7.0, 50.0],
    )  # fmt: skip


def test_hand_computed_features_follow_the_purchase_day_semantics(con, small_tx):
    spec = FeatureSpec(horizon_days=40, days_per_unit=7.0, windows_days=(30, 90), trend_days=45, trend_purchases=3,
                       has_order_id=True, has_quantity=True, has_cost=True)  # fmt: skip
    out = features_of(con, small_tx, "2020-03-31", spec).set_index("customer_id")
    assert list(out.index) == ["a", "c"]  # b has returns only
    a, c = out.loc["a"], out.loc["c"]
    # a's purchase days: 01-01 (10), 01-11 (20 + 5 - 3 = 22), 03-01 (0), 03-31 (7.5); 02-01 is return-only.
    assert a["first_purchase"] == pd.Timestamp("2020-01-01") and a["last_purchase"] == pd.Timestamp("2020-03-31")
    assert a["frequency"] == 3 and a["n_purchase_days"] == 4 and a["n_transactions"] == 7
    assert a["recency"] == pytest.approx(90 / 7) and a["T"] == pytest.approx(90 / 7)
    assert a["monetary_value"] == pytest.approx((22 + 0 + 7.5) / 3)
    assert a["total_spend"] == pytest.approx(10 + 22 - 4 + 0 + 7.5)
    assert a["avg_spend"] == pytest.approx((10 + 22 + 0 + 7.5) / 4)
    assert (a["days_since_first"], a["days_since_last"]) == (90, 0)
    gaps = np.array([10, 50, 30])
    assert a["ipi_mean"] == pytest.approx(gaps.mean()) and a["ipi_std"] == pytest.approx(gaps.std(ddof=1))
    assert a["days_since_last_ratio"] == 0.0
    # windows (cutoff - w, cutoff]: 30d holds 03-31 only (03-01 is exactly 30 days back);
    # 90d holds 01-11 .. 03-31 but not 01-01 (90 days back).
    assert (a["purchases_30d"], a["spend_30d"]) == (1, pytest.approx(7.5))
    assert (a["purchases_90d"], a["spend_90d"]) == (3, pytest.approx(22 - 4 + 0 + 7.5))
    # trend over 45 days: (02-15, 03-31] = 7.5, previous (01-01, 02-15] = 22 - 4.
    assert a["spend_trend"] == pytest.approx(7.5 - 18)
    assert (a["returns_count"], a["returns_amount"]) == (2, pytest.approx(7.0))
    assert a["n_orders"] == 4  # o1, o2, o3, o4 (r1 is a return row)
    assert a["total_quantity"] == pytest.approx(6) and a["avg_quantity"] == pytest.approx(6 / 4)
    # trailing (02-20, 03-31]: spend 7.5, cost 4
    assert a["spend_trailing"] == pytest.approx(7.5) and a["margin_trailing"] == pytest.approx(3.5)
    # c: one purchase on the cutoff day (23:59 is still that day).
    assert (c["frequency"], c["recency"], c["T"], c["monetary_value"]) == (0, 0.0, 0.0, 0.0)
    assert np.isnan(c["ipi_mean"]) and np.isnan(c["ipi_std"]) and np.isnan(c["days_since_last_ratio"])
    assert (c["n_orders"], c["spend_trailing"], c["margin_trailing"]) == (1, 12.0, 5.0)
    assert (out["cutoff"] == pd.Timestamp("2020-03-31")).all()


@pytest.mark.parametrize(
    ("k", "gap_last_ratio", "gap_trend", "basket_trend", "quantity_trend"),
    [
        # gaps 10, 50, 30 (mean 30); day values 10, 22, 0, 7.5 (mean 9.875); quantities 1, 2, 1, 3 (mean 1.75)
        (3, 30 / 30, (30 - 10) / 2, (22 + 0 + 7.5) / 3 / 9.875, (2 + 1 + 3) / 3 / 1.75),
        (2, 40 / 30, 30 - 50, (0 + 7.5) / 2 / 9.875, (1 + 3) / 2 / 1.75),
    ],
)
def test_hand_computed_behaviour_features(con, small_tx, k, gap_last_ratio, gap_trend, basket_trend, quantity_trend):
    spec = FeatureSpec(horizon_days=40, days_per_unit=7.0, windows_days=(30, 90), trend_days=45, trend_purchases=k,
                       has_order_id=True, has_quantity=True, has_cost=True)  # fmt: skip
    out = features_of(con, small_tx, "2020-03-31", spec).set_index("customer_id")
    a, c = out.loc["a"], out.loc["c"]
    assert a["gap_last_ratio"] == pytest.approx(gap_last_ratio) and a["gap_trend"] == pytest.approx(gap_trend)
    assert a["basket_trend"] == pytest.approx(basket_trend) and a["quantity_trend"] == pytest.approx(quantity_trend)
    # 2 of a's 7 rows are returns; 7.0 returned of 42.5 bought; last return 2020-02-01 (59 days back)
    assert a["return_share_count"] == pytest.approx(2 / 7) and a["return_share_value"] == pytest.approx(7 / 42.5)
    assert a["days_since_last_return"] == 59
    # c: one purchase, no return, history shorter than a year: neutral values, sentinel, zeros
    assert (c["gap_last_ratio"], c["gap_trend"], c["basket_trend"], c["quantity_trend"]) == (1.0, 0.0, 1.0, 1.0)
    assert (c["return_share_count"], c["return_share_value"], c["days_since_last_return"]) == (0.0, 0.0, NO_RETURN_DAYS)
    seasons = ["season_purchases_1y", "season_spend_1y", "season_purchases_2y", "season_spend_2y"]
    assert (out[seasons] == 0).all().all()


def test_season_features_read_the_label_window_one_and_two_years_back(con):
    # cutoff 2020-03-31, horizon 40: 1y window (2019-04-01, 2019-05-11], 2y window (2018-04-01, 2018-05-11]
    tx = transactions_frame(
        ["x", "x", "x", "x", "x", "x", "y", "y", "y"],
        ["2018-04-10", "2019-04-01 23:00", "2019-04-05", "2019-05-11 22:00", "2019-05-12", "2020-03-01",
         "2019-04-01", "2019-05-02", "2019-05-02"],
        [7.0, 100.0, 10.0, 20.0, 50.0, 1.0, 3.0, 4.0, -1.5],
    )  # fmt: skip
    out = features_of(con, tx, "2020-03-31", spec_for(tx, horizon_days=40)).set_index("customer_id")
    x, y = out.loc["x"], out.loc["y"]
    assert (x["season_purchases_1y"], x["season_spend_1y"]) == (2, 30.0)  # the window's first day is 04-02
    assert (x["season_purchases_2y"], x["season_spend_2y"]) == (1, 7.0)
    assert (y["season_purchases_1y"], y["season_spend_1y"]) == (1, 2.5)  # a same-day return is netted
    assert (y["season_purchases_2y"], y["season_spend_2y"]) == (0, 0.0)  # history starts after the window
    assert y["days_since_last_return"] == (pd.Timestamp("2020-03-31") - pd.Timestamp("2019-05-02")).days
    assert y["return_share_count"] == pytest.approx(1 / 3) and y["return_share_value"] == pytest.approx(1.5 / 7)


def test_season_windows_never_pass_the_cutoff():
    c = day_number(dt.date(2020, 3, 31))
    assert season_windows(dt.date(2020, 3, 31), 40) == {1: (c - 365, c - 325), 2: (c - 730, c - 690)}
    assert season_windows(dt.date(2020, 3, 31), 400) == {1: (c - 365, c), 2: (c - 730, c - 330)}


def test_unmapped_optional_columns_give_nan_and_purchase_day_orders(con, small_tx):
    tx = small_tx.assign(quantity=np.nan, cost=np.nan, order_id=pd.Series([None] * len(small_tx), dtype="str"))
    out = features_of(con, tx, "2020-03-31").set_index("customer_id")
    assert out["total_quantity"].isna().all() and out["avg_quantity"].isna().all()
    assert out["margin_trailing"].isna().all()
    assert (out["n_orders"] == out["n_purchase_days"]).all()


def test_days_in_weeks_or_days_follow_the_model_time_unit(con, small_tx):
    weeks = features_of(con, small_tx, "2020-03-31", spec_for(small_tx, days_per_unit=7.0))
    days = features_of(con, small_tx, "2020-03-31", spec_for(small_tx, days_per_unit=1.0))
    np.testing.assert_allclose(days["T"], weeks["T"] * 7, rtol=1e-12)
    np.testing.assert_allclose(days["recency"], weeks["recency"] * 7, rtol=1e-12)
    np.testing.assert_array_equal(days["T"], days["days_since_first"])


def test_a_customer_without_rows_before_the_cutoff_is_absent_and_empty_output_keeps_the_schema(con, small_tx):
    out = features_of(con, small_tx, "2019-12-31")
    assert out.empty
    assert dict(out.dtypes.astype(str)) == feature_dtypes()


# --------------------------------------------------------------------------- equality with lifetimes


@pytest.fixture(scope="module")
def master() -> pd.DataFrame:
    return cdnow_master()


@pytest.mark.parametrize("cutoff", ["1997-09-30", "1998-06-30"])
@pytest.mark.parametrize("days_per_unit", [7, 1])
def test_rfm_equals_lifetimes_on_full_cdnow(con, master, cutoff, days_per_unit):
    ours = features_of(con, master, cutoff, spec_for(master, days_per_unit=float(days_per_unit)))
    ref = lifetimes_summary(master, cutoff, days_per_unit)
    assert len(ours) == len(ref) == 23_570
    assert list(ours["customer_id"]) == sorted(ref.index)
    ref = ref.loc[ours["customer_id"]]
    for column in ("frequency", "recency", "T", "monetary_value"):
        np.testing.assert_allclose(ours[column].to_numpy(float), ref[column].to_numpy(), rtol=1e-9, err_msg=column)


def test_rfm_equals_lifetimes_and_published_summary_on_the_cdnow_sample(con):
    sample, sample_ids = cdnow_sample()
    ours = features_of(con, sample, "1997-09-30").set_index("customer_id")
    ref = lifetimes_summary(sample, "1997-09-30", 7)
    assert len(ours) == 2_357 and (ours["frequency"] > 0).sum() == 946
    ref = ref.loc[ours.index]
    for column in ("frequency", "recency", "T", "monetary_value"):
        np.testing.assert_allclose(ours[column].to_numpy(float), ref[column].to_numpy(), rtol=1e-9, err_msg=column)
    # The summary published with lifetimes (Fader, Hardie & Lee's CDNOW sample), rounded to 0.01.
    published = pd.read_csv(CDNOW / "cdnow_customers_summary_with_transactions.csv")
    ours_by_index = ours.loc[sample_ids.loc[published["ID"]]].reset_index(drop=True)
    np.testing.assert_array_equal(ours_by_index["frequency"], published["x"])
    np.testing.assert_allclose(ours_by_index["recency"], published["t_x"], atol=0.005 + 1e-9)
    np.testing.assert_allclose(ours_by_index["T"], published["T"], atol=0.005 + 1e-9)
    np.testing.assert_allclose(ours_by_index["monetary_value"], published["zbar"], atol=0.005 + 1e-9)


def test_same_day_rows_collapse_into_one_purchase_day_on_cdnow(con, master):
    out = features_of(con, master, "1998-06-30")
    days = master.assign(day=master["timestamp"].dt.normalize()).groupby("customer_id")["day"].nunique()
    np.testing.assert_array_equal(out["n_purchase_days"], days.loc[out["customer_id"]].to_numpy())
    assert (out["n_transactions"] > out["n_purchase_days"]).sum() > 1000  # CDNOW has many same-day rows


# --------------------------------------------------------------------------- independent pandas reference


def reference_features(tx: pd.DataFrame, cutoff: str, spec: FeatureSpec) -> pd.DataFrame:
    """Straightforward per-customer pandas computation of every feature, for comparison."""
    c = pd.Timestamp(cutoff)
    tx = tx.assign(day=tx["timestamp"].dt.normalize())
    tx = tx[tx["day"] <= c]
    records = []
    for cid, rows in tx.groupby("customer_id"):
        daily = rows.groupby("day").agg(value=("amount", "sum"), purchase=("amount", lambda a: bool((a >= 0).any())))
        pdays = daily[daily["purchase"]]
        if pdays.empty:
            continue
        first, last, n = pdays.index.min(), pdays.index.max(), len(pdays)
        gaps = np.diff(pdays.index.values).astype("timedelta64[D]").astype(float)
        age = lambda d: (c - d).days  # noqa: E731
        rec = {
            "customer_id": cid, "frequency": n - 1, "recency": (last - first).days / spec.days_per_unit,
            "T": age(first) / spec.days_per_unit,
            "monetary_value": pdays["value"].iloc[1:].mean() if n > 1 else 0.0,
            "n_purchase_days": n, "n_transactions": len(rows), "total_spend": rows["amount"].sum(),
            "avg_spend": pdays["value"].mean(), "days_since_first": age(first), "days_since_last": age(last),
            "ipi_mean": gaps.mean() if len(gaps) else np.nan,
            "ipi_std": gaps.std(ddof=1) if len(gaps) > 1 else np.nan,
        }  # fmt: skip
        rec["days_since_last_ratio"] = rec["days_since_last"] / rec["ipi_mean"]
        in_last = lambda days, frame: frame[frame.index > c - days * DAY]  # noqa: E731
        for w in spec.windows_days:
            rec[f"purchases_{w}d"] = len(in_last(w, pdays))
            rec[f"spend_{w}d"] = in_last(w, daily)["value"].sum()
        recent = in_last(spec.trend_days, daily)["value"].sum()
        rec["spend_trend"] = recent - (in_last(2 * spec.trend_days, daily)["value"].sum() - recent)
        returns = rows[rows["amount"] < 0]
        rec["returns_count"], rec["returns_amount"] = len(returns), -returns["amount"].sum()
        rec["n_orders"] = rows.loc[rows["amount"] >= 0, "order_id"].nunique()
        rec["total_quantity"] = rows["quantity"].sum()
        rec["avg_quantity"] = rec["total_quantity"] / n
        trailing = rows[rows["day"] > c - spec.horizon_days * DAY]
        rec["spend_trailing"] = trailing["amount"].sum()
        rec["margin_trailing"] = rec["spend_trailing"] - trailing["cost"].sum()
        rec |= reference_behaviour(rows, pdays, gaps, c, spec)
        records.append(rec)
    return pd.DataFrame(records)


def reference_behaviour(rows: pd.DataFrame, pdays: pd.DataFrame, gaps: np.ndarray, c: pd.Timestamp, spec: FeatureSpec) -> dict:
    """The behavioural features of one customer (rows on or before the cutoff c), in pandas."""
    k = spec.trend_purchases
    last_gaps = gaps[-k:]
    quantity = rows.groupby("day")["quantity"].sum().loc[pdays.index]
    returns = rows[rows["amount"] < 0]
    returned, bought = -returns["amount"].sum(), rows.loc[rows["amount"] >= 0, "amount"].sum()
    rec = {
        "gap_last_ratio": last_gaps.mean() / gaps.mean() if len(gaps) else 1.0,
        "gap_trend": (last_gaps[-1] - last_gaps[0]) / (len(last_gaps) - 1) if len(last_gaps) > 1 else 0.0,
        "basket_trend": pdays["value"].iloc[-k:].mean() / pdays["value"].mean() if pdays["value"].mean() > 0 else 1.0,
        "quantity_trend": quantity.iloc[-k:].mean() / quantity.mean() if quantity.mean() > 0 else 1.0,
        "return_share_count": len(returns) / len(rows),
        "return_share_value": returned / max(bought, returned) if returned > 0 else 0.0,
        "days_since_last_return": (c - returns["day"].max()).days if len(returns) else NO_RETURN_DAYS,
    }
    for years in (1, 2):
        start = c - 365 * years * DAY
        end = min(start + spec.horizon_days * DAY, c)
        season = rows[(rows["day"] > start) & (rows["day"] <= end)]
        rec[f"season_purchases_{years}y"] = season.loc[season["amount"] >= 0, "day"].nunique()
        rec[f"season_spend_{years}y"] = season["amount"].sum()
    return rec


def random_transactions(seed: int, n_rows: int = 600, n_customers: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ts = pd.Timestamp("2021-01-01") + pd.to_timedelta(rng.integers(0, 500 * 24 * 60, n_rows), unit="min")
    amount = np.round(rng.gamma(2.0, 20.0, n_rows), 2)
    amount[rng.random(n_rows) < 0.15] *= -1  # returns
    amount[rng.random(n_rows) < 0.03] = 0.0
    return transactions_frame(
        [f"c{i:03d}" for i in rng.integers(0, n_customers, n_rows)], ts, amount,
        quantity=rng.integers(1, 5, n_rows).astype(float) * np.sign(amount + 0.5),
        order_id=[f"o{i}" for i in rng.integers(0, n_rows // 2, n_rows)],
        cost=np.round(amount * 0.6, 2),
    )  # fmt: skip


@pytest.mark.parametrize(("seed", "decimal_sums", "trend_purchases"), [(1, False, 3), (2, False, 2), (2, True, 4)])
def test_every_feature_equals_an_independent_pandas_computation(con, seed, decimal_sums, trend_purchases):
    tx = random_transactions(seed)
    spec = spec_for(tx, horizon_days=91, windows_days=(7, 30, 120), trend_days=60, decimal_sums=decimal_sums,
                    trend_purchases=trend_purchases)  # fmt: skip
    ours = features_of(con, tx, "2022-01-15", spec)
    ref = reference_features(tx, "2022-01-15", spec)
    assert list(ours["customer_id"]) == list(ref["customer_id"])
    assert ours["returns_count"].sum() > 0 and (ours["frequency"] > 1).sum() > 10
    for column in ref.columns.drop("customer_id"):
        np.testing.assert_allclose(ours[column].to_numpy(float), ref[column].to_numpy(float), rtol=1e-9, atol=1e-9, err_msg=column)


# --------------------------------------------------------------------------- no leakage


def test_cdnow_rows_after_the_cutoff_change_no_feature(con, master):
    cutoff = "1997-09-30"
    early = master[master["timestamp"] < pd.Timestamp(cutoff) + DAY]
    pd.testing.assert_frame_equal(features_of(con, master, cutoff), features_of(con, early, cutoff))


customer_ids = st.sampled_from(["a", "b", "c", "d", "e"])
amounts = st.one_of(st.floats(-500, 500, allow_nan=False).map(lambda x: round(x, 2)), st.just(0.0))


@st.composite
def rows_between(draw, first_day: int, last_day: int, max_rows: int = 12):
    """Rows whose day offset (from 2020-01-01) is within [first_day, last_day]."""
    n = draw(st.integers(0, max_rows))
    days = draw(st.lists(st.integers(first_day, last_day), min_size=n, max_size=n))
    minutes = draw(st.lists(st.integers(0, 24 * 60 - 1), min_size=n, max_size=n))
    base = pd.Timestamp("2020-01-01")
    return transactions_frame(
        draw(st.lists(customer_ids, min_size=n, max_size=n)),
        [base + pd.Timedelta(days=d, minutes=m) for d, m in zip(days, minutes)],
        draw(st.lists(amounts, min_size=n, max_size=n)),
        quantity=draw(st.lists(st.integers(-3, 5).map(float), min_size=n, max_size=n)),
        order_id=[f"o{i}" for i in draw(st.lists(st.integers(0, 6), min_size=n, max_size=n))],
        cost=draw(st.lists(st.floats(-100, 100, allow_nan=False).map(lambda x: round(x, 2)), min_size=n, max_size=n)),
    )  # fmt: skip


HYPOTHESIS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
CUTOFF_OFFSET = 200  # cutoff = 2020-01-01 + 200 days
CUTOFF = (pd.Timestamp("2020-01-01") + pd.Timedelta(days=CUTOFF_OFFSET)).date()
LEAK_SPEC = FeatureSpec(horizon_days=30, days_per_unit=7.0, windows_days=(7, 60), trend_days=45, trend_purchases=3, has_order_id=True,
                        has_quantity=True, has_cost=True)


@pytest.fixture(scope="module")
def compiled():
    """The feature and label expressions compiled once over named tables: each example then
    only runs the query (compiling an expression takes longer than running it on tiny data)."""
    tx = ibis.table(ibis.memtable(transactions_frame(["a"], ["2020-01-01"], [1.0])).schema(), name="tx")
    customers = ibis.table({"customer_id": "string"}, name="customers")
    # The stage's route: one day table of ALL rows, filtered by day for the cutoff and windows.
    days = customer_days(tx, LEAK_SPEC)
    return {
        "features": ibis.to_sql(features_from_days(days, CUTOFF, LEAK_SPEC), dialect="duckdb"),
        "labels": ibis.to_sql(labels_from_days(days, customers, CUTOFF, 30), dialect="duckdb"),
        "direct_features": ibis.to_sql(customer_features(tx, CUTOFF, LEAK_SPEC), dialect="duckdb"),
        "direct_labels": ibis.to_sql(window_labels(tx, customers, CUTOFF, 30), dialect="duckdb"),
    }


def run_compiled(con, sql: str, **tables: pd.DataFrame) -> pd.DataFrame:
    raw = con.con  # the DuckDB connection under the ibis backend
    for name, frame in tables.items():
        raw.register(name, frame)
    try:
        return raw.execute(sql).df()
    finally:
        for name in tables:
            raw.unregister(name)


@HYPOTHESIS
@given(history=rows_between(0, CUTOFF_OFFSET, 30), future=rows_between(CUTOFF_OFFSET + 1, CUTOFF_OFFSET + 400))
def test_appending_rows_after_the_cutoff_changes_no_feature(con, compiled, history, future):
    before = run_compiled(con, compiled["features"], tx=history)
    after = run_compiled(con, compiled["features"], tx=pd.concat([history, future], ignore_index=True))
    assert len(before) == history.loc[history["amount"] >= 0, "customer_id"].nunique()
    pd.testing.assert_frame_equal(before, after)
    # ... and equal the features computed from the rows on or before the cutoff only.
    pd.testing.assert_frame_equal(run_compiled(con, compiled["direct_features"], tx=history), before)


@HYPOTHESIS
@given(
    history=rows_between(0, CUTOFF_OFFSET + 30, 30),
    outside=st.one_of(rows_between(0, CUTOFF_OFFSET), rows_between(CUTOFF_OFFSET + 31, CUTOFF_OFFSET + 400)),
)
def test_labels_read_only_their_window(con, compiled, history, outside):
    customers = pd.DataFrame({"customer_id": pd.Series(["a", "b", "c", "z"], dtype="str")})
    before = run_compiled(con, compiled["labels"], tx=history, customers=customers)
    after = run_compiled(con, compiled["labels"], tx=pd.concat([history, outside], ignore_index=True), customers=customers)
    assert before["customer_id"].tolist() == ["a", "b", "c", "z"]
    pd.testing.assert_frame_equal(before, after)
    direct = run_compiled(con, compiled["direct_labels"], tx=pd.concat([history, outside], ignore_index=True), customers=customers)
    pd.testing.assert_frame_equal(direct, after)


# --------------------------------------------------------------------------- labels


def test_labels_count_the_window_after_the_cutoff_only(con, small_tx):
    # Window (2020-01-11, 2020-02-10]: a has a return-only day 02-01 (not a purchase) and nothing
    # else; the purchase on 01-11 is on the cutoff day, outside the window.
    labels = labels_of(con, small_tx, pd.Series(["a", "c"]), "2020-01-11", 30).set_index("customer_id")
    assert labels.loc["a", "purchased"] == 0 and labels.loc["a", "n_purchase_days"] == 0
    assert labels.loc["a", "spend"] == -4.0
    # Window (2020-02-29, 2020-03-31]: a buys on 03-01 (zero amount) and 03-31, c on 03-31.
    labels = labels_of(con, small_tx, pd.Series(["c", "a"]), "2020-02-29", 31).set_index("customer_id")
    assert list(labels.index) == ["a", "c"]
    assert labels.loc["a"].tolist()[1:] == [1, 2, 7.5] and labels.loc["c"].tolist()[1:] == [1, 1, 12.0]


def test_cdnow_labels_match_a_direct_count(con, master):
    cutoff, horizon = pd.Timestamp("1997-12-31"), 91
    feats = features_of(con, master, cutoff)
    labels = labels_of(con, master, feats["customer_id"], cutoff, horizon)
    day = master["timestamp"].dt.normalize()
    window = master[(day > cutoff) & (day <= cutoff + horizon * DAY)]
    buyers = window.assign(day=day).groupby("customer_id")["day"].nunique()
    expected = buyers.reindex(feats["customer_id"], fill_value=0).to_numpy()
    np.testing.assert_array_equal(labels["n_purchase_days"], expected)
    np.testing.assert_array_equal(labels["purchased"], (expected > 0).astype("int8"))
    assert labels["customer_id"].tolist() == feats["customer_id"].tolist()


# --------------------------------------------------------------------------- sufficient statistics


def test_compressed_counts_reproduce_the_customer_base(con, master):
    feats = features_of(con, master, "1997-09-30")
    table = ibis.memtable(feats)
    rfm = con.to_pandas(rfm_counts(table))
    spend = con.to_pandas(spend_counts(table))
    assert rfm["count"].sum() == len(feats) == 23_570
    assert len(rfm) < len(feats) / 2  # the point: fewer rows than customers (far fewer on big data)
    assert spend["count"].sum() == len(feats)
    assert spend.loc[spend["frequency"] == 0, "count"].sum() == (feats["frequency"] == 0).sum()
    assert len(spend[spend["frequency"] == 0]) == 1  # one-time buyers: monetary_value 0, one row
    repeat = feats[(feats["frequency"] > 0) & (feats["monetary_value"] > 0)]
    expanded = rfm.loc[rfm.index.repeat(rfm["count"]), ["frequency", "recency", "T"]].reset_index(drop=True)
    expected = feats[["frequency", "recency", "T"]].sort_values(["frequency", "recency", "T"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(expanded, expected)
    spent = spend[(spend["frequency"] > 0) & (spend["monetary_value"] > 0)]
    assert spent["count"].sum() == len(repeat)
    assert np.isclose((spent["monetary_value"] * spent["count"]).sum(), repeat["monetary_value"].sum(), rtol=1e-12)


# --------------------------------------------------------------------------- contracts and portability


def test_schema_rejects_wrong_dtypes_unsorted_rows_and_extra_columns(con, small_tx):
    good = features_of(con, small_tx, "2020-03-31")
    FEATURES_SCHEMA.validate(good)
    for bad in (
        good.astype({"frequency": "float64"}),
        good.astype({"cutoff": "datetime64[ns]"}),
        good.astype({"customer_id": object}),
        good.iloc[::-1],
        good.assign(extra=1),
        good[list(good.columns[::-1])],
    ):
        with pytest.raises((pandera.errors.SchemaError, pandera.errors.SchemaErrors)):
            FEATURES_SCHEMA.validate(bad)


def test_transaction_schema_problems_name_the_column():
    ok = ibis.schema({"customer_id": "string", "timestamp": "timestamp", "amount": "float64"})
    assert transaction_problems(ok) == []
    assert transaction_problems(ibis.schema({"customer_id": "string", "timestamp": "timestamp"})) == ["missing column 'amount'"]
    bad = ibis.schema({"customer_id": "int64", "timestamp": "timestamp", "amount": "float64"})
    assert "'customer_id'" in transaction_problems(bad)[0]


class _SparkOptions(ibis.config.Config):
    treat_nan_as_null: bool = False


def test_expressions_compile_for_spark(small_tx, monkeypatch):
    # The PySpark backend registers these options on import; pyspark itself is an optional extra.
    monkeypatch.setattr(ibis.options, "pyspark", _SparkOptions())
    tx = ibis.table(ibis.schema({c: str(t) for c, t in ibis.memtable(small_tx).schema().items()}), name="transactions")
    for decimal_sums in (False, True):
        spec = FeatureSpec(**SETTINGS, has_order_id=True, has_quantity=True, has_cost=True, decimal_sums=decimal_sums)
        feats = customer_features(tx, dt.date(2020, 3, 31), spec)
        labels = window_labels(tx, feats, dt.date(2020, 3, 31), 91, decimal_sums)
        for expr in (feats, labels, rfm_counts(feats), spend_counts(feats)):
            sql = ibis.to_sql(expr, dialect="pyspark")
            assert "SELECT" in sql and ("DECIMAL(18, 4)" in sql) == decimal_sums
        assert "LAG(" in ibis.to_sql(feats, dialect="pyspark").upper()  # the previous purchase day


def test_float_unit_sums_are_exact_below_the_limit_and_decimal_takes_over_above(con):
    # Whole numbers below 2**53 add exactly in float64 in any order; cents do not.
    units = np.array([1999, 7, 123456789, 5, 31, 88888]) * 1.0
    assert len({float(np.sum(np.random.default_rng(i).permutation(units))) for i in range(20)}) == 1
    tx = transactions_frame(["a", "b"], ["2024-01-01", "2024-01-02"], [0.1, 2.0], quantity=[1.0, np.nan])
    summary = con.to_pandas(transactions_summary(ibis.memtable(tx))).iloc[0].to_dict()
    assert float(summary["abs_total_amount"]) == 2.1 and float(summary["abs_total_quantity"]) == 1.0
    assert not needs_decimal_sums(summary)
    assert needs_decimal_sums(summary | {"abs_total_cost": FLOAT_EXACT_LIMIT})


def test_the_transactions_summary_gives_the_problem_and_the_column_flags(con):
    tx = transactions_frame(["a", "b"], ["2024-01-01", "2024-01-02"], [1.0, 2.0], quantity=[1.0, np.nan])
    summary = con.to_pandas(transactions_summary(ibis.memtable(tx))).iloc[0].to_dict()
    assert transactions_problem(summary) is None
    assert column_flags(summary) == {"has_order_id": False, "has_quantity": True, "has_cost": False, "decimal_sums": False}
    assert column_flags(summary | {"abs_total_amount": FLOAT_EXACT_LIMIT})["decimal_sums"] is True
    assert transactions_problem(summary | {"n_rows": 0}).startswith("has no rows; check data.path")
    assert transactions_problem(summary | {"null_timestamp": 3}) == (
        "3 rows with a missing or non-finite 'timestamp'; re-run `cvp ingest`")
    assert transactions_problem(summary | {"max_abs_cost": 2e9}) == (
        "column 'cost' has |value| 2e+09 >= 1e+09 per row; check the unit of the source column")


def test_cutoffs_step_back_one_horizon_per_offset():
    assert cutoff_dates(dt.date(1998, 6, 30), 91, (0, 1, 2)) == {
        0: dt.date(1998, 6, 30), 1: dt.date(1998, 3, 31), 2: dt.date(1997, 12, 30)}


def test_chunk_validator_checks_each_row_group_and_the_order_across_them():
    frame = to_contract(pd.DataFrame({"customer_id": ["a", "b", "c"], "cutoff": pd.Timestamp("2024-01-01"),
                                      "purchased": [1, 0, 1], "n_purchase_days": [2, 0, 1], "spend": [3.0, 0.0, 1.0]}),
                        LABELS_SCHEMA)
    tables = [pa.Table.from_pandas(frame.iloc[i:i + 1], preserve_index=False) for i in range(3)]
    check = chunk_validator(LABELS_SCHEMA)
    for table in tables:
        check(table)  # a, b, c: increasing across row groups
    again = chunk_validator(LABELS_SCHEMA)
    again(tables[1])
    with pytest.raises(RuntimeError, match="not sorted by customer_id across row groups"):
        again(tables[0])
    with pytest.raises(pandera.errors.SchemaError):
        chunk_validator(LABELS_SCHEMA)(pa.Table.from_pandas(frame.assign(purchased=0), preserve_index=False))
