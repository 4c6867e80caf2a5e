"""The SQL export against a real PostgreSQL server (CVP_TEST_POSTGRES_URL), loaded with COPY."""

from __future__ import annotations

import os
import uuid

import pandas as pd
import pytest
import sqlalchemy as sa

from pipelines import database, export, files
from pipelines.config import load_params
from tests.test_export import CONTRACT, assemble, tiny_inputs
from tests.test_export_fixture import copy_outputs, mlflow_store, project_env, stage_outputs, write_params  # noqa: F401

pytestmark = pytest.mark.postgres

URL_ENV = "CVP_TEST_POSTGRES_URL"


def require_server(url: str | None) -> str:
    """Skip when no URL is given; FAIL when one is given and the server does not answer.

    A set URL means the run promised a server (CI sets it), so a dead server must not pass as skips.
    """
    if not url:
        pytest.skip(f"{URL_ENV} is not set (e.g. postgresql+psycopg://cvp:cvp@127.0.0.1:5432/cvp_test; see .ci/run)")
    engine = sa.create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        pytest.fail(
            f"{URL_ENV} is set but PostgreSQL at {database.masked_url(url)} does not answer: "
            f"{str(exc.orig).splitlines()[0]}; start the server or unset {URL_ENV}",
            pytrace=False,
        )
    finally:
        engine.dispose()
    return url


@pytest.fixture(scope="module")
def pg_url() -> str:
    return require_server(os.environ.get(URL_ENV))


@pytest.fixture
def pg(pg_url):
    """An engine and a fresh table name, dropped afterwards."""
    engine = sa.create_engine(pg_url)
    table = f"scores_{uuid.uuid4().hex[:10]}"
    yield engine, table
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP TABLE IF EXISTS "{table}"'))
    engine.dispose()


def read(engine: sa.Engine, table: str) -> pd.DataFrame:
    with engine.connect() as conn:
        return pd.read_sql_table(table, conn).sort_values(["as_of", "customer_id"], ignore_index=True)


def shifted(scores: pd.DataFrame, day: str, **changes) -> pd.DataFrame:
    return scores.assign(as_of=pd.Series(pd.Timestamp(day), index=scores.index).astype("datetime64[us]"), **changes)


def test_copy_creates_the_typed_table_and_replaces_one_date(pg, monkeypatch):
    engine, table = pg
    copies = []
    original = database._copy_rows
    monkeypatch.setattr(database, "_copy_rows", lambda conn, t, rows: (copies.append(len(rows)), original(conn, t, rows)))
    june = assemble(tiny_inputs())
    database.replace_scores(engine, table, shifted(june, "2000-03-31", clv=0.0), batch_size=2)
    database.replace_scores(engine, table, june, batch_size=2)
    result = database.replace_scores(engine, table, june.assign(clv=june["clv"] * 2), batch_size=2)
    assert copies == [3, 3, 3]
    assert (result.replaced, result.inserted, result.total) == (3, 3, 6)

    inspector = sa.inspect(engine)
    types = {c["name"]: type(c["type"]).__name__ for c in inspector.get_columns(table)}
    assert list(types) == CONTRACT
    assert (types["as_of"], types["frequency"], types["clv"], types["customer_id"]) == ("DATE", "BIGINT", "DOUBLE_PRECISION", "VARCHAR")
    assert inspector.get_pk_constraint(table)["constrained_columns"] == ["as_of", "customer_id"]
    rows = read(engine, table)
    assert rows.groupby(rows["as_of"].astype(str)).size().to_dict() == {"2000-03-31": 3, "2000-06-30": 3}
    assert rows[rows["as_of"].astype(str) == "2000-06-30"]["clv"].tolist() == pytest.approx([2.2, 33.6, 3.0])
    assert rows[rows["as_of"].astype(str) == "2000-06-30"]["frequency"].tolist() == [0, 5, 2]


def test_duplicate_row_in_copy_rolls_back_the_delete(pg, monkeypatch):
    engine, table = pg
    june = assemble(tiny_inputs())
    database.replace_scores(engine, table, june, batch_size=2)
    before = read(engine, table)
    original = database.sql_rows
    monkeypatch.setattr(database, "sql_rows", lambda scores: (rows := original(scores)) + [rows[1]])
    with pytest.raises(sa.exc.IntegrityError):
        database.replace_scores(engine, table, june.assign(clv=99.0), batch_size=2)
    pd.testing.assert_frame_equal(read(engine, table), before)


def test_readers_never_see_a_partial_date_and_a_late_failure_keeps_the_old_rows(pg, monkeypatch):
    """Interrupted after the COPY, before the commit: another session still sees the old rows."""
    engine, table = pg
    june = assemble(tiny_inputs())
    database.replace_scores(engine, table, june, batch_size=2)
    before = read(engine, table)
    seen = []
    original = database._copy_rows

    def copy_then_fail(conn, t, rows):
        original(conn, t, rows)
        seen.append(read(engine, table))  # a separate pooled connection
        raise RuntimeError("interrupted before commit")

    monkeypatch.setattr(database, "_copy_rows", copy_then_fail)
    with pytest.raises(RuntimeError, match="interrupted"):
        database.replace_scores(engine, table, june.assign(clv=-1.0), batch_size=2)
    pd.testing.assert_frame_equal(seen[0], before)
    pd.testing.assert_frame_equal(read(engine, table), before)


def test_stage_exports_to_postgres_and_masks_the_password(pg, pg_url, tmp_path, mlflow_store, stage_outputs):
    engine, table = pg
    copy_outputs(stage_outputs, tmp_path)
    params_path = write_params(tmp_path, mlflow_store, database_url=pg_url, table=table)
    with project_env(tmp_path) as paths:
        export.run(load_params(params_path), paths)
    metrics = files.read_json(paths.metrics_file("export"))
    scores = pd.read_parquet(paths.SCORES_PARQUET)
    rows = read(engine, table)
    assert rows["customer_id"].tolist() == scores["customer_id"].tolist() and len(rows) == metrics["rows"] == 120
    assert rows["churn_probability"].tolist() == scores["churn_probability"].tolist()
    password = sa.make_url(pg_url).password
    assert metrics["database"]["url"] == database.masked_url(pg_url)
    assert f":{password}@" not in str(metrics) and ":***@" in metrics["database"]["url"]
    assert not paths.DEFAULT_DATABASE.exists()
