"""One MLflow store per project (also from DVC temp workspaces); stages nest under one parent run."""

from pathlib import Path

import mlflow
import yaml

from pipelines import tracking
from pipelines.catalog import Catalog
from pipelines.config import parse_params

ROOT = Path(__file__).resolve().parents[1]


def _params(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["mlflow"]["tracking_dir"] = str(tmp_path / "store")
    return parse_params(raw)


def test_project_root_resolves_dvc_temp_workspaces_to_the_project(tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    temp_ws = tmp_path / ".dvc" / "tmp" / "exps" / "run" / "abc123"
    temp_ws.mkdir(parents=True)
    (temp_ws / "dvc.yaml").write_text("stages: {}\n")
    assert tracking.project_root(temp_ws) == tmp_path
    nested = tmp_path / "pipelines"
    nested.mkdir()
    assert tracking.project_root(nested) == tmp_path


def test_stage_runs_share_one_parent_and_log_to_the_configured_store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(tracking.PARENT_ENV, raising=False)
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    params, paths = _params(tmp_path), Catalog(tmp_path, tmp_path / "params.yaml")
    with tracking.stage_run("ingest", params, paths, section={"a": {"b": 1}}) as first:
        tracking.log_metrics({"rows": {"in": 10, "bad": float("nan")}})
    with tracking.stage_run("features", params, paths) as second:
        pass
    assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    client = mlflow.MlflowClient()
    one, two = client.get_run(first.info.run_id), client.get_run(second.info.run_id)
    assert one.data.tags["mlflow.parentRunId"] == two.data.tags["mlflow.parentRunId"]
    assert one.data.params == {"a.b": "1"}
    assert one.data.metrics == {"rows.in": 10.0}
    assert one.data.tags["cvp.stage"] == "ingest"
    assert (tmp_path / "store" / "mlflow.db").exists()


def test_a_second_project_in_the_same_process_gets_its_own_store(tmp_path, monkeypatch):
    """MLflow exports the URIs it is given; the next configure() must not reuse them."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    first, second = tmp_path / "one", tmp_path / "two"
    for root in (first, second):
        raw = yaml.safe_load((ROOT / "params.yaml").read_text())
        raw["mlflow"]["tracking_dir"] = str(root / "store")
        tracking.configure(parse_params(raw))
        expected = f"sqlite:///{root / 'store' / 'mlflow.db'}"
        assert mlflow.get_tracking_uri() == expected
        assert mlflow.get_registry_uri() == expected
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'user.db'}")
    tracking.configure(parse_params(yaml.safe_load((ROOT / "params.yaml").read_text())))
    assert mlflow.get_tracking_uri() == mlflow.get_registry_uri() == f"sqlite:///{tmp_path / 'user.db'}"
