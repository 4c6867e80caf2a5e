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


def every_csv_dtype(n: int = 12_000, seed: int = 5) -> pd.DataFrame:
    """Each dtype the project writes as CSV, with the values whose text is easy to get wrong."""
    rng = np.random.default_rng(seed)
    floats = rng.gamma(1.0, 5.0, n) * 10.0 ** rng.integers(-9, 20, n)  # repr switches to exponents
    floats[:12] = [1.0, 0.1, 1e-05, 1e16, 1.5e16, 123456789012345.6, -0.0, 5e-324, 1 / 3, 100.0, np.inf, -np.inf]
    text = rng.choice(["plain", "a,b", 'say "hi"', "two\nlines", " padded ", "é", "III"], n).astype(object)
    text[rng.uniform(size=n) < 0.1] = None
    return pd.DataFrame(
        {
            "customer_id": pd.Series([f"c{i:06d}" for i in rng.permutation(n)], dtype="str"),
            "as_of": pd.Series(pd.Timestamp("1998-06-30"), index=range(n)).astype("datetime64[us]"),
            "day": pd.to_datetime("2020-01-01") + pd.to_timedelta(rng.integers(0, 900, n), unit="D"),
            "value": floats,
            "with_nan": np.where(rng.uniform(size=n) < 0.3, np.nan, rng.uniform(size=n)),
            "count": rng.integers(-5, 10**12, n),
            "flag": rng.uniform(size=n) < 0.5,
            "quadrant": pd.Categorical(rng.choice(["I", "II", "x,y", 'q"q'], n)),
            "text": pd.Series(text, dtype="str"),
            "object_text": pd.Series(rng.choice(["u", "v,w"], n), dtype=object),
        }
    )


def pandas_csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False, lineterminator="\n").encode()


def test_large_csv_goes_through_duckdb_with_the_bytes_of_pandas(tmp_path):
    frame = every_csv_dtype()
    assert len(frame) >= files.CSV_ENGINE_MIN_ROWS
    assert files.csv_columns_sql(frame) is not None  # every column is written by DuckDB
    files.write_csv(frame, tmp_path / "all.csv")
    assert (tmp_path / "all.csv").read_bytes() == pandas_csv(frame)


@pytest.mark.parametrize(
    "column",
    [
        pd.Series(["a#b", "x"] * 6_000),  # DuckDB quotes '#'
        pd.Series(["", "x"] * 6_000),  # ... and the empty string
        pd.Series(["a\rb", "x"] * 6_000),  # ... and a carriage return
        pd.Series([pd.Timestamp("2020-01-01 12:30"), pd.Timestamp("2020-01-02")] * 6_000),  # time of day
        pd.Series([1.5, 2.25] * 6_000, dtype="float32"),
        pd.Series([1, None] * 6_000, dtype="Int64"),
        pd.Series(["a", 1] * 6_000, dtype=object),
    ],
)
def test_columns_duckdb_writes_apart_from_pandas_fall_back_to_pandas(tmp_path, column):
    frame = pd.DataFrame({"id": range(len(column)), "x": column})
    assert files.csv_columns_sql(frame) is None
    files.write_csv(frame, tmp_path / "x.csv")
    assert (tmp_path / "x.csv").read_bytes() == pandas_csv(frame)


def test_small_and_one_column_frames_go_through_pandas(tmp_path):
    one = pd.DataFrame({"x": [1.0, np.nan] * 6_000})  # pandas writes the missing value as ""
    assert files.csv_columns_sql(one) is None
    files.write_csv(one, tmp_path / "one.csv")
    assert (tmp_path / "one.csv").read_bytes() == pandas_csv(one)
    small = every_csv_dtype(50)
    files.write_csv(small, tmp_path / "small.csv")
    assert (tmp_path / "small.csv").read_bytes() == pandas_csv(small)
