"""`cvp retrain`: scheduled retraining with drift checks and a champion/challenger gate.

Under an exclusive lock (pipelines/lock.py): ``dvc repro segment`` (the clv, churn and segment
stages register the challengers; their runs nest under the MLflow parent run "retrain"), drift
checks against the champion's snapshot in models/champion/, then champion (loaded by its alias)
and challenger on the same most recent holdout through the gate (models/retrain_rules.py,
models/drift.py, models/gate.py). Promoted: the alias moves, the snapshot is replaced, and only
then ``dvc repro --single-item export notebook`` runs. metrics/retrain.json records every run.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from features.errors import DataError
from features.frames import single_date
from models import drift, gate
from models import retrain_rules as rules
from models.retrain_rules import ChallengerRefused, DriftDetected, PipelineFailed, RetrainLocked, RetrainStopped  # noqa: F401
from pipelines import domain, files, lock, tracking
from pipelines.catalog import Catalog
from pipelines.config import ConfigError, Params

log = logging.getLogger(__name__)
STAGE = "retrain"


def repro(args: list[str], parent_run_id: str, root: Path) -> None:
    """``dvc repro <args>`` in the project, its stage runs nested under ``parent_run_id``."""
    bin_dir = Path(sys.executable).parent  # this interpreter's dvc and cvp first on the stages' PATH
    dvc = shutil.which("dvc", path=str(bin_dir)) or shutil.which("dvc") or "dvc"
    env = {**os.environ, tracking.PARENT_ENV: parent_run_id, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    log.info("running dvc repro %s in %s", " ".join(args), root)
    code = subprocess.run([dvc, "repro", *args], cwd=root, env=env, check=False).returncode
    if code != 0:
        raise PipelineFailed(f"`dvc repro {' '.join(args)}` failed with exit code {code}; "
                             "the failing stage's error is above; exports and the champion are unchanged")  # fmt: skip


def registered(params: Params, paths: Catalog) -> dict[str, tuple[str, Path, str]]:
    """model -> (stage, model dir, registered name) of every model a retrain promotes."""
    out = {"clv": ("clv", paths.CLV_MODEL_DIR, params.clv.model_name), "churn": ("churn", paths.CHURN_MODEL_DIR, params.churn.model_name)}
    if params.segment.log_model and params.segment.register_model:
        out["scores"] = ("segment", paths.SEGMENT_MODEL_DIR, params.segment.model_name)
    return out


def challenger_versions(params: Params, paths: Catalog) -> rules.Versions:
    """The versions the clv, churn and segment stages just registered (their registration.json)."""
    found: dict[str, str | None] = dict.fromkeys(("clv", "churn", "scores"))
    for model, (stage, model_dir, name) in registered(params, paths).items():
        registration, source = tracking.read_registration(model_dir, stage), paths.registration_file(model_dir)
        if registration is None:
            raise DataError(f"{source}: not found; the {stage} stage registers no model (set {stage}.register_model: true)")
        if registration["name"] != name:
            raise DataError(f"{source}: names model '{registration['name']}', params say {stage}.model_name '{name}'; rerun `cvp {stage}`")
        found[model] = str(registration["version"])
    return rules.Versions(**found)


def champion_versions(params: Params, paths: Catalog) -> rules.Versions:
    """Versions holding the ``champion`` alias (None for a model without one)."""
    found: dict[str, str | None] = dict.fromkeys(("clv", "churn", "scores"))
    found.update({model: tracking.alias_version(name, rules.ALIAS) for model, (_, _, name) in registered(params, paths).items()})
    return rules.Versions(**found)


def load_champion(params: Params, paths: Catalog) -> Any:
    """model ("clv", "churn") -> its ``champion`` version, loaded with mlflow.pyfunc."""
    import mlflow.pyfunc

    def load(model: str) -> Any:
        name = registered(params, paths)[model][2]
        log.info("scoring the champion %s@%s on the holdout", name, rules.ALIAS)
        return mlflow.pyfunc.load_model(f"models:/{name}@{rules.ALIAS}")

    return load


def current_profile(params: Params, paths: Catalog) -> drift.DataProfile:
    """Rows, quarantined rows and dates of the freshly ingested data; as_of from the t_0 features."""
    timestamps = paths.read("transactions", params, columns=["timestamp"])["timestamp"]
    quarantined = pq.ParquetFile(paths.QUARANTINE).metadata.num_rows if paths.QUARANTINE.exists() else 0
    as_of = single_date(paths.read("features_t0", params, columns=["cutoff"]), paths.features_at(0))
    return drift.profile_transactions(timestamps, quarantined, as_of.date())


def snapshot_files(paths: Catalog) -> dict[str, Path]:
    """The champion's snapshot: features at t_0, ingest metrics, and its record (profile, versions)."""
    names = {"features": "features_t0.parquet", "ingest": "ingest.json", "record": "reference.json"}
    return {key: paths.CHAMPION_DIR / name for key, name in names.items()}


def load_reference(paths: Catalog, versions: dict[str, str | None]) -> rules.Reference | None:
    """The snapshot of the champion ``versions``, with a warning when it is missing or of other versions."""
    snapshot = snapshot_files(paths)
    if not (snapshot["record"].exists() and snapshot["features"].exists()):
        log.warning("champion %s has no snapshot under %s: drift checks skipped", versions, paths.CHAMPION_DIR)
        return None
    record = files.read_json(snapshot["record"])
    if record.get("versions") != versions:
        log.warning("the snapshot under %s is of versions %s, the champion alias is on %s", paths.CHAMPION_DIR, record.get("versions"), versions)
    return rules.Reference(pd.read_parquet(snapshot["features"]), drift.DataProfile.from_dict(record["profile"]), record)


def snapshot_reference(profile: drift.DataProfile, params: Params, paths: Catalog, versions: dict[str, str | None], run_id: str) -> None:
    """Keep the new champion's features at t_0, ingest metrics and data profile for the next drift check."""
    snapshot = snapshot_files(paths)
    files.write_bytes(paths.features_at(0).read_bytes(), snapshot["features"])
    if paths.path("metrics_ingest").exists():
        files.write_bytes(paths.path("metrics_ingest").read_bytes(), snapshot["ingest"])
    record = {"profile": profile.to_dict(), "versions": versions, "time_unit": params.data.time_unit,
              "horizon_days": params.data.horizon_days, "retrain_run_id": run_id}  # fmt: skip
    files.write_json(record, snapshot["record"])
    log.info("champion reference data written to %s", paths.CHAMPION_DIR)


def check_drift(reference: rules.Reference, profile: drift.DataProfile, params: Params, paths: Catalog) -> drift.DriftReport:
    """The drift report of the new data against the champion's snapshot."""
    try:
        return drift.drift_report(reference.features, paths.read("features_t0", params), reference.profile, profile,
                                  params.retrain.drift.psi_columns, domain.drift_thresholds(params))  # fmt: skip
    except KeyError as exc:
        raise ConfigError(f"retrain.drift.psi_columns: {exc.args[0]}; fix the list in params.yaml") from None


def run(params: Params, paths: Catalog, force_promote: bool = False) -> dict[str, Any]:
    """Retrain, check drift, gate, and promote + export or refuse; return the report written.

    Raises DriftDetected (exit 2), ChallengerRefused (3), RetrainLocked (4) or PipelineFailed (5).
    """
    for key, cfg in (("clv", params.clv), ("churn", params.churn)):
        if not cfg.register_model:
            raise ConfigError(f"params: {key}.register_model is false; retraining promotes registered versions, set it to true")
    try:
        with lock.exclusive(paths.root.resolve() / lock.LOCK_NAME, params.retrain.lock_timeout_s):
            return _Retrain(params, paths, force_promote).run()
    except lock.LockBusy as exc:
        raise RetrainLocked(str(exc)) from None


class _Retrain:
    """One retrain run: params, catalog, the override, the MLflow parent run and the report."""

    def __init__(self, params: Params, paths: Catalog, force: bool) -> None:
        import mlflow

        experiment_id = tracking.configure(params, paths.root)
        self.params, self.paths, self.force = params, paths, force
        self.names = {model: name for model, (_, _, name) in registered(params, paths).items()}
        self.client = mlflow.MlflowClient()
        tags = {"cvp.kind": STAGE, "git_commit": tracking.git_commit(paths.root), "cvp.force_promote": str(force).lower()}
        self.parent = self.client.create_run(experiment_id, run_name=STAGE, tags=tags).info.run_id
        self.report: dict[str, Any] = {"mlflow_run_id": self.parent, "force_promote": force, "exported": False}
        log.info("retrain run %s (force_promote=%s)", self.parent, force)

    def run(self) -> dict[str, Any]:
        status = "FAILED"
        try:
            self.retrain()
            status = "FINISHED"
            return self.report
        except (ChallengerRefused, DriftDetected):
            status = "FINISHED"  # a refusal is an outcome, not a crash
            raise
        except Exception as exc:
            self.report.setdefault("decision", "error")
            self.report["error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise
        finally:
            files.write_json(self.report, self.paths.RETRAIN_REPORT)
            for tag, key in (("cvp.retrain.decision", "decision"), ("cvp.retrain.stopped_by", "stopped_by")):
                self.client.set_tag(self.parent, tag, str(self.report.get(key)))
            self.client.set_tag(self.parent, "cvp.gate.reasons", "; ".join(self.report.get("reasons", []))[: rules.MAX_TAG_CHARS])
            tracking.log_metrics_to(self.parent, {k: self.report[k] for k in ("drift", "metrics") if k in self.report})
            self.client.set_terminated(self.parent, status)

    def retrain(self) -> None:
        params, paths, report = self.params, self.paths, self.report
        repro(["segment"], self.parent, paths.root)
        challenger, champion = challenger_versions(params, paths), champion_versions(params, paths)
        report["versions"] = {"challenger": challenger.as_dict(self.names), "champion_before": champion.as_dict(self.names)}
        profile = current_profile(params, paths)
        report.update(as_of=profile.as_of.isoformat(), data=profile.to_dict())
        if challenger == champion:
            log.info("no new model versions: the champion stays")
            return self.decided(rules.keep_record(self.force), champion, export=True)
        reference = None if champion.empty else load_reference(paths, champion.as_dict(self.names))
        drift_report = None if reference is None else check_drift(reference, profile, params, paths)
        report["drift"] = drift_report.to_dict() if drift_report else {"passed": True, "skipped": "no champion snapshot"}
        if drift_report is not None:
            log.info("drift: %s", drift_report.summary())
        if drift_report is not None and not drift_report.passed and not self.force:
            self.decided(rules.drift_refusal(drift_report), champion, challenger, gate.REFUSE)
            raise DriftDetected(f"data drift against the champion's data: {drift_report.summary()}; "
                                f"nothing promoted or exported (see {paths.RETRAIN_REPORT})")  # fmt: skip
        decision = self.gate(reference, drift_report, challenger, champion)
        if not decision.promoted:
            raise ChallengerRefused(rules.refusal_message(decision, paths.RETRAIN_REPORT))
        for name, version in challenger.as_dict(self.names).items():  # promote, snapshot, then export
            self.client.set_registered_model_alias(name, rules.ALIAS, version)
            log.info("%s@%s -> version %s", name, rules.ALIAS, version)
        snapshot_reference(profile, params, paths, challenger.as_dict(self.names), self.parent)
        self.decided({}, challenger, export=True)

    def decided(self, record: dict[str, Any], after: rules.Versions, tagged: rules.Versions | None = None, tag: str = "",
                export: bool = False) -> None:  # fmt: skip
        """Record the outcome and the champion after it; tag the challenger versions; export."""
        self.report.update(record)
        self.report["versions"]["champion_after"] = after.as_dict(self.names)
        tags = {"cvp.gate.decision": tag, "cvp.gate.reasons": "; ".join(self.report.get("reasons", []))[: rules.MAX_TAG_CHARS],
                "cvp.retrain.run_id": self.parent}  # fmt: skip
        for name, version in (tagged.as_dict(self.names) if tagged else {}).items():
            for key, value in tags.items():
                self.client.set_model_version_tag(name, version, key, value)
        if export:
            repro(["--single-item", *rules.EXPORT_STAGES], self.parent, self.paths.root)
            self.report["exported"] = True
            log.info("exported with the champion %s", self.report["versions"]["champion_after"])

    def gate(self, reference: rules.Reference | None, drift_report: drift.DriftReport | None, challenger: rules.Versions,
             champion: rules.Versions) -> gate.GateDecision:  # fmt: skip
        """Score both on the same holdout, decide, record the decision and tag the challenger versions."""
        params, paths = self.params, self.paths
        holdout = rules.holdout(paths.read("features_t1", params), paths.read("labels_t1", params), paths.features_at(1), paths.labels_at(1))
        settings = domain.clv_settings(params)
        overlap = rules.holdout_overlap_days(reference.profile.as_of if reference else None, holdout.cutoff)
        self.report["holdout"] = {"cutoff": holdout.cutoff.date().isoformat(), "n_customers": len(holdout.features), "champion_overlap_days": overlap}
        if overlap > 0:
            log.warning("the champion was trained on data %d day(s) into the holdout window; the comparison favours it", overlap)
        chal = rules.challenger_metrics(holdout, paths.read("clv_predictions_t1", params), paths.read("churn_predictions_t1", params), settings)
        chal[domain.INTERVAL_COVERAGE] = rules.interval_coverage(files.read_json(paths.metrics_file("clv")))
        champ = None if champion.empty else rules.champion_metrics(champion, holdout, settings, load_champion(params, paths))
        decision = gate.decide(chal, champ, domain.gate_rules(params), force=self.force)
        record = {**rules.gate_record(decision, drift_report), "metrics_extra": {"challenger": chal, "champion": champ}}
        self.decided(record, challenger if decision.promoted else champion, challenger, rules.version_tag(decision))
        log.info("gate: %s%s\n  %s", decision.decision, " (forced)" if decision.forced else "", "\n  ".join(self.report["reasons"]))
        return decision
