"""MLflow set-up shared by every stage: one store per project, one parent run per pipeline run.

The store is a sqlite database plus a local artifact root under ``<project>/tracking`` (absolute
paths, never ``./mlruns``). A stage run from a DVC temporary experiment workspace
(``<project>/.dvc/tmp/exps/...``) resolves to the same project, so it logs to the same store.
``MLFLOW_TRACKING_URI`` or ``mlflow.tracking_dir`` in params override the location.

Stage runs are nested under one parent "pipeline" run, found by a key made of the git commit
and the params file, so one ``dvc repro`` groups its stages; ``CVP_PIPELINE_RUN_ID`` pins the
parent explicitly (retraining and backtests set it).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from features.errors import DataError
from pipelines import io, paths
from pipelines.config import Params

log = logging.getLogger(__name__)

PARENT_ENV = "CVP_PIPELINE_RUN_ID"
_EXPS_MARKER = (".dvc", "tmp", "exps")


def project_root(start: Path | None = None) -> Path:
    """The project directory: the nearest ancestor holding dvc.yaml, outside DVC temp workspaces."""
    here = (start or Path.cwd()).resolve()
    parts = here.parts
    for i in range(len(parts) - len(_EXPS_MARKER) + 1):
        if parts[i : i + len(_EXPS_MARKER)] == _EXPS_MARKER:
            return Path(*parts[:i])
    for candidate in (here, *here.parents):
        if (candidate / "dvc.yaml").exists():
            return candidate
    return here


def tracking_dir(params: Params) -> Path:
    configured = params.mlflow.tracking_dir
    if configured:
        path = Path(configured)
        return path if path.is_absolute() else project_root() / path
    return project_root() / "tracking"


# mlflow.set_tracking_uri / set_registry_uri also export MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI
# (for child processes), so a later configure() in the same process must not mistake the value
# it derived itself for one the user chose.
_DERIVED_TRACKING: set[str] = set()
_DERIVED_REGISTRY: set[str] = set()


def _user_uri(variable: str, derived: set[str]) -> str | None:
    value = os.environ.get(variable)
    return None if not value or value in derived else value


def configure(params: Params) -> str:
    """Point MLflow at the project's store and experiment; return the experiment id."""
    import mlflow

    uri = _user_uri("MLFLOW_TRACKING_URI", _DERIVED_TRACKING)
    root = tracking_dir(params)
    if not uri:
        root.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{root / 'mlflow.db'}"
        _DERIVED_TRACKING.add(uri)
    registry = _user_uri("MLFLOW_REGISTRY_URI", _DERIVED_REGISTRY)
    if not registry:
        registry = uri
        _DERIVED_REGISTRY.add(registry)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(registry)
    experiment = mlflow.get_experiment_by_name(params.mlflow.experiment)
    if experiment is not None:
        experiment_id = experiment.experiment_id
    else:
        artifacts = (root / "artifacts").as_uri() if uri.startswith("sqlite:") else None
        experiment_id = mlflow.create_experiment(params.mlflow.experiment, artifact_location=artifacts)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def git_commit() -> str:
    """HEAD commit of the project, with '+dirty' when the work tree has changes; 'unknown' outside git."""
    try:
        root = project_root()
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True, check=True,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _pipeline_key(params_path: Path) -> str:
    digest = hashlib.sha256(git_commit().encode())
    if params_path.exists():
        digest.update(params_path.read_bytes())
    return digest.hexdigest()[:16]


def _parent_run_id(experiment_id: str, params_path: Path) -> str:
    import mlflow

    pinned = os.environ.get(PARENT_ENV)
    if pinned:
        return pinned
    key = _pipeline_key(params_path)
    found = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=f"tags.`cvp.pipeline_key` = '{key}' and tags.`cvp.kind` = 'pipeline'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    if found:
        return found[0].info.run_id
    client = mlflow.MlflowClient()
    run = client.create_run(
        experiment_id,
        run_name="pipeline",
        tags={"cvp.pipeline_key": key, "cvp.kind": "pipeline", "git_commit": git_commit()},
    )
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def flatten(prefix: str, value: Any) -> dict[str, Any]:
    """Nested mapping -> {'a.b.c': value} for MLflow params and metrics."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out.update(flatten(f"{prefix}.{key}" if prefix else str(key), sub))
        return out
    return {prefix: value}


@contextlib.contextmanager
def stage_run(
    stage: str,
    params: Params,
    section: dict[str, Any] | None = None,
    tags: dict[str, str] | None = None,
    params_path: Path | str = "params.yaml",
) -> Iterator[Any]:
    """An MLflow run for one stage, nested under the pipeline's parent run.

    Logs ``section`` (the stage's params, flattened) and tags the run with the stage name,
    the git commit and any extra ``tags`` (e.g. the input's hash).
    """
    import mlflow

    experiment_id = configure(params)
    parent = _parent_run_id(experiment_id, Path(params_path))
    all_tags = {"cvp.stage": stage, "cvp.kind": "stage", "git_commit": git_commit(), **(tags or {})}
    with mlflow.start_run(run_id=parent, log_system_metrics=False):
        with mlflow.start_run(run_name=stage, nested=True, tags=all_tags) as run:
            if section:
                mlflow.log_params({k: str(v)[:500] for k, v in flatten("", section).items()})
            log.info("MLflow run %s (stage %s) in %s", run.info.run_id, stage, mlflow.get_tracking_uri())
            yield run


def log_metrics(metrics: dict[str, Any], prefix: str = "") -> None:
    """Log every finite numeric leaf of a nested metrics mapping."""
    import math

    import mlflow

    flat = {
        k.replace("@", "_at_"): float(v)
        for k, v in flatten(prefix, metrics).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
    }
    if flat:
        mlflow.log_metrics(flat)


# --------------------------------------------------------------------------- registrations

#: Stages whose registered models produce the exported scores: (artifact dir, stage).
SCORING_REGISTRATIONS: tuple[tuple[Path, str], ...] = ((paths.CLV_MODEL_DIR, "clv"), (paths.CHURN_MODEL_DIR, "churn"))


def read_registration(model_dir: Path, stage: str) -> dict | None:
    """The registered model {"name", "version", "run_id"} of a stage, or None (with a warning)."""
    path = paths.registration_file(model_dir)
    if not path.exists():
        log.warning("%s not found: the %s model is reported as unregistered", path, stage)
        return None
    registration = io.read_json(path)
    if not isinstance(registration, dict) or not {"name", "version"} <= registration.keys():
        raise DataError(f"{path}: expected a JSON object with 'name' and 'version'; re-run `cvp {stage}`")
    return registration


def scoring_model_version() -> str:
    """The export's model_version text, e.g. ``cvp-clv/3;cvp-churn/2``."""
    from models.scores import model_version

    return model_version([read_registration(d, stage) for d, stage in SCORING_REGISTRATIONS])
