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
from models.clv import PurchaseModel, SpendModel, as_predictions
from pipelines import clv, domain, files, score, tracking
from pipelines import features as features_stage
from pipelines.catalog import Catalog
from pipelines.config import load_params
from tests.test_features import cdnow_sample
from tests.test_spark_features import requires_java, requires_pyspark

ROOT = Path(__file__).resolve().parents[1]
# Published CDNOW estimates (weeks): BG/NBD (Fader, Hardie & Lee 2005), Gamma-Gamma (note 025).
BGNBD = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
GAMMA_GAMMA = {"p": 6.25, "q": 3.74, "v": 15.44}


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project (its own catalog root) with the features of the CDNOW sample, built by the
    features stage, and a registered CLV pyfunc (version 1) logged by the clv stage's own code;
    returns the params, the catalog and the batch predictions at t_0 of the same models."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.delenv(tracking.PARENT_ENV, raising=False)
    params = load_params(ROOT / "params.yaml")
    paths = Catalog(tmp_path / "project", tmp_path / "project" / "params.yaml")
    tx, _ = cdnow_sample()
    files.write_parquet(tx.sort_values(["customer_id", "timestamp", "source_row"], ignore_index=True), paths.TRANSACTIONS)
    features_stage.run(params, paths)
    features = paths.read("features_t0", params)
    settings = domain.clv_settings(params)
    purchase, spend = PurchaseModel.from_params("bgnbd", BGNBD), SpendModel.from_params(GAMMA_GAMMA)
    model_files = {key: paths.path(f"clv_{key}") for key in ("purchase_model", "spend_model")}
    for key, model in (("purchase_model", purchase), ("spend_model", spend)):
        files.write_bytes(pickle.dumps(model), model_files[key])
    expected = as_predictions(settings.predict(purchase, spend, features))
    tracking.configure(params, paths.root)
    with mlflow.start_run():
        clv.log_model(settings, model_files, features, expected, params)
    return params, paths, expected


def test_the_registration_file_version_is_used_without_a_champion_alias(project):
    params, paths, _ = project
    assert tracking.read_registration(paths.CLV_MODEL_DIR, "clv")["version"] == 1
    assert score.model_uri(params.clv.model_name, paths.CLV_MODEL_DIR, "clv") == "models:/cvp-clv/1"
    MlflowClient().set_registered_model_alias("cvp-clv", "champion", "1")
    assert score.model_uri(params.clv.model_name, paths.CLV_MODEL_DIR, "clv") == "models:/cvp-clv@champion"


def test_without_a_registered_model_scoring_stops_with_one_line(project, tmp_path):
    params, paths, _ = project
    paths.registration_file(paths.CLV_MODEL_DIR).unlink()
    with pytest.raises(DataError, match=r"no 'cvp-clv@champion' alias and no .*registration\.json; run `cvp clv`"):
        score.score(params, paths, "pandas", tmp_path / "scores.parquet", "clv")
    assert not (tmp_path / "scores.parquet").exists()


def test_pandas_scores_equal_the_clv_stage_predictions(project, tmp_path):
    params, paths, expected = project
    out = tmp_path / "out" / "scores.parquet"
    assert score.score(params, paths, "pandas", out, "clv") == len(expected) == 2357
    pd.testing.assert_frame_equal(pd.read_parquet(out), expected, check_exact=False, rtol=0, atol=1e-12)


@pytest.mark.slow
@requires_pyspark
@requires_java
def test_spark_udf_scores_equal_the_clv_stage_predictions(project):
    params, paths, expected = project
    MlflowClient().set_registered_model_alias("cvp-clv", "champion", "1")
    out = paths.root / "scores.parquet"
    assert score.score(params, paths, "pyspark", out, "clv") == len(expected)
    got = pd.read_parquet(out)
    pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=0, atol=1e-12)
    assert got["clv"].gt(0).all() and got["model"].eq("bgnbd").all()
