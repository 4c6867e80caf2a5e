"""One MLflow store per project (also from DVC temp workspaces); stages nest under one parent run;
the runs of stages without a model wait in a queue until a process that sets MLflow up sends them."""

import getpass
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from features.errors import DataError
from pipelines import tracking
from pipelines.catalog import Catalog
from pipelines.config import parse_params
from tests.inprocess import cvp

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


# --------------------------------------------------------------------------- queued stage runs


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory) -> str:
    """One sqlite store for the queue tests (creating a store's tables takes seconds); each test
    has its own experiment, so its own parent run."""
    return f"sqlite:///{tmp_path_factory.mktemp('queue-store')}/mlflow.db"


def queue_params(tmp_path: Path, experiment: str):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["mlflow"].update(tracking_dir=str(tmp_path / "store"), experiment=experiment)
    return parse_params(raw)


@pytest.fixture()
def project(tmp_path, monkeypatch, store_uri, request):
    """(params, catalog, client) of a project whose queue is under tmp_path, logging to the shared store."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.delenv(tracking.PARENT_ENV, raising=False)
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    return queue_params(tmp_path, f"queue-{request.node.name}"), Catalog(tmp_path, tmp_path / "params.yaml"), mlflow.MlflowClient(store_uri)


def stage_runs(client, params, **tags) -> list:
    """The runs of the test's experiment with these tags, oldest first (none before it exists)."""
    experiment = client.get_experiment_by_name(params.mlflow.experiment)
    if experiment is None:
        return []
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    return client.search_runs([experiment.experiment_id], query, order_by=["attributes.start_time ASC"])


def record_export_like(params, paths, tmp_path) -> None:
    """A stage record with everything export logs: params, nested metrics, tags, a dict, a file, a directory."""
    (tmp_path / "figs").mkdir()
    (tmp_path / "figs" / "a.png").write_bytes(b"png")
    (tmp_path / "report.html").write_text("<p>report</p>")
    with tracking.stage_record("export", params, paths, section={"table": "scores", "batch": {"size": 40}},
                               tags={"input_sha256": "abc"}) as record:  # fmt: skip
        record.log_metrics({"rows": 3, "headline": {"total": 1.5, "bad": float("nan"), "flag": True}})
        record.set_tags({"cvp.model_version": "cvp-clv/1"})
        record.log_dict({"rows": 3}, "export.json")
        record.log_artifacts(tmp_path / "figs", "figures")
        record.log_artifact(tmp_path / "report.html", "report")
    (tmp_path / "report.html").write_text("<p>changed after the stage</p>")  # the queued copy is the one sent


def test_a_deferred_stage_is_queued_without_mlflow_then_sent_with_everything_it_logged(project, tmp_path):
    params, paths, client = project
    started = int(time.time() * 1000)
    with tracking.deferred_stage_records():
        record_export_like(params, paths, tmp_path)
    assert len(tracking.queued_runs(params, paths.root)) == 1
    assert client.get_experiment_by_name(params.mlflow.experiment) is None  # MLflow not touched yet

    sent = tracking.flush(params, paths.root)
    (run,) = stage_runs(client, params, **{"cvp.stage": "export"})
    assert list(sent.values()) == [run.info.run_id] and tracking.queued_runs(params, paths.root) == []
    assert run.data.params == {"table": "scores", "batch.size": "40"}
    assert run.data.metrics == {"rows": 3.0, "headline.total": 1.5}
    tags = run.data.tags
    assert {k: tags[k] for k in ("cvp.stage", "cvp.kind", "input_sha256", "cvp.model_version", "mlflow.runName")} == {
        "cvp.stage": "export", "cvp.kind": "stage", "input_sha256": "abc", "cvp.model_version": "cvp-clv/1", "mlflow.runName": "export"}
    assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.user"] == getpass.getuser()
    assert run.info.status == "FINISHED" and started <= run.info.start_time <= run.info.end_time <= int(time.time() * 1000)
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"export.json", "figures", "report"}
    assert [a.path for a in client.list_artifacts(run.info.run_id, "figures")] == ["figures/a.png"]
    report = Path(client.download_artifacts(run.info.run_id, "report/report.html", str(tmp_path)))
    assert report.read_text() == "<p>report</p>"
    parent = client.get_run(tags["mlflow.parentRunId"])
    assert parent.data.tags["cvp.kind"] == "pipeline" and parent.info.end_time == run.info.end_time


def test_queued_runs_are_sent_in_order_under_the_parent_the_next_stage_uses(project):
    params, paths, client = project
    with tracking.deferred_stage_records():
        for stage in ("ingest", "features"):
            with tracking.stage_record(stage, params, paths, section={"stage": stage}) as record:
                record.log_metrics({"n": 1})
    assert stage_runs(client, params) == []
    with tracking.stage_record("segment", params, paths) as immediate:  # out of the block: sent at its end, after the queue
        pass
    assert [r.info.run_id for r in stage_runs(client, params, **{"cvp.stage": "segment"})] == [immediate.run_id]
    with tracking.stage_run("clv", params, paths) as clv:
        pass
    runs = stage_runs(client, params, **{"cvp.kind": "stage"})
    assert [r.data.tags["cvp.stage"] for r in runs] == ["ingest", "features", "segment", "clv"]
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {clv.data.tags["mlflow.parentRunId"]}
    assert len(stage_runs(client, params, **{"cvp.kind": "pipeline"})) == 1
    assert tracking.queued_runs(params, paths.root) == []


def test_a_failed_flush_says_so_in_one_line_and_the_retry_sends_the_run_once(project, monkeypatch, caplog):
    params, paths, client = project
    with tracking.deferred_stage_records(), tracking.stage_record("ingest", params, paths, section={"a": 1}) as record:
        record.log_metrics({"rows": 5})

    def broken(*args, **kwargs):
        raise OSError("disk full\nsecond line")

    with monkeypatch.context() as patched:
        patched.setattr(mlflow.MlflowClient, "log_batch", broken)  # fails after the run was created
        with caplog.at_level("WARNING", logger="pipelines.tracking"):
            assert tracking.flush(params, paths.root) == {}
        with pytest.raises(DataError, match=r"^1 queued MLflow stage run\(s\) not sent \(OSError: disk full second line\)"):
            tracking.flush(params, paths.root, strict=True)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning.startswith("1 queued MLflow stage run(s) not sent (OSError: disk full second line)") and "\n" not in warning
    assert len(tracking.queued_runs(params, paths.root)) == 1

    tracking.flush(params, paths.root)
    (run,) = stage_runs(client, params, **{"cvp.stage": "ingest"})  # the half-sent copies were deleted
    assert run.info.status == "FINISHED" and run.data.metrics == {"rows": 5.0} and run.data.params == {"a": "1"}
    assert tracking.queued_runs(params, paths.root) == []


def test_a_stage_that_fails_gets_a_failed_run_and_its_own_error(project):
    params, paths, client = project
    with pytest.raises(ValueError, match="boom"):
        with tracking.stage_record("features", params, paths):
            raise ValueError("boom")
    (run,) = stage_runs(client, params, **{"cvp.stage": "features"})
    assert run.info.status == "FAILED"
    assert client.get_run(run.data.tags["mlflow.parentRunId"]).info.status == "FAILED"


def test_a_killed_stage_leaves_nothing_to_send_and_a_pinned_parent_is_kept(project, monkeypatch):
    params, paths, client = project
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    killed = tracking.queue_dir(params, paths.root) / f".partial-{dead}-1"
    killed.mkdir(parents=True)
    experiment_id = tracking.configure(params, paths.root)
    pinned = client.create_run(experiment_id, run_name="retrain").info.run_id
    monkeypatch.setenv(tracking.PARENT_ENV, pinned)
    with tracking.deferred_stage_records(), tracking.stage_record("ingest", params, paths):
        pass
    tracking.flush(params, paths.root)
    assert not killed.exists()
    (run,) = stage_runs(client, params, **{"cvp.stage": "ingest"})
    assert run.data.tags["mlflow.parentRunId"] == pinned


def test_a_queued_run_never_imports_mlflow_and_keeps_the_recording_process_context(project, tmp_path):
    params, paths, client = project
    code = (
        "import sys\nfrom pathlib import Path\nimport yaml\nfrom pipelines import tracking\n"
        "from pipelines.catalog import Catalog\nfrom pipelines.config import parse_params\n"
        "root = Path(sys.argv[1])\nraw = yaml.safe_load(Path('params.yaml').read_text())\n"
        "raw['mlflow'].update(tracking_dir=str(root / 'store'), experiment=sys.argv[2])\n"
        "with tracking.deferred_stage_records():\n"
        "    with tracking.stage_record('ingest', parse_params(raw), Catalog(root, root / 'params.yaml')) as r:\n"
        "        r.log_metrics({'rows': 7})\n"
        "assert 'mlflow' not in sys.modules, 'deferred logging imported mlflow'\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path), params.mlflow.experiment], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    tracking.flush(params, paths.root)
    (run,) = stage_runs(client, params, **{"cvp.stage": "ingest"})
    assert run.data.tags["mlflow.source.name"] == "-c"  # the recording process's main file, as mlflow.start_run tags it
    assert run.data.tags["mlflow.user"] == getpass.getuser() and run.data.metrics == {"rows": 7.0}


def test_cvp_flush_runs_sends_the_queue_or_says_in_one_line_why_not(project, tmp_path, monkeypatch):
    params, paths, client = project
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the store's directory should be")
    store = {"MLFLOW_TRACKING_URI": f"sqlite:///{blocked / 'mlflow.db'}"}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["MLFLOW_TRACKING_URI"])
    with tracking.deferred_stage_records(), tracking.stage_record("ingest", params, paths):
        pass
    # `cvp flush-runs` in this process (tests/inprocess.py: the command's parsing, one-line
    # errors and exit codes without an interpreter start-up; tests/test_cli.py runs the process).
    done = cvp(tmp_path, "flush-runs", env=store)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("cvp: error: 1 queued MLflow stage run(s) not sent (") and "`cvp flush-runs`" in line
    assert len(tracking.queued_runs(params, paths.root)) == 1

    blocked.unlink()
    done = cvp(tmp_path, "flush-runs", env=store)
    assert done.returncode == 0, done.stderr
    assert tracking.queued_runs(params, paths.root) == []
    (run,) = stage_runs(mlflow.MlflowClient(f"sqlite:///{blocked / 'mlflow.db'}"), params, **{"cvp.kind": "stage"})
    assert run.data.tags["cvp.stage"] == "ingest"


# --------------------------------------------------------------------------- store template


def test_a_new_sqlite_store_starts_from_the_template_and_works(tmp_path, monkeypatch):
    import mlflow

    template = tmp_path / "share" / "template.db"
    monkeypatch.setattr(tracking, "store_template", lambda: template)
    assert tracking.prepare_store_template() == template and template.exists()
    built = template.stat().st_mtime_ns
    assert tracking.prepare_store_template() == template and template.stat().st_mtime_ns == built  # once

    db = tmp_path / "project" / "tracking" / "mlflow.db"
    db.parent.mkdir(parents=True)
    assert tracking.seed_sqlite_store(f"sqlite:///{db}")
    assert db.read_bytes() == template.read_bytes()
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    experiment = client.create_experiment("x", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "m", 1.5)
    assert client.get_run(run.info.run_id).data.metrics == {"m": 1.5}
    assert [e.name for e in client.search_experiments()] == ["x", "Default"]


def test_an_existing_store_a_missing_template_or_another_backend_are_left_alone(tmp_path, monkeypatch):
    template = tmp_path / "template.db"
    monkeypatch.setattr(tracking, "store_template", lambda: template)
    db = tmp_path / "mlflow.db"
    assert not tracking.seed_sqlite_store(f"sqlite:///{db}")  # no template: MLflow creates the store
    assert not db.exists()
    template.write_bytes(b"template")
    db.write_bytes(b"mine")
    assert not tracking.seed_sqlite_store(f"sqlite:///{db}") and db.read_bytes() == b"mine"
    assert not tracking.seed_sqlite_store("postgresql://u@h/db")
    assert not tracking.seed_sqlite_store(f"sqlite:///{tmp_path / 'no_such_dir' / 'mlflow.db'}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db", "template.db"]  # no partial file left
