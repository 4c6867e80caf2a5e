"""Retrain orchestration on small hand-made stage outputs: promote, refuse, drift stop, override.

The pipeline (`dvc repro`) is replaced by a function that writes the stages' contract files
for one "round" and registers a model version per model in a temporary MLflow registry; the
champion's holdout predictions come from the round that promoted it. Everything else (drift
checks, metrics, gate, aliases, tags, the report) is the real code.
"""

import datetime as dt
import shutil

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from models import clv_eval
from models import metrics as churn_metrics
from pipelines import io, paths, retrain
from pipelines.config import parse_params
from tests.test_tracking import ROOT

N = 400


def _params(tmp_path, **gate):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["mlflow"]["tracking_dir"] = str(tmp_path / "tracking")
    raw["retrain"]["drift"]["psi_columns"] = ["frequency", "monetary_value"]
    raw["retrain"]["lock_timeout_s"] = 5
    raw["retrain"]["gate"].update(gate)
    return parse_params(raw)


def _round_data(as_of: str, quality: float, shift: float = 0.0, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Stage outputs of one round. ``quality`` in [0, 1]: how much the predictions know the outcome."""
    rng = np.random.default_rng(seed)
    ids = [f"{i:05d}" for i in range(N)]
    t0 = pd.Timestamp(as_of)
    t1 = t0 - pd.Timedelta(days=91)
    frequency = rng.poisson(2.0, N).astype("int64")
    spend_rate = rng.gamma(2.0, 10.0, N) * (1 + shift)
    purchased = (rng.random(N) < 0.3 + 0.1 * np.minimum(frequency, 4)).astype("int8")
    n_days = purchased * rng.integers(1, 4, N)
    actual_spend = n_days * spend_rate

    def features(cutoff):
        return pd.DataFrame(
            {
                "customer_id": ids, "cutoff": cutoff, "frequency": frequency,
                "monetary_value": spend_rate, "avg_spend": spend_rate,
                "ipi_mean": np.where(frequency > 0, 30.0, np.nan), "recency": 5.0, "T": 20.0,
            }
        )

    noise = rng.random(N)
    expected = quality * n_days + (1 - quality) * noise * 2
    clv = pd.DataFrame(
        {"customer_id": ids, "cutoff": t1, "expected_purchases": expected, "expected_avg_spend": spend_rate, "clv": expected * spend_rate * 0.3}
    )
    churn = pd.DataFrame({"customer_id": ids, "cutoff": t1, "churn_probability": np.clip(quality * (1 - purchased) + (1 - quality) * noise, 0, 1)})
    labels = pd.DataFrame({"customer_id": ids, "cutoff": t1, "purchased": purchased, "n_purchase_days": n_days, "spend": actual_spend})
    days = pd.date_range("1997-01-01", t0, freq="D")
    transactions = pd.DataFrame({"timestamp": days.repeat(3)})
    return {"features_t0": features(t0), "features_t1": features(t1), "labels_t1": labels, "clv_t1": clv, "churn_t1": churn, "transactions": transactions}


class FakePipeline:
    """Stands in for `dvc repro`: writes one round's files and registers one version per model."""

    def __init__(self, params):
        self.params = params
        self.round = None
        self.exports = 0
        self.by_version: dict[tuple[str, str], dict] = {}

    def _register(self, name: str) -> str:
        client = mlflow.MlflowClient()
        if not client.search_registered_models(filter_string=f"name = '{name}'"):
            client.create_registered_model(name)
        return str(client.create_model_version(name, source=str(self.params.mlflow.tracking_dir)).version)

    def __call__(self, args, parent_run_id, root):
        assert parent_run_id
        if args == ["segment"]:
            data = self.round
            io.write_parquet(data["transactions"], paths.TRANSACTIONS)
            io.write_parquet(pd.DataFrame({"row": [1]}), paths.QUARANTINE)
            io.write_parquet(data["features_t0"], paths.features_at(0))
            io.write_parquet(data["features_t1"], paths.features_at(1))
            io.write_parquet(data["labels_t1"], paths.labels_at(1))
            io.write_parquet(data["clv_t1"], paths.clv_predictions_at(1))
            io.write_parquet(data["churn_t1"], paths.churn_predictions_at(1))
            for _, _, model_dir, name in retrain.registered_stages(self.params):
                version = self._register(name)
                self.by_version[(name, version)] = data
                io.write_json({"name": name, "version": version}, paths.registration_file(model_dir))
        elif args == ["--single-item", "export", "notebook"]:
            self.exports += 1
            io.write_text(f"export {self.exports}\n", paths.SCORES_CSV)
        else:
            raise AssertionError(f"unexpected dvc repro {args}")


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory):
    """An initialised, empty MLflow sqlite store; creating one takes seconds, copying it does not."""
    db = tmp_path_factory.mktemp("store") / "mlflow.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def project(tmp_path, monkeypatch, empty_store):
    (tmp_path / "tracking").mkdir()
    shutil.copy(empty_store, tmp_path / "tracking" / "mlflow.db")
    # mlflow exports both variables itself; setting them here makes monkeypatch remove them after.
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.setenv(var, f"sqlite:///{tmp_path / 'tracking' / 'mlflow.db'}")
    monkeypatch.delenv("CVP_PIPELINE_RUN_ID", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    params = _params(tmp_path)
    fake = FakePipeline(params)
    monkeypatch.setattr(retrain, "repro", fake)

    def champion_data(client_name):
        version = mlflow.MlflowClient().get_model_version_by_alias(client_name, retrain.ALIAS).version
        return fake.by_version[(client_name, str(version))]

    def fake_clv(name, holdout, params):
        return champion_data(name)["clv_t1"]

    def fake_churn(name, holdout, clv):
        return champion_data(name)["churn_t1"].set_index("customer_id")["churn_probability"]

    monkeypatch.setattr(retrain, "champion_clv_predictions", fake_clv)
    monkeypatch.setattr(retrain, "champion_churn_probability", fake_churn)
    return params, fake


def _aliases(params):
    client = mlflow.MlflowClient()
    names = (params.clv.model_name, params.churn.model_name, params.segment.model_name)
    return {n: str(client.get_model_version_by_alias(n, "champion").version) for n in names}


def _tags(params, version):
    client = mlflow.MlflowClient()
    return client.get_model_version(params.clv.model_name, version).tags


def test_first_round_promotes_and_snapshots_then_a_worse_challenger_is_refused(project):
    params, fake = project
    fake.round = _round_data("1998-03-31", quality=0.9)
    report = retrain.run(params)
    assert report["decision"] == "promote" and report["exported"] and fake.exports == 1
    assert report["drift"] == {"passed": True, "skipped": "no champion snapshot"}
    assert _aliases(params) == {"cvp-clv": "1", "cvp-churn": "1", "cvp-scores": "1"}
    assert retrain.REFERENCE_FEATURES.read_bytes() == paths.features_at(0).read_bytes()
    assert io.read_json(retrain.REFERENCE)["profile"]["as_of"] == "1998-03-31"
    assert _tags(params, "1")["cvp.gate.decision"] == "promote"
    exported = paths.SCORES_CSV.read_bytes()

    # Same population, predictions that know less about the outcome: every metric is worse.
    fake.round = _round_data("1998-06-30", quality=0.3)
    with pytest.raises(retrain.ChallengerRefused) as err:
        retrain.run(params)
    assert err.value.exit_code == 3
    assert "\n" not in str(err.value) and "churn.roc_auc" in str(err.value)
    assert _aliases(params) == {"cvp-clv": "1", "cvp-churn": "1", "cvp-scores": "1"}
    assert fake.exports == 1 and paths.SCORES_CSV.read_bytes() == exported
    assert io.read_json(retrain.REFERENCE)["profile"]["as_of"] == "1998-03-31"
    written = io.read_json(retrain.REPORT)
    assert written["decision"] == "refuse" and written["stopped_by"] == "gate" and written["exported"] is False
    assert written["versions"]["challenger"] == {"cvp-clv": "2", "cvp-churn": "2", "cvp-scores": "2"}
    assert written["versions"]["champion_after"] == {"cvp-clv": "1", "cvp-churn": "1", "cvp-scores": "1"}
    assert {k for k, v in written["metrics"].items() if not v["passed"]} == {"churn.roc_auc", "churn.brier", "clv.spend_mae", "clv.spearman"}
    assert written["holdout"]["champion_overlap_days"] == 0  # as_of moved by exactly one horizon
    assert _tags(params, "2")["cvp.gate.decision"] == "refuse"
    assert "churn.roc_auc: challenger" in _tags(params, "2")["cvp.gate.reasons"]
    parent = mlflow.MlflowClient().get_run(written["mlflow_run_id"])
    assert parent.data.tags["cvp.retrain.decision"] == "refuse"
    assert parent.info.status == "FINISHED"


def test_the_gate_uses_the_stage_metric_functions_on_the_same_holdout(project):
    params, fake = project
    data = _round_data("1998-03-31", quality=0.7)
    fake.round = data
    report = retrain.run(params)
    labels, churn, clv = data["labels_t1"], data["churn_t1"], data["clv_t1"]
    churned = 1 - labels["purchased"]
    assert report["metrics"]["churn.roc_auc"]["challenger"] == pytest.approx(churn_metrics.roc_auc(churned, churn["churn_probability"]))
    assert report["metrics"]["churn.brier"]["challenger"] == pytest.approx(churn_metrics.brier(churned, churn["churn_probability"]))
    spend = clv["expected_purchases"] * clv["expected_avg_spend"]
    assert report["metrics"]["clv.spend_mae"]["challenger"] == pytest.approx(np.abs(spend - labels["spend"]).mean())
    assert report["metrics"]["clv.spearman"]["challenger"] == pytest.approx(clv_eval.spearman_rho(clv["clv"], labels["spend"]))

    # Second round on identical data: the champion scores exactly the same, so it passes.
    fake.round = _round_data("1998-06-30", quality=0.7)
    report = retrain.run(params)
    assert report["decision"] == "promote"
    for verdict in report["metrics"].values():
        assert verdict["challenger"] == pytest.approx(verdict["champion"])
    assert _aliases(params) == {"cvp-clv": "2", "cvp-churn": "2", "cvp-scores": "2"}


def test_drift_stops_before_the_gate_and_tags_the_refused_versions(project):
    params, fake = project
    fake.round = _round_data("1998-03-31", quality=0.9)
    retrain.run(params)
    exported = paths.SCORES_CSV.read_bytes()
    fake.round = _round_data("1998-06-30", quality=0.9, shift=1.5)  # spend per purchase x2.5
    with pytest.raises(retrain.DriftDetected) as err:
        retrain.run(params)
    assert err.value.exit_code == 2
    assert "psi.monetary_value" in str(err.value) and "psi.frequency" not in str(err.value)
    written = io.read_json(retrain.REPORT)
    assert written["stopped_by"] == "drift" and "metrics" not in written
    assert written["drift"]["checks"]["psi.monetary_value"]["passed"] is False
    assert _aliases(params) == {"cvp-clv": "1", "cvp-churn": "1", "cvp-scores": "1"}
    assert paths.SCORES_CSV.read_bytes() == exported and fake.exports == 1
    assert _tags(params, "2")["cvp.gate.decision"] == "refuse"
    assert _tags(params, "2")["cvp.gate.reasons"].startswith("drift: psi.monetary_value")


def test_force_promote_overrides_drift_and_the_gate_and_says_so(project):
    params, fake = project
    fake.round = _round_data("1998-03-31", quality=0.9)
    retrain.run(params)
    fake.round = _round_data("1998-06-30", quality=0.3, shift=1.5)
    report = retrain.run(params, force_promote=True)
    assert report["decision"] == "promote" and report["forced"] is True
    assert report["reasons"][0] == "forced by --force-promote"
    assert any(r.startswith("drift overridden: psi.monetary_value") for r in report["reasons"])
    assert _aliases(params) == {"cvp-clv": "2", "cvp-churn": "2", "cvp-scores": "2"}
    assert _tags(params, "2")["cvp.gate.decision"] == "promote-forced"
    assert fake.exports == 2


def test_a_failing_stage_stops_with_exit_5_and_a_report(project, monkeypatch):
    params, _ = project

    def failing(args, parent_run_id, root):
        raise retrain.PipelineFailed("`dvc repro segment` failed with exit code 1")

    monkeypatch.setattr(retrain, "repro", failing)
    with pytest.raises(retrain.PipelineFailed) as err:
        retrain.run(params)
    assert err.value.exit_code == 5
    written = io.read_json(retrain.REPORT)
    assert written["decision"] == "error" and "exit code 1" in written["error"]
    assert mlflow.MlflowClient().get_run(written["mlflow_run_id"]).info.status == "FAILED"


def test_unregistered_models_cannot_be_retrained(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["churn"]["register_model"] = False
    with pytest.raises(retrain.ConfigError, match="churn.register_model is false"):
        retrain.run(parse_params(raw))


def test_gate_rules_follow_the_params(tmp_path):
    rules = {r.name: r for r in retrain.gate_rules(_params(tmp_path, clv_mae=0.1))}
    assert rules["clv.spend_mae"].relative and not rules["clv.spend_mae"].higher_is_better
    assert rules["clv.spend_mae"].tolerance == 0.1
    assert rules["churn.roc_auc"].higher_is_better and not rules["churn.roc_auc"].relative
    assert not rules["churn.brier"].higher_is_better


def test_holdout_overlap_and_unit_conversion():
    ref = retrain.Reference(pd.DataFrame(), retrain.drift.DataProfile(1, 0, dt.date(1997, 1, 1), dt.date(1998, 3, 31), dt.date(1998, 3, 31)), {})
    holdout = lambda cutoff: retrain.Holdout(pd.DataFrame(), pd.DataFrame(), pd.Timestamp(cutoff))  # noqa: E731
    assert retrain.holdout_overlap_days(ref, holdout("1998-03-31")) == 0
    assert retrain.holdout_overlap_days(ref, holdout("1998-03-01")) == 30  # retrained a month later
    assert retrain.holdout_overlap_days(None, holdout("1998-03-01")) == 0
    weeks = pd.DataFrame({"recency": [1.0], "T": [2.0]})
    days = retrain._in_model_units(weeks, days_per_unit=7.0, model_days_per_unit=1.0)
    assert days[["recency", "T"]].iloc[0].tolist() == [7.0, 14.0]
    assert retrain._in_model_units(weeks, 7.0, 7.0) is weeks


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (retrain.DriftDetected("data drift: psi.frequency = 0.4 > 0.25"), 2),
        (retrain.ChallengerRefused("challenger refused by the gate: churn.roc_auc"), 3),
        (retrain.RetrainLocked("another retraining run holds .cvp-retrain.lock"), 4),
        (retrain.PipelineFailed("`dvc repro segment` failed with exit code 1"), 5),
    ],
)
def test_cli_exit_codes(monkeypatch, capsys, error, code):
    from pipelines import cli

    seen = {}

    def fake_run(params, params_path, force_promote):
        seen["force"] = force_promote
        raise error

    monkeypatch.setattr(retrain, "run", fake_run)
    monkeypatch.setattr("sys.argv", ["cvp", "retrain", "--params", str(ROOT / "params.yaml"), "--force-promote"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == code
    assert seen["force"] is True
    assert capsys.readouterr().err == f"cvp: error: {error}\n"


def test_a_rerun_that_registers_nothing_new_keeps_the_champion_without_a_gate(project, monkeypatch):
    params, fake = project
    fake.round = _round_data("1998-03-31", quality=0.9)
    retrain.run(params)
    tags_before = _tags(params, "1")

    def unchanged_pipeline(args, parent_run_id, root):  # dvc found every stage up to date
        if args != ["segment"]:
            fake(args, parent_run_id, root)

    monkeypatch.setattr(retrain, "repro", unchanged_pipeline)
    report = retrain.run(params)
    assert report["decision"] == "promote" and "metrics" not in report
    assert report["reasons"][0].startswith("no new model versions")
    assert _aliases(params) == {"cvp-clv": "1", "cvp-churn": "1", "cvp-scores": "1"}
    assert _tags(params, "1") == tags_before
