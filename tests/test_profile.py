"""pipelines.profile: each sample booked to the right category, the breakdown adding up to the
wall time, and CVP_PROFILE writing one JSON line per command (bench/pipeline.py reads it)."""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from pipelines import profile
from pipelines.profile import category_of

SITE = "/venv/lib/python3.11/site-packages"


@pytest.mark.parametrize(
    ("stack", "expected"),
    [
        ([("/p/pipelines/cli.py", "main"), ("/p/models/churn.py", "fit")], "compute"),
        ([("/p/pipelines/cli.py", "main"), ("/p/pipelines/catalog.py", "read"), (f"{SITE}/pyarrow/parquet/core.py", "read_table")], "read"),
        ([("/p/pipelines/export.py", "run"), ("/p/pipelines/files.py", "write_csv")], "write"),
        ([("/p/pipelines/database.py", "write_table"), ("/p/pipelines/catalog.py", "read")], "write"),  # a read inside a write
        ([("/p/pipelines/database.py", "write_table"), (f"{SITE}/sqlalchemy/engine/base.py", "exec_driver_sql")], "write"),  # the SQL export, not MLflow's store
        ([("/p/pipelines/tracking.py", "stage_run"), (f"{SITE}/sqlalchemy/engine/base.py", "execute")], "mlflow"),
        ([("/p/pipelines/clv.py", "run"), ("/p/pipelines/tracking.py", "log_pyfunc"), (f"{SITE}/mlflow/pyfunc/__init__.py", "log_model")], "mlflow"),
        ([("/p/pipelines/clv.py", "run"), ("<frozen importlib._bootstrap>", "_find_and_load")], "imports"),
        ([("/p/pipelines/catalog.py", "read"), ("<frozen importlib._bootstrap>", "_find_and_load")], "imports"),
        ([(f"{SITE}/mlflow/__init__.py", "<module>"), ("<frozen importlib._bootstrap>", "_find_and_load")], "mlflow"),
        ([("/p/models/segments.py", "read")], "compute"),  # a function named read outside the project's I/O modules
        ([], "compute"),
    ],
)
def test_each_sample_is_booked_by_the_first_matching_rule(stack, expected):
    assert category_of(stack) == expected


def test_the_breakdown_splits_the_wall_time_by_sample_shares():
    seconds = profile.breakdown(Counter({"compute": 6, "read": 3, "mlflow": 1}), wall_s=2.0, start_up_s=0.5)
    assert seconds == {"start-up": 0.5, "imports": 0.0, "read": 0.6, "compute": 1.2, "write": 0.0, "mlflow": 0.2}
    assert sum(seconds.values()) == pytest.approx(2.5)
    assert profile.breakdown(Counter(), wall_s=1.0, start_up_s=None)["compute"] == 0.0


def test_describe_lists_the_largest_category_first():
    line = profile.describe("cvp clv", {"start-up": 0.1, "compute": 2.0, "mlflow": 3.0, "read": 0.01})
    assert line == "cvp clv took 5.1 s: mlflow 3.0 s, compute 2.0 s, start-up 0.1 s"


def test_the_process_age_is_known_on_linux_and_positive():
    age = profile.process_age_s()
    assert age is None or 0.0 <= age < 24 * 3600


def _busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_cvp_profile_appends_one_json_line_per_command(tmp_path, monkeypatch):
    target = tmp_path / "profile.jsonl"
    monkeypatch.setenv(profile.ENV, str(target))
    for command in ("cvp a", "cvp b"):
        with profile.profiled(command):
            _busy(0.2)
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert [line["command"] for line in lines] == ["cvp a", "cvp b"]
    for line in lines:
        assert set(line["seconds"]) == set(profile.CATEGORIES)
        assert line["seconds"]["compute"] > 0.1  # the busy loop, sampled as compute
        assert line["total_s"] == pytest.approx(sum(line["seconds"].values()), abs=1e-6)


def test_without_cvp_profile_nothing_is_sampled_or_written(tmp_path, monkeypatch):
    monkeypatch.delenv(profile.ENV, raising=False)
    started = []
    monkeypatch.setattr(profile.Sampler, "start", lambda self: started.append(self) or self)
    with profile.profiled("cvp a"):
        pass
    assert started == [] and list(tmp_path.iterdir()) == []
