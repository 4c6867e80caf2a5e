"""bench.pipeline.measure: the memory of a whole process tree, and DVC's stage lines.

The Spark route needs the tree: the driver JVM is a child that the Python process never waits
for, so rusage alone misses it."""

from __future__ import annotations

import os
import sys
import textwrap

from bench.pipeline import measure

MB = 2**20

# The parent prints two DVC-like stage lines; a grandchild holds 300 MB while the parent holds
# 200 MB; the parent exits without waiting for it (rusage reports one process at a time, never the sum).
SCRIPT = textwrap.dedent(
    """
    import subprocess, sys, time
    print("Running stage 'first':", flush=True)
    child = subprocess.Popen([sys.executable, "-c", "b = b'x' * (300 * 2**20); import time; time.sleep(2.5)"])
    mine = b"y" * (200 * 2**20)
    time.sleep(1.5)
    print("Running stage 'second':", flush=True)
    print('BENCH-RESULT {"answer": 42}', flush=True)
    """
)


def test_measure_sees_the_whole_tree_and_the_stages(tmp_path):
    env = {**os.environ}
    m = measure([sys.executable, "-c", SCRIPT], tmp_path, env, tmp_path / "log.txt")
    assert m.returncode == 0
    assert m.result == {"answer": 42}
    assert [name for name, _ in m.stage_starts] == ["first", "second"]
    assert m.max_process_bytes >= 200 * MB  # rusage: the largest single process waited for
    assert m.peak_tree_bytes >= 500 * MB  # polled: parent and grandchild together, at the same time
    assert m.peak_bytes == max(m.peak_tree_bytes, m.max_process_bytes)
    stages = m.stages()
    assert list(stages) == ["first", "second"]
    assert stages["first"]["peak_tree_bytes"] >= 500 * MB
    assert sum(s["seconds"] for s in stages.values()) <= m.seconds
    assert "Running stage 'first'" in (tmp_path / "log.txt").read_text()
