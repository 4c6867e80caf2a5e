"""bench/features.py end to end on a small synthetic file (slow: it starts five processes)."""

from __future__ import annotations

import pytest

from bench import features as bench
from pipelines import files


@pytest.mark.slow
def test_bench_times_both_routes_and_agrees_with_lifetimes(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # each run gets the work dir's store
    out = tmp_path / "features.json"
    bench.main(["--sizes", "2e4", "--workdir", str(tmp_path / "work"), "--out", str(out), "--memory-limit", "512MB"])
    result = files.read_json(out)["sizes"]
    (size,) = result.values()
    assert 19_000 <= size["rows"] <= 21_000 and size["customers"] > 1000
    for kind in bench.KINDS:
        assert size[kind]["seconds"] > 0 and 50 < size[kind]["peak_rss_mb"] < 4000
    assert size["as_of"]["customers"] == size["lifetimes"]["customers"] == size["customers"]
    agreement = size["agreement"]
    assert agreement["customers_compared"] > 0.8 * size["customers"]  # returns are rare
    for column in ("frequency", "recency", "T", "monetary_value"):
        assert agreement[f"max_rel_diff_{column}"] <= 1e-9
    assert size["speedup_as_of"] == pytest.approx(size["lifetimes"]["seconds"] / size["as_of"]["seconds"])
    assert (tmp_path / "work" / "rows_20000" / "data" / "features" / "features_t2.parquet").exists()
