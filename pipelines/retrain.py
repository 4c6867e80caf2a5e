"""`cvp retrain`: scheduled retraining with drift checks and a champion/challenger gate.

One run, under an exclusive lock (pipelines/lock.py):

1. ``dvc repro segment``: re-ingest the source and rebuild everything up to the segments. The
   clv and churn stages register new model versions: the challengers. Every stage run nests
   under one MLflow parent run "retrain" (``CVP_PIPELINE_RUN_ID``).
2. Drift checks (models/drift.py) of the new data against the champion's snapshot under
   models/champion/: PSI of the features at t_0, accepted rows, quarantined share, date
   ranges. A failure stops here (exit 2).
3. Champion and challenger on the same, most recent holdout: the customers at t_1 and their
   window (t_1, t_0]. The challenger's numbers come from its t_1 predictions (the models the
   stages evaluate out of time); the champion's from the registered versions with the alias
   ``champion``, loaded with mlflow.pyfunc and scored on the same features. Same metric
   functions as the stages: models/metrics.py (churn ROC-AUC, Brier), models/clv_eval.py
   (CLV spend MAE, Spearman).
4. The gate (models/gate.py). Refused: no alias moves, exports untouched (exit 3). Promoted:
   the ``champion`` alias moves to both new versions, the reference data is snapshotted, and
   only then the export stage runs (``dvc repro --single-item export notebook``), so exports are only
   ever made from the champion's predictions.

Every challenger version is tagged with the decision and its reasons, and metrics/retrain.json
records the decision, the drift report, the metric comparison and the versions.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from features.errors import DataError
from models import clv_eval, drift, gate
from models import metrics as churn_metrics
from models.churn import churn_labels, prepare_features
from models.clv_pyfunc import INPUT_COLUMNS
from pipelines import io, lock, paths, tracking
from pipelines.config import ConfigError, Params

log = logging.getLogger(__name__)

STAGE = "retrain"
ALIAS = "champion"
REPORT = paths.metrics_file(STAGE)
CHAMPION_DIR = Path("models") / "champion"
REFERENCE_FEATURES = CHAMPION_DIR / "features_t0.parquet"
REFERENCE_INGEST = CHAMPION_DIR / "ingest.json"
REFERENCE = CHAMPION_DIR / "reference.json"
MAX_TAG_CHARS = 5000  # MLflow's limit on a tag value

EXIT_DRIFT = 2
EXIT_REFUSED = 3
EXIT_LOCKED = 4
EXIT_PIPELINE = 5


class RetrainStopped(Exception):
    """The retrain stopped on purpose; ``exit_code`` tells the scheduler why (see docs/retrain.md)."""

    exit_code = 1


class DriftDetected(RetrainStopped, DataError):
    exit_code = EXIT_DRIFT


class ChallengerRefused(RetrainStopped):
    exit_code = EXIT_REFUSED


class RetrainLocked(RetrainStopped):
    exit_code = EXIT_LOCKED


class PipelineFailed(RetrainStopped):
    exit_code = EXIT_PIPELINE


# --------------------------------------------------------------------------- gate rules


def gate_rules(params: Params) -> tuple[gate.MetricRule, ...]:
    """The four gated metrics with their directions and the tolerances of retrain.gate."""
    tol = params.retrain.gate
    return (
        gate.MetricRule("churn.roc_auc", higher_is_better=True, tolerance=tol.churn_auc),
        gate.MetricRule("churn.brier", higher_is_better=False, tolerance=tol.churn_brier),
        gate.MetricRule("clv.spend_mae", higher_is_better=False, tolerance=tol.clv_mae, relative=True),
        gate.MetricRule("clv.spearman", higher_is_better=True, tolerance=tol.clv_spearman),
    )


def drift_thresholds(params: Params) -> drift.DriftThresholds:
    cfg = params.retrain.drift
    return drift.DriftThresholds(
        max_psi=cfg.max_psi,
        psi_bins=cfg.psi_bins,
        psi_epsilon=cfg.psi_epsilon,
        max_row_drop=cfg.max_row_drop,
        max_row_growth=cfg.max_row_growth,
        max_quarantine_increase=cfg.max_quarantine_increase,
        max_start_shift_days=cfg.max_start_shift_days,
    )


# --------------------------------------------------------------------------- pipeline


def _executables_dir() -> Path:
    """Directory of this interpreter's scripts (dvc, cvp), put first on the stages' PATH."""
    return Path(sys.executable).parent


# What runs after the gate: the exports and the pages made from them (dvc stages, one item each).
EXPORT_STAGES = ("export", "notebook")


def repro(args: list[str], parent_run_id: str, root: Path) -> None:
    """``dvc repro <args>`` in the project, its stage runs nested under ``parent_run_id``."""
    bin_dir = _executables_dir()
    dvc = shutil.which("dvc", path=str(bin_dir)) or shutil.which("dvc") or "dvc"
    env = {**os.environ, tracking.PARENT_ENV: parent_run_id, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    command = [dvc, "repro", *args]
    log.info("running %s in %s", " ".join(["dvc", "repro", *args]), root)
    result = subprocess.run(command, cwd=root, env=env, check=False)
    if result.returncode != 0:
        raise PipelineFailed(
            f"`dvc repro {' '.join(args)}` failed with exit code {result.returncode}; "
            "the failing stage's error is above; exports and the champion are unchanged"
        )


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Versions:
    """Registered model versions, by registered model name; None when a model has none.

    ``scores`` is the whole scoring chain the segment stage registers (what is served online);
    it moves with the CLV and churn models it was built from.
    """

    clv: str | None
    churn: str | None
    scores: str | None = None

    def as_dict(self, params: Params) -> dict[str, str | None]:
        out = {params.clv.model_name: self.clv, params.churn.model_name: self.churn}
        if self.scores is not None:
            out[params.segment.model_name] = self.scores
        return out

    @property
    def empty(self) -> bool:
        return self.clv is None and self.churn is None


def registered_stages(params: Params) -> list[tuple[str, str, Path, str]]:
    """(Versions field, stage, model dir, registered name) of every model a retrain promotes."""
    stages = [
        ("clv", "clv", paths.CLV_MODEL_DIR, params.clv.model_name),
        ("churn", "churn", paths.CHURN_MODEL_DIR, params.churn.model_name),
    ]
    if params.segment.log_model and params.segment.register_model:
        stages.append(("scores", "segment", paths.SEGMENT_MODEL_DIR, params.segment.model_name))
    return stages


def challenger_versions(params: Params) -> Versions:
    """The versions the clv, churn and segment stages just registered (their registration.json)."""
    found = {}
    for field_name, stage, model_dir, name in registered_stages(params):
        target = paths.registration_file(model_dir)
        if not target.exists():
            raise DataError(f"{target}: not found; the {stage} stage registers no model (set {stage}.register_model: true)")
        registration = io.read_json(target)
        if registration.get("name") != name:
            raise DataError(f"{target}: names model '{registration.get('name')}', params say {stage}.model_name '{name}'; rerun `cvp {stage}`")
        found[field_name] = str(registration["version"])
    return Versions(**found)


def champion_versions(client: Any, params: Params) -> Versions:
    """Versions holding the ``champion`` alias (None for a model without one)."""
    from mlflow.exceptions import MlflowException

    found = {}
    for field_name, _, _, name in registered_stages(params):
        try:
            found[field_name] = str(client.get_model_version_by_alias(name, ALIAS).version)
        except MlflowException:
            found[field_name] = None
    return Versions(**found)


def tag_versions(client: Any, params: Params, versions: Versions, decision: str, reasons: list[str], run_id: str) -> None:
    """Record the gate's decision on each challenger version (promoted or refused)."""
    text = "; ".join(reasons)[:MAX_TAG_CHARS]
    for name, version in versions.as_dict(params).items():
        if version is None:
            continue
        client.set_model_version_tag(name, version, "cvp.gate.decision", decision)
        client.set_model_version_tag(name, version, "cvp.gate.reasons", text)
        client.set_model_version_tag(name, version, "cvp.retrain.run_id", run_id)


def move_champion(client: Any, params: Params, versions: Versions) -> None:
    for name, version in versions.as_dict(params).items():
        if version is None:
            continue
        client.set_registered_model_alias(name, ALIAS, version)
        log.info("%s@%s -> version %s", name, ALIAS, version)


# --------------------------------------------------------------------------- data


def current_profile() -> drift.DataProfile:
    """Rows, quarantined rows and dates of the freshly ingested data; as_of from the t_0 features."""
    if not paths.TRANSACTIONS.exists():
        raise DataError(f"{paths.TRANSACTIONS}: not found after `dvc repro segment`; check the ingest stage")
    timestamps = pd.read_parquet(paths.TRANSACTIONS, columns=["timestamp"])["timestamp"]
    quarantined = pq.ParquetFile(paths.QUARANTINE).metadata.num_rows if paths.QUARANTINE.exists() else 0
    as_of = _single_cutoff(pd.read_parquet(paths.features_at(0), columns=["cutoff"]), paths.features_at(0))
    return drift.profile_transactions(timestamps, quarantined, as_of.date())


def _single_cutoff(frame: pd.DataFrame, source: Path) -> pd.Timestamp:
    values = pd.to_datetime(frame["cutoff"]).dropna().unique()
    if len(values) != 1:
        raise DataError(f"{source}: expected one cutoff, found {len(values)}; rerun `cvp features`")
    return pd.Timestamp(values[0])


@dataclass(frozen=True)
class Reference:
    """The champion's snapshot: its features at t_0 and the profile of its data."""

    features: pd.DataFrame
    profile: drift.DataProfile
    meta: dict[str, Any]


def load_reference() -> Reference | None:
    if not (REFERENCE.exists() and REFERENCE_FEATURES.exists()):
        return None
    meta = io.read_json(REFERENCE)
    return Reference(pd.read_parquet(REFERENCE_FEATURES), drift.DataProfile.from_dict(meta["profile"]), meta)


def snapshot_reference(profile: drift.DataProfile, params: Params, versions: Versions, run_id: str) -> None:
    """Keep the new champion's features at t_0, ingest metrics and data profile for the next drift check."""
    io.write_bytes(paths.features_at(0).read_bytes(), REFERENCE_FEATURES)
    ingest_metrics = paths.metrics_file("ingest")
    if ingest_metrics.exists():
        io.write_bytes(ingest_metrics.read_bytes(), REFERENCE_INGEST)
    io.write_json(
        {
            "profile": profile.to_dict(),
            "versions": versions.as_dict(params),
            "time_unit": params.data.time_unit,
            "horizon_days": params.data.horizon_days,
            "retrain_run_id": run_id,
        },
        REFERENCE,
    )
    log.info("champion reference data written to %s", CHAMPION_DIR)


def check_drift(reference: Reference | None, profile: drift.DataProfile, params: Params) -> drift.DriftReport | None:
    """The drift report against the champion's snapshot; None without a snapshot (first run)."""
    if reference is None:
        return None
    current = pd.read_parquet(paths.features_at(0))
    try:
        return drift.drift_report(
            reference.features, current, reference.profile, profile, params.retrain.drift.psi_columns, drift_thresholds(params)
        )
    except KeyError as exc:
        raise ConfigError(f"retrain.drift.psi_columns: {exc.args[0]}; fix the list in params.yaml") from None


# --------------------------------------------------------------------------- holdout evaluation


@dataclass(frozen=True)
class Holdout:
    """The most recent holdout: customers at t_1 and what they did in (t_1, t_0]."""

    features: pd.DataFrame
    labels: pd.DataFrame
    cutoff: pd.Timestamp


def load_holdout() -> Holdout:
    features = pd.read_parquet(paths.features_at(1))
    labels = pd.read_parquet(paths.labels_at(1))
    if not features["customer_id"].reset_index(drop=True).equals(labels["customer_id"].reset_index(drop=True)):
        raise DataError(f"{paths.labels_at(1)}: customers differ from {paths.features_at(1)}; rerun `cvp features`")
    if features.empty:
        raise DataError(f"{paths.features_at(1)}: no customers at t_1; the gate needs a holdout (check data.as_of)")
    return Holdout(features, labels, _single_cutoff(features, paths.features_at(1)))


def clv_holdout_metrics(holdout: Holdout, predictions: pd.DataFrame, params: Params) -> dict[str, float]:
    """Spend MAE and Spearman rho (model CLV vs actual holdout spend), as the clv stage reports them."""
    from pipelines.clv import holdout_frame

    frame = holdout_frame(holdout.features, predictions, holdout.labels)
    summary = clv_eval.holdout_summary(frame, params.data.horizon_days, params.clv.margin)
    return {
        "clv.spend_mae": summary["spend"]["model"]["mae"],
        "clv.purchases_mae": summary["purchases"]["model"]["mae"],
        "clv.spearman": summary["ranking"]["model"]["spearman_rho"],
    }


def churn_holdout_metrics(holdout: Holdout, probability: pd.Series) -> dict[str, float]:
    """ROC-AUC and Brier of P(churn) (a Series by customer_id) against the holdout's churn labels."""
    y = churn_labels(holdout.labels)
    p = probability.reindex(y.index)
    if p.isna().any():
        raise DataError(f"churn probabilities missing for {int(p.isna().sum())} holdout customer(s); rerun `cvp churn`")
    return {"churn.roc_auc": churn_metrics.roc_auc(y, p), "churn.brier": churn_metrics.brier(y, p)}


def challenger_metrics(holdout: Holdout, params: Params) -> dict[str, float]:
    """The challenger's holdout numbers from the stages' t_1 predictions (fitted without the holdout)."""
    clv = pd.read_parquet(paths.clv_predictions_at(1))
    churn = pd.read_parquet(paths.churn_predictions_at(1)).set_index("customer_id")["churn_probability"]
    return {**churn_holdout_metrics(holdout, churn), **clv_holdout_metrics(holdout, clv, params)}


def _in_model_units(features: pd.DataFrame, days_per_unit: float, model_days_per_unit: float) -> pd.DataFrame:
    """recency and T converted from the pipeline's time unit to the model's."""
    if days_per_unit == model_days_per_unit:
        return features
    scale = days_per_unit / model_days_per_unit
    return features.assign(recency=features["recency"] * scale, T=features["T"] * scale)


def champion_clv_predictions(name: str, holdout: Holdout, params: Params) -> pd.DataFrame:
    """The champion CLV model's predictions for the holdout customers, under the current settings."""
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(f"models:/{name}@{ALIAS}")
    model_days = float(getattr(model.unwrap_python_model(), "days_per_unit", params.data.days_per_unit))
    features = _in_model_units(holdout.features, params.data.days_per_unit, model_days)
    settings = {
        "horizon_days": params.data.horizon_days,
        "discount_rate": params.clv.discount_rate,
        "margin": params.clv.margin,
        "discount_period_days": params.clv.discount_period_days,
    }
    inputs = features[[*INPUT_COLUMNS, "cutoff"]]  # dtypes of the features contract, as the stage logs them
    return pd.DataFrame(model.predict(inputs, params=settings))


def champion_churn_probability(name: str, holdout: Holdout, clv_predictions: pd.DataFrame) -> pd.Series:
    """The champion churn model's P(churn) for the holdout customers (CLV inputs from the champion CLV)."""
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(f"models:/{name}@{ALIAS}")
    X = prepare_features(holdout.features, clv_predictions)  # as the churn stage prepares its inputs
    output = pd.DataFrame(model.predict(X.reset_index(drop=True)))
    return pd.Series(output["churn_probability"].to_numpy(dtype="float64"), index=X.index)


def champion_metrics(champion: Versions, holdout: Holdout, params: Params) -> dict[str, float | None]:
    """The champion's holdout numbers; a model without a champion version gives None values."""
    out: dict[str, float | None] = dict.fromkeys(("churn.roc_auc", "churn.brier", "clv.spend_mae", "clv.purchases_mae", "clv.spearman"))
    if champion.clv is None:
        return out
    log.info("scoring the champion %s v%s on the holdout at %s", params.clv.model_name, champion.clv, holdout.cutoff.date())
    clv = champion_clv_predictions(params.clv.model_name, holdout, params)
    out.update(clv_holdout_metrics(holdout, clv, params))
    if champion.churn is not None:
        log.info("scoring the champion %s v%s on the holdout", params.churn.model_name, champion.churn)
        out.update(churn_holdout_metrics(holdout, champion_churn_probability(params.churn.model_name, holdout, clv)))
    return out


def holdout_overlap_days(reference: Reference | None, holdout: Holdout) -> int:
    """Days of the holdout window (t_1, t_0] the champion had already seen when it was trained.

    Positive when the scoring date moved by less than one horizon since the champion's: the
    champion then knows part of the holdout and the comparison leans its way.
    """
    if reference is None:
        return 0
    return max(0, (pd.Timestamp(reference.profile.as_of) - holdout.cutoff).days)


# --------------------------------------------------------------------------- run


def _require_registration(params: Params) -> None:
    for key, cfg in (("clv", params.clv), ("churn", params.churn)):
        if not cfg.register_model:
            raise ConfigError(f"params: {key}.register_model is false; retraining promotes registered versions, set it to true")


def run(params: Params, params_path: Path = Path("params.yaml"), force_promote: bool = False) -> dict[str, Any]:
    """Retrain, check drift, gate, and promote + export or refuse; return the report written.

    Raises DriftDetected (exit 2), ChallengerRefused (3), RetrainLocked (4) or PipelineFailed (5).
    """
    _require_registration(params)
    root = tracking.project_root()
    try:
        with lock.exclusive(root / lock.LOCK_NAME, params.retrain.lock_timeout_s):
            return _run_locked(params, Path(params_path), force_promote, root)
    except lock.LockBusy as exc:
        raise RetrainLocked(str(exc)) from None


@dataclass
class _Run:
    """One retrain run: its params, the override, the project root, MLflow client, parent run, report."""

    params: Params
    force: bool
    root: Path
    client: Any
    parent: str
    report: dict[str, Any]

    def repro(self, *args: str) -> None:
        repro(list(args), self.parent, self.root)

    def tag(self, versions: Versions, decision: str, reasons: list[str]) -> None:
        tag_versions(self.client, self.params, versions, decision, reasons, self.parent)


def _run_locked(params: Params, params_path: Path, force_promote: bool, root: Path) -> dict[str, Any]:
    import mlflow

    experiment_id = tracking.configure(params)
    client = mlflow.MlflowClient()
    parent = client.create_run(
        experiment_id,
        run_name=STAGE,
        tags={"cvp.kind": STAGE, "git_commit": tracking.git_commit(), "cvp.force_promote": str(force_promote).lower()},
    ).info.run_id
    log.info("retrain run %s (force_promote=%s)", parent, force_promote)
    report: dict[str, Any] = {"mlflow_run_id": parent, "force_promote": force_promote, "exported": False}
    status = "FAILED"
    try:
        _retrain(_Run(params, force_promote, root, client, parent, report))
        status = "FINISHED"
        return report
    except (ChallengerRefused, DriftDetected):
        status = "FINISHED"  # a refusal is an outcome, not a crash
        raise
    except Exception as exc:
        report.setdefault("decision", "error")
        report["error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise
    finally:
        io.write_json(report, REPORT)
        _log_report(client, parent, report)
        client.set_terminated(parent, status)


def _retrain(run: _Run) -> None:
    params, report = run.params, run.report
    run.repro("segment")
    challenger = challenger_versions(params)
    champion = champion_versions(run.client, params)
    report["versions"] = {"challenger": challenger.as_dict(params), "champion_before": champion.as_dict(params)}
    profile = current_profile()
    report.update(as_of=profile.as_of.isoformat(), data=profile.to_dict())
    if challenger == champion:
        _keep_champion(run, champion)
        return
    reference = _champion_reference(params, champion)
    drift_report = _drift_checks(run, reference, profile, challenger, champion)
    decision = _metric_gate(run, reference, drift_report, challenger, champion)
    if not decision.promoted:
        failed = "; ".join(v.reason for v in decision.verdicts if not v.passed)
        raise ChallengerRefused(f"challenger refused by the gate: {failed}; champion and exports unchanged (see {REPORT})")
    _promote(run, profile, challenger)


def _keep_champion(run: _Run, champion: Versions) -> None:
    """No stage registered a new version (inputs and params unchanged): keep it, refresh stale exports."""
    reason = "no new model versions (inputs and params unchanged since the champion): the champion stays"
    log.info(reason)
    run.report.update(decision=gate.PROMOTE, stopped_by=None, forced=run.force, reasons=[reason])
    run.report["versions"]["champion_after"] = champion.as_dict(run.params)
    run.repro("--single-item", *EXPORT_STAGES)
    run.report["exported"] = True


def _champion_reference(params: Params, champion: Versions) -> Reference | None:
    """The champion's snapshot, with a warning when it is missing or of other versions."""
    if champion.empty:
        return None
    reference = load_reference()
    if reference is None:
        log.warning("champion %s has no snapshot under %s: drift checks skipped", champion.as_dict(params), CHAMPION_DIR)
    elif reference.meta.get("versions") != champion.as_dict(params):
        log.warning(
            "the snapshot under %s is of versions %s, the champion alias is on %s",
            CHAMPION_DIR, reference.meta.get("versions"), champion.as_dict(params),
        )
    return reference


def _drift_checks(
    run: _Run, reference: Reference | None, profile: drift.DataProfile, challenger: Versions, champion: Versions
) -> drift.DriftReport | None:
    """Run the drift checks; stop (DriftDetected) on a failure unless forced. None without a snapshot."""
    drift_report = check_drift(reference, profile, run.params)
    run.report["drift"] = drift_report.to_dict() if drift_report else {"passed": True, "skipped": "no champion snapshot"}
    if drift_report is None:
        return None
    log.info("drift: %s", drift_report.summary())
    if drift_report.passed or run.force:
        return drift_report
    reasons = [f"drift: {c.describe()}" for c in drift_report.failures]
    run.report.update(decision=gate.REFUSE, stopped_by="drift", forced=False, reasons=reasons)
    run.report["versions"]["champion_after"] = champion.as_dict(run.params)
    run.tag(challenger, gate.REFUSE, reasons)
    raise DriftDetected(f"data drift against the champion's data: {drift_report.summary()}; nothing promoted or exported (see {REPORT})")


def _metric_gate(
    run: _Run, reference: Reference | None, drift_report: drift.DriftReport | None, challenger: Versions, champion: Versions
) -> gate.GateDecision:
    """Score both on the same holdout, decide, record the decision and tag the challenger versions."""
    params, report = run.params, run.report
    holdout = load_holdout()
    overlap = holdout_overlap_days(reference, holdout)
    report["holdout"] = {"cutoff": holdout.cutoff.date().isoformat(), "n_customers": int(len(holdout.features)), "champion_overlap_days": overlap}
    if overlap > 0:
        log.warning("the champion was trained on data %d day(s) into the holdout window; the comparison favours it", overlap)
    chal_metrics = challenger_metrics(holdout, params)
    champ_metrics = None if champion.empty else champion_metrics(champion, holdout, params)
    decision = gate.decide(chal_metrics, champ_metrics, gate_rules(params), force=run.force)
    reasons = list(decision.reasons)
    if drift_report is not None and not drift_report.passed:
        reasons += [f"drift overridden: {c.describe()}" for c in drift_report.failures]
    report.update(decision=decision.decision, stopped_by=None if decision.promoted else "gate", forced=decision.forced, reasons=reasons)
    report["metrics"] = decision.to_dict()["metrics"]
    report["metrics_extra"] = {"challenger": chal_metrics, "champion": champ_metrics}
    report["versions"]["champion_after"] = (challenger if decision.promoted else champion).as_dict(params)
    log.info("gate: %s%s\n  %s", decision.decision, " (forced)" if decision.forced else "", "\n  ".join(reasons))
    run.tag(challenger, f"{decision.decision}-forced" if decision.forced else decision.decision, reasons)
    return decision


def _promote(run: _Run, profile: drift.DataProfile, challenger: Versions) -> None:
    """Move the alias, snapshot the reference data, then (only then) export with the new champion."""
    move_champion(run.client, run.params, challenger)
    snapshot_reference(profile, run.params, challenger, run.parent)
    run.repro("--single-item", *EXPORT_STAGES)
    run.report["exported"] = True
    log.info("promoted %s and exported with it", challenger.as_dict(run.params))


def _log_report(client: Any, run_id: str, report: dict[str, Any]) -> None:
    """Decision tags and the numeric leaves (drift values, metric comparison) on the parent run."""
    from mlflow.entities import Metric

    client.set_tag(run_id, "cvp.retrain.decision", str(report.get("decision")))
    client.set_tag(run_id, "cvp.retrain.stopped_by", str(report.get("stopped_by")))
    client.set_tag(run_id, "cvp.gate.reasons", "; ".join(report.get("reasons", []))[:MAX_TAG_CHARS])
    flat = tracking.flatten("", {k: report[k] for k in ("drift", "metrics") if k in report})
    now = int(time.time() * 1000)
    batch = [
        Metric(key.replace("@", "_at_"), float(value), now, 0)
        for key, value in flat.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))
    ]
    if batch:
        client.log_batch(run_id, metrics=batch)
