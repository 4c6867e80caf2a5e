"""MLflow set-up shared by every stage: one store per project, one parent run per pipeline run.

The store is a sqlite database plus a local artifact root under ``<project>/tracking`` (absolute
paths, never ``./mlruns``). A stage run from a DVC temporary experiment workspace
(``<project>/.dvc/tmp/exps/...``) resolves to the same project, so it logs to the same store.
``MLFLOW_TRACKING_URI`` or ``mlflow.tracking_dir`` in params override the location.

Stage runs are nested under one parent "pipeline" run, found by a key made of the git commit
and the params file, so one ``dvc repro`` groups its stages; ``CVP_PIPELINE_RUN_ID`` pins the
parent explicitly for the child processes of `cvp retrain`; in-process callers (backtests) pass
it as the catalog's ``pipeline_run_id`` instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from features.errors import DataError
from pipelines import files
from pipelines.catalog import Catalog
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


def tracking_dir(params: Params, root: Path | str = ".") -> Path:
    """The MLflow store's directory: mlflow.tracking_dir (relative to the project) or <project>/tracking."""
    project = project_root(Path(root))
    configured = params.mlflow.tracking_dir
    if configured:
        path = Path(configured)
        return path if path.is_absolute() else project / path
    return project / "tracking"


# mlflow.set_tracking_uri / set_registry_uri also export MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI
# (for child processes), so a later configure() in the same process must not mistake the value
# it derived itself for one the user chose.
_DERIVED_TRACKING: set[str] = set()
_DERIVED_REGISTRY: set[str] = set()


def _user_uri(variable: str, derived: set[str]) -> str | None:
    value = os.environ.get(variable)
    return None if not value or value in derived else value


def configure(params: Params, root: Path | str = ".") -> str:
    """Point MLflow at the store of the project at ``root`` and its experiment; return the experiment id."""
    import mlflow

    uri = _user_uri("MLFLOW_TRACKING_URI", _DERIVED_TRACKING)
    root = tracking_dir(params, root)
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


def git_commit(root: Path | str = ".") -> str:
    """HEAD commit of the project, with '+dirty' when the work tree has changes; 'unknown' outside git."""
    try:
        root = project_root(Path(root))
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


def _pipeline_key(params_path: Path, root: Path) -> str:
    digest = hashlib.sha256(git_commit(root).encode())
    if params_path.exists():
        digest.update(params_path.read_bytes())
    return digest.hexdigest()[:16]


def _parent_run_id(experiment_id: str, paths: Catalog) -> str:
    import mlflow

    pinned = paths.pipeline_run_id or os.environ.get(PARENT_ENV)
    if pinned:
        return pinned
    key = _pipeline_key(paths.params_file, paths.root)
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
        tags={"cvp.pipeline_key": key, "cvp.kind": "pipeline", "git_commit": git_commit(paths.root)},
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
    paths: Catalog,
    section: dict[str, Any] | None = None,
    tags: dict[str, str] | None = None,
) -> Iterator[Any]:
    """An MLflow run for one stage, nested under the pipeline's parent run.

    Logs ``section`` (the stage's params, flattened) and tags the run with the stage name,
    the git commit and any extra ``tags`` (e.g. the input's hash).
    """
    import mlflow

    experiment_id = configure(params, paths.root)
    parent = _parent_run_id(experiment_id, paths)
    all_tags = {"cvp.stage": stage, "cvp.kind": "stage", "git_commit": git_commit(paths.root), **(tags or {})}
    with mlflow.start_run(run_id=parent, log_system_metrics=False):
        with mlflow.start_run(run_name=stage, nested=True, tags=all_tags) as run:
            if section:
                mlflow.log_params({k: str(v)[:500] for k, v in flatten("", section).items()})
            log.info("MLflow run %s (stage %s) in %s", run.info.run_id, stage, mlflow.get_tracking_uri())
            yield run


def finite_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numeric leaves of a nested mapping, keyed as MLflow metrics ('@' -> '_at_')."""
    import math

    return {
        k.replace("@", "_at_"): float(v)
        for k, v in flatten(prefix, metrics).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
    }


def log_metrics(metrics: dict[str, Any], prefix: str = "") -> None:
    """Log every finite numeric leaf of a nested metrics mapping."""
    import mlflow

    flat = finite_metrics(metrics, prefix)
    if flat:
        mlflow.log_metrics(flat)


def log_metrics_to(run_id: str, metrics: dict[str, Any]) -> None:
    """:func:`log_metrics` for a run that is not the active one (a retrain's or a backtest's)."""
    import time

    import mlflow
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, v, now, 0) for k, v in finite_metrics(metrics).items()]
    if batch:
        mlflow.MlflowClient().log_batch(run_id, metrics=batch)


# --------------------------------------------------------------------------- registrations


def write_registration(model_dir: Path, name: str, version: Any, run_id: str | None) -> None:
    """registration.json {"name", "version" (an int), "run_id"} of a registered model; with no
    version (registration off or failed) a stale file is removed, so nobody loads an old model."""
    target = Catalog.registration_file(model_dir)
    if version is None:
        target.unlink(missing_ok=True)
        return
    files.write_json({"name": name, "version": int(version), "run_id": run_id}, target)
    log.info("registered %s version %s", name, version)


def read_registration(model_dir: Path, stage: str) -> dict | None:
    """The registered model {"name", "version", "run_id"} of a stage, or None (with a warning)."""
    path = Catalog.registration_file(model_dir)
    if not path.exists():
        log.warning("%s not found: the %s model is reported as unregistered", path, stage)
        return None
    registration = files.read_json(path)
    if not isinstance(registration, dict) or not {"name", "version"} <= registration.keys():
        raise DataError(f"{path}: expected a JSON object with 'name' and 'version'; re-run `cvp {stage}`")
    return registration


def alias_version(name: str, alias: str) -> str | None:
    """The version of registered model ``name`` holding ``alias`` (e.g. "champion"), or None."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return str(mlflow.MlflowClient().get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def scoring_registrations(paths: Catalog) -> list[tuple[Path, str]]:
    """(artifact dir, stage) of the registered models that produce the exported scores."""
    return [(paths.CLV_MODEL_DIR, "clv"), (paths.CHURN_MODEL_DIR, "churn")]


def scoring_model_version(paths: Catalog) -> str:
    """The export's model_version text, e.g. ``cvp-clv/3;cvp-churn/2``."""
    from models.scores import model_version

    return model_version([read_registration(d, stage) for d, stage in scoring_registrations(paths)])


# --------------------------------------------------------------------------- served models

#: The project's packages a served model may import; their .py files travel with every logged
#: pyfunc (``code_paths``), so it loads where this project is not installed.
CODE_PACKAGES = ("models", "features")
PROJECT_CODE = Path(__file__).resolve().parents[1]  # the directory holding pipelines/, models/, features/


def pinned(packages: Iterable[str]) -> list[str]:
    """``name==version`` of each installed distribution, for a pyfunc's pip requirements."""
    from importlib import metadata

    return [f"{name}=={metadata.version(name)}" for name in packages]


def stage_code(directory: Path) -> list[str]:
    """Copy the .py files of CODE_PACKAGES (nothing else: not models/artifacts) into
    ``directory/<package>/`` and return those package directories, for ``code_paths``."""
    import shutil

    staged = []
    for name in CODE_PACKAGES:
        source = PROJECT_CODE / name
        target = directory / name
        target.mkdir(parents=True, exist_ok=True)
        for module in sorted(source.rglob("*.py")):
            copy = target / module.relative_to(source)
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(module, copy)
        staged.append(str(target))
    return staged


def log_pyfunc(
    name: str,
    python_model: Any,
    requirements: Iterable[str],
    registered_name: str | None,
    artifacts: dict[str, str] | None = None,
    example: Any = None,
    output: Any = None,
    signature: Any = None,
) -> Any:
    """Log a pyfunc in the active run with the project's code (``code_paths``) and pinned
    ``requirements`` (distribution names); register it as ``registered_name`` when given.
    The signature is ``signature`` or inferred from ``example`` and ``output``. Returns the ModelInfo."""
    import tempfile
    import warnings

    import mlflow.pyfunc
    from mlflow.models import infer_signature

    if signature is None and example is not None:
        with warnings.catch_warnings():
            # MLflow hints that integer columns cannot hold missing values: the contracts allow
            # none in integer columns (frequency, counts).
            warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column", category=UserWarning)
            signature = infer_signature(example, output)
    with tempfile.TemporaryDirectory(prefix="cvp-code-") as tmp:
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=python_model,
            artifacts=artifacts,
            signature=signature,
            input_example=example,
            pip_requirements=pinned(requirements),
            code_paths=stage_code(Path(tmp)),
            registered_model_name=registered_name,
        )
