"""A stage killed with SIGKILL in the middle of writing leaves no partial output, and running it
again gives the outputs of an uninterrupted run, byte for byte.

On a small copy of the project (20,000 synthetic transactions, its own MLflow store):

- features (Parquet streamed by pipelines.files.write_parquet_stream) dies after the first row group
  of its third file reached the temporary file, twice, then is re-run with `cvp features` (in this
  process: tests/inprocess.py);
- clv (predictions, pickled models, model summary, metrics, plots) dies with its fourth output
  half written, then is re-run with `dvc repro`.

The process kills itself from inside pipelines.files (tests/kill_mid_write.py counts the writes),
so the kill always lands at the same point. An output is compared with the same output of an
uninterrupted run in another copy: the stages are deterministic, so a present output that is
complete is byte-identical to it.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from filelock import FileLock

from pipelines import files
from pipelines.catalog import CUTOFF_OFFSETS, Catalog
from pipelines.generate import write_synthetic
from tests import inprocess

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = Path(__file__).with_name("kill_mid_write.py")
PROJECT_FILES = ("dvc.yaml", "params.yaml", "pyproject.toml", ".dvcignore")
PROJECT_DIRS = ("features", "models", "pipelines")  # the stages' code (their fingerprints: data/interim/code/)
ROWS, SEED = 20_000, 11
paths = Catalog(".")  # the outputs relative to a project root, as dvc.yaml names them
REGISTRATION = paths.registration_file(paths.CLV_MODEL_DIR).as_posix()


# --------------------------------------------------------------------------- helpers


def environment(project: Path) -> dict[str, str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{project / 'tracking' / 'mlflow.db'}"
    for name in ("MLFLOW_REGISTRY_URI", "CVP_PIPELINE_RUN_ID"):
        env.pop(name, None)
    return env


def run(args: list[str], project: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=project, env=environment(project), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def run_stages(project: Path, *stages: str) -> None:
    """``cvp <stage>`` for each stage, uninterrupted, in this process (no start-up at all)."""
    for stage in stages:
        done = inprocess.cvp(project, stage, env=inprocess.store_env(project))
        assert done.returncode == 0, f"cvp {stage} failed:\n{done.stderr[-3000:]}"


def run_killed(project: Path, kill_point: str, stage: str) -> subprocess.Popen:
    """Run ``cvp <stage>`` through the launcher that SIGKILLs itself at ``kill_point``."""
    process = subprocess.Popen(
        [sys.executable, str(LAUNCHER), kill_point, stage], cwd=project, env=environment(project),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    out, err = process.communicate(timeout=600)
    assert process.returncode == -signal.SIGKILL, f"exit {process.returncode}, expected SIGKILL:\n{out[-2000:]}\n{err[-3000:]}"
    return process


def declared_outputs(project: Path, stage: str) -> list[str]:
    """The stage's outs, metrics and plots in dvc.yaml (files or directories)."""
    spec = yaml.safe_load((project / "dvc.yaml").read_text())["stages"][stage]
    entries = [entry for key in ("outs", "metrics", "plots") for entry in spec.get(key, [])]
    return [entry if isinstance(entry, str) else next(iter(entry)) for entry in entries]


def output_hashes(project: Path, stage: str) -> dict[str, str]:
    """sha256 of every file of the stage's declared outputs, hidden files included (DVC hashes
    them as part of a directory output)."""
    hashes = {}
    for declared in declared_outputs(project, stage):
        path = project / declared
        found = [Path(d) / name for d, _, names in os.walk(path) for name in names] if path.is_dir() else [path]
        hashes |= {f.relative_to(project).as_posix(): files.file_sha256(f) for f in found if f.is_file()}
    return hashes


def temp_files(project: Path, stage: str) -> list[Path]:
    """Temporary files in the directories the stage writes to."""
    dirs = {project / d if (project / d).is_dir() else (project / d).parent for d in declared_outputs(project, stage)}
    return sorted(p for d in dirs if d.is_dir() for p in Path(d).rglob(".*.tmp"))


def check_readable(path: Path) -> None:
    """Parse the file by its type: a truncated file raises."""
    suffix = path.suffix
    if suffix == ".parquet":
        pq.read_table(path)
    elif suffix == ".json":
        json.loads(path.read_text())
    elif suffix == ".pkl":
        pickle.loads(path.read_bytes())
    elif suffix == ".csv":
        pd.read_csv(path)
    elif suffix == ".png":
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(b"IEND\xaeB`\x82"), path
    else:
        raise AssertionError(f"no reader for {path}")


def is_temp(name: str) -> bool:
    return Path(name).name.startswith(".") and name.endswith(".tmp")


def assert_no_partial_output(project: Path, stage: str, reference: dict[str, str]) -> set[str]:
    """Every output present after the kill is complete: readable and identical to the
    uninterrupted run's; return the outputs present (temporary files aside)."""
    present = {name: digest for name, digest in output_hashes(project, stage).items() if not is_temp(name)}
    assert set(present) <= set(reference), f"unexpected files: {set(present) - set(reference)}"
    for name, digest in present.items():
        check_readable(project / name)
        if name != REGISTRATION:
            assert digest == reference[name], f"{name} differs from the uninterrupted run"
    return set(present)


def writer_pid(temp: Path) -> int:
    """The pid in a temporary name '.<target>.<pid>.<random>.tmp'."""
    return int(temp.name.rsplit(".", 3)[1])


def copy_project(source: Path, dest: Path) -> Path:
    """A copy of a prepared project without its MLflow store (each copy tracks to its own)."""

    def ignore(directory: str, names: list[str]) -> list[str]:
        return ["tracking"] if Path(directory) == source else []

    shutil.copytree(source, dest, ignore=ignore, dirs_exist_ok=True)
    return dest


def shared_project(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """A project built once per test session, also across pytest-xdist workers."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    root, done = base / name, base / f"{name}.complete"
    with FileLock(str(base / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir()
            build(root)
            done.touch()
    return root


# --------------------------------------------------------------------------- projects


def build_inputs(root: Path) -> None:
    """Project copy with synthetic transactions, ingested, and features from an uninterrupted run."""
    for name in PROJECT_FILES:
        shutil.copy2(ROOT / name, root / name)
    for name in PROJECT_DIRS:
        shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "artifacts"))
    source = write_synthetic(root / "raw" / "transactions.parquet", ROWS, seed=SEED)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"].update(source.data_params(), path="raw/transactions.parquet")
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_stages(root, "ingest", "features")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    return shared_project(tmp_path_factory, "killed_stage_inputs", build_inputs)


@pytest.fixture
def seeded(seed_mlflow_store):
    """``seeded(project)``: the project with a new, empty MLflow store for its `cvp` processes
    (a copy of the migrated template: creating one takes seconds)."""

    def seed(project: Path) -> Path:
        seed_mlflow_store(project / "tracking" / "mlflow.db")
        return project

    return seed


@pytest.fixture(scope="module")
def clv_reference(tmp_path_factory, inputs, seed_mlflow_store) -> Path:
    def build(root: Path) -> None:
        copy_project(inputs, root)
        seed_mlflow_store(root / "tracking" / "mlflow.db")
        run(["cvp", "clv"], root)

    return shared_project(tmp_path_factory, "killed_stage_clv", build)


# --------------------------------------------------------------------------- stale temporary files


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_write_removes_only_the_temporary_files_of_dead_writers(tmp_path):
    dead = dead_pid()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = [
            f".scores.parquet.{dead}.k2x_9abc.tmp",
            f"..scores.parquet.{dead}.a1b2c3d4.tmp.{dead}.e5f6g7h8.tmp",  # export's nested staging
        ]
        kept = [
            f".scores.parquet.{live.pid}.a1b2c3d4.tmp",  # a concurrent writer in another process
            f".scores.parquet.{os.getpid()}.a1b2c3d4.tmp",  # one of this process
            ".scores.parquet.a1b2c3d4.tmp",  # no pid: cannot tell whether its writer runs
            f".scores.parquet.gz.{dead}.a1b2c3d4.tmp",  # another target
            f".other.parquet.{dead}.a1b2c3d4.tmp",
        ]
        for name in stale + kept:
            (tmp_path / name).write_bytes(b"partial")
        files.write_bytes(b"complete", tmp_path / "scores.parquet")
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*kept, "scores.parquet"])
        assert (tmp_path / "scores.parquet").read_bytes() == b"complete"
    finally:
        live.kill()
        live.wait()


# --------------------------------------------------------------------------- killed stages


def test_features_killed_mid_stream_leaves_no_partial_file_and_a_rerun_matches(inputs, tmp_path, seeded):
    reference = output_hashes(inputs, "features")
    f0, f1 = paths.features_at(0).as_posix(), paths.features_at(1).as_posix()
    assert set(reference) == {*(paths.features_at(k).as_posix() for k in (0, 1, 2)),
                              *(paths.labels_at(k).as_posix() for k in (1, 2)), "metrics/features.json"}  # fmt: skip
    project = seeded(copy_project(inputs, tmp_path / "project"))
    for declared in declared_outputs(project, "features"):
        if (project / declared).is_dir():
            shutil.rmtree(project / declared)
        else:
            (project / declared).unlink()

    # Written in order features_t0, features_t1, labels_t1, ...: the third dies mid-stream.
    first = run_killed(project, "row_group:3", "features")
    assert assert_no_partial_output(project, "features", reference) == {f0, f1}
    [temp] = temp_files(project, "features")
    assert temp.parent == project / paths.FEATURES_DIR and temp.name.startswith(f".labels_t1.parquet.{first.pid}.")
    assert temp.stat().st_size > 0
    with pytest.raises(pa.ArrowInvalid):  # the row group is there, the footer is not
        pq.read_metadata(temp)

    # Killed again at the same point: the dead writer's file is removed, not piled up.
    second = run_killed(project, "row_group:3", "features")
    assert assert_no_partial_output(project, "features", reference) == {f0, f1}
    assert [writer_pid(t) for t in temp_files(project, "features")] == [second.pid]

    run_stages(project, "features")
    # Same files (no stale temporary file in data/features, so DVC's hash is the same), same bytes.
    assert output_hashes(project, "features") == reference
    assert temp_files(project, "features") == []


@pytest.mark.slow
def test_clv_killed_mid_write_leaves_no_partial_file_and_dvc_repro_matches(inputs, clv_reference, tmp_path, seeded):
    reference = output_hashes(clv_reference, "clv")
    predictions = {paths.clv_predictions_at(k).as_posix() for k in CUTOFF_OFFSETS}
    pickle_path = (paths.CLV_MODEL_DIR / "purchase_model.pkl").as_posix()
    assert predictions | {pickle_path, REGISTRATION, "metrics/clv.json", "plots/clv/tracking.png"} <= set(reference)
    project = seeded(copy_project(inputs, tmp_path / "project"))
    assert output_hashes(project, "clv") == {}

    # Written in order predictions_t0..t2, purchase_model.pkl, ...: the fourth dies half written.
    killed = run_killed(project, "replace:4", "clv")
    assert assert_no_partial_output(project, "clv", reference) == predictions
    [temp] = temp_files(project, "clv")
    assert temp.parent == project / paths.CLV_MODEL_DIR and writer_pid(temp) == killed.pid
    assert temp.name.startswith(".purchase_model.pkl.")
    assert 0 < temp.stat().st_size < (clv_reference / pickle_path).stat().st_size

    run(["dvc", "init", "--no-scm", "-q"], project)
    result = run(["dvc", "repro", "--single-item", "clv"], project)
    assert "Running stage 'clv'" in result.stdout
    after = output_hashes(project, "clv")
    assert set(after) == set(reference)
    assert {k: v for k, v in after.items() if k != REGISTRATION} == {k: v for k, v in reference.items() if k != REGISTRATION}
    # The registration names an MLflow run of its own store; the model and its version are the same.
    registered = [{k: files.read_json(p / REGISTRATION)[k] for k in ("name", "version")} for p in (project, clv_reference)]
    assert registered == [{"name": "cvp-clv", "version": 1}] * 2
    assert temp_files(project, "clv") == []
