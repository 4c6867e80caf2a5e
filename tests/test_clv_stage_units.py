"""Pieces of the `clv` stage on hand-made files: reading the inputs through the catalog, the
predictions contract and the cast to it. (Model choice and the fits: tests/test_clv_select.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pytest

from features.errors import DataError
from models.clv import PREDICTION_DTYPES, as_predictions
from pipelines import clv as stage
from pipelines import contracts, files
from pipelines.catalog import CUTOFF_OFFSETS, Catalog
from pipelines.config import load_params
from tests.test_clv_select import CUTOFF, tiny_features, tiny_labels

REPO = Path(__file__).resolve().parents[1]
PARAMS = load_params(REPO / "params.yaml")


def _write_tiny_project(root: Path, labels: pd.DataFrame | None = None) -> Catalog:
    paths = Catalog(root)
    features = tiny_features()
    for k in CUTOFF_OFFSETS:
        files.write_parquet(features, paths.features_at(k))
    files.write_parquet(tiny_labels(features) if labels is None else labels, paths.labels_at(1))
    tx = pd.DataFrame({"customer_id": ["a"], "timestamp": pd.Series([CUTOFF], dtype="datetime64[us]"), "amount": [1.0]})
    files.write_parquet(tx, paths.TRANSACTIONS)
    return paths


def _sources(paths: Catalog) -> dict[int, str]:
    return {k: str(paths.features_at(k)) for k in CUTOFF_OFFSETS}


def test_inputs_load_when_they_follow_the_contract(tmp_path):
    paths = _write_tiny_project(tmp_path)
    features, labels = stage.read_inputs(PARAMS, paths, _sources(paths))
    assert len(features[2]) == 4 and all(list(features[k].columns) == list(stage.FEATURE_COLUMNS[k]) for k in features)
    # only what the stage uses: the prediction inputs everywhere, the baseline and tracking inputs at t_1
    assert list(features[0].columns) == list(stage.PREDICTION_COLUMNS) == list(features[2].columns)
    assert set(features[1].columns) - set(features[0].columns) == {"first_purchase", "avg_spend", "ipi_mean"}
    assert list(labels.columns) == ["customer_id", "n_purchase_days", "spend"]


def test_engine_tables_equal_the_in_memory_patterns_and_repeat_days(tmp_path):
    """The compressed tables and the tracking curve's day counts from the engine are what the
    in-memory functions give on the same files (the curve: the same table, to the bit)."""
    from models import clv_eval
    from models.clv_select import patterns_of

    paths = _write_tiny_project(tmp_path)
    features = tiny_features()
    d = CUTOFF - pd.Timedelta(days=30)
    first = features.set_index("customer_id")["first_purchase"]
    stamps = [first["a"], first["a"] + pd.Timedelta(hours=3), first["a"] + pd.Timedelta(days=2, hours=5), d, d,
              first["b"] + pd.Timedelta(days=1), first["b"] + pd.Timedelta(days=1, hours=1), d, CUTOFF,
              CUTOFF + pd.Timedelta(days=1)]  # fmt: skip
    tx = pd.DataFrame({
        "customer_id": ["a", "a", "a", "a", "b", "b", "b", "c", "c", "z"],
        "timestamp": pd.Series(stamps, dtype="datetime64[us]"),
        "amount": [5.0, 1.0, 0.0, 2.0, -3.0, 4.0, 4.0, 9.0, 2.0, 2.0],
    })  # fmt: skip
    files.write_parquet(tx, paths.TRANSACTIONS)
    t1 = CUTOFF - pd.Timedelta(days=PARAMS.data.horizon_days)
    patterns, repeats, period_spend = stage.engine_tables(PARAMS, paths, CUTOFF, t1)
    # The spend of (t_1, t_0] by 30-day period, returns netted: day d (30 days before t_0) is in period 2
    # (days 61..90 after t_1), t_0 in period 3, the day after t_0 nowhere.
    day = tx["timestamp"].dt.floor("D")
    window = tx[(day > t1) & (day <= CUTOFF)]
    expected = window.groupby(((day[window.index] - t1).dt.days - 1) // 30)["amount"].sum()
    by_period = period_spend.groupby("period")["spend"].sum()
    pd.testing.assert_series_equal(by_period, expected, check_names=False, check_index_type=False)
    assert by_period[2] == pytest.approx(2.0 - 3.0 + 9.0) and by_period[3] == pytest.approx(2.0)
    for k in CUTOFF_OFFSETS:
        expected = patterns_of(features)
        pd.testing.assert_frame_equal(patterns[k].rfm, expected.rfm, check_dtype=False)
        pd.testing.assert_frame_equal(patterns[k].spend, expected.spend, check_dtype=False)
    listed = clv_eval.repeat_purchase_days(tx, first, CUTOFF)
    assert repeats["count"].sum() == len(listed) == 5 and repeats["count"].max() == 2  # a and c on day d
    assert repeats["day"].is_monotonic_increasing

    class Linear:
        def expected_purchases_unconditional(self, t):
            return pd.Series(t, dtype=float).to_numpy()

    curve = clv_eval.tracking_table(features, None, Linear(), CUTOFF, 7, repeat_counts=repeats)
    pd.testing.assert_frame_equal(curve, clv_eval.tracking_table(features, tx, Linear(), CUTOFF, 7), check_exact=True)


def test_missing_input_names_the_file_and_the_fix(tmp_path):
    paths = Catalog(tmp_path)
    with pytest.raises(DataError, match=r"data/features/features_t0.parquet: not found; run `cvp features`"):
        stage.read_inputs(PARAMS, paths, _sources(paths))


def test_labels_of_other_customers_are_rejected(tmp_path):
    other = tiny_labels(tiny_features(ids=("a", "b", "c", "e")))
    paths = _write_tiny_project(tmp_path, labels=other)
    with pytest.raises(DataError, match=r"labels_t1.parquet: customers differ from .*features_t1.parquet"):
        stage.read_inputs(PARAMS, paths, _sources(paths))


def test_input_breaking_the_contract_is_a_one_line_data_error(tmp_path):
    paths = _write_tiny_project(tmp_path)
    files.write_parquet(tiny_features(frequency=(0, -1, 2, 3)), paths.features_at(1))
    with pytest.raises(DataError, match=r"features_t1.parquet: does not match the features .* contract") as err:
        stage.read_inputs(PARAMS, paths, _sources(paths))
    assert "\n" not in str(err.value)


def test_predictions_schema_rejects_unsorted_rows_and_bad_probabilities():
    good = pd.DataFrame(
        {
            "customer_id": ["a", "b"], "cutoff": pd.Series([CUTOFF] * 2, dtype="datetime64[us]"), "model": "bgnbd",
            "p_alive": [0.5, 0.9], "expected_purchases": [0.1, 2.0], "p_no_purchase": [0.9, 0.2],
            "expected_avg_spend": [30.0, 40.0], "clv": [1.0, 20.0], "clv_p10": [0.0, 5.0], "clv_p50": [0.0, 18.0],
            "clv_p90": [4.0, 40.0], "clv_expected_p10": [0.8, 16.0], "clv_expected_p90": [1.3, 25.0],
        }
    ).astype(contracts.CLV_PREDICTION_DTYPES)  # fmt: skip
    contracts.CLV_PREDICTIONS_SCHEMA.validate(good)
    contracts.CLV_PREDICTIONS_SCHEMA.validate(good.assign(clv_p10=np.nan, clv_p50=np.nan, clv_p90=np.nan,
                                                          clv_expected_p10=np.nan, clv_expected_p90=np.nan))  # t_2
    for bad in (good.assign(clv_p50=[0.0, 50.0]), good.assign(clv_p10=[np.nan, 5.0])):  # unordered, partly missing
        with pytest.raises(pa.errors.SchemaError, match="clv_p10..clv_p90"):
            contracts.CLV_PREDICTIONS_SCHEMA.validate(bad)
    for bad in (good.assign(clv_expected_p90=[0.5, 25.0]), good.assign(clv_expected_p10=[np.nan, 16.0])):
        with pytest.raises(pa.errors.SchemaError, match="clv_expected_p10, clv_expected_p90"):
            contracts.CLV_PREDICTIONS_SCHEMA.validate(bad)
    with pytest.raises(pa.errors.SchemaError, match="sorted"):
        contracts.CLV_PREDICTIONS_SCHEMA.validate(good.iloc[::-1].reset_index(drop=True))
    with pytest.raises(pa.errors.SchemaError, match="less_than_or_equal_to"):
        contracts.CLV_PREDICTIONS_SCHEMA.validate(good.assign(p_alive=[0.5, 1.2]))


def test_predictions_are_cast_and_sorted_to_the_dtypes_the_contract_checks():
    """The files hold str ids and datetime64[us] cutoffs (not what pandera reports for the schema:
    string[pyarrow], datetime64[ns]); an empty frame has the same dtypes and passes the contract."""
    assert contracts.CLV_PREDICTION_DTYPES == PREDICTION_DTYPES
    assert PREDICTION_DTYPES["cutoff"] == "datetime64[us]" and PREDICTION_DTYPES["customer_id"] == "str"
    raw = pd.DataFrame(
        {
            "clv": [20.0, 1.0], "customer_id": ["b", "a"], "cutoff": pd.Series([CUTOFF] * 2, dtype="datetime64[ns]"),
            "model": "bgnbd", "p_alive": [0.9, 0.5], "expected_purchases": [2, 0], "p_no_purchase": [0.2, 0.9],
            "expected_avg_spend": [40.0, 30.0],
        }
    )  # fmt: skip
    out = as_predictions(raw)
    assert list(out.columns) == list(PREDICTION_DTYPES) and out["customer_id"].tolist() == ["a", "b"]
    assert {c: str(t) for c, t in out.dtypes.items()} == PREDICTION_DTYPES
    contracts.CLV_PREDICTIONS_SCHEMA.validate(out)
    empty = as_predictions()
    assert empty.empty and {c: str(t) for c, t in empty.dtypes.items()} == PREDICTION_DTYPES
    contracts.CLV_PREDICTIONS_SCHEMA.validate(empty)


def test_mlflow_work_runs_on_one_background_thread_and_closes_the_run():
    """tracking.in_background: the run opens on a worker thread while the block goes on, queued
    calls run there in order, and the run closes there (with the block's error when it raised)."""
    import contextlib
    import threading

    from pipelines import tracking

    events = []

    @contextlib.contextmanager
    def fake_run():
        events.append(("open", threading.current_thread().name))
        try:
            yield
        except ValueError as exc:
            events.append(("failed", str(exc)))
            raise
        events.append(("closed", threading.current_thread().name))

    with tracking.in_background(fake_run) as later:
        later(lambda value: events.append(("logged", value, threading.current_thread().name)), 1)
        later(lambda: events.append(("logged", 2, threading.current_thread().name)))
    worker = events[0][1]
    assert worker != threading.current_thread().name and worker.startswith("cvp-mlflow")
    assert events == [("open", worker), ("logged", 1, worker), ("logged", 2, worker), ("closed", worker)]

    events.clear()
    with pytest.raises(ValueError, match="stage broke"):
        with tracking.in_background(fake_run) as later:
            raise ValueError("stage broke")
    assert [e[0] for e in events] == ["open", "failed"] and events[1][1] == "stage broke"

    @contextlib.contextmanager
    def broken_store():
        raise RuntimeError("store down")
        yield

    events.clear()
    with pytest.raises(RuntimeError, match="store down"):
        with tracking.in_background(broken_store) as later:
            later(events.append, "never")  # no run: the queued call is skipped
    assert events == []


def test_the_mlflow_thread_never_shows_the_main_thread_a_half_imported_ipython():
    """MLflow's notebook check imports IPython; on the worker thread that import was visible
    half-done to matplotlib on the main thread ("partially initialized module 'IPython'"). Inside
    in_background a process without IPython is treated as one (import fails cleanly, the main
    thread sees no IPython at all), and afterwards IPython imports normally again."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import contextlib, sys, threading
        from pipelines import tracking

        seen = []
        started, release = threading.Event(), threading.Event()

        @contextlib.contextmanager
        def notebook_probing_run():
            started.set()
            try:
                from IPython import get_ipython  # what MLflow does when a run starts
                seen.append("imported")
            except ImportError:
                seen.append("not a notebook")
            release.wait(10)
            yield

        with tracking.in_background(notebook_probing_run):
            started.wait(10)
            module = sys.modules.get("IPython")
            seen.append("main sees " + ("nothing" if module is None else repr(getattr(module, "version_info", None))))
            release.set()
        import IPython
        seen.append("after: " + str(IPython.version_info[0] >= 8))
        print("|".join(seen))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "not a notebook|main sees nothing|after: True"
