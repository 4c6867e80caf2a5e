"""`cvp backtest` on the CDNOW 1/10 sample at two as_of dates, MLflow in a temporary store."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from features.errors import DataError
from pipelines import backtest, files
from pipelines.catalog import Catalog
from pipelines.config import ConfigError, Params, parse_params

REPO = Path(__file__).resolve().parents[1]
AS_OF = ("1998-03-31", "1998-06-30")


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of every file under root."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def sample_params(tmp_path: Path) -> dict:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"]["path"] = "lifetimes:CDNOW_sample"
    raw["data"]["columns"] = {
        "customer_id": "customer_id", "timestamp": "date", "amount": "amount",
        "order_id": None, "quantity": "quantity", "cost": None,
    }  # fmt: skip
    raw["data"]["horizon_days"] = 91
    # Fewer, larger boosting steps (as tests/test_churn_stage.py): the backtest's table is checked
    # against the stages' own metrics, whatever the classifier's settings.
    raw["churn"]["lightgbm"].update({"n_estimators": 60, "learning_rate": 0.1})
    raw["mlflow"]["tracking_dir"] = str(tmp_path / "tracking")
    return raw


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Params, Catalog, Path]:
    """Parsed params and the catalog of an empty project; no params file on disk (the backtest
    builds each date's params from the parsed ones), and an empty current directory that must
    stay empty (every path comes from the catalog)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    monkeypatch.delenv(backtest.tracking.PARENT_ENV, raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    root = tmp_path / "project"
    root.mkdir()
    return parse_params(sample_params(tmp_path)), Catalog(root, root / "params.yaml"), cwd


def stage_metrics(client: mlflow.MlflowClient, experiment_id: str, child_id: str, stage: str) -> dict[str, float]:
    runs = client.search_runs(
        [experiment_id], f"tags.`mlflow.parentRunId` = '{child_id}' and tags.`cvp.stage` = '{stage}'"
    )
    assert len(runs) == 1, f"expected one {stage} stage run under {child_id}"
    return runs[0].data.metrics


def test_bad_date_ranges_are_one_line_config_errors(project) -> None:
    params, paths, _ = project
    with pytest.raises(ConfigError, match="--to 1998-01-01 is before --from 1998-02-01"):
        backtest.run(params, paths, dt.date(1998, 2, 1), dt.date(1998, 1, 1), 10)


def test_backtest_two_dates_match_stage_metrics(project) -> None:
    params, paths, cwd = project
    data_before = tree_state(REPO / "data")
    start, end = (dt.date.fromisoformat(d) for d in AS_OF)

    table = backtest.run(params, paths, start, end, every_days=None)

    assert list(table["as_of"]) == list(AS_OF)
    # The whole sample cohort (first purchases in Q1 1997) is known at both holdout cutoffs.
    assert list(table["n_customers"]) == [2357, 2357]
    assert list(table["holdout_cutoff"]) == ["1997-12-30", "1998-03-31"]
    for target in (paths.BACKTEST_TABLE, paths.BACKTEST_PLOT, paths.BACKTEST_REPORT):
        assert target.stat().st_size > 0
    pd.testing.assert_frame_equal(pd.read_csv(paths.BACKTEST_TABLE), table, check_exact=False, rtol=1e-9)
    report = files.read_json(paths.BACKTEST_REPORT)
    assert report["dates"] == list(AS_OF) and report["skipped"] == {}

    client = mlflow.MlflowClient()
    parent = client.get_run(report["mlflow_run_id"])
    assert parent.info.run_name == "backtest" and parent.info.status == "FINISHED"
    experiment_id = parent.info.experiment_id
    children = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(c.data.tags["cvp.as_of"] for c in children) == list(AS_OF)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"backtest.csv", "backtest.png"} <= artifacts

    # Every row equals what the clv and churn stages logged for that date (their runs nest under it).
    for child in children:
        row = table.set_index("as_of").loc[child.data.tags["cvp.as_of"]]
        clv = stage_metrics(client, experiment_id, child.info.run_id, "clv")
        churn = stage_metrics(client, experiment_id, child.info.run_id, "churn")
        assert row["clv_model_purchases_mae"] == pytest.approx(clv["holdout.purchases.model.mae"], rel=1e-9)
        assert row["clv_model_spearman_rho"] == pytest.approx(clv["holdout.ranking.model.spearman_rho"], rel=1e-9)
        assert row["clv_model_top20_capture"] == pytest.approx(clv["holdout.ranking.model.top20_capture"], rel=1e-9)
        for model in ("classifier_calibrated", "baseline_p_no_purchase", "baseline_expected_purchases"):
            for metric in ("roc_auc", "brier"):
                assert row[f"churn_{model}_{metric}"] == pytest.approx(churn[f"models.{model}.{metric}"], rel=1e-9)
        assert child.data.metrics["clv_model_purchases_mae"] == pytest.approx(row["clv_model_purchases_mae"])
        assert child.data.tags["cvp.clv_model"] == row["clv_model"]
    assert (table["churn_evaluation"] == "out_of_time").all()
    assert set(table["churn_source"]) <= {"classifier", "baseline:p_no_purchase", "baseline:expected_purchases"}

    # No model registered, the environment untouched, nothing written to the project's data, to
    # the current directory or to this repository's data.
    assert client.search_registered_models() == []
    assert backtest.tracking.PARENT_ENV not in os.environ
    assert sorted(p.name for p in paths.root.iterdir()) == ["metrics", "reports"]
    assert not any(cwd.iterdir()) and not paths.params_file.exists()
    assert tree_state(REPO / "data") == data_before


def test_backtest_dates_after_the_data_is_one_line_error(project) -> None:
    params, paths, _ = project
    with pytest.raises(DataError, match="no as_of between 2010-01-01 and 2010-01-01") as err:
        backtest.run(params, paths, dt.date(2010, 1, 1), dt.date(2010, 1, 1))
    assert "\n" not in str(err.value)
    assert not paths.BACKTEST_REPORT.exists()
    skipped = mlflow.MlflowClient().search_runs(mlflow.get_experiment_by_name(params.mlflow.experiment).experiment_id,
                                                "tags.`cvp.kind` = 'backtest_date'")  # fmt: skip
    assert [r.data.tags["cvp.skipped"] for r in skipped] == ["as_of 2010-01-01 is after the last transaction (1998-06-30)"]
    assert skipped[0].info.status == "KILLED"
