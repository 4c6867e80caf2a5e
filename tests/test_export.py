"""Export contract (models/scores.py) and the export stage on SQLite (pipelines/export.py)."""

from __future__ import annotations

import json
import logging
import os

import pandas as pd
import pytest
import sqlalchemy as sa

from features.errors import DataError
from models import scores as sc
from pipelines import contracts, database, export, files
from pipelines.catalog import Catalog
from pipelines.config import ConfigError, ExportParams, load_params
from tests.test_export_fixture import copy_outputs, mlflow_store, project_env, stage_outputs, write_params  # noqa: F401

CONTRACT = [
    "customer_id", "as_of", "frequency", "recency", "T", "monetary_value", "p_alive", "expected_purchases",
    "expected_avg_spend", "clv", "clv_p10", "clv_p50", "clv_p90", "churn_probability", "current_value",
    "growth_potential", "quadrant", "resource_allocation", "retention_strategy", "tier", "pyramid_level", "abc_class",
    "lifecycle_state", "relationship_level", "quadrant_probability", "quadrant_uncertain", "model_version",
]  # fmt: skip
AS_OF = pd.Timestamp("2000-06-30")


# --------------------------------------------------------------------------- pure assembly


def tiny_inputs() -> dict[str, pd.DataFrame]:
    """Three customers, deliberately not sorted, with hand-picked values."""
    ids = ["c3", "c1", "c2"]
    features = pd.DataFrame({
        "customer_id": ids, "cutoff": AS_OF, "frequency": [2, 0, 5], "recency": [3.0, 0.0, 20.5],
        "T": [10.0, 4.0, 30.0], "monetary_value": [12.5, 0.0, 40.0], "total_spend": [99.0, 5.0, 240.0],
    })  # fmt: skip
    clv = pd.DataFrame({
        "customer_id": ["c1", "c2", "c3"], "cutoff": AS_OF, "model": "bgnbd", "p_alive": [1.0, 0.9, 0.5],
        "expected_purchases": [0.2, 1.5, 0.4], "p_no_purchase": [0.8, 0.2, 0.7],
        "expected_avg_spend": [20.0, 38.0, 13.0], "clv": [1.1, 16.8, 1.5], "clv_p10": [0.0, 2.0, 0.0],
        "clv_p50": [0.0, 12.5, 0.0], "clv_p90": [3.5, 38.0, 5.2],
    })  # fmt: skip
    churn = pd.DataFrame({"customer_id": ["c2", "c3", "c1"], "cutoff": AS_OF, "churn_probability": [0.1, 0.6, 0.85]})
    segments = pd.DataFrame({
        "customer_id": ["c1", "c2", "c3"], "as_of": AS_OF, "current_value": [0.0, 30.0, 3.0],
        "growth_potential": [0.3, 15.0, 0.8], "growth_potential_clv": [1.1, 16.8, 1.5],
        "quadrant": ["I", "IV", "II"], "resource_allocation": ["no investment", "top priority", "moderate investment"],
        "retention_strategy": ["let the relationship go (minimise cost to serve)",
                               "spare no effort to keep and grow the relationship", "rebuild / develop the relationship"],
        "tier": ["lead", "platinum", "iron"], "pyramid_level": ["small", "vip", "major"], "abc_class": ["C", "A", "B"],
        "lifecycle_state": ["new", "active", "drowsy"], "relationship_level": ["basic", "partnership", "reactive"],
        "quadrant_probability": [1.0, 0.9, 0.35], "quadrant_uncertain": [0, 0, 1],
    })  # fmt: skip
    return {"features": features, "clv": clv, "churn": churn, "segments": segments}


def assemble(inputs: dict[str, pd.DataFrame], version: str = "cvp-clv/3;cvp-churn/2") -> pd.DataFrame:
    labels = {k: f"data/{k}.parquet" for k in inputs}
    return sc.assemble_scores(inputs["features"], inputs["clv"], inputs["churn"], inputs["segments"], version, labels)


def test_schema_lists_the_27_contract_columns_in_order():
    assert list(contracts.SCORES_SCHEMA.columns) == CONTRACT
    assert sc.COLUMN_NAMES == tuple(CONTRACT)


@pytest.mark.parametrize(
    ("change", "column", "check"),
    [
        (lambda f: f.assign(p_alive=[0.5, 1.5, 0.2]), "p_alive", "in_range"),
        (lambda f: f.assign(quadrant=["I", "V", "II"]), "quadrant", "isin"),
        (lambda f: f.assign(clv=[1.0, float("inf"), 2.0]), "clv", "finite"),
        (lambda f: f.assign(frequency=[1, -1, 0]), "frequency", "greater_than_or_equal_to"),
        (lambda f: f.assign(customer_id=["c1", "c1", "c3"]), "customer_id", "field_uniqueness"),
        (lambda f: f.assign(churn_probability=[0.1, None, 0.3]), "churn_probability", "not_nullable"),
        (lambda f: f.assign(recency=["1", "2", "3"]), "recency", "dtype"),
        (lambda f: f.drop(columns="tier"), "tier", "column_in_dataframe"),
        (lambda f: f[[*CONTRACT[1:], "customer_id"]], "as_of", "column_ordered"),
    ],
)
def test_the_plain_checks_and_the_pandera_contract_refuse_the_same_frames(change, column, check):
    """The served chain checks rows without pandera (models/scores.py); the pipeline's contract
    (pipelines/contracts.py) is built from the same table: both refuse, on the same column."""
    good = assemble(tiny_inputs())
    contracts.SCORES_SCHEMA.validate(good)
    broken = change(good)
    failures = sc.contract_failures(broken)
    assert failures and failures[0][0] == column and failures[0][1].startswith(check)
    named = "" if check == "column_ordered" else f".*{column}"  # pandera's first line for the order is "{"
    with pytest.raises(DataError, match=rf"^scores: does not match the scores contract: {named}"):
        contracts.check(contracts.SCORES_SCHEMA, broken, "scores", "fix it")


def test_assemble_takes_each_column_from_its_stage_sorted_by_customer():
    scores = assemble(tiny_inputs())
    assert list(scores.columns) == CONTRACT
    assert scores["customer_id"].tolist() == ["c1", "c2", "c3"]
    row = scores.set_index("customer_id").loc["c3"]
    assert (row["frequency"], row["recency"], row["T"], row["monetary_value"]) == (2, 3.0, 10.0, 12.5)
    assert (row["p_alive"], row["expected_purchases"], row["expected_avg_spend"], row["clv"]) == (0.5, 0.4, 13.0, 1.5)
    assert row["churn_probability"] == 0.6
    assert (row["current_value"], row["growth_potential"], row["quadrant"], row["tier"]) == (3.0, 0.8, "II", "iron")
    assert row["as_of"] == AS_OF and row["model_version"] == "cvp-clv/3;cvp-churn/2"
    assert str(scores["as_of"].dtype) == "datetime64[us]" and str(scores["frequency"].dtype) == "int64"


def test_whole_float_frequencies_become_integers_but_fractions_are_refused():
    inputs = tiny_inputs()
    inputs["features"]["frequency"] = [2.0, 0.0, 5.0]
    assert assemble(inputs)["frequency"].tolist() == [0, 5, 2]
    inputs["features"]["frequency"] = [2.5, 0.0, 5.0]
    with pytest.raises(DataError, match=r"data/features.parquet: column 'frequency' must hold whole numbers"):
        assemble(inputs)


@pytest.mark.parametrize(
    ("key", "change", "message"),
    [
        ("clv", lambda f: f[f["customer_id"] != "c2"], r"data/clv.parquet: no row for 1 of the 3 customers .*'c2'"),
        ("churn", lambda f: pd.concat([f, f.iloc[[0]]]), r"data/churn.parquet: 1 customer_id\(s\) appear more than once .*'c2'"),
        ("segments", lambda f: pd.concat([f, f.iloc[[0]].assign(customer_id="c9")]), r"data/segments.parquet: 1 customers are not in"),
        ("churn", lambda f: f.assign(cutoff=pd.Timestamp("2000-03-31")), r"data/churn.parquet: cutoff 2000-03-31 differs from .* 2000-06-30"),
        ("clv", lambda f: f.assign(p_alive=[1.0, 1.2, 0.5]), r"data/clv.parquet: column 'p_alive' fails .*1.2"),
        ("segments", lambda f: f.assign(quadrant=["I", "V", "II"]), r"data/segments.parquet: column 'quadrant' fails isin.*'V'"),
        ("churn", lambda f: f.assign(churn_probability=[0.1, None, 0.3]), r"data/churn.parquet: column 'churn_probability' fails not_nullable"),
        ("clv", lambda f: f.drop(columns="clv"), r"data/clv.parquet: missing column\(s\) clv"),
    ],
)
def test_broken_inputs_are_one_line_errors_naming_the_file(key, change, message):
    inputs = tiny_inputs()
    inputs[key] = change(inputs[key])
    with pytest.raises(DataError, match=message) as err:
        assemble(inputs)
    assert "\n" not in str(err.value)


def test_model_version_joins_registrations_and_marks_missing_ones():
    registered = [{"name": "cvp-clv", "version": "3"}, {"name": "cvp-churn", "version": 2}]
    assert sc.model_version(registered) == "cvp-clv/3;cvp-churn/2"
    assert sc.model_version([registered[0], None]) == "cvp-clv/3;unregistered"


# --------------------------------------------------------------------------- database helpers


def test_database_url_defaults_to_sqlite_under_the_project_and_expands_variables(tmp_path, monkeypatch):
    paths = Catalog(tmp_path)
    assert database.database_url(ExportParams(), paths) == sa.make_url(f"sqlite:///{tmp_path / 'exports' / 'scores.db'}")
    # As configured (metrics, MLflow): relative to the project, whichever directory it is in.
    assert database.configured_url(ExportParams(), paths) == "sqlite:///exports/scores.db"
    monkeypatch.setenv("CVP_TEST_DB_PASSWORD", "s3cret")
    url = database.database_url(ExportParams(database_url="postgresql+psycopg://cvp:${CVP_TEST_DB_PASSWORD}@db:5432/crm"), paths)
    assert url.password == "s3cret" and url.host == "db"
    assert database.masked_url(url) == "postgresql+psycopg://cvp:***@db:5432/crm"
    with pytest.raises(ConfigError, match="export.database_url: cannot parse"):
        database.database_url(ExportParams(database_url="not a url"), paths)


def test_unreachable_database_is_a_config_error_without_the_password(tmp_path):
    scores = assemble(tiny_inputs())
    params = ExportParams(database_url="postgresql+psycopg://cvp:hunter2@127.0.0.1:9/none?connect_timeout=2")
    with pytest.raises(ConfigError, match=r"cannot write to postgresql\+psycopg://cvp:\*\*\*@127.0.0.1:9/none") as err:
        database.write_table(params, scores, Catalog(tmp_path))
    assert "hunter2" not in str(err.value)


def test_table_has_contract_columns_types_and_primary_key(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    database.replace_scores(engine, "scores", assemble(tiny_inputs()), batch_size=2)
    inspector = sa.inspect(engine)
    columns = {c["name"]: c["type"] for c in inspector.get_columns("scores")}
    assert list(columns) == CONTRACT
    assert isinstance(columns["as_of"], sa.Date) and isinstance(columns["frequency"], sa.BigInteger)
    assert isinstance(columns["clv"], sa.Double) and isinstance(columns["quadrant"], sa.String)
    assert inspector.get_pk_constraint("scores")["constrained_columns"] == ["as_of", "customer_id"]
    read = pd.read_sql_table("scores", engine)
    assert read["customer_id"].tolist() == ["c1", "c2", "c3"] and read["frequency"].tolist() == [0, 5, 2]


def test_a_table_with_other_columns_is_refused(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE scores (customer_id TEXT, as_of DATE, score REAL)"))
    with pytest.raises(DataError, match=r"table scores .* does not match the export contract \(missing: T, abc_class"):
        database.replace_scores(engine, "scores", assemble(tiny_inputs()), batch_size=2)


def test_replacing_one_date_keeps_the_other_dates(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    june = assemble(tiny_inputs())
    march = june.assign(as_of=pd.Series(pd.Timestamp("2000-03-31"), index=june.index).astype("datetime64[us]"), clv=0.0)
    database.replace_scores(engine, "scores", march, batch_size=2)
    first = database.replace_scores(engine, "scores", june, batch_size=2)
    again = database.replace_scores(engine, "scores", june.assign(clv=june["clv"] * 2), batch_size=2)
    assert (first.replaced, first.inserted, first.total) == (0, 3, 6)
    assert (again.replaced, again.inserted, again.total) == (3, 3, 6)
    table = pd.read_sql_table("scores", engine).sort_values(["as_of", "customer_id"])
    assert table.groupby("as_of").size().tolist() == [3, 3]
    assert table[table["as_of"] == "2000-03-31"]["clv"].tolist() == [0.0, 0.0, 0.0]
    assert table[table["as_of"] == "2000-06-30"]["clv"].tolist() == pytest.approx([2.2, 33.6, 3.0])


# --------------------------------------------------------------------------- the stage


@pytest.fixture
def project(tmp_path, mlflow_store, stage_outputs):
    """(params, catalog) of a tmp project with every input of the export stage; the stage runs from elsewhere."""
    copy_outputs(stage_outputs, tmp_path)
    params_path = write_params(tmp_path, mlflow_store, batch_size=40)
    with project_env(tmp_path) as paths:
        yield load_params(params_path), paths


def run_export(project) -> dict:
    params, paths = project
    export.run(params, paths)
    return files.read_json(paths.metrics_file("export"))


def table_rows(paths: Catalog, table: str = "customer_scores") -> pd.DataFrame:
    engine = sa.create_engine(f"sqlite:///{paths.DEFAULT_DATABASE}")
    try:
        return pd.read_sql_table(table, engine).sort_values(["as_of", "customer_id"], ignore_index=True)
    finally:
        engine.dispose()


def test_stage_writes_every_customer_once_to_files_table_and_metrics(project):
    _, paths = project
    metrics = run_export(project)
    features = pd.read_parquet(paths.features_at(0))
    scores = pd.read_parquet(paths.SCORES_PARQUET)
    assert sorted(scores["customer_id"]) == sorted(features["customer_id"]) and scores["customer_id"].is_unique
    assert scores["customer_id"].is_monotonic_increasing and list(scores.columns) == CONTRACT
    contracts.SCORES_SCHEMA.validate(scores)
    csv = pd.read_csv(paths.SCORES_CSV, dtype={"customer_id": str}, parse_dates=["as_of"])
    pd.testing.assert_frame_equal(csv, scores, check_dtype=False)
    table = table_rows(paths)
    assert table["customer_id"].tolist() == scores["customer_id"].tolist()
    assert table["clv"].tolist() == scores["clv"].tolist()
    assert metrics["rows"] == 120 and metrics["as_of"] == "2000-06-30"
    assert metrics["model_version"] == "cvp-clv/3;cvp-churn/2" == scores["model_version"].iloc[0]
    assert metrics["database"] == {"url": "sqlite:///exports/scores.db", "table": "customer_scores"}
    assert metrics["scores_sha256"] == files.file_sha256(paths.SCORES_PARQUET)
    assert sum(metrics["headline"]["customers_by_quadrant"].values()) == 120
    assert metrics["headline"]["total_clv"] == pytest.approx(scores["clv"].sum(), abs=0.01)


def test_rerun_is_byte_identical_and_replaces_the_date_in_the_table(project):
    _, paths = project
    run_export(project)
    outputs = (paths.SCORES_PARQUET, paths.SCORES_CSV, paths.REPORT_HTML, paths.MODELS_HTML, paths.metrics_file("export"))
    before = {p: p.read_bytes() for p in outputs}
    run_export(project)
    assert {p: p.read_bytes() for p in outputs} == before
    table = table_rows(paths)
    assert len(table) == 120 and not table.duplicated(["as_of", "customer_id"]).any()


def test_missing_registration_exports_as_unregistered_with_a_warning(project, caplog):
    _, paths = project
    paths.registration_file(paths.CHURN_MODEL_DIR).unlink()
    with caplog.at_level(logging.WARNING):
        metrics = run_export(project)
    assert metrics["model_version"] == "cvp-clv/3;unregistered"
    assert any("registration.json not found" in r.getMessage() for r in caplog.records)


def test_missing_predictions_stop_before_anything_is_written(project):
    _, paths = project
    paths.churn_predictions_at(0).unlink()
    with pytest.raises(DataError, match=r"data/churn/predictions_t0.parquet: not found; run `cvp churn`"):
        run_export(project)
    assert not paths.EXPORTS.exists() and not paths.REPORT_HTML.exists()


def test_failed_insert_rolls_back_and_leaves_previous_files_and_rows(project, stage_outputs, monkeypatch):
    """A constraint violation in the last INSERT batch: the DELETE and earlier batches roll back,
    a reader never sees a partial date, and no file is replaced."""
    _, paths = project
    for registration in (paths.CLV_MODEL_DIR, paths.CHURN_MODEL_DIR):
        paths.registration_file(registration).unlink()
    run_export(project)  # previous export: models unregistered
    previous_files = {p: p.read_bytes() for p in (paths.SCORES_PARQUET, paths.SCORES_CSV, paths.REPORT_HTML)}
    previous_rows = table_rows(paths)
    assert set(previous_rows["model_version"]) == {"unregistered;unregistered"}
    copy_outputs(stage_outputs, paths.root)  # registrations back: the new export differs

    seen_mid_transaction = []
    original_batches = database.batches

    def watched_batches(rows, size):
        for i, batch in enumerate(original_batches(rows, size)):
            if i == 1:  # the first batch is inserted but not committed
                seen_mid_transaction.append(table_rows(paths))
            yield batch

    original_rows = database.sql_rows
    monkeypatch.setattr(database, "batches", watched_batches)
    monkeypatch.setattr(database, "sql_rows", lambda scores: (rows := original_rows(scores)) + [rows[0]])
    with pytest.raises(sa.exc.IntegrityError):
        run_export(project)

    pd.testing.assert_frame_equal(seen_mid_transaction[0], previous_rows)
    pd.testing.assert_frame_equal(table_rows(paths), previous_rows)
    assert {p: p.read_bytes() for p in previous_files} == previous_files
    assert not [n for n in os.listdir(paths.EXPORTS) if n.endswith(".tmp")]
    assert not [n for n in os.listdir(paths.REPORTS) if n.endswith(".tmp")]


def test_metrics_mask_the_database_password(tmp_path):
    url = database.configured_url(ExportParams(database_url="postgresql+psycopg://cvp:hunter2@db:5432/crm"), Catalog(tmp_path))
    metrics = sc.export_metrics(assemble(tiny_inputs()), {"url": database.masked_url(url), "table": "crm.scores"}, "0" * 64)
    assert metrics["database"] == {"url": "postgresql+psycopg://cvp:***@db:5432/crm", "table": "crm.scores"}
    assert "hunter2" not in json.dumps(metrics)
    assert (metrics["rows"], metrics["as_of"], metrics["model_version"]) == (3, "2000-06-30", "cvp-clv/3;cvp-churn/2")
    assert metrics["headline"]["customers_by_quadrant"] == {"I": 1, "II": 1, "III": 0, "IV": 1}
    assert metrics["headline"]["total_clv"] == round(1.1 + 16.8 + 1.5, 2)
