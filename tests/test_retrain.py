"""Retrain orchestration in a tiny project: promote, refuse, drift stop, override, and the champion
loaded by its alias.

`dvc repro` is replaced by a function that writes one "round" of stage outputs (in the stage
contracts) and registers a version per model in a temporary MLflow registry. In most tests the
champion's loaded models are stand-ins that replay the predictions of the round that registered
them (``quality`` sets how much those know the outcome). In the alias test they are the real
pyfuncs (models/clv_pyfunc.py, models/churn_pyfunc.py), logged, registered and loaded by
``@champion``. Everything else (drift checks, metrics, gate, aliases, tags, the report) is the real code.
"""

import pickle
import shutil
from types import SimpleNamespace

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from features.customer import LABEL_DTYPES, feature_dtypes
from models import clv_eval
from models import metrics as churn_metrics
from models import retrain_rules
from models.churn import CalibratedBaseline, churn_labels, prepare_features
from models.churn_pyfunc import REQUIREMENTS as CHURN_REQUIREMENTS
from models.churn_pyfunc import ChurnPyfuncModel
from models.clv import PREDICTION_DTYPES, PurchaseModel, SpendModel, as_predictions
from models.clv_pyfunc import PURCHASE_ARTIFACT, SPEND_ARTIFACT, ClvPyfuncModel, model_signature
from pipelines import domain, files, retrain, tracking
from pipelines.catalog import Catalog
from pipelines.config import parse_params
from tests.test_tracking import ROOT

N = 400
#: Published CDNOW estimates (weeks): BG/NBD (Fader, Hardie & Lee 2005), Gamma-Gamma (note 025).
BGNBD = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
GAMMA_GAMMA = {"p": 6.25, "q": 3.74, "v": 15.44}
CLV_REQUIREMENTS = ("pandas", "numpy", "scipy", "mlflow", "cloudpickle")


def _params(tmp_path, **gate):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["mlflow"]["tracking_dir"] = str(tmp_path / "tracking")
    raw["retrain"]["drift"]["psi_columns"] = ["frequency", "monetary_value"]
    raw["retrain"]["lock_timeout_s"] = 5
    raw["retrain"]["gate"].update(gate)
    return parse_params(raw)


def features_frame(ids: list[str], cutoff: pd.Timestamp, frequency: np.ndarray, recency: np.ndarray, spend: np.ndarray) -> pd.DataFrame:
    """Customer features in the features contract: ``frequency`` repeat days, ``recency`` weeks
    from the first to the last purchase (first purchase 20 weeks before the cutoff), ``spend`` per day."""
    days = frequency + 1
    columns = {name: 0 for name in feature_dtypes()}
    columns.update(
        customer_id=ids, cutoff=cutoff, first_purchase=cutoff - pd.Timedelta(days=140),
        last_purchase=cutoff - pd.Timedelta(days=140) + pd.to_timedelta(recency * 7, unit="D"),
        frequency=frequency, recency=recency, T=20.0, monetary_value=np.where(frequency > 0, spend, 0.0),
        n_purchase_days=days, n_transactions=days, n_orders=days, total_spend=spend * days, avg_spend=spend,
        days_since_first=140, days_since_last=140 - (recency * 7).astype("int64"),
        ipi_mean=np.where(frequency > 0, recency * 7 / np.maximum(frequency, 1), np.nan), ipi_std=np.nan,
        days_since_last_ratio=np.nan, total_quantity=np.nan, avg_quantity=np.nan, spend_trailing=spend * days,
        margin_trailing=np.nan,
    )  # fmt: skip
    return pd.DataFrame(columns).astype(feature_dtypes())


def _round_data(as_of: str, quality: float, shift: float = 0.0, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Stage outputs of one round. ``quality`` in [0, 1]: how much the predictions know the outcome."""
    rng = np.random.default_rng(seed)
    ids = [f"{i:05d}" for i in range(N)]
    t0 = pd.Timestamp(as_of)
    t1 = t0 - pd.Timedelta(days=91)
    frequency = rng.poisson(2.0, N).astype("int64")
    recency = np.where(frequency > 0, rng.integers(1, 20, N), 0).astype("float64")
    spend_rate = rng.gamma(2.0, 10.0, N) * (1 + shift)
    purchased = (rng.random(N) < 0.3 + 0.1 * np.minimum(frequency, 4)).astype("int8")
    n_days = purchased * rng.integers(1, 4, N)
    noise = rng.random(N)
    expected = quality * n_days + (1 - quality) * noise * 2
    clv = pd.DataFrame(
        {"customer_id": ids, "cutoff": t1, "model": "bgnbd", "p_alive": 0.5, "expected_purchases": expected,
         "p_no_purchase": 0.5, "expected_avg_spend": spend_rate, "clv": expected * spend_rate * 0.3}
    )  # fmt: skip
    churn = pd.DataFrame({"customer_id": ids, "cutoff": t1, "churn_probability": np.clip(quality * (1 - purchased) + (1 - quality) * noise, 0, 1)})
    labels = pd.DataFrame({"customer_id": ids, "cutoff": t1, "purchased": purchased, "n_purchase_days": n_days, "spend": n_days * spend_rate})
    days = pd.date_range("1997-01-01", t0, freq="D")
    return {
        "features_t0": features_frame(ids, t0, frequency, recency, spend_rate),
        "features_t1": features_frame(ids, t1, frequency, recency, spend_rate),
        "labels_t1": labels.astype(LABEL_DTYPES), "clv_t1": as_predictions(clv),
        "churn_t1": churn.astype({"cutoff": "datetime64[us]"}), "transactions": pd.DataFrame({"timestamp": days.repeat(3)}),
    }  # fmt: skip


class FakePipeline:
    """Stands in for `dvc repro`: writes one round's files and registers one version per model.

    With ``real_models`` the t_1 predictions are the batch scores of a real CLV model (published
    CDNOW parameters) and a real churn model (a calibrated baseline), logged as the stages' pyfuncs.
    """

    def __init__(self, params, real_models: bool = False):
        self.params = params
        self.real_models = real_models
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
        paths = Catalog(root)
        if args == ["segment"]:
            data = self.round
            files.write_parquet(data["transactions"], paths.TRANSACTIONS)
            files.write_parquet(pd.DataFrame({"row": [1]}), paths.QUARANTINE)
            for key in ("features_t0", "features_t1", "labels_t1"):
                paths.write(key, data[key], self.params)
            logged = self._log_real_models(data, paths) if self.real_models else {}
            paths.write("clv_predictions_t1", data["clv_t1"], self.params)
            paths.write("churn_predictions_t1", data["churn_t1"], self.params)
            files.write_json({"intervals": {"holdout": {"coverage_pit": data.get("coverage_pit", 0.79)}}},
                             paths.metrics_file("clv"))
            for model, (_, model_dir, name) in retrain.registered(self.params, paths).items():
                version = logged.get(model) or self._register(name)
                self.by_version[(name, version)] = data
                tracking.write_registration(model_dir, name, version, None)
        elif args == ["--single-item", "export", "notebook"]:
            self.exports += 1
            files.write_text(f"export {self.exports}\n", paths.SCORES_CSV)
        else:
            raise AssertionError(f"unexpected dvc repro {args}")

    def _log_real_models(self, data: dict, paths: Catalog) -> dict[str, str]:
        """Fit, score (the batch scores become the round's t_1 predictions), log and register both models."""
        settings = domain.clv_settings(self.params)
        purchase, spend = PurchaseModel.from_params("bgnbd", BGNBD), SpendModel.from_params(GAMMA_GAMMA)
        data["clv_t1"] = as_predictions(settings.predict(purchase, spend, data["features_t1"]))
        X = prepare_features(data["features_t1"], data["clv_t1"])
        churn = CalibratedBaseline("p_no_purchase").fit(X, churn_labels(data["labels_t1"]).reindex(X.index))
        data["churn_t1"] = pd.DataFrame({"customer_id": X.index, "cutoff": data["clv_t1"]["cutoff"].to_numpy(),
                                         "churn_probability": churn.predict_churn_probability(X)})  # fmt: skip
        pickles = {}
        for key, model in ((PURCHASE_ARTIFACT, purchase), (SPEND_ARTIFACT, spend), (ChurnPyfuncModel.ARTIFACT, churn)):
            pickles[key] = paths.root / "models" / "artifacts" / f"{key}.pkl"
            files.write_bytes(pickle.dumps(model), pickles[key])
        clv_model = ClvPyfuncModel.from_settings(settings)
        with mlflow.start_run():
            clv_info = tracking.log_pyfunc(
                "clv_model", clv_model, CLV_REQUIREMENTS, self.params.clv.model_name, signature=model_signature(clv_model.defaults),
                artifacts={k: str(pickles[k]) for k in (PURCHASE_ARTIFACT, SPEND_ARTIFACT)},
            )  # fmt: skip
            churn_info = tracking.log_pyfunc(
                "model", ChurnPyfuncModel(), CHURN_REQUIREMENTS, self.params.churn.model_name,
                artifacts={ChurnPyfuncModel.ARTIFACT: str(pickles[ChurnPyfuncModel.ARTIFACT])},
                example=X.head(5).reset_index(drop=True), output=churn_frame(churn, X.head(5)),
            )  # fmt: skip
        return {"clv": str(clv_info.registered_model_version), "churn": str(churn_info.registered_model_version)}


def churn_frame(model, X):
    return pd.DataFrame({"churn_probability": model.predict_churn_probability(X)}).reset_index(drop=True)


class Replay:
    """Stands in for a loaded pyfunc: the predictions of the round that registered its version."""

    def __init__(self, data: dict, model: str):
        self.data, self.model = data, model

    def unwrap_python_model(self):
        return SimpleNamespace(days_per_unit=7.0)

    def predict(self, inputs, params=None):
        if self.model == "clv":
            return self.data["clv_t1"].set_index("customer_id").loc[inputs["customer_id"]].reset_index()
        return self.data["churn_t1"][["churn_probability"]]  # inputs: prepared features, sorted by customer


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory):
    """An initialised, empty MLflow sqlite store; creating one takes seconds, copying it does not."""
    db = tmp_path_factory.mktemp("store") / "mlflow.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def store(tmp_path, monkeypatch, empty_store):
    """A copy of the empty store, in the environment for this test; the project catalog and params."""
    (tmp_path / "tracking").mkdir()
    shutil.copy(empty_store, tmp_path / "tracking" / "mlflow.db")
    # mlflow exports both variables itself; setting them here makes monkeypatch remove them after.
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.setenv(var, f"sqlite:///{tmp_path / 'tracking' / 'mlflow.db'}")
    monkeypatch.delenv("CVP_PIPELINE_RUN_ID", raising=False)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    return _params(tmp_path), Catalog(tmp_path, tmp_path / "params.yaml")


@pytest.fixture
def project(store, monkeypatch):
    """The fake pipeline, with the champion's models replayed from the round that registered them."""
    params, paths = store
    fake = FakePipeline(params)
    monkeypatch.setattr(retrain, "repro", fake)

    def load_champion(params, paths):
        def load(model):
            name = retrain.registered(params, paths)[model][2]
            version = mlflow.MlflowClient().get_model_version_by_alias(name, retrain_rules.ALIAS).version
            return Replay(fake.by_version[(name, str(version))], model)

        return load

    monkeypatch.setattr(retrain, "load_champion", load_champion)
    return params, paths, fake


def _aliases(params):
    client = mlflow.MlflowClient()
    names = (params.clv.model_name, params.churn.model_name, params.segment.model_name)
    return {n: str(client.get_model_version_by_alias(n, "champion").version) for n in names}


def _tags(params, version):
    client = mlflow.MlflowClient()
    return client.get_model_version(params.clv.model_name, version).tags


def test_first_round_promotes_and_snapshots_then_a_worse_challenger_is_refused(project):
    params, paths, fake = project
    fake.round = _round_data("1998-03-31", quality=0.9)
    report = retrain.run(params, paths)
    assert report["decision"] == "promote" and report["exported"] and fake.exports == 1
    assert report["drift"] == {"passed": True, "skipped": "no champion snapshot"}
    assert _aliases(params) == {"cvp-clv": "1", "cvp-churn": "1", "cvp-scores": "1"}
    snapshot = retrain.snapshot_files(paths)
    assert snapshot["features"].read_bytes() == paths.features_at(0).read_bytes()
    assert files.read_json(snapshot["record"])["profile"]["as_of"] == "1998-03-31"
    assert _tags(params, "1")["cvp.gate.decision"] == "promote"
    exported = paths.SCORES_CSV.read_bytes()

    # Same population, predictions that know less about the outcome: every metric is worse.
    fake.round = _round_data("1998-06-30", quality=0.3)
    with pytest.raises(retrain.ChallengerRefused) as err:
        retrain.run(params, paths)
    assert err.value.exit_code == 3
    assert "\n" not in str(err.value) and "churn.roc_auc" in str(err.value)
    assert _aliases(params) == {"cvp-clv": "1", "cvp-churn": "1", "cvp-scores": "1"}
    assert fake.exports == 1 and paths.SCORES_CSV.read_bytes() == exported
    assert files.read_json(snapshot["record"])["profile"]["as_of"] == "1998-03-31"
    written = files.read_json(paths.RETRAIN_REPORT)
    assert written["decision"] == "refuse" and written["stopped_by"] == "gate" and written["exported"] is False
    assert written["versions"]["challenger"] == {"cvp-clv": "2", "cvp-churn": "2", "cvp-scores": "2"}
    assert written["versions"]["champion_after"] == {"cvp-clv": "1", "cvp-churn": "1", "cvp-scores": "1"}
    assert {k for k, v in written["metrics"].items() if not v["passed"]} == {"churn.roc_auc", "churn.brier", "clv.spend_mae", "clv.spearman"}
    assert written["holdout"]["champion_overlap_days"] == 0  # as_of moved by exactly one horizon
    assert _tags(params, "2")["cvp.gate.decision"] == "refuse"
    assert "churn.roc_auc: challenger" in _tags(params, "2")["cvp.gate.reasons"]
    parent = mlflow.MlflowClient().get_run(written["mlflow_run_id"])
    assert parent.data.tags["cvp.retrain.decision"] == "refuse"
    assert parent.data.metrics["metrics.churn.roc_auc.champion"] == pytest.approx(written["metrics"]["churn.roc_auc"]["champion"])
    assert parent.info.status == "FINISHED"


def test_the_gate_uses_the_stage_metric_functions_on_the_same_holdout(project):
    params, paths, fake = project
    data = _round_data("1998-03-31", quality=0.7)
    fake.round = data
    report = retrain.run(params, paths)
    labels, churn, clv = data["labels_t1"], data["churn_t1"], data["clv_t1"]
    churned = 1 - labels["purchased"]
    assert report["metrics"]["churn.roc_auc"]["challenger"] == pytest.approx(churn_metrics.roc_auc(churned, churn["churn_probability"]))
    assert report["metrics"]["churn.brier"]["challenger"] == pytest.approx(churn_metrics.brier(churned, churn["churn_probability"]))
    spend = clv["expected_purchases"] * clv["expected_avg_spend"]
    assert report["metrics"]["clv.spend_mae"]["challenger"] == pytest.approx(np.abs(spend - labels["spend"]).mean())
    assert report["metrics"]["clv.spearman"]["challenger"] == pytest.approx(clv_eval.spearman_rho(clv["clv"], labels["spend"]))
    assert report["metrics"]["clv.interval_coverage"]["challenger"] == 0.79  # metrics/clv.json of the same holdout

    # Second round on identical data: the champion scores exactly the same, so it passes.
    fake.round = _round_data("1998-06-30", quality=0.7)
    report = retrain.run(params, paths)
    assert report["decision"] == "promote"
    for name, verdict in report["metrics"].items():
        if name != "clv.interval_coverage":  # a band rule: the champion's value is not compared
            assert verdict["challenger"] == pytest.approx(verdict["champion"])
    assert _aliases(params) == {"cvp-clv": "2", "cvp-churn": "2", "cvp-scores": "2"}

    # Third round, as good but with intervals that cover 0.90 of the holdout, not 0.80: refused.
    fake.round = {**_round_data("1998-09-29", quality=0.7), "coverage_pit": 0.90}
    with pytest.raises(retrain.ChallengerRefused):
        retrain.run(params, paths)
    written = files.read_json(paths.RETRAIN_REPORT)
    assert {k for k, v in written["metrics"].items() if not v["passed"]} == {"clv.interval_coverage"}
    assert _aliases(params) == {"cvp-clv": "2", "cvp-churn": "2", "cvp-scores": "2"}


def test_the_champion_is_loaded_by_its_alias_and_scores_as_the_batch_did(store, monkeypatch):
    """Real pyfuncs, registered and loaded through ``models:/<name>@champion``: on the next
    round's holdout the champion's CLV predictions and churn probabilities equal the batch scores
    of the same models, so every gated metric equals the challenger's."""
    params, paths = store
    fake = FakePipeline(params, real_models=True)
    monkeypatch.setattr(retrain, "repro", fake)
    seen = {}

    def spy(name, function):
        def wrapper(*args):
            seen[name] = function(*args)
            return seen[name]

        monkeypatch.setattr(retrain_rules, name, wrapper)

    spy("champion_clv_predictions", retrain_rules.champion_clv_predictions)
    spy("champion_churn_probability", retrain_rules.champion_churn_probability)
    fake.round = _round_data("1998-03-31", quality=0.5)
    assert retrain.run(params, paths)["reasons"] == ["first model: no champion to compare with"]
    assert not seen  # no champion yet: nothing loaded

    fake.round = batch = _round_data("1998-06-30", quality=0.5)
    report = retrain.run(params, paths)
    assert report["versions"]["champion_before"] == {"cvp-clv": "1", "cvp-churn": "1", "cvp-scores": "1"}
    champion_clv = as_predictions(seen["champion_clv_predictions"])
    pd.testing.assert_frame_equal(champion_clv, batch["clv_t1"], check_exact=False, rtol=0, atol=1e-12)
    assert list(champion_clv.dtypes.astype(str)) == list(PREDICTION_DTYPES.values())
    probability = seen["champion_churn_probability"]
    expected = batch["churn_t1"].set_index("customer_id")["churn_probability"]
    pd.testing.assert_series_equal(probability, expected, check_names=False, check_exact=False, rtol=0, atol=1e-12)
    assert probability.nunique() > 50  # a real model, not a constant
    for metric, verdict in report["metrics"].items():
        if metric != "clv.interval_coverage":  # a band rule: no champion value
            assert verdict["champion"] == pytest.approx(verdict["challenger"], rel=1e-12, abs=1e-12), metric
    assert report["decision"] == "promote" and _aliases(params) == {"cvp-clv": "2", "cvp-churn": "2", "cvp-scores": "2"}


def test_drift_stops_before_the_gate_and_tags_the_refused_versions(project):
    params, paths, fake = project
    fake.round = _round_data("1998-03-31", quality=0.9)
    retrain.run(params, paths)
    exported = paths.SCORES_CSV.read_bytes()
    fake.round = _round_data("1998-06-30", quality=0.9, shift=1.5)  # spend per purchase x2.5
    with pytest.raises(retrain.DriftDetected) as err:
        retrain.run(params, paths)
    assert err.value.exit_code == 2
    assert "psi.monetary_value" in str(err.value) and "psi.frequency" not in str(err.value)
    written = files.read_json(paths.RETRAIN_REPORT)
    assert written["stopped_by"] == "drift" and "metrics" not in written
    assert written["drift"]["checks"]["psi.monetary_value"]["passed"] is False
    assert _aliases(params) == {"cvp-clv": "1", "cvp-churn": "1", "cvp-scores": "1"}
    assert paths.SCORES_CSV.read_bytes() == exported and fake.exports == 1
    assert _tags(params, "2")["cvp.gate.decision"] == "refuse"
    assert _tags(params, "2")["cvp.gate.reasons"].startswith("drift: psi.monetary_value")


def test_force_promote_overrides_drift_and_the_gate_and_says_so(project):
    params, paths, fake = project
    fake.round = _round_data("1998-03-31", quality=0.9)
    retrain.run(params, paths)
    fake.round = _round_data("1998-06-30", quality=0.3, shift=1.5)
    report = retrain.run(params, paths, force_promote=True)
    assert report["decision"] == "promote" and report["forced"] is True
    assert report["reasons"][0] == "forced by --force-promote"
    assert any(r.startswith("drift overridden: psi.monetary_value") for r in report["reasons"])
    assert _aliases(params) == {"cvp-clv": "2", "cvp-churn": "2", "cvp-scores": "2"}
    assert _tags(params, "2")["cvp.gate.decision"] == "promote-forced"
    assert fake.exports == 2


def test_a_failing_stage_stops_with_exit_5_and_a_report(project, monkeypatch):
    params, paths, _ = project

    def failing(args, parent_run_id, root):
        raise retrain.PipelineFailed("`dvc repro segment` failed with exit code 1")

    monkeypatch.setattr(retrain, "repro", failing)
    with pytest.raises(retrain.PipelineFailed) as err:
        retrain.run(params, paths)
    assert err.value.exit_code == 5
    written = files.read_json(paths.RETRAIN_REPORT)
    assert written["decision"] == "error" and "exit code 1" in written["error"]
    assert mlflow.MlflowClient().get_run(written["mlflow_run_id"]).info.status == "FAILED"


def test_unregistered_models_cannot_be_retrained(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["churn"]["register_model"] = False
    with pytest.raises(retrain.ConfigError, match="churn.register_model is false"):
        retrain.run(parse_params(raw), Catalog(tmp_path))
    assert not any(tmp_path.iterdir())  # stopped before the lock, the store or the report


def test_gate_rules_follow_the_params(tmp_path):
    rules = {r.name: r for r in domain.gate_rules(_params(tmp_path, clv_mae=0.1))}
    assert rules["clv.spend_mae"].relative and not rules["clv.spend_mae"].higher_is_better
    assert rules["clv.spend_mae"].tolerance == 0.1
    assert rules["churn.roc_auc"].higher_is_better and not rules["churn.roc_auc"].relative
    assert not rules["churn.brier"].higher_is_better
    assert rules["clv.interval_coverage"].target == 0.80
    assert "clv.interval_coverage" not in {r.name for r in domain.gate_rules(_params(tmp_path, interval_coverage=None))}


def test_the_gated_interval_coverage_is_the_clv_stages_holdout_figure():
    from models.retrain_rules import interval_coverage

    assert interval_coverage({"intervals": {"holdout": {"coverage_pit": 0.7986, "coverage": 0.94}}}) == 0.7986
    assert interval_coverage({"holdout": {}}) is None and interval_coverage(None) is None


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

    def fake_run(params, paths, force_promote):
        seen["force"], seen["paths"] = force_promote, paths
        raise error

    monkeypatch.setattr(retrain, "run", fake_run)
    monkeypatch.setattr("sys.argv", ["cvp", "retrain", "--params", str(ROOT / "params.yaml"), "--force-promote"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == code
    assert seen["force"] is True and isinstance(seen["paths"], Catalog)
    assert capsys.readouterr().err == f"cvp: error: {error}\n"


def test_a_rerun_that_registers_nothing_new_keeps_the_champion_without_a_gate(project, monkeypatch):
    params, paths, fake = project
    fake.round = _round_data("1998-03-31", quality=0.9)
    retrain.run(params, paths)
    tags_before = _tags(params, "1")

    def unchanged_pipeline(args, parent_run_id, root):  # dvc found every stage up to date
        if args != ["segment"]:
            fake(args, parent_run_id, root)

    monkeypatch.setattr(retrain, "repro", unchanged_pipeline)
    report = retrain.run(params, paths)
    assert report["decision"] == "promote" and "metrics" not in report
    assert report["reasons"][0].startswith("no new model versions")
    assert _aliases(params) == {"cvp-clv": "1", "cvp-churn": "1", "cvp-scores": "1"}
    assert _tags(params, "1") == tags_before
