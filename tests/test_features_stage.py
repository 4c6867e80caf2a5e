"""The features stage (pipelines/features.py) and its engine (pipelines/engines.py), run in a
temporary project directory: contract outputs, byte-identical reruns, empty cutoffs, errors."""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from features.customer import LABELS_SCHEMA, features_schema
from features.errors import DataError
from pipelines import engines, files
from pipelines import features as stage
from pipelines.catalog import CUTOFF_OFFSETS, Catalog
from pipelines.config import ConfigError, FeaturesParams, load_params
from tests.test_features import cdnow_master, transactions_frame


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory) -> str:
    """One temporary MLflow store for the module (creating a store's tables takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


# The sections the stage reads, with the project's defaults; the other sections keep theirs.
PARAMS = {
    "seed": 42,
    "data": {
        "path": "lifetimes:CDNOW_master",
        "columns": {"customer_id": "customer_id", "timestamp": "date", "amount": "dollar_value", "quantity": "number_of_cds"},
        "timestamp_format": "%Y%m%d",
        "as_of": None,
        "horizon_days": 91,
        "time_unit": "W",
    },
    "features": {"engine": "duckdb", "windows_days": [30, 90, 180, 365], "trend_days": 182, "threads": None, "memory_limit": None},
}


@pytest.fixture
def project(tmp_path, monkeypatch, mlflow_uri):
    """An empty project directory (params.yaml, dvc.yaml) with MLflow in a temporary store."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    monkeypatch.delenv("CVP_PIPELINE_RUN_ID", raising=False)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS, sort_keys=False))
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    return tmp_path


def set_params(project: Path, **sections) -> None:
    """Update keys of params.yaml sections, e.g. features={"threads": 1}."""
    raw = yaml.safe_load((project / "params.yaml").read_text())
    for section, values in sections.items():
        raw[section].update(values)
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def catalog(project: Path) -> Catalog:
    return Catalog(project, project / "params.yaml")


def write_transactions(project: Path, frame: pd.DataFrame) -> None:
    frame = frame.sort_values(["customer_id", "timestamp", "source_row"], kind="stable")
    files.write_parquet(frame.reset_index(drop=True), catalog(project).TRANSACTIONS)


def run_stage(project: Path) -> None:
    stage.run(load_params(project / "params.yaml"), catalog(project))


def hashes(project: Path) -> dict[str, str]:
    paths = catalog(project)
    outputs = [*(paths.features_at(k) for k in CUTOFF_OFFSETS), *(paths.labels_at(k) for k in (1, 2))]
    return {str(p): files.file_sha256(p) for p in [*outputs, paths.metrics_file("features")]}


def test_cdnow_stage_writes_the_contract_and_reruns_byte_identical(project):
    paths = catalog(project)
    write_transactions(project, cdnow_master())
    run_stage(project)
    first = hashes(project)
    set_params(project, features={"threads": 1})  # a different parallelism must not change a byte
    run_stage(project)
    assert hashes(project) == first

    params = load_params(project / "params.yaml")
    schema = features_schema(params.features.windows_days)
    feats = {k: schema.validate(pd.read_parquet(paths.features_at(k))) for k in CUTOFF_OFFSETS}
    labels = {k: LABELS_SCHEMA.validate(pd.read_parquet(paths.labels_at(k))) for k in (1, 2)}
    assert not (paths.FEATURES_DIR / "labels_t0.parquet").exists()  # t_0 has no window yet
    metrics = files.read_json(paths.metrics_file("features"))
    assert metrics["as_of"] == "1998-06-30"  # as_of null -> last transaction date
    expected_cutoffs = {"t0": "1998-06-30", "t1": "1998-03-31", "t2": "1997-12-30"}
    assert {k: v["cutoff"] for k, v in metrics["cutoffs"].items()} == expected_cutoffs
    for k in CUTOFF_OFFSETS:
        entry = metrics["cutoffs"][f"t{k}"]
        assert (feats[k]["cutoff"] == pd.Timestamp(entry["cutoff"])).all()
        assert entry["customers"] == len(feats[k]) == 23_570  # CDNOW's cohort bought in Q1 1997
        assert entry["repeat_buyer_share"] == pytest.approx((feats[k]["frequency"] > 0).mean())
        assert entry["rows_used"] == feats[k]["n_transactions"].sum()
    assert metrics["cutoffs"]["t0"]["rows_used"] == metrics["rows_input"] == 69_659
    for k in (1, 2):
        assert labels[k]["customer_id"].tolist() == feats[k]["customer_id"].tolist()
        assert metrics["cutoffs"][f"t{k}"]["label_positive_rate"] == pytest.approx(labels[k]["purchased"].mean())
    # The labels of t1 look at (t1, t0]: exactly the purchase days t0 adds over t1.
    added = feats[0]["n_purchase_days"] - feats[1]["n_purchase_days"]
    np.testing.assert_array_equal(labels[1]["n_purchase_days"], added)
    np.testing.assert_allclose(labels[1]["spend"], feats[0]["total_spend"] - feats[1]["total_spend"], atol=1e-9)

    input_tag = f"tags.input_sha256 = '{files.file_sha256(paths.TRANSACTIONS)}'"
    runs = mlflow.search_runs(
        experiment_names=[params.mlflow.experiment], filter_string=f"tags.`cvp.stage` = 'features' and {input_tag}"
    )
    assert len(runs) == 2
    assert (runs["metrics.cutoffs.t0.customers"] == 23_570).all()
    np.testing.assert_allclose(runs["metrics.cutoffs.t1.label_positive_rate"], labels[1]["purchased"].mean(), rtol=1e-12)


def test_a_cutoff_before_the_first_purchase_gets_empty_files_with_the_schema(project, caplog):
    # 150 days of history: t1 = as_of - 91 has customers, t2 = as_of - 182 has none.
    paths = catalog(project)
    write_transactions(project, transactions_frame(
        ["a", "b", "a", "c"], ["2024-01-01", "2024-02-15", "2024-04-01", "2024-05-30"], [10.0, 5.0, 7.0, 3.0]
    ))  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="pipelines.features"):
        run_stage(project)
    schema = features_schema(load_params(project / "params.yaml").features.windows_days)
    t1, t2 = (schema.validate(pd.read_parquet(paths.features_at(k))) for k in (1, 2))
    assert t1["customer_id"].tolist() == ["a", "b"] and t2.empty
    labels_t2 = LABELS_SCHEMA.validate(pd.read_parquet(paths.labels_at(2)))
    assert labels_t2.empty and list(labels_t2.columns) == list(LABELS_SCHEMA.columns)
    assert any("t2" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    metrics = files.read_json(paths.metrics_file("features"))["cutoffs"]
    assert metrics["t2"]["customers"] == 0 and metrics["t2"]["repeat_buyer_share"] is None
    assert metrics["t1"]["label_positive_rate"] == 0.5  # a buys again on 04-01, b does not


def test_an_explicit_as_of_ignores_later_rows(project):
    paths = catalog(project)
    tx = transactions_frame(["a", "a", "a"], ["2024-01-01", "2024-03-01", "2024-06-01"], [10.0, 20.0, 30.0])
    write_transactions(project, tx)
    set_params(project, data={"as_of": "2024-03-31", "horizon_days": 30, "time_unit": "D"})
    run_stage(project)
    t0 = pd.read_parquet(paths.features_at(0)).iloc[0]
    assert (t0["cutoff"], t0["frequency"], t0["T"], t0["total_spend"]) == (pd.Timestamp("2024-03-31"), 1, 90.0, 30.0)
    labels = pd.read_parquet(paths.labels_at(1)).iloc[0]  # window (2024-03-01, 2024-03-31]
    assert (labels["purchased"], labels["spend"]) == (0, 0.0)


def test_missing_input_is_one_line_naming_the_file_and_the_fix(project, monkeypatch, capsys):
    from pipelines import cli

    monkeypatch.chdir(project)  # the CLI works on the project holding the current directory
    monkeypatch.setattr(sys, "argv", ["cvp", "features"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cvp: error: data/interim/transactions.parquet not found") and "cvp ingest" in err
    assert "\n" not in err


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.drop(columns="amount"), "missing column 'amount'"),
        (lambda f: f.assign(timestamp=f["timestamp"].astype(str)), "column 'timestamp' has type"),
        (lambda f: f.assign(amount=[np.nan, 1.0]), "non-finite 'amount'"),
        (lambda f: f.assign(amount=[2e9, 1.0]), "column 'amount' has |value|"),
    ],
)
def test_bad_input_stops_with_a_data_error(project, change, message):
    write_transactions(project, change(transactions_frame(["a", "b"], ["2024-01-01", "2024-01-02"], [1.0, 2.0])))
    with pytest.raises(DataError) as err:
        run_stage(project)
    assert message in str(err.value) and str(catalog(project).TRANSACTIONS) in str(err.value)


def test_duckdb_engine_applies_the_params(tmp_path):
    spill = tmp_path / "spill"  # a relative temp_directory is under the project root
    params = FeaturesParams(threads=1, memory_limit="512MB", temp_directory="spill")
    with engines.connect(params, tmp_path) as con:
        settings = con.con.execute(
            "select current_setting('threads'), current_setting('memory_limit'), current_setting('temp_directory')"
        ).fetchone()
    assert settings[0] == 1 and settings[1] in ("488.2 MiB", "512.0 MB") and settings[2] == str(spill)
    assert spill.is_dir()


def test_bad_engine_settings_are_config_errors():
    with pytest.raises(ConfigError, match="memory_limit"):
        with engines.connect(FeaturesParams(memory_limit="lots")):
            pass


def test_pyspark_engine_without_pyspark_says_to_install_the_spark_extra(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"spark extra"):
        with engines.connect(FeaturesParams(engine="pyspark")):
            pass


def test_streamed_row_groups_are_validated_and_equal_the_whole_result(tmp_path):
    import ibis
    import pyarrow.parquet as pq

    from features.customer import customer_features, to_contract
    from tests.test_features import spec_for

    master = cdnow_master()
    spec = spec_for(master)
    schema = features_schema(spec.windows_days)
    with engines.connect(FeaturesParams(threads=2)) as con:
        expr = customer_features(ibis.memtable(master), pd.Timestamp("1997-09-30").date(), spec)
        assert engines.write_validated(con, expr, schema, tmp_path / "f.parquet", rows=1000) == 23_570
        whole = to_contract(con.to_pandas(expr), schema)
        # Customers 01001..02000 then 00001..01000: each row group of 1000 sorted, the file not.
        first = expr.filter(expr.customer_id <= "02000")
        swapped = first.order_by([(first.customer_id <= "01000").cast("int8"), "customer_id"])
        with pytest.raises(RuntimeError, match="not sorted"):
            engines.write_validated(con, swapped, schema, tmp_path / "bad.parquet", rows=1000)
    assert pq.read_metadata(tmp_path / "f.parquet").num_row_groups == 24
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "f.parquet"), whole)
    assert not (tmp_path / "bad.parquet").exists()


def test_totals_too_large_for_float_units_switch_to_decimal_sums(project):
    # 1,000 rows of 999,999,999.99: the total passes 2**53 units of 0.0001, where float64 sums
    # of units could round; the stage then sums as DECIMAL and stays exact.
    n = 1000
    amounts = [999_999_999.99] * n
    amounts[1] = -amounts[1]
    paths = catalog(project)
    write_transactions(project, transactions_frame(["a"] * n, pd.date_range("2024-01-01", periods=n, freq="h"), amounts))
    run_stage(project)
    assert files.read_json(paths.metrics_file("features"))["decimal_sums"] is True
    t0 = pd.read_parquet(paths.features_at(0)).iloc[0]
    assert t0["total_spend"] == 998 * 999_999_999.99 and t0["returns_count"] == 1
