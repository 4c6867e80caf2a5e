"""MLflow set-up shared by every stage: one store per project, one parent run per pipeline run.

The store is a sqlite database plus a local artifact root under ``<project>/tracking`` (absolute
paths, never ``./mlruns``). A stage run from a DVC temporary experiment workspace
(``<project>/.dvc/tmp/exps/...``) resolves to the same project, so it logs to the same store.
``MLFLOW_TRACKING_URI`` or ``mlflow.tracking_dir`` in params override the location.

Stage runs are nested under one parent "pipeline" run, found by a key made of the git commit
and the params file, so one ``dvc repro`` groups its stages; ``CVP_PIPELINE_RUN_ID`` pins the
parent explicitly for the child processes of `cvp retrain`; in-process callers (backtests) pass
it as the catalog's ``pipeline_run_id`` instead.

Stages that register no model (ingest, features, export) log through :func:`stage_record`: the
run (params, metrics, tags, artifacts, parent key, times) is recorded in the process, and under
the `cvp` stage commands (:func:`deferred_stage_records`) written to a queue,
``<tracking dir>/pending/<id>/``, instead of importing MLflow (about 4 s of imports and store
set-up per process). The next process that sets MLflow up for the project (:func:`configure`:
the clv, churn and segment stages, the notebook, retrain, backtest, score) or `cvp flush-runs`
sends the queued runs first, oldest first, with their original stage names, tags, parent run,
start and end times. A record leaves the queue only once MLflow has all of it; a failed flush
says so in one line and leaves it there. In-process callers (tests, backtests) send at once.
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from features.errors import DataError
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


def store_uris(params: Params, root: Path | str = ".") -> tuple[str, str, str | None]:
    """(tracking URI, registry URI, artifact location of a new experiment) of the project at
    ``root``: the user's MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI, else its sqlite store."""
    uri = _user_uri("MLFLOW_TRACKING_URI", _DERIVED_TRACKING)
    store = tracking_dir(params, root)
    if not uri:
        uri = f"sqlite:///{store / 'mlflow.db'}"
        _DERIVED_TRACKING.add(uri)
    registry = _user_uri("MLFLOW_REGISTRY_URI", _DERIVED_REGISTRY)
    if not registry:
        registry = uri
        _DERIVED_REGISTRY.add(registry)
    artifacts = (store / "artifacts").as_uri() if uri.startswith("sqlite:") else None
    return uri, registry, artifacts


def configure(params: Params, root: Path | str = ".") -> str:
    """Point MLflow at the store of the project at ``root`` and its experiment; return the experiment id.
    The project's queued stage runs are sent first (:func:`flush`), so the store is complete."""
    experiment_id = _point_mlflow(params, root)
    flush(params, root)
    return experiment_id


def _point_mlflow(params: Params, root: Path | str) -> str:
    """Set MLflow's tracking and registry URIs and its experiment (created if missing); its id."""
    import mlflow

    uri, registry, artifacts = store_uris(params, root)
    if uri == f"sqlite:///{tracking_dir(params, root) / 'mlflow.db'}":
        tracking_dir(params, root).mkdir(parents=True, exist_ok=True)
    for store in {uri, registry}:
        seed_sqlite_store(store)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(registry)
    experiment_id = _experiment_id(mlflow.MlflowClient(), params.mlflow.experiment, artifacts)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def store_template() -> Path:
    """Where `make env` puts an empty MLflow sqlite store, migrated by this environment's MLflow."""
    import importlib.metadata

    return Path(sys.prefix) / "share" / "cvp" / f"mlflow-store-{importlib.metadata.version('mlflow')}.db"


def prepare_store_template() -> Path:
    """Create :func:`store_template` unless it exists: MLflow creates a store in a scratch file
    (its ~30 schema migrations, several seconds), which is then moved into place."""
    import tempfile

    target = store_template()
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        db = Path(scratch) / "mlflow.db"
        import mlflow

        mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
        os.replace(db, target)
    log.info("MLflow store template: %s", target)
    return target


def seed_sqlite_store(uri: str) -> bool:
    """Start a new sqlite store (``uri`` names a file that does not exist yet) as a copy of the
    environment's template (:func:`prepare_store_template`): the same tables at the same schema
    revision and the Default experiment, without running the migrations in this process. Returns
    whether it did; without a template, MLflow creates the store itself."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or "?" in uri:
        return False
    db, template = Path(uri[len(prefix):]), store_template()
    if db.exists() or not template.exists() or not db.parent.is_dir():
        return False
    partial = db.with_name(f".{db.name}.{os.getpid()}.partial")
    shutil.copyfile(template, partial)
    try:
        os.link(partial, db)  # fails when another process created the store meanwhile: keep theirs
    except FileExistsError:
        return False
    except OSError:  # no hard links on this file system
        if db.exists():
            return False
        os.replace(partial, db)
    finally:
        partial.unlink(missing_ok=True)
    log.debug("new MLflow store %s from the template %s", db, template)
    return True


def _experiment_id(client: Any, name: str, artifact_location: str | None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location)


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


def _pipeline_key(params_path: Path, commit: str) -> str:
    """The parent run's key: the git commit (``commit``) and the params file's bytes."""
    digest = hashlib.sha256(commit.encode())
    if params_path.exists():
        digest.update(params_path.read_bytes())
    return digest.hexdigest()[:16]


def _parent_ref(paths: Catalog, commit: str) -> dict[str, str]:
    """The parent run: {"run_id"} when pinned, else {"key", "git_commit"} to find or create it."""
    pinned = paths.pipeline_run_id or os.environ.get(PARENT_ENV)
    if pinned:
        return {"run_id": pinned}
    return {"key": _pipeline_key(paths.params_file, commit), "git_commit": commit}


def _pipeline_run_id(client: Any, experiment_id: str, parent: dict[str, str], start_ms: int | None = None) -> str:
    """The pinned parent, or the latest "pipeline" run with the parent's key (created if none)."""
    if parent.get("run_id"):
        return parent["run_id"]
    key = parent["key"]
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`cvp.pipeline_key` = '{key}' and tags.`cvp.kind` = 'pipeline'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if found:
        return found[0].info.run_id
    tags = {"cvp.pipeline_key": key, "cvp.kind": "pipeline", "git_commit": parent["git_commit"]}
    run = client.create_run(experiment_id, start_time=start_ms, run_name="pipeline", tags=tags)
    client.set_terminated(run.info.run_id, end_time=start_ms)
    return run.info.run_id


def _parent_run_id(experiment_id: str, paths: Catalog, commit: str) -> str:
    import mlflow

    return _pipeline_run_id(mlflow.MlflowClient(), experiment_id, _parent_ref(paths, commit))


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
    commit = git_commit(paths.root)
    parent = _parent_run_id(experiment_id, paths, commit)
    all_tags = {"cvp.stage": stage, "cvp.kind": "stage", "git_commit": commit, **(tags or {})}
    with mlflow.start_run(run_id=parent, log_system_metrics=False):
        with mlflow.start_run(run_name=stage, nested=True, tags=all_tags) as run:
            if section:
                mlflow.log_params({k: str(v)[:500] for k, v in flatten("", section).items()})
            log.info("MLflow run %s (stage %s) in %s", run.info.run_id, stage, mlflow.get_tracking_uri())
            yield run


@contextlib.contextmanager
def _outside_a_notebook() -> Iterator[None]:
    """While the block runs, ``import IPython`` fails if the process has not imported IPython yet.

    MLflow asks whether it runs in a notebook by importing IPython. From a worker thread that
    import is visible half-done in ``sys.modules`` to the main thread, where matplotlib reads
    ``IPython.version_info`` when it makes a figure (AttributeError, "partially initialized
    module"). A process that has not imported IPython is not a notebook, so the answer is known
    without the import. A process that has (a notebook, an IPython shell) is left as it is."""
    if "IPython" in sys.modules:
        yield
        return
    sys.modules["IPython"] = None  # type: ignore[assignment]  # import system: "not importable"
    try:
        yield
    finally:
        if sys.modules.get("IPython", 0) is None:
            del sys.modules["IPython"]


@contextlib.contextmanager
def in_background(open_run: Any) -> Iterator[Any]:
    """Enter ``open_run()`` (a stage's MLflow run, e.g. :func:`stage_run`: MLflow's imports, the store
    set-up, the queued runs sent) on a worker thread at once, and yield ``later(fn, *args)``, which
    queues a call for that thread: the stage computes meanwhile instead of waiting for MLflow. At the
    block's end the queued calls run, then the run closes there (FAILED, with the block's error, if
    anything raised); the block is left once MLflow is done. One thread makes every call, as
    MLflow's active run belongs to a thread."""
    with _outside_a_notebook():
        with _on_a_worker(open_run) as later:
            yield later


@contextlib.contextmanager
def _on_a_worker(open_run: Any) -> Iterator[Any]:
    """:func:`in_background`'s worker thread and queue."""
    from concurrent.futures import ThreadPoolExecutor

    worker, stack = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cvp-mlflow"), contextlib.ExitStack()
    opened = worker.submit(lambda: stack.enter_context(open_run()))
    queued = []

    def later(fn: Any, *args: Any) -> None:
        queued.append(worker.submit(lambda: opened.exception() is None and fn(*args)))

    try:
        yield later
        opened.result()
        for call in queued:
            call.result()
    except BaseException as exc:
        if opened.exception() is None:
            worker.submit(stack.__exit__, type(exc), exc, exc.__traceback__).result()
        raise
    else:
        worker.submit(stack.close).result()
    finally:
        worker.shutdown()


def finite_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numeric leaves of a nested mapping, keyed as MLflow metrics ('@' -> '_at_')."""
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


def log_stage_results(stage: str, paths: Catalog, metrics: dict[str, Any], tags: dict[str, Any]) -> None:
    """A model stage's results in its active run: tags, metrics (finite numeric leaves), its
    metrics file and its plots directory (as ``plots/``)."""
    import mlflow

    mlflow.set_tags(tags)
    log_metrics(metrics)
    mlflow.log_artifact(str(paths.metrics_file(stage)))
    mlflow.log_artifacts(str(paths.plots_dir(stage)), artifact_path="plots")


def log_metrics_to(run_id: str, metrics: dict[str, Any]) -> None:
    """:func:`log_metrics` for a run that is not the active one (a retrain's or a backtest's)."""
    import time

    import mlflow
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, v, now, 0) for k, v in finite_metrics(metrics).items()]
    if batch:
        mlflow.MlflowClient().log_batch(run_id, metrics=batch)


# --------------------------------------------------------------------------- queued stage runs

QUEUE_DIR = "pending"  # under the tracking directory
RECORD_FILE = "record.json"
RECORD_FORMAT = 1
FLUSH_LOCK_TIMEOUT_S = 120  # another process sending the same queue (a parallel experiment)
_PARTIAL = ".partial-"  # a record still being written: .partial-<pid>-<ns>
_SENT = ".sent-"  # a sent record being removed
_PROCESS = uuid.uuid4().hex  # tells the records of this process from those of another
_mode = {"defer": False}


@contextlib.contextmanager
def deferred_stage_records() -> Iterator[None]:
    """In the block, :func:`stage_record` queues its run for a later :func:`flush` instead of
    sending it when the stage ends: the `cvp` stage commands do, so their process never imports MLflow."""
    before, _mode["defer"] = _mode["defer"], True
    try:
        yield
    finally:
        _mode["defer"] = before


def queue_dir(params: Params, root: Path | str = ".") -> Path:
    """Where the project's stage runs wait for MLflow: ``<tracking dir>/pending``."""
    return tracking_dir(params, root) / QUEUE_DIR


def queued_runs(params: Params, root: Path | str = ".") -> list[Path]:
    """The project's queued stage runs, oldest first (a directory listing: no MLflow import)."""
    queue = queue_dir(params, root)
    if not queue.is_dir():
        return []
    return sorted(d for d in queue.iterdir() if d.is_dir() and not d.name.startswith("."))


def _now_ms() -> int:
    return int(time.time() * 1000)


class StageRecord:
    """The MLflow run of one stage as plain data plus copies of its artifacts, until it is sent.

    The calls mirror MLflow's fluent API. Artifacts are copied when logged: the stage may remove
    or replace the files before the run is sent."""

    def __init__(self, staging: Path, data: dict[str, Any]) -> None:
        self.staging, self.data = staging, data
        self.run_id: str | None = None  # the MLflow run id once sent in this process

    def log_metrics(self, metrics: dict[str, Any], prefix: str = "") -> None:
        """Every finite numeric leaf of a nested mapping, as :func:`log_metrics`; timestamped now."""
        now = _now_ms()
        self.data["metrics"].extend([key, value, now] for key, value in finite_metrics(metrics, prefix).items())

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.data["tags"].update({key: str(value) for key, value in tags.items()})

    def log_dict(self, dictionary: dict[str, Any], artifact_file: str) -> None:
        """``dictionary`` as the JSON artifact ``artifact_file`` (as ``mlflow.log_dict``)."""
        self.data["dicts"].append({"artifact_file": artifact_file, "dictionary": dictionary})

    def log_artifact(self, path: Path | str, artifact_path: str | None = None,
                     unless_logged_by: tuple[str, str] | None = None) -> None:  # fmt: skip
        """The file ``path`` under ``artifact_path``. With ``unless_logged_by=(stage, text)`` it is
        skipped when the run of ``stage`` in the same pipeline run has an artifact whose path holds ``text``."""
        self._copy(Path(path), artifact_path, unless_logged_by)

    def log_artifacts(self, directory: Path | str, artifact_path: str | None = None) -> None:
        """Every file under ``directory``, under ``artifact_path``."""
        self._copy(Path(directory), artifact_path, None)

    def _copy(self, source: Path, artifact_path: str | None, unless: tuple[str, str] | None) -> None:
        target = self.staging / "artifacts" / str(len(self.data["artifacts"]))
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            target.mkdir(parents=True)
            target = Path(shutil.copy2(source, target / source.name))
        self.data["artifacts"].append({
            "path": target.relative_to(self.staging).as_posix(), "dir": source.is_dir(),
            "artifact_path": artifact_path, "unless_logged_by": list(unless) if unless else None,
        })  # fmt: skip


@contextlib.contextmanager
def stage_record(
    stage: str,
    params: Params,
    paths: Catalog,
    section: dict[str, Any] | None = None,
    tags: dict[str, str] | None = None,
) -> Iterator[StageRecord]:
    """The MLflow run of a stage that registers no model: what :func:`stage_run` logs (``section``
    as params, the stage, kind, commit and ``tags`` as tags, nested under the pipeline's parent
    run), kept by a :class:`StageRecord` and sent when the block ends, or queued for the next
    :func:`flush` under :func:`deferred_stage_records`. A block that raises gives a FAILED run."""
    queue = queue_dir(params, paths.root)
    queue.mkdir(parents=True, exist_ok=True)
    staging = queue / f"{_PARTIAL}{os.getpid()}-{time.time_ns()}"
    staging.mkdir()
    record = StageRecord(staging, _new_record(stage, params, paths, section, tags))
    try:
        yield record
    except BaseException:
        try:
            _finish(record, params, paths, "FAILED")
        except Exception as exc:  # the stage's own error is the one to raise
            log.warning("stage %s: its FAILED MLflow run was not recorded (%s)", stage, exc)
        raise
    _finish(record, params, paths, "FINISHED")


def _new_record(stage: str, params: Params, paths: Catalog, section: dict[str, Any] | None,
                tags: dict[str, str] | None) -> dict[str, Any]:  # fmt: skip
    """A stage run as JSON-ready data: where it goes (store, experiment, parent) and what it holds."""
    uri, registry, artifacts = store_uris(params, paths.root)
    commit = git_commit(paths.root)
    return {
        "format": RECORD_FORMAT, "stage": stage, "status": "RUNNING", "start_ms": _now_ms(), "end_ms": None,
        "tracking_uri": uri, "registry_uri": registry, "experiment": params.mlflow.experiment,
        "artifact_location": artifacts, "parent": _parent_ref(paths, commit), "context": _process_context(),
        "tags": {"cvp.stage": stage, "cvp.kind": "stage", "git_commit": commit, **{k: str(v) for k, v in (tags or {}).items()}},
        "params": {key: str(value)[:500] for key, value in flatten("", section or {}).items()},
        "metrics": [], "dicts": [], "artifacts": [], "run_id": None,
    }  # fmt: skip


def _finish(record: StageRecord, params: Params, paths: Catalog, status: str) -> None:
    """Close the record and move it into the queue; send it now unless deferred."""
    from pipelines import files

    data = record.data
    data.update(status=status, end_ms=_now_ms())
    files.write_text(json.dumps(data, default=str), record.staging / RECORD_FILE)
    ready = record.staging.with_name(f"{time.time_ns():020d}-{os.getpid()}")
    record.staging.rename(ready)
    if _mode["defer"]:
        log.info("stage %s: MLflow run queued in %s (sent by the next stage that logs to MLflow, or `cvp flush-runs`)",
                 data["stage"], ready.parent)  # fmt: skip
        return
    _point_mlflow(params, paths.root)
    record.run_id = flush(params, paths.root, strict=status == "FINISHED").get(ready.name)
    if record.run_id:
        log.info("MLflow run %s (stage %s) in %s", record.run_id, data["stage"], data["tracking_uri"])


def flush(params: Params, root: Path | str = ".", strict: bool = False) -> dict[str, str]:
    """Send the project's queued stage runs to MLflow, oldest first; return {record name: run id}.

    Stops at the first failure, so later runs keep their order: raises DataError (one line)
    when ``strict``, else logs it as one WARNING; unsent records stay queued for the next flush."""
    if not queued_runs(params, root):
        return {}
    import filelock

    queue, sent = queue_dir(params, root), {}
    try:
        with filelock.FileLock(queue / ".flush.lock", timeout=FLUSH_LOCK_TIMEOUT_S):
            _drop_leftovers(queue)
            cache: dict[Any, Any] = {}
            for ready in queued_runs(params, root):  # listed again: another process may have sent some
                sent[ready.name] = _send(ready, cache)
                done = ready.with_name(f"{_SENT}{ready.name}")
                ready.rename(done)
                shutil.rmtree(done, ignore_errors=True)
    except Exception as exc:
        left = len(queued_runs(params, root))
        first = " ".join(str(exc).split())[:300] or type(exc).__name__
        message = (f"{left} queued MLflow stage run(s) not sent ({type(exc).__name__}: {first}); they stay in "
                   f"{queue} and the next flush sends them (`cvp flush-runs`)")  # fmt: skip
        if strict:
            raise DataError(message) from exc
        log.warning(message)
    if sent:
        log.info("sent %d queued stage run(s) to MLflow", len(sent))
    return sent


def _drop_leftovers(queue: Path) -> None:
    """Remove sent records left by an interrupted removal, and the partial records of stages
    that were killed (their process is gone): a killed stage has no run to send."""
    for entry in queue.iterdir():
        if entry.name.startswith(_SENT):
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.name.startswith(_PARTIAL) and not _pid_alive(int(entry.name[len(_PARTIAL):].split("-")[0])):
            log.info("dropped %s: the stage writing it was killed before it finished", entry)
            shutil.rmtree(entry, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _send(ready: Path, cache: dict[Any, Any]) -> str:
    """Send one queued run; return its run id. A run that an interrupted flush created but did
    not finish is deleted and sent again, so a run is never sent twice."""
    from mlflow.entities import Metric, Param

    from pipelines import files

    data = json.loads((ready / RECORD_FILE).read_text())
    if data.get("format") != RECORD_FORMAT:
        raise ValueError(f"{ready / RECORD_FILE}: record format {data.get('format')}, expected {RECORD_FORMAT}")
    client, experiment_id = _destination(data, cache)
    if data["run_id"] and _already_sent(client, data):
        return data["run_id"]
    parent_key = (data["tracking_uri"], experiment_id, json.dumps(data["parent"], sort_keys=True))
    if parent_key not in cache:
        cache[parent_key] = _pipeline_run_id(client, experiment_id, data["parent"], data["start_ms"])
    parent = cache[parent_key]
    tags = _context_tags(data["context"], {**data["tags"], "mlflow.parentRunId": parent, "mlflow.runName": data["stage"]})
    run_id = data["run_id"] = client.create_run(experiment_id, start_time=data["start_ms"], tags=tags, run_name=data["stage"]).info.run_id
    files.write_text(json.dumps(data, default=str), ready / RECORD_FILE)  # a retry finds (and replaces) it
    client.log_batch(run_id, metrics=[Metric(k, v, ts, 0) for k, v, ts in data["metrics"]],
                     params=[Param(k, v) for k, v in data["params"].items()])  # fmt: skip
    for entry in data["dicts"]:
        client.log_dict(run_id, entry["dictionary"], entry["artifact_file"])
    for entry in data["artifacts"]:
        unless = entry["unless_logged_by"]
        if unless and _sibling_logged(client, experiment_id, parent, *unless):
            continue
        (client.log_artifacts if entry["dir"] else client.log_artifact)(run_id, str(ready / entry["path"]), entry["artifact_path"])
    _end_parent(client, parent, data)
    client.set_terminated(run_id, data["status"], end_time=data["end_ms"])  # last: a finished run is a sent one
    return run_id


def _destination(data: dict[str, Any], cache: dict[Any, Any]) -> tuple[Any, str]:
    """The client of the record's store and its experiment id (created as configure() would)."""
    import mlflow

    key = (data["tracking_uri"], data["registry_uri"], data["experiment"])
    if key not in cache:
        client = mlflow.MlflowClient(tracking_uri=data["tracking_uri"], registry_uri=data["registry_uri"])
        cache[key] = client, _experiment_id(client, data["experiment"], data["artifact_location"])
    return cache[key]


def _already_sent(client: Any, data: dict[str, Any]) -> bool:
    """True when the record's run is complete in MLflow; an incomplete one is deleted."""
    from mlflow.exceptions import MlflowException

    try:
        info = client.get_run(data["run_id"]).info
    except MlflowException:
        return False  # gone (e.g. a new store): send it again
    if info.status == data["status"] and info.end_time == data["end_ms"]:
        return True
    client.delete_run(data["run_id"])
    return False


def _end_parent(client: Any, parent: str, data: dict[str, Any]) -> None:
    """The parent ends with the stage, as when the stage resumed it: its status and end time,
    unless something later already ended it."""
    end_time = client.get_run(parent).info.end_time
    if end_time is None or end_time <= data["end_ms"]:
        client.set_terminated(parent, data["status"], end_time=data["end_ms"])


def _sibling_logged(client: Any, experiment_id: str, parent: str, stage: str, text: str) -> bool:
    """True when a ``stage`` run under ``parent`` has an artifact whose path contains ``text``."""
    siblings = client.search_runs(
        [experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}' and tags.`cvp.stage` = '{stage}'"
    )
    return any(text in a.path for sibling in siblings for a in client.list_artifacts(sibling.info.run_id))


def _process_context() -> dict[str, Any]:
    """What MLflow's run-context tags are made of, as the recording process sees it."""
    main = sys.argv[0] if sys.argv and sys.argv[0] else None
    try:
        user = getpass.getuser()
    except (ImportError, KeyError, OSError):
        user = "unknown"
    return {
        "process": _PROCESS, "main": main, "main_path": os.path.abspath(main) if main and os.path.isfile(main) else main,
        "user_env": os.environ.get("MLFLOW_TRACKING_USERNAME") or None, "user": user,
        "run_context": os.environ.get("MLFLOW_RUN_CONTEXT"),
    }  # fmt: skip


def _context_tags(context: dict[str, Any], tags: dict[str, str]) -> dict[str, str]:
    """``tags`` with the context tags ``mlflow.start_run`` adds: MLflow's own when this process
    recorded the run; else those of the recording process (user, main file, MLFLOW_RUN_CONTEXT,
    the main file's git commit, branch and remote as MLflow finds them)."""
    from mlflow.tracking.context import registry

    if context["process"] == _PROCESS:
        return registry.resolve_tags(tags)
    from mlflow.utils.credentials import read_mlflow_creds

    resolved = {
        "mlflow.user": context["user_env"] or read_mlflow_creds().username or context["user"],
        "mlflow.source.name": context["main"] or "<console>",
        "mlflow.source.type": "LOCAL",
    }
    if context["main_path"]:
        resolved.update(_git_tags(context["main_path"]))
    if context["run_context"]:
        resolved.update(json.loads(context["run_context"]))
    return {**resolved, **tags}


@functools.lru_cache(maxsize=8)
def _git_tags(main_path: str) -> dict[str, str]:
    """MLflow's git tags of the repository holding ``main_path`` (none outside git)."""
    from mlflow.utils import git_utils
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_BRANCH, MLFLOW_GIT_COMMIT, MLFLOW_GIT_REPO_URL

    commit = git_utils.get_git_commit(main_path)
    if commit is None:
        return {}
    found = {MLFLOW_GIT_COMMIT: commit, MLFLOW_GIT_BRANCH: git_utils.get_git_branch(main_path),
             MLFLOW_GIT_REPO_URL: git_utils.get_git_repo_url(main_path)}  # fmt: skip
    return {key: value for key, value in found.items() if value is not None}


# --------------------------------------------------------------------------- registrations


def write_registration(model_dir: Path, name: str, version: Any, run_id: str | None) -> None:
    """registration.json {"name", "version" (an int), "run_id"} of a registered model; with no
    version (registration off or failed) a stale file is removed, so nobody loads an old model."""
    from pipelines import files

    target = Catalog.registration_file(model_dir)
    if version is None:
        target.unlink(missing_ok=True)
        return
    files.write_json({"name": name, "version": int(version), "run_id": run_id}, target)
    log.info("registered %s version %s", name, version)


def read_registration(model_dir: Path, stage: str) -> dict | None:
    """The registered model {"name", "version", "run_id"} of a stage, or None (with a warning)."""
    from pipelines import files

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
