"""The synthetic transaction generator (features/synthetic.py, pipelines/generate.py):
determinism, chunk-size invariance, size, BG/NBD and Gamma-Gamma behaviour against their closed
forms, seasonality, returns, and noise rows that ingest quarantines with the intended reason."""

from __future__ import annotations

import dataclasses
import datetime as dt

import ibis
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from features.ingest import REASONS, IngestRules, classify
from features.synthetic import (
    COLUMNS,
    NOISE_KINDS,
    OUTPUT_COLUMNS,
    TIMESTAMP_FORMAT,
    SeasonalClock,
    SyntheticParams,
    calibrate_alpha,
    expected_repeat_purchases,
    expected_rows_per_customer,
    generate_transactions,
    iter_transaction_chunks,
    plan,
    prob_no_repeat,
)
from pipelines import files
from pipelines.config import DataParams
from pipelines.catalog import Catalog
from pipelines.generate import write_synthetic
from pipelines.ingest import ingest
from tests import inprocess


@pytest.fixture(scope="module")
def population() -> tuple[SyntheticParams, pd.DataFrame]:
    """~300k clean rows (no noise) with the truth columns: about 49k customers."""
    params = SyntheticParams(noise_rate=0.0)
    return params, generate_transactions(300_000, seed=11, params=params, include_truth=True)


@pytest.fixture(scope="module")
def orders(population) -> pd.DataFrame:
    """One row per order (returns excluded): customer, time, order value."""
    _, frame = population
    buys = frame[~frame["is_return"]].assign(value=lambda d: d["amount"].astype(float))
    return buys.groupby(["customer_id", "order_id"], sort=False).agg(ts=("timestamp", "first"), value=("value", "sum"))


def test_same_seed_same_rows_other_seed_other_rows():
    first = generate_transactions(20_000, seed=3)
    assert first.equals(generate_transactions(20_000, seed=3))
    assert not first.equals(generate_transactions(20_000, seed=4))
    assert list(first.columns) == list(OUTPUT_COLUMNS)


def test_rows_do_not_depend_on_the_chunk_size():
    params = SyntheticParams(customers_per_block=700, noise_rate=0.01)  # many blocks
    chunks = list(iter_transaction_chunks(30_000, seed=5, chunk_rows=997, params=params, include_truth=True))
    assert all(len(c) == 997 for c in chunks[:-1])
    small = pd.concat(chunks, ignore_index=True)
    large = generate_transactions(30_000, seed=5, chunk_rows=1 << 20, params=params, include_truth=True)
    pd.testing.assert_frame_equal(small, large)


@pytest.mark.parametrize(("n_rows", "tolerance"), [(10_000, 0.10), (100_000, 0.03)])
def test_row_count_is_close_to_the_request(n_rows, tolerance):
    # relative sd of the row count is ~2% at 10^4 rows and ~0.7% at 10^5 (8 seeds): 4-5 sd margins
    rows = len(generate_transactions(n_rows, seed=1))
    assert abs(rows / n_rows - 1) < tolerance


def test_given_customers_are_all_present_and_alpha_is_recalibrated():
    frame = generate_transactions(50_000, seed=2, n_customers=5_000)
    ids = frame.loc[frame["customer_id"].str.strip() != "", "customer_id"]
    assert ids.nunique() == 5_000 and ids.min() == "000000" and ids.max() == "004999"
    assert abs(len(frame) / 50_000 - 1) < 0.05
    calibrated = plan(50_000, 2, n_customers=5_000).params
    assert expected_rows_per_customer(calibrated) == pytest.approx(10.0, rel=1e-6)
    assert calibrated.alpha < SyntheticParams().alpha  # more rows per customer -> higher purchase rates


def test_too_few_rows_per_customer_is_refused():
    with pytest.raises(ValueError, match="too few"):
        calibrate_alpha(SyntheticParams(), rows_per_customer=1.0)


def test_expected_repeat_purchases_matches_monte_carlo_over_the_mixing_distributions():
    """E[X(t)] closed form vs averaging the individual-level E[X(t) | lambda, p] = (1 - exp(-lambda p t)) / p
    (Fader, Hardie & Lee 2005, eq. 8) over 2M draws of lambda ~ Gamma(r, alpha), p ~ Beta(a, b)."""
    rng = np.random.default_rng(0)
    for r, alpha, a, b, t in [(0.6, 30.0, 0.8, 2.5, 200.0), (1.2, 10.0, 2.0, 3.0, 50.0)]:
        lam = rng.gamma(r, 1 / alpha, 2_000_000)
        p = rng.beta(a, b, lam.size)
        draws = -np.expm1(-lam * p * t) / p
        se = draws.std() / np.sqrt(draws.size)
        assert abs(expected_repeat_purchases(t, r, alpha, a, b) - draws.mean()) < 4 * se


def _repeats_and_age(params: SyntheticParams, orders: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per customer: repeat orders, and T = operational time from the first order to the end."""
    per = orders.groupby(level=0).agg(n=("ts", "size"), first=("ts", "min"))
    days = (pd.to_datetime(per["first"]) - pd.Timestamp(params.start)).dt.total_seconds().to_numpy() / 86400
    clock = SeasonalClock.from_params(params)
    return per["n"].to_numpy() - 1, clock.total - clock.to_operational(days)


def test_share_of_customers_without_repeat_purchase_is_bgnbd(population, orders):
    """P(X(T)=0) = (alpha / (alpha + T))^r per customer; the observed share must be within 4
    standard errors (sum of Bernoulli variances) of the mean predicted probability."""
    params, _ = population
    repeats, age = _repeats_and_age(params, orders)
    p0 = prob_no_repeat(age, params.r, params.alpha)
    se = np.sqrt(np.sum(p0 * (1 - p0))) / p0.size
    assert abs((repeats == 0).mean() - p0.mean()) < 4 * se
    assert 0.2 < p0.mean() < 0.4  # the test has power: far from 0 and 1


def test_mean_repeat_purchases_is_bgnbd(population, orders):
    """Mean repeat orders vs the BG/NBD E[X(T)] (Fader, Hardie & Lee 2005, eq. 9), 4 standard errors."""
    params, _ = population
    repeats, age = _repeats_and_age(params, orders)
    expected = expected_repeat_purchases(age, params.r, params.alpha, params.a, params.b)
    assert abs(repeats.mean() - expected.mean()) < 4 * repeats.std() / np.sqrt(repeats.size)
    # churn is real: without dropout (b -> infinity) customers would buy r/alpha*T times on average
    assert repeats.mean() < 0.6 * np.mean(params.r / params.alpha * age)


def test_order_values_follow_gamma_gamma(orders, population):
    params, _ = population
    values = orders["value"].to_numpy()
    assert values.mean() == pytest.approx(params.mean_order_value(), rel=0.02)
    # given nu, order values are Gamma(p, nu): the per-customer coefficient of variation is 1/sqrt(p)
    per = orders.groupby(level=0)["value"].agg(["mean", "std", "size"])
    per = per[per["size"] >= 8]
    assert (per["std"] / per["mean"]).median() == pytest.approx(1 / np.sqrt(params.spend_p), rel=0.1)


def test_weekly_and_daily_seasonality(orders, population):
    params, _ = population
    ts = pd.to_datetime(orders["ts"])
    by_day = ts.dt.day_of_week.value_counts(normalize=True).sort_index().to_numpy()
    weights = np.asarray(params.weekday_weights) / np.sum(params.weekday_weights)
    assert np.allclose(by_day, weights, atol=0.01)
    hours = ts.dt.hour
    assert (hours.between(1, 4)).mean() < 0.25 * (hours.between(11, 14)).mean()


def test_returns_reference_an_earlier_purchase(population):
    _, frame = population
    returns = frame[frame["is_return"]]
    assert 0.015 < len(returns) / len(frame) < 0.04
    assert (returns["amount"].astype(float) < 0).all() and (returns["quantity"].astype(int) < 0).all()
    buys = frame[~frame["is_return"]]
    first_buy = buys.groupby("order_id")["timestamp"].min()
    assert returns["order_id"].isin(first_buy.index).all()
    assert (returns["timestamp"].to_numpy() > first_buy.loc[returns["order_id"]].to_numpy()).all()
    line_amounts = set(zip(buys["order_id"], buys["amount"].astype(float)))
    assert all((o, -a) in line_amounts for o, a in zip(returns["order_id"], returns["amount"].astype(float)))


def test_noise_rows_are_quarantined_with_their_reason():
    frame = generate_transactions(40_000, seed=9, params=SyntheticParams(noise_rate=0.05), include_truth=True)
    assert set(frame["noise_kind"].dropna()) == set(NOISE_KINDS) == set(REASONS)
    raw = frame[list(OUTPUT_COLUMNS)].assign(source_row=np.arange(len(frame), dtype="int64"))
    rules = IngestRules(COLUMNS, timestamp_format=TIMESTAMP_FORMAT, valid_from=dt.date(1970, 1, 1),
                        valid_to=dt.date(2100, 1, 1), timezone=None, decimal=".")
    con = ibis.duckdb.connect()
    classified = con.to_pyarrow(classify(ibis.memtable(pa.Table.from_pandas(raw, preserve_index=False)), rules))
    reasons = classified.sort_by("source_row").column("reason").to_pylist()
    con.disconnect()
    truth = [None if k != k else k for k in frame["noise_kind"]]
    assert reasons == truth


def test_write_synthetic_parquet_and_csv_are_read_by_ingest(tmp_path):
    summary = write_synthetic(tmp_path / "data/raw/tx.parquet", 8_000, seed=4, noise_rate=0.02, chunk_rows=1_000)
    assert files.file_sha256(tmp_path / "data/raw/tx.parquet") == files.file_sha256(
        write_synthetic(tmp_path / "data/raw/again.parquet", 8_000, seed=4, noise_rate=0.02, chunk_rows=1_000).path)
    truth = generate_transactions(8_000, seed=4, params=dataclasses.replace(SyntheticParams(), noise_rate=0.02),
                                  include_truth=True)
    assert summary.rows == len(truth) and summary.customers == plan(8_000, 4, params=summary.params).n_customers
    meta = files.read_json(tmp_path / "data/raw/tx.parquet.json")
    assert meta["rows"] == summary.rows and meta["params"]["r"] == summary.params.r

    expected = truth["noise_kind"].value_counts().reindex(list(REASONS), fill_value=0).to_dict()
    for path in ("data/raw/tx.parquet", "data/raw/tx.csv.gz"):
        if path.endswith(".gz"):
            write_synthetic(tmp_path / path, 8_000, seed=4, noise_rate=0.02)
        metrics = ingest(DataParams.model_validate({**summary.data_params(), "path": path}), Catalog(tmp_path))
        assert metrics["rows_in"] == summary.rows
        assert metrics["rejected_by_reason"] == expected
        assert metrics["n_customers"] == summary.customers


def test_cli_generate(tmp_path):
    """`cvp generate`'s entry point, in this process (tests/inprocess.py)."""
    done = inprocess.cvp(tmp_path, "generate", "--rows", "3000", "--out", "tx.csv", "--seed", "8", "--noise-rate", "0")
    assert done.returncode == 0, done.stderr
    written = pd.read_csv(tmp_path / "tx.csv", dtype=str, keep_default_na=False)
    expected = generate_transactions(3000, seed=8, params=SyntheticParams(noise_rate=0.0))
    pd.testing.assert_frame_equal(written, expected.astype(object), check_dtype=False)
    bad = inprocess.cvp(tmp_path, "generate", "--rows", "10", "--out", "tx.json")
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "cvp: error: tx.json: unknown output type; use a .parquet, .csv or .csv.gz file name")


# sha256 of `cvp generate` output with the default population (no behaviours switched on),
# recorded before the behaviour options existed: the default world must stay byte-identical.
DEFAULT_WORLD_SHA256 = {
    ("--rows", "5000", "--seed", "7", "--out", "tx.csv"):
        "b802134c6037117a3240116d1a072d85df3980291e963199d8b4f53069240753",
    ("--rows", "5000", "--seed", "7", "--customers", "400", "--out", "tx.parquet"):
        "91a3943881a8152e693795387bad2f4e3d75c70d725994ac2ca075388e14439f",
}


@pytest.mark.parametrize("args", list(DEFAULT_WORLD_SHA256))
def test_default_world_is_byte_identical(tmp_path, args):
    done = inprocess.cvp(tmp_path, "generate", *args)
    assert done.returncode == 0, done.stderr
    assert files.file_sha256(tmp_path / args[-1]) == DEFAULT_WORLD_SHA256[args]
