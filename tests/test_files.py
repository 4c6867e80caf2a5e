"""Atomic writes leave either the old file or the new one, never a partial file."""

import json
import stat

import numpy as np
import pandas as pd
import pytest

from pipelines import files


def test_atomic_path_keeps_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "out" / "scores.csv"
    files.write_text("old\n", target)
    with pytest.raises(RuntimeError):
        with files.atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old\n"
    assert [p.name for p in target.parent.iterdir()] == ["scores.csv"]


def test_parquet_writes_are_byte_identical(tmp_path):
    frame = pd.DataFrame({"customer_id": ["b", "a"], "value": [1.5, np.nan]})
    first = files.write_parquet(frame, tmp_path / "one.parquet")
    second = files.write_parquet(frame, tmp_path / "two.parquet")
    assert files.file_sha256(first) == files.file_sha256(second)
    pd.testing.assert_frame_equal(pd.read_parquet(first), frame)


def test_json_is_stable_and_finite(tmp_path):
    path = files.write_json({"b": np.float64(0.1) + np.float64(0.2), "a": [np.int64(3), float("nan")]}, tmp_path / "m.json")
    assert path.read_text() == json.dumps({"a": [3, None], "b": 0.3}, indent=2, sort_keys=True) + "\n"


def test_frame_hash_depends_on_values_and_columns():
    frame = pd.DataFrame({"a": [1, 2]})
    assert files.frame_sha256(frame) == files.frame_sha256(frame.copy())
    assert files.frame_sha256(frame) != files.frame_sha256(frame.rename(columns={"a": "b"}))
    assert files.frame_sha256(frame) != files.frame_sha256(frame.assign(a=[1, 3]))


def test_atomic_write_syncs_the_file_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    """Without the fsyncs a crash after os.replace could leave an empty file under the target's name."""
    events = []
    real_fsync, real_replace = files.os.fsync, files.os.replace

    def recording_fsync(fd):
        info = files.os.fstat(fd)
        events.append(("fsync", info.st_ino, stat.S_ISDIR(info.st_mode)))
        real_fsync(fd)

    def recording_replace(src, dst):
        events.append(("replace", files.os.stat(src).st_ino, False))
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "fsync", recording_fsync)
    monkeypatch.setattr(files.os, "replace", recording_replace)
    target = files.write_text("new\n", tmp_path / "out" / "scores.csv")

    file_ino, dir_ino = target.stat().st_ino, target.parent.stat().st_ino
    assert target.read_text() == "new\n"
    assert events == [("fsync", file_ino, False), ("replace", file_ino, False), ("fsync", dir_ino, True)]
