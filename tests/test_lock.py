"""The retraining lock across real processes: the second waits, then gives up naming the holder."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.lock import LockBusy, describe_holder, exclusive

ROOT = Path(__file__).resolve().parents[1]

# Holds the lock until its stdin closes (or for a fixed time), printing "held" once it has it.
HOLDER = """
import sys, time
from pipelines.lock import exclusive
with exclusive(sys.argv[1], timeout_s=10):
    print("held", flush=True)
    if sys.argv[2] == "stdin":
        sys.stdin.read()
    else:
        time.sleep(float(sys.argv[2]))
"""


def _start_holder(lock: Path, hold: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock), hold],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_process_gives_up_after_the_timeout_naming_the_holder(tmp_path):
    lock = tmp_path / ".cvp-retrain.lock"
    holder = _start_holder(lock, "stdin")
    try:
        started = time.monotonic()
        with pytest.raises(LockBusy) as err:
            with exclusive(lock, timeout_s=0.6, poll_s=0.05):
                pytest.fail("the lock was acquired while another process held it")
        waited = time.monotonic() - started
        message = str(err.value)
        assert "\n" not in message
        assert f"pid {holder.pid} on {socket.gethostname()}" in message
        assert str(lock) in message and "retrain.lock_timeout_s" in message
        assert 0.6 <= waited < 5
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
    with exclusive(lock, timeout_s=0):  # released once the holder is done
        assert json.loads(lock.read_text())["pid"] == os.getpid()


def test_second_process_waits_for_the_holder_to_finish(tmp_path):
    lock = tmp_path / ".cvp-retrain.lock"
    holder = _start_holder(lock, "0.5")
    started = time.monotonic()
    with exclusive(lock, timeout_s=20, poll_s=0.05):
        assert time.monotonic() - started >= 0.3  # the holder sleeps 0.5 s after saying "held"
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    holder.wait(timeout=10)
    assert lock.read_text() == ""  # cleared on release


def test_a_killed_holder_does_not_leave_the_lock_held(tmp_path):
    lock = tmp_path / ".cvp-retrain.lock"
    holder = _start_holder(lock, "stdin")
    holder.kill()
    holder.wait(timeout=10)
    assert f"pid {holder.pid}" in describe_holder(lock.read_text())  # stale content stays
    with exclusive(lock, timeout_s=2, poll_s=0.05):
        assert json.loads(lock.read_text())["pid"] == os.getpid()


def test_describe_holder_of_an_unreadable_file():
    assert describe_holder("") == "an unknown process"
    assert describe_holder('{"pid": 1}') == "an unknown process"
