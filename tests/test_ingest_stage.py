"""The ingest stage (pipelines/ingest.py, pipelines/sources.py) in a temporary project: a CSV
with every quarantine reason, globs, Parquet, CDNOW, byte-identical reruns, MLflow logging and
the one-line errors of the CLI."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from features.errors import DataError
from features.ingest import REASONS, TRANSACTIONS_SCHEMA, rejected_schema
from pipelines import files
from pipelines import ingest as stage
from pipelines.catalog import Catalog
from pipelines.cli import main
from pipelines.config import ConfigError, load_params
from pipelines.sources import lifetimes_file

ROOT = Path(__file__).resolve().parents[1]

CSV_HEADER = "order_no,customer,when,eur,units,note\n"
CSV_ROWS = [
    "A1,00042,2021-03-01 10:00:00,19.99,1,first",          # 0 accepted
    "A1,00042,2021-03-01 10:00:00,5.00,2,second line",     # 1 accepted (other line of A1)
    "A1,00042,2021-03-01 10:00:00,19.99,1,copy",           # 2 duplicate of row 0
    "A2,,2021-03-02 11:00:00,10.00,1,",                    # 3 missing_customer_id
    "A3,00043,yesterday,10.00,1,",                         # 4 unparseable_timestamp
    "A4,00043,1899-12-31 00:00:00,10.00,1,",               # 5 implausible_timestamp
    "A5,00043,2021-03-05 09:30:00,,1,",                    # 6 missing_amount
    "A6,00043,2021-03-05 09:30:00,abc,1,",                 # 7 non_numeric_amount
    "A7,00043,2021-03-05 09:30:00,12.00,lots,",            # 8 non_numeric_quantity
    "A1,00042,2021-03-10 08:00:00,-19.99,-1,return",       # 9 accepted return
    "A8,00044,2021-03-11 08:00:00,0.00,1,free sample",     # 10 accepted zero amount
    "A9,00043,,3.00,1,",                                   # 11 missing_timestamp
]
CSV_REASONS = {2: "duplicate_order_line", 3: "missing_customer_id", 4: "unparseable_timestamp",
               5: "implausible_timestamp", 6: "missing_amount", 7: "non_numeric_amount",
               8: "non_numeric_quantity", 11: "missing_timestamp"}
CSV_DATA = {
    "path": "data/raw/tx.csv",
    "columns": {"customer_id": "customer", "timestamp": "when", "amount": "eur", "order_id": "order_no",
                "quantity": "units", "cost": None},
    "timestamp_format": "%Y-%m-%d %H:%M:%S",
    "max_rejected_share": 1.0,  # the file is mostly bad rows on purpose
}


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory) -> str:
    """One temporary MLflow store for the module (creating a store's tables takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


@pytest.fixture
def project(tmp_path, monkeypatch, mlflow_uri):
    """An empty project directory (params.yaml, dvc.yaml) with MLflow in a temporary store."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    monkeypatch.delenv("CVP_PIPELINE_RUN_ID", raising=False)
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    return tmp_path


def set_data(project: Path, **values) -> None:
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["data"].update(values)
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def write_csv(project: Path, name: str = "data/raw/tx.csv", header: str = CSV_HEADER, rows=CSV_ROWS) -> Path:
    path = project / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "".join(r + "\n" for r in rows))
    return path


def catalog(project: Path) -> Catalog:
    return Catalog(project, project / "params.yaml")


def ingest(project: Path) -> dict:
    """The stage without MLflow (fast): returns the metrics."""
    return stage.ingest(load_params(project / "params.yaml").data, catalog(project))


def outputs(project: Path) -> dict[str, str]:
    paths = catalog(project)
    return {str(p): files.file_sha256(p) for p in (paths.TRANSACTIONS, paths.QUARANTINE)}


def cli(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project}/mlflow.db"}
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=300)


def test_csv_with_every_kind_of_bad_row(project):
    csv = write_csv(project)
    set_data(project, **CSV_DATA)
    metrics = ingest(project)

    assert metrics["rows_in"] == len(CSV_ROWS) == metrics["rows_accepted"] + metrics["rows_rejected"]
    expected = dict.fromkeys(REASONS, 0)
    for reason in CSV_REASONS.values():
        expected[reason] += 1
    assert metrics["rejected_by_reason"] == expected
    assert metrics["rows_rejected"] == len(CSV_REASONS)
    assert metrics["n_customers"] == 2 and metrics["n_returns"] == 1 and metrics["n_zero_amount"] == 1
    assert (metrics["date_min"], metrics["date_max"]) == ("2021-03-01", "2021-03-11")
    assert metrics["input"] == "data/raw/tx.csv" and metrics["input_sha256"] == files.file_sha256(csv)

    accepted = TRANSACTIONS_SCHEMA.validate(pd.read_parquet(catalog(project).TRANSACTIONS))
    assert accepted["source_row"].tolist() == [0, 1, 9, 10]
    assert accepted["customer_id"].tolist() == ["00042", "00042", "00042", "00044"]
    assert accepted["amount"].tolist() == [19.99, 5.0, -19.99, 0.0]
    assert accepted["quantity"].tolist() == [1.0, 2.0, -1.0, 1.0]
    assert accepted["order_id"].tolist() == ["A1", "A1", "A1", "A8"]
    assert accepted["cost"].isna().all()
    assert str(accepted["timestamp"].dtype).startswith("datetime64")

    rejected = pd.read_parquet(catalog(project).QUARANTINE)
    columns = ["order_no", "customer", "when", "eur", "units", "note"]
    rejected_schema(columns, with_source_file=True).validate(rejected)
    assert dict(zip(rejected["source_row"], rejected["reason"])) == CSV_REASONS
    assert set(rejected["source_file"]) == {"data/raw/tx.csv"}
    bad_amount = rejected.set_index("source_row").loc[7]
    assert (bad_amount["eur"], bad_amount["customer"], bad_amount["units"]) == ("abc", "00043", "1")


def test_reruns_are_byte_identical_and_the_stage_logs_to_mlflow(project):
    write_csv(project)
    set_data(project, **CSV_DATA)
    params = load_params(project / "params.yaml")
    paths = catalog(project)
    stage.run(params, paths)
    first = {**outputs(project), "metrics": files.file_sha256(paths.metrics_file("ingest"))}
    stage.run(params, paths)
    assert {**outputs(project), "metrics": files.file_sha256(paths.metrics_file("ingest"))} == first

    metrics = files.read_json(paths.metrics_file("ingest"))
    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`cvp.stage` = 'ingest'",
                              order_by=["attributes.start_time DESC"], output_format="list")
    latest = runs[0].data
    assert latest.tags["input_sha256"] == metrics["input_sha256"]
    assert latest.params["path"] == "data/raw/tx.csv" and latest.params["columns.customer_id"] == "customer"
    assert latest.metrics["rows_rejected"] == metrics["rows_rejected"] == len(CSV_REASONS)
    assert latest.metrics["rejected_by_reason.duplicate_order_line"] == 1


def test_glob_reads_files_in_sorted_order_with_continuous_row_numbers(project):
    write_csv(project, "data/raw/b.csv", rows=["B1,7,2021-01-02 00:00:00,2.00,1,"])
    write_csv(project, "data/raw/a.csv", header="customer,eur,when,units,order_no\n",  # other column order
              rows=["7,1.00,2021-01-01 00:00:00,1,A1", ",1.00,2021-01-01 00:00:00,1,A2"])
    set_data(project, **{**CSV_DATA, "path": "data/raw/*.csv"})
    metrics = ingest(project)
    assert metrics["rows_in"] == 3
    accepted = pd.read_parquet(catalog(project).TRANSACTIONS)
    assert accepted["source_row"].tolist() == [0, 2] and accepted["order_id"].tolist() == ["A1", "B1"]
    rejected = pd.read_parquet(catalog(project).QUARANTINE)
    assert rejected[["source_row", "source_file", "reason"]].values.tolist() == [
        [1, "data/raw/a.csv", "missing_customer_id"]
    ]
    assert pd.isna(rejected["note"].iloc[0])  # column absent from a.csv


def test_parquet_source_with_typed_columns(project):
    path = project / "data" / "raw" / "tx.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.table({
        "cid": ["001", "002", None],
        "ts": pa.array([pd.Timestamp("2022-01-01 12:00"), pd.Timestamp("2022-01-02"), pd.Timestamp("2022-01-03")]),
        "value": [10.0, -2.5, 3.0],
    }), path)
    set_data(project, path="data/raw/tx.parquet", timestamp_format=None, max_rejected_share=1.0,
             columns={"customer_id": "cid", "timestamp": "ts", "amount": "value", "quantity": None})
    metrics = ingest(project)
    assert (metrics["rows_accepted"], metrics["rejected_by_reason"]["missing_customer_id"]) == (2, 1)
    accepted = TRANSACTIONS_SCHEMA.validate(pd.read_parquet(catalog(project).TRANSACTIONS))
    assert accepted["timestamp"].tolist() == [pd.Timestamp("2022-01-01 12:00"), pd.Timestamp("2022-01-02")]
    assert pd.read_parquet(catalog(project).QUARANTINE)["ts"].tolist() == ["2022-01-03 00:00:00"]


def test_cdnow_master_ingests_completely_and_reruns_byte_identical(project):
    metrics = ingest(project)
    assert (metrics["rows_in"], metrics["rows_accepted"], metrics["rows_rejected"]) == (69_659, 69_659, 0)
    assert metrics["n_customers"] == 23_570
    assert (metrics["date_min"], metrics["date_max"]) == ("1997-01-01", "1998-06-30")
    assert metrics["n_returns"] == 0 and metrics["n_zero_amount"] == 80
    assert metrics["input_sha256"] == files.file_sha256(lifetimes_file("CDNOW_master.txt"))
    first = outputs(project)
    accepted = TRANSACTIONS_SCHEMA.validate(pd.read_parquet(catalog(project).TRANSACTIONS))
    assert accepted["customer_id"].iloc[0] == "00001" and accepted["amount"].sum() == pytest.approx(2_500_315.63)
    rejected = pd.read_parquet(catalog(project).QUARANTINE)
    assert rejected.empty and list(rejected.columns) == [
        "customer_id", "date", "number_of_cds", "dollar_value", "source_row", "reason"]
    set_data(project, ingest_threads=1, ingest_memory_limit="200MB")  # parallelism must not change a byte
    ingest(project)
    assert outputs(project) == first


def test_bad_duckdb_setting_is_a_config_error(project):
    set_data(project, ingest_memory_limit="lots")
    with pytest.raises(ConfigError, match=r"^data\.ingest_memory_limit: DuckDB refused 'lots'"):
        ingest(project)


def test_cdnow_sample_with_its_own_mapping(project):
    set_data(project, path="lifetimes:CDNOW_sample",
             columns={"customer_id": "customer_id", "timestamp": "date", "amount": "amount", "quantity": "quantity"})
    metrics = ingest(project)
    assert (metrics["rows_in"], metrics["rows_rejected"]) == (6_919, 0)
    assert metrics["n_customers"] == 2_357


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing_column", "data/raw/tx.csv: column 'amount_eur' (data.columns.amount) not found; available columns: "
                           "order_no, customer, when, eur, units, note"),
        ("garbage_parquet", "data/raw/tx.parquet: cannot read as PARQUET"),
        ("no_file", "data/raw/none.csv: file not found"),
        ("empty_glob", "data.path 'data/raw/*.csv' matches no file"),
        ("malformed_line", "data/raw/tx.csv: cannot read (Invalid Input Error: CSV Error on Line: 30002"),
        ("malformed_early_line", "the header was not split into columns"),
        ("unknown_bundle", "data.path 'lifetimes:CDNOW_other' is not a bundled data set"),
    ],
)
def test_cli_reports_unusable_input_in_one_line(project, monkeypatch, capsys, setup, message):
    make_unusable_input(project, setup)
    monkeypatch.chdir(project)  # the CLI works on the project holding the current directory
    monkeypatch.setattr(sys, "argv", ["cvp", "ingest"])
    with pytest.raises(SystemExit) as stopped:
        main()
    err = capsys.readouterr().err
    assert stopped.value.code == 2
    assert err.startswith("cvp: error: ") and err.count("\n") == 1 and message in err
    assert not catalog(project).TRANSACTIONS.exists()


@pytest.mark.parametrize("setup", ["missing_column", "garbage_parquet"])
def test_cli_process_exits_2_with_one_line_and_no_traceback(project, setup):
    make_unusable_input(project, setup)
    done = cli(project, "ingest")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cvp: error: data/raw/tx.")


def make_unusable_input(project: Path, setup: str) -> None:
    data = dict(CSV_DATA)
    if setup == "missing_column":
        write_csv(project)
        data["columns"] = {**data["columns"], "amount": "amount_eur"}
    elif setup == "garbage_parquet":
        (project / "data/raw").mkdir(parents=True)
        (project / "data/raw/tx.parquet").write_bytes(b"PAR1 not really parquet")
        data["path"] = "data/raw/tx.parquet"
    elif setup == "no_file":
        data["path"] = "data/raw/none.csv"
    elif setup == "empty_glob":
        data["path"] = "data/raw/*.csv"
    elif setup == "malformed_line":  # past the rows the CSV sniffer samples
        write_csv(project, rows=CSV_ROWS[:1] * 30_000 + [CSV_ROWS[1] + ",extra"])
    elif setup == "malformed_early_line":
        write_csv(project, rows=[CSV_ROWS[0], CSV_ROWS[1] + ",extra,fields", *CSV_ROWS[2:]])
    else:
        data["path"] = "lifetimes:CDNOW_other"
    set_data(project, **data)


def test_missing_column_in_one_file_of_a_glob_names_that_file(project):
    write_csv(project, "data/raw/a.csv")
    write_csv(project, "data/raw/b.csv", header="order_no,client,when,eur,units,note\n", rows=CSV_ROWS[:1])
    set_data(project, **{**CSV_DATA, "path": "data/raw/*.csv"})
    with pytest.raises(DataError, match=r"^data/raw/b\.csv: column 'customer' \(data\.columns\.customer_id\) not found"):
        ingest(project)


def test_too_many_rejected_rows_stop_the_cli_in_one_line_and_write_nothing(project, monkeypatch, capsys):
    write_csv(project)
    set_data(project, **{**CSV_DATA, "max_rejected_share": 0.05})
    monkeypatch.chdir(project)
    monkeypatch.setattr(sys, "argv", ["cvp", "ingest"])
    with pytest.raises(SystemExit) as stopped:
        main()
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and err.count("\n") == 1
    assert err.startswith("cvp: error: data/raw/tx.csv: 8 of 12 rows rejected (66.7%): duplicate_order_line 1 (source_row 2: ")
    assert "above data.max_rejected_share 5%" in err and "or raise data.max_rejected_share" in err
    assert not catalog(project).TRANSACTIONS.exists() and not catalog(project).QUARANTINE.exists()


def test_rejected_share_and_sample_rows_are_in_the_metrics(project):
    write_csv(project)
    set_data(project, **CSV_DATA)
    metrics = ingest(project)
    assert metrics["rejected_share"] == 8 / 12
    assert metrics["rejected_sample_rows"] == {reason: [row] for row, reason in CSV_REASONS.items()}


def test_zone_aware_parquet_timestamps_are_converted_to_utc(project):
    path = project / "data" / "raw" / "tx.parquet"
    path.parent.mkdir(parents=True)
    stamps = pd.to_datetime(["2024-03-01 22:30", "2024-03-02 08:00"]).tz_localize("America/New_York")
    pq.write_table(pa.table({"cid": ["1", "2"], "ts": pa.array(stamps, pa.timestamp("us", tz="America/New_York")),
                             "value": [10.0, 5.0]}), path)
    set_data(project, path="data/raw/tx.parquet", timestamp_format=None,
             columns={"customer_id": "cid", "timestamp": "ts", "amount": "value", "quantity": None})
    ingest(project)
    accepted = pd.read_parquet(catalog(project).TRANSACTIONS)
    assert accepted["timestamp"].tolist() == [pd.Timestamp("2024-03-02 03:30"), pd.Timestamp("2024-03-02 13:00")]


def test_future_rows_are_quarantined_relative_to_the_run_date(project):
    write_csv(project, rows=[CSV_ROWS[0], "B1,00042,2021-03-03 10:00:00,1.00,1,", "B2,00042,2021-03-02 10:00:00,1.00,1,"])
    set_data(project, **CSV_DATA)
    data = load_params(project / "params.yaml").data
    paths = catalog(project)
    metrics = stage.ingest(data, paths, today=dt.date(2021, 3, 2))  # 2021-03-03 is after the run date
    assert metrics["rejected_by_reason"]["implausible_timestamp"] == 1 and metrics["date_max"] == "2021-03-02"
    assert stage.ingest(data, paths, today=dt.date(2021, 3, 3))["rows_rejected"] == 0
    later = data.model_copy(update={"valid_to": dt.date(2030, 1, 1)})  # an explicit valid_to cannot reach the future
    assert stage.ingest(later, paths, today=dt.date(2021, 3, 2))["rejected_by_reason"]["implausible_timestamp"] == 1


def test_a_bad_byte_past_the_sniffed_rows_names_the_line_and_the_encoding(project):
    rows = CSV_ROWS[:1] * 30_000 + ["A9,caf\xe9,2021-03-01 10:00:00,1.00,1,"]
    path = project / "data/raw/tx.csv"
    path.parent.mkdir(parents=True)
    path.write_bytes((CSV_HEADER + "".join(r + "\n" for r in rows)).encode("latin-1"))
    set_data(project, **CSV_DATA)
    with pytest.raises(DataError) as refused:
        ingest(project)
    assert str(refused.value) == (
        "data/raw/tx.csv: not valid utf-8 text (line 30002 has the byte(s) 0xe9); "
        "set data.encoding: latin-1 (or cp1252, or the encoding the file was exported in) in params.yaml")


@pytest.mark.parametrize(("values", "message"), [
    ({"timezone": "Mars/Olympus"}, "data.timezone: unknown time zone 'Mars/Olympus'"),
    ({"encoding": "klingon-8"}, "klingon-8"),
    ({"timestamp_format": []}, "timestamp_format"),
    ({"decimal": ";"}, "decimal"),
    ({"max_rejected_share": 1.5}, "max_rejected_share"),
])
def test_bad_data_params_are_config_errors(project, values, message):
    write_csv(project)
    set_data(project, **{**CSV_DATA, **values})
    with pytest.raises(ConfigError, match=message):
        ingest(project)
