"""`cvp score`: the registered CLV pyfunc applied to features_t0, in this process (pandas) and with
mlflow.pyfunc.spark_udf on Spark local mode, equals the clv stage's predictions for the same
customers. Runs in a temporary project with its own MLflow store.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from features.errors import DataError
from models.clv import PurchaseModel, SpendModel
from pipelines import clv, engines, io, paths, score, tracking
from pipelines.config import FeaturesParams, load_params
from tests.test_features import cdnow_sample
from tests.test_spark_features import build_features, requires_java, requires_pyspark

ROOT = Path(__file__).resolve().parents[1]
# Published CDNOW estimates (weeks): BG/NBD (Fader, Hardie & Lee 2005), Gamma-Gamma (note 025).
BGNBD = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
GAMMA_GAMMA = {"p": 6.25, "q": 3.74, "v": 15.44}


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project with features_t0 of the CDNOW sample and a registered CLV pyfunc (version 1)
    logged by the clv stage's own code; returns the clv stage's predictions for t0."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    params = load_params(ROOT / "params.yaml")
    tx, _ = cdnow_sample()
    with engines.connect(FeaturesParams()) as con:
        build_features(con, tmp_path, tx, params, offsets=(0,))
    monkeypatch.chdir(tmp_path)
    features = pd.read_parquet(paths.features_at(0))
    purchase = PurchaseModel.from_params("bgnbd", BGNBD)
    spend = SpendModel.from_params(GAMMA_GAMMA)
    for model, target in ((purchase, clv.PURCHASE_PICKLE), (spend, clv.SPEND_PICKLE)):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(pickle.dumps(model))
    expected = clv.predict_at(purchase, spend, features, params)
    tracking.configure(params)
    with mlflow.start_run():
        clv.write_registration(clv.log_pyfunc_model(features, expected, params), params)
    return params, expected


def test_the_registration_file_version_is_used_without_a_champion_alias(project):
    params, _ = project
    assert io.read_json(clv.REGISTRATION)["version"] == "1"
    assert score.model_uri(params.clv.model_name) == "models:/cvp-clv/1"
    MlflowClient().set_registered_model_alias("cvp-clv", "champion", "1")
    assert score.model_uri(params.clv.model_name) == "models:/cvp-clv@champion"


def test_without_a_registered_model_scoring_stops_with_one_line(project):
    params, _ = project
    clv.REGISTRATION.unlink()
    with pytest.raises(DataError, match=r"no 'cvp-clv@champion' alias and no .*registration\.json; run `cvp clv`"):
        score.score(params, "pandas", Path("scores.parquet"), "clv")


def test_pandas_scores_equal_the_clv_stage_predictions(project):
    params, expected = project
    assert score.score(params, "pandas", Path("out/scores.parquet"), "clv") == len(expected) == 2357
    got = pd.read_parquet("out/scores.parquet")
    pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=0, atol=1e-12)


@pytest.mark.slow
@requires_pyspark
@requires_java
def test_spark_udf_scores_equal_the_clv_stage_predictions(project):
    params, expected = project
    MlflowClient().set_registered_model_alias("cvp-clv", "champion", "1")
    assert score.score(params, "pyspark", Path("scores.parquet"), "clv") == len(expected)
    got = pd.read_parquet("scores.parquet")
    pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=0, atol=1e-12)
    assert got["clv"].gt(0).all() and got["model"].eq("bgnbd").all()
