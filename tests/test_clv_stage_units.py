"""Pieces of the `clv` stage on hand-made inputs: model selection, input checks, the t_2 skip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pytest
import yaml

from features.errors import DataError
from models import clv_eval
from models.clv import FitError
from pipelines import clv as stage
from pipelines import io, paths
from pipelines.config import ClvParams, parse_params

REPO = Path(__file__).resolve().parents[1]
CUTOFF = pd.Timestamp("2021-03-31")


def tiny_features(ids=("a", "b", "c", "d"), frequency=(0, 1, 2, 3)) -> pd.DataFrame:
    n = len(ids)
    frequency = np.asarray(frequency, dtype="int64")
    return pd.DataFrame(
        {
            "customer_id": pd.Series(ids, dtype="str"),
            "cutoff": pd.Series([CUTOFF] * n, dtype="datetime64[us]"),
            "first_purchase": pd.Series([CUTOFF - pd.Timedelta(days=70)] * n, dtype="datetime64[us]"),
            "frequency": frequency,
            "recency": frequency.astype(float),
            "T": np.full(n, 10.0),
            "monetary_value": np.where(frequency > 0, 20.0, 0.0),
            "avg_spend": np.full(n, 20.0),
            "ipi_mean": np.where(frequency > 0, 7.0, np.nan),
        }
    )


def tiny_labels(features: pd.DataFrame, purchases=(0, 1, 2, 3)) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": features["customer_id"],
            "cutoff": features["cutoff"],
            "purchased": (np.asarray(purchases) > 0).astype("int8"),
            "n_purchase_days": np.asarray(purchases, dtype="int64"),
            "spend": np.asarray(purchases, dtype=float) * 10,
        }
    )


class FixedModel:
    """A purchase model stand-in whose predictions are given (or whose fit fails)."""

    def __init__(self, predicted=None, fails=False):
        self.predicted, self.fails = predicted, fails

    def fit(self, frequency, recency, T, weights=None):
        if self.fails:
            raise FitError("cannot fit: optimiser diverged")
        return self

    def expected_purchases(self, t, frequency, recency, T):
        return np.asarray(self.predicted, dtype=float)


def test_auto_selection_picks_the_lower_holdout_error_and_skips_failures():
    features = tiny_features()
    labels = tiny_labels(features, purchases=(0, 1, 2, 3))
    injected = {
        "bgnbd": FixedModel([1, 1, 1, 1]),  # MAE (1 + 0 + 1 + 2) / 4 = 1.0
        "paretonbd": FixedModel([0.5, 1.5, 2.5, 3.5]),  # MAE 0.5
        "mbgnbd": FixedModel(fails=True),
    }
    chosen, report = stage.choose_purchase_model(ClvParams(model="auto"), 0, features, labels, 13.0, make_model=injected.get)
    assert chosen.name == "paretonbd" and chosen.model is injected["paretonbd"]
    assert report["method"] == "auto" and report["chosen"] == "paretonbd"
    assert report["candidates"]["bgnbd"]["mae"] == pytest.approx(1.0)
    assert report["candidates"]["paretonbd"]["mae"] == pytest.approx(0.5)
    assert report["candidates"]["mbgnbd"] == {"status": "skipped", "reason": "cannot fit: optimiser diverged"}
    table = clv_eval.selection_table(report)
    assert table["candidate"].tolist() == ["bgnbd", "paretonbd", "mbgnbd"]


def test_configured_model_is_the_only_candidate():
    features = tiny_features()
    labels = tiny_labels(features)
    injected = {"mbgnbd": FixedModel([9, 9, 9, 9]), "bgnbd": FixedModel([0, 1, 2, 3])}
    chosen, report = stage.choose_purchase_model(ClvParams(model="mbgnbd"), 0, features, labels, 13.0, make_model=injected.get)
    assert chosen.name == "mbgnbd" and report["method"] == "configured"
    assert list(report["candidates"]) == ["mbgnbd"]


def test_no_fittable_candidate_is_a_data_error():
    features = tiny_features()
    with pytest.raises(DataError, match=r"features_t1.parquet: no purchase model could be fitted .*clv.penalizer"):
        stage.choose_purchase_model(ClvParams(min_customers=1), 0, features, tiny_labels(features), 13.0,
                                    make_model=lambda n: FixedModel(fails=True))


def test_no_fittable_candidate_on_a_tiny_base_names_the_size():
    features = tiny_features()
    with pytest.raises(DataError) as raised:
        stage.choose_purchase_model(ClvParams(min_customers=len(features) + 1), 0, features, tiny_labels(features), 13.0,
                                    make_model=lambda n: FixedModel(fails=True))
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"data/features/features_t1.parquet: {len(features)} customers at t_1 are too few to fit")
    assert f"clv.min_customers={len(features) + 1}" in message and "data.horizon_days" in message


@pytest.fixture
def params_with(tmp_path):
    def make(**clv):
        raw = yaml.safe_load((REPO / "params.yaml").read_text())
        raw["clv"].update(clv)
        return parse_params(raw)

    return make


def test_t2_with_too_few_customers_gives_an_empty_file_with_the_schema(params_with):
    features = tiny_features()
    pred, reason = stage.predict_t2(features, stage.patterns_of(features), "bgnbd", params_with(min_customers=10))
    assert pred.empty and reason and "clv.min_customers=10" in reason
    assert {c: str(t) for c, t in pred.dtypes.items()} == stage.PREDICTION_DTYPES
    stage.PREDICTIONS_SCHEMA.validate(pred)


def test_t2_whose_fit_fails_is_skipped(params_with):
    # nobody has a repeat purchase: the purchase model is not identifiable
    features = tiny_features(frequency=(0, 0, 0, 0))
    pred, reason = stage.predict_t2(features, stage.patterns_of(features), "bgnbd", params_with(min_customers=1))
    assert pred.empty and "repeat purchase" in reason


def test_predictions_schema_rejects_unsorted_rows_and_bad_probabilities():
    good = pd.DataFrame(
        {
            "customer_id": ["a", "b"], "cutoff": pd.Series([CUTOFF] * 2, dtype="datetime64[us]"), "model": "bgnbd",
            "p_alive": [0.5, 0.9], "expected_purchases": [0.1, 2.0], "p_no_purchase": [0.9, 0.2],
            "expected_avg_spend": [30.0, 40.0], "clv": [1.0, 20.0],
        }
    ).astype(stage.PREDICTION_DTYPES)  # fmt: skip
    stage.PREDICTIONS_SCHEMA.validate(good)
    with pytest.raises(pa.errors.SchemaError, match="sorted"):
        stage.PREDICTIONS_SCHEMA.validate(good.iloc[::-1].reset_index(drop=True))
    with pytest.raises(pa.errors.SchemaError, match="less_than_or_equal_to"):
        stage.PREDICTIONS_SCHEMA.validate(good.assign(p_alive=[0.5, 1.2]))


def _write_tiny_project(root: Path, labels: pd.DataFrame | None = None) -> None:
    features = tiny_features()
    for k in paths.CUTOFF_OFFSETS:
        io.write_parquet(features, root / paths.features_at(k))
    io.write_parquet(tiny_labels(features) if labels is None else labels, root / paths.labels_at(1))
    tx = pd.DataFrame({"customer_id": ["a"], "timestamp": pd.Series([CUTOFF], dtype="datetime64[us]"), "amount": [1.0]})
    io.write_parquet(tx, root / paths.TRANSACTIONS)


def test_inputs_load_when_they_follow_the_contract(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write_tiny_project(tmp_path)
    inputs = stage.load_inputs()
    assert len(inputs.features[2]) == 4 and list(inputs.transactions.columns) == ["customer_id", "timestamp", "amount"]


def test_missing_input_names_the_file_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"data/features/features_t0.parquet: not found; run `cvp features`"):
        stage.load_inputs()


def test_labels_of_other_customers_are_rejected(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    other = tiny_labels(tiny_features(ids=("a", "b", "c", "e")))
    _write_tiny_project(tmp_path, labels=other)
    with pytest.raises(DataError, match=r"labels_t1.parquet: customers differ from .*features_t1.parquet"):
        stage.load_inputs()


def test_input_breaking_the_contract_is_a_one_line_data_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write_tiny_project(tmp_path)
    io.write_parquet(tiny_features(frequency=(0, -1, 2, 3)), tmp_path / paths.features_at(1))
    with pytest.raises(DataError, match=r"features_t1.parquet: does not match the features .* contract") as err:
        stage.load_inputs()
    assert "\n" not in str(err.value)


def test_a_large_base_compares_candidates_on_a_sample_then_fits_the_winner_on_everyone():
    from tests.test_clv_stage import HORIZON, cdnow_sample_transactions, features_and_labels

    features, labels = features_and_labels(cdnow_sample_transactions(), pd.Timestamp("1998-03-31"))
    cfg = ClvParams(model="auto", selection_max_customers=800)
    chosen, report = stage.choose_purchase_model(cfg, 0, features, labels, HORIZON / 7)
    assert report["sample_customers"] == 800 and len(features) == 2357
    # The winner is fitted on every customer: the same model as a fit on all of them.
    everyone = stage.fit_purchase(stage.new_purchase_model(chosen.name, cfg, 0), stage.patterns_of(features))
    assert chosen.model.n_customers_ == 2357 and chosen.model.params_ == everyone.params_
    # Below the limit nothing is sampled.
    _, full = stage.choose_purchase_model(ClvParams(model="auto"), 0, features, labels, HORIZON / 7)
    assert "sample_customers" not in full


def test_a_failed_fit_on_a_small_base_names_the_size_at_either_cutoff():
    cfg = ClvParams()
    at_t0 = str(stage.too_few_customers(0, 9, cfg, "Pareto/NBD fit failed on 9 customers"))
    assert at_t0 == ("data/features/features_t0.parquet: 9 customers at t_0 are too few to fit a purchase model (fits are "
                     "reliable from clv.min_customers=100); use a larger customer base or a shorter data.horizon_days "
                     "(details: Pareto/NBD fit failed on 9 customers)")
    at_t1 = str(stage.too_few_customers(1, 8, cfg, "x"))
    assert "8 customers at t_1" in at_t1 and "which moves t_1 later" in at_t1
