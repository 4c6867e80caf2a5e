"""Pieces of the `clv` stage on hand-made files: reading the inputs through the catalog, the
predictions contract and the cast to it. (Model choice and the fits: tests/test_clv_select.py.)"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pandera.pandas as pa
import pytest

from features.errors import DataError
from models.clv import PREDICTION_DTYPES, as_predictions
from pipelines import clv as stage
from pipelines import contracts, files
from pipelines.catalog import CUTOFF_OFFSETS, Catalog
from pipelines.config import load_params
from tests.test_clv_select import CUTOFF, tiny_features, tiny_labels

REPO = Path(__file__).resolve().parents[1]
PARAMS = load_params(REPO / "params.yaml")


def _write_tiny_project(root: Path, labels: pd.DataFrame | None = None) -> Catalog:
    paths = Catalog(root)
    features = tiny_features()
    for k in CUTOFF_OFFSETS:
        files.write_parquet(features, paths.features_at(k))
    files.write_parquet(tiny_labels(features) if labels is None else labels, paths.labels_at(1))
    tx = pd.DataFrame({"customer_id": ["a"], "timestamp": pd.Series([CUTOFF], dtype="datetime64[us]"), "amount": [1.0]})
    files.write_parquet(tx, paths.TRANSACTIONS)
    return paths


def _sources(paths: Catalog) -> dict[int, str]:
    return {k: str(paths.features_at(k)) for k in CUTOFF_OFFSETS}


def test_inputs_load_when_they_follow_the_contract(tmp_path):
    paths = _write_tiny_project(tmp_path)
    features, labels, transactions = stage.read_inputs(PARAMS, paths, _sources(paths))
    assert len(features[2]) == 4 and list(features[0].columns) == list(stage.FEATURE_COLUMNS)
    assert list(labels.columns) == ["customer_id", "n_purchase_days", "spend"]
    assert list(transactions.columns) == ["customer_id", "timestamp", "amount"]


def test_missing_input_names_the_file_and_the_fix(tmp_path):
    paths = Catalog(tmp_path)
    with pytest.raises(DataError, match=r"data/features/features_t0.parquet: not found; run `cvp features`"):
        stage.read_inputs(PARAMS, paths, _sources(paths))


def test_labels_of_other_customers_are_rejected(tmp_path):
    other = tiny_labels(tiny_features(ids=("a", "b", "c", "e")))
    paths = _write_tiny_project(tmp_path, labels=other)
    with pytest.raises(DataError, match=r"labels_t1.parquet: customers differ from .*features_t1.parquet"):
        stage.read_inputs(PARAMS, paths, _sources(paths))


def test_input_breaking_the_contract_is_a_one_line_data_error(tmp_path):
    paths = _write_tiny_project(tmp_path)
    files.write_parquet(tiny_features(frequency=(0, -1, 2, 3)), paths.features_at(1))
    with pytest.raises(DataError, match=r"features_t1.parquet: does not match the features .* contract") as err:
        stage.read_inputs(PARAMS, paths, _sources(paths))
    assert "\n" not in str(err.value)


def test_predictions_schema_rejects_unsorted_rows_and_bad_probabilities():
    good = pd.DataFrame(
        {
            "customer_id": ["a", "b"], "cutoff": pd.Series([CUTOFF] * 2, dtype="datetime64[us]"), "model": "bgnbd",
            "p_alive": [0.5, 0.9], "expected_purchases": [0.1, 2.0], "p_no_purchase": [0.9, 0.2],
            "expected_avg_spend": [30.0, 40.0], "clv": [1.0, 20.0],
        }
    ).astype(contracts.CLV_PREDICTION_DTYPES)  # fmt: skip
    contracts.CLV_PREDICTIONS_SCHEMA.validate(good)
    with pytest.raises(pa.errors.SchemaError, match="sorted"):
        contracts.CLV_PREDICTIONS_SCHEMA.validate(good.iloc[::-1].reset_index(drop=True))
    with pytest.raises(pa.errors.SchemaError, match="less_than_or_equal_to"):
        contracts.CLV_PREDICTIONS_SCHEMA.validate(good.assign(p_alive=[0.5, 1.2]))


def test_predictions_are_cast_and_sorted_to_the_dtypes_the_contract_checks():
    """The files hold str ids and datetime64[us] cutoffs (not what pandera reports for the schema:
    string[pyarrow], datetime64[ns]); an empty frame has the same dtypes and passes the contract."""
    assert contracts.CLV_PREDICTION_DTYPES == PREDICTION_DTYPES
    assert PREDICTION_DTYPES["cutoff"] == "datetime64[us]" and PREDICTION_DTYPES["customer_id"] == "str"
    raw = pd.DataFrame(
        {
            "clv": [20.0, 1.0], "customer_id": ["b", "a"], "cutoff": pd.Series([CUTOFF] * 2, dtype="datetime64[ns]"),
            "model": "bgnbd", "p_alive": [0.9, 0.5], "expected_purchases": [2, 0], "p_no_purchase": [0.2, 0.9],
            "expected_avg_spend": [40.0, 30.0],
        }
    )  # fmt: skip
    out = as_predictions(raw)
    assert list(out.columns) == list(PREDICTION_DTYPES) and out["customer_id"].tolist() == ["a", "b"]
    assert {c: str(t) for c, t in out.dtypes.items()} == PREDICTION_DTYPES
    contracts.CLV_PREDICTIONS_SCHEMA.validate(out)
    empty = as_predictions()
    assert empty.empty and {c: str(t) for c, t in empty.dtypes.items()} == PREDICTION_DTYPES
    contracts.CLV_PREDICTIONS_SCHEMA.validate(empty)
