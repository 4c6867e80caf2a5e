"""pipelines.process_exit: the installed `cvp` ends without the interpreter's teardown, and loses
nothing a normal exit would have done (threads finished, atexit handlers run, output flushed)."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from pipelines.process_exit import env_flag, exit_status

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import atexit, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
from pipelines.process_exit import exit_process

out = sys.argv[1]
def late_write():
    time.sleep(0.3)
    open(out + ".thread", "w").write("thread done")
threading.Thread(target=late_write).start()          # non-daemon: must finish first
ThreadPoolExecutor(max_workers=1).submit(lambda: None)  # an idle worker must not block the exit
atexit.register(lambda: open(out + ".atexit", "w").write("atexit ran"))
class Torn:  # freed only by the interpreter's teardown (module globals are gone by then: keep what it needs)
    def __init__(self, path, opener):
        self.path, self.opener = path, opener
    def __del__(self):
        with self.opener(self.path, "w") as f:
            f.write("torn down")
kept = Torn(out + ".teardown", open)
sys.stdout.write("buffered, no newline")
if PROFILED:  # a profiler is running when exit_process is called (removed again before the teardown)
    atexit.register(sys.setprofile, None)
    sys.setprofile(lambda *args: None)
exit_process(CODE)
"""


def run_child(tmp_path: Path, code: str, env_extra: dict | None = None, profiled: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CVP_FULL_EXIT"} | {"PYTHONPATH": str(ROOT), **(env_extra or {})}
    script = CHILD.replace("CODE", code).replace("PROFILED", str(profiled))
    return subprocess.run([sys.executable, "-c", script, str(tmp_path / "out")], capture_output=True, text=True,
                          env=env, timeout=60)  # fmt: skip


@pytest.mark.parametrize("code, status", [("None", 0), ("3", 3), ("'a message'", 1)])
def test_exit_keeps_threads_atexit_output_and_status(tmp_path, code, status):
    done = run_child(tmp_path, code)
    assert done.returncode == status, done.stderr
    assert done.stdout == "buffered, no newline"
    assert (tmp_path / "out.thread").read_text() == "thread done"
    assert (tmp_path / "out.atexit").read_text() == "atexit ran"
    if code == "'a message'":
        assert done.stderr.strip().endswith("a message")
    assert not (tmp_path / "out.teardown").exists()  # the teardown was skipped


@pytest.mark.parametrize("how", ["CVP_FULL_EXIT=1", "a profiler running"])
def test_full_exit_when_asked_or_profiled(tmp_path, how):
    env, profiled = ({"CVP_FULL_EXIT": "1"}, False) if how.startswith("CVP") else (None, True)
    done = run_child(tmp_path, "5", env, profiled=profiled)
    assert done.returncode == 5
    assert (tmp_path / "out.thread").exists() and (tmp_path / "out.atexit").exists()
    assert (tmp_path / "out.teardown").read_text() == "torn down"


def test_exit_status_maps_like_system_exit():
    assert [exit_status(c) for c in (None, 0, 2, 130, "boom")] == [0, 0, 2, 130, 1]


def test_installed_command_uses_the_fast_exit():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["cvp"] == "pipelines.launch:entry_point"
    launch = (ROOT / "pipelines" / "launch.py").read_text()
    assert "from pipelines.cli import entry_point as run_here" in launch and "finish_process(status)" in launch


@pytest.mark.parametrize("value, on", [("", False), ("0", False), ("false", False), (" No ", False), ("1", True), ("yes", True)])
def test_env_flag_reads_true_values_like_cvp_verbose(monkeypatch, value, on):
    monkeypatch.setenv("CVP_FULL_EXIT", value)
    assert env_flag("CVP_FULL_EXIT") is on
