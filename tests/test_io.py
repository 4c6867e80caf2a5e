"""Atomic writes leave either the old file or the new one, never a partial file."""

import json

import numpy as np
import pandas as pd
import pytest

from pipelines import io


def test_atomic_path_keeps_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "out" / "scores.csv"
    io.write_text("old\n", target)
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old\n"
    assert [p.name for p in target.parent.iterdir()] == ["scores.csv"]


def test_parquet_writes_are_byte_identical(tmp_path):
    frame = pd.DataFrame({"customer_id": ["b", "a"], "value": [1.5, np.nan]})
    first = io.write_parquet(frame, tmp_path / "one.parquet")
    second = io.write_parquet(frame, tmp_path / "two.parquet")
    assert io.file_sha256(first) == io.file_sha256(second)
    pd.testing.assert_frame_equal(pd.read_parquet(first), frame)


def test_json_is_stable_and_finite(tmp_path):
    path = io.write_json({"b": np.float64(0.1) + np.float64(0.2), "a": [np.int64(3), float("nan")]}, tmp_path / "m.json")
    assert path.read_text() == json.dumps({"a": [3, None], "b": 0.3}, indent=2, sort_keys=True) + "\n"


def test_frame_hash_depends_on_values_and_columns():
    frame = pd.DataFrame({"a": [1, 2]})
    assert io.frame_sha256(frame) == io.frame_sha256(frame.copy())
    assert io.frame_sha256(frame) != io.frame_sha256(frame.rename(columns={"a": "b"}))
    assert io.frame_sha256(frame) != io.frame_sha256(frame.assign(a=[1, 3]))
