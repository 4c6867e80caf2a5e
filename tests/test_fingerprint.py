"""The fingerprint stage (pipelines/fingerprint.py): what ingest would read, as stable bytes that
change whenever ingest's result could, and cheap to compute (no pandas, DuckDB or MLflow)."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines import code_fingerprint
from pipelines import fingerprint as stage
from pipelines.catalog import Catalog
from pipelines.config import DataParams, load_params
from pipelines.sources import lifetimes_file, resolve_files

ROOT = Path(__file__).resolve().parents[1]
TODAY = dt.date(2024, 5, 1)
HEAVY = ("pandas", "numpy", "pyarrow", "duckdb", "ibis", "pandera", "mlflow", "sqlalchemy", "matplotlib")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project whose data.path is data/raw/*.csv (two files)."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["data"]["path"] = "data/raw/*.csv"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "data" / "raw").mkdir(parents=True)
    for name in ("b.csv", "a.csv"):
        (tmp_path / "data" / "raw" / name).write_text("customer_id,date,amount\n1,2024-01-01,10\n")
    return tmp_path


def data_params(project: Path, **changes) -> DataParams:
    return load_params(project / "params.yaml").data.model_copy(update=changes)


def text(project: Path, today: dt.date = TODAY, **changes) -> str:
    return stage.fingerprint_text(data_params(project, **changes), project, today)


def test_same_files_and_date_give_the_same_bytes(project):
    params = load_params(project / "params.yaml")
    target = Catalog(project).path("source_fingerprint")
    stage.run(params, Catalog(project))
    first = target.read_bytes()
    stage.run(params, Catalog(project))
    assert target.read_bytes() == first
    assert json.loads(first)["source"] == "data/raw/*.csv"
    code = sorted(p.name for p in (target.parent / "code").iterdir())
    assert sorted(p.name for p in target.parent.iterdir()) == ["code", target.name]  # no temporary file left
    assert code == sorted(f"{stage}.json" for stage in code_fingerprint.STAGES)  # each stage's code


def test_every_file_of_a_glob_is_listed_in_read_order(project):
    listed = json.loads(text(project))["files"]
    assert [f["path"] for f in listed] == ["data/raw/a.csv", "data/raw/b.csv"]
    assert [project / f["path"] for f in listed] == list(resolve_files("data/raw/*.csv", project))
    before = text(project)
    (project / "data" / "raw" / "c.csv").write_text("customer_id,date,amount\n")
    assert text(project) != before
    assert len(json.loads(text(project))["files"]) == 3


def test_a_changed_size_or_mtime_changes_it(project):
    file = project / "data" / "raw" / "a.csv"
    before = text(project)
    stat = file.stat()
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000))  # touched: same bytes, new mtime
    touched = text(project)
    assert touched != before
    file.write_text(file.read_text() + "2,2024-01-02,5\n")
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000))  # same mtime as touched, bigger
    assert text(project) not in (before, touched)


def test_the_run_date_changes_it_only_through_the_effective_valid_to(project):
    # data.valid_to null: rows dated up to the run date are plausible, so a new day re-reads the source
    assert text(project, TODAY) != text(project, TODAY + dt.timedelta(days=1))
    assert json.loads(text(project, TODAY))["valid_until"] == "2024-05-02"
    # a fixed valid_to before both days: the run date no longer matters
    fixed = {"valid_to": dt.date(2020, 1, 1)}
    assert text(project, TODAY, **fixed) == text(project, TODAY + dt.timedelta(days=30), **fixed)
    assert json.loads(text(project, TODAY, **fixed))["valid_until"] == "2020-01-01"


def test_a_lifetimes_source_lists_its_bundled_file_and_the_package_version(project):
    from importlib import metadata

    found = json.loads(text(project, path="lifetimes:CDNOW_master"))
    assert [f["path"] for f in found["files"]] == [lifetimes_file("CDNOW_master.txt").as_posix()]
    assert found["files"][0]["size"] == lifetimes_file("CDNOW_master.txt").stat().st_size
    assert found["lifetimes"] == metadata.version("lifetimes")


def test_an_unreadable_source_is_recorded_for_ingest_to_report(project):
    """No stop here: ingest re-runs (the fingerprint changed) and stops with this same line."""
    found = json.loads(text(project, path="data/raw/nope.csv"))
    assert found["files"] == []
    assert found["error"] == f"data/raw/nope.csv: file not found (looked under {project}); fix data.path in params.yaml"
    assert "error" not in json.loads(text(project))


def test_cvp_fingerprint_loads_no_heavy_library(project):
    """The stage runs on every `dvc repro`: it must cost the start of `cvp`, not pandas or MLflow."""
    code = (
        "import sys\nfrom pipelines.cli import main\nmain(['fingerprint'])\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=project, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
    written = json.loads((project / "data" / "interim" / "source_fingerprint.json").read_text())
    assert [f["path"] for f in written["files"]] == ["data/raw/a.csv", "data/raw/b.csv"]
