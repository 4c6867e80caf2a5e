"""The features stage on Spark (features.engine: pyspark, local mode) gives the same files as on
DuckDB: same customers, columns, dtypes and values, from the same ibis feature definitions.

The Spark tests need the spark extra (requirements-spark.lock) and Java 17+; without them they
are skipped with the reason. The settings tests (master, conf, install hint) need neither.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from features.errors import DataError
from features.synthetic import SyntheticParams, generate_transactions
from pipelines import engines, files, spark
from pipelines import clv as clv_stage
from pipelines import features as stage
from pipelines.catalog import CUTOFF_OFFSETS, Catalog
from pipelines.config import ConfigError, FeaturesParams, Params, load_params
from tests.test_features import cdnow_master, transactions_frame

ROOT = Path(__file__).resolve().parents[1]
RELATIVE = Catalog(".")  # the outputs' paths relative to a project root
OUTPUTS = [RELATIVE.features_at(k) for k in CUTOFF_OFFSETS] + [RELATIVE.labels_at(k) for k in (1, 2)]


def _java_missing() -> bool:
    java_home = os.environ.get("JAVA_HOME")
    return not (java_home and Path(java_home, "bin", "java").exists()) and shutil.which("java") is None


requires_pyspark = pytest.mark.skipif(
    importlib.util.find_spec("pyspark") is None, reason="pyspark is not installed: install the spark extra (make env-spark)"
)
requires_java = pytest.mark.skipif(_java_missing(), reason="no Java found (JAVA_HOME or java on PATH); Spark needs Java 17+")


@pytest.fixture(scope="module")
def spark_con():
    """One local Spark session (local[2]) for the module: starting one takes ~10 s."""
    with engines.connect(FeaturesParams(engine="pyspark")) as con:
        yield con


@pytest.fixture(scope="module")
def params() -> Params:
    return load_params(ROOT / "params.yaml")


def build_features(
    con, workdir: Path, tx: pd.DataFrame, params: Params, offsets: tuple[int, ...] = CUTOFF_OFFSETS
) -> dict[str, pd.DataFrame]:
    """Run the stage on ``con`` for a project in ``workdir`` for the cutoffs t_k, k in ``offsets``
    (features, and labels for k >= 1); return the written files, read back, by name."""
    paths = Catalog(workdir)
    files.write_parquet(tx.sort_values(["customer_id", "timestamp", "source_row"]).reset_index(drop=True), paths.TRANSACTIONS)
    table, _, spec, cutoffs = stage.inputs(con, params, paths)
    stage.build(con, table, {k: c for k, c in cutoffs.items() if k in offsets}, spec, paths)
    return {path.name: pd.read_parquet(workdir / path) for path in OUTPUTS if (workdir / path).exists()}


def assert_same_outputs(duckdb_files: dict[str, pd.DataFrame], spark_files: dict[str, pd.DataFrame]) -> None:
    """Same files, rows, columns and dtypes; integers and dates exactly, floats to 1e-12."""
    assert duckdb_files.keys() == spark_files.keys()
    for name, expected in duckdb_files.items():
        got = spark_files[name]
        assert list(got.columns) == list(expected.columns), name
        assert got.dtypes.astype(str).to_dict() == expected.dtypes.astype(str).to_dict(), name
        assert len(expected) > 0, name
        pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=0, atol=1e-12, obj=name)


def synthetic_transactions(n_rows: int, seed: int) -> pd.DataFrame:
    """Clean simulated rows (returns, orders, costs, times of day) in the ingest contract."""
    raw = generate_transactions(n_rows, seed, params=SyntheticParams(noise_rate=0.0))
    return transactions_frame(
        raw["customer_id"], pd.to_datetime(raw["timestamp"], format="%Y-%m-%d %H:%M:%S"), raw["amount"].astype(float),
        quantity=raw["quantity"].astype(float), order_id=raw["order_id"], cost=raw["cost"].astype(float),
    )  # fmt: skip


@requires_pyspark
@requires_java
def test_spark_equals_duckdb_on_simulated_transactions(spark_con, params, tmp_path):
    """One cutoff (t1: features and labels) to keep the default suite fast."""
    tx = synthetic_transactions(20_000, seed=11)
    assert (tx["amount"] < 0).any() and tx["order_id"].notna().all() and tx["cost"].notna().all()
    assert (tx["timestamp"].dt.hour > 0).any()  # days are cut from times of day
    with engines.connect(FeaturesParams()) as duck:
        expected = build_features(duck, tmp_path / "duckdb", tx, params, offsets=(1,))
    got = build_features(spark_con, tmp_path / "spark", tx, params, offsets=(1,))
    assert list(got) == ["features_t1.parquet", "labels_t1.parquet"]
    assert_same_outputs(expected, got)
    t1 = got["features_t1.parquet"]
    # The CLV stage's compressed tables, asked of each engine, are the same rows.
    features_t1 = Catalog(tmp_path / "spark").features_at(1)
    with engines.connect(FeaturesParams()) as duck:
        on_duckdb = clv_stage.patterns_at(duck, features_t1, "f1")
    on_spark = clv_stage.patterns_at(spark_con, features_t1, "f1")
    for name in ("rfm", "spend"):
        pd.testing.assert_frame_equal(getattr(on_spark, name), getattr(on_duckdb, name), check_dtype=False, obj=name)
    assert on_spark.rfm["count"].sum() == len(t1) > len(on_spark.rfm)
    assert t1["n_orders"].sum() > 0 and t1["margin_trailing"].notna().any() and t1["returns_count"].sum() > 0
    assert 0 < got["labels_t1.parquet"]["purchased"].sum() < len(t1)


@pytest.mark.slow
@requires_pyspark
@requires_java
def test_spark_writes_byte_identical_files_to_duckdb_on_cdnow(spark_con, params, tmp_path):
    tx = cdnow_master()
    with engines.connect(FeaturesParams()) as duck:
        expected = build_features(duck, tmp_path / "duckdb", tx, params)
    got = build_features(spark_con, tmp_path / "spark", tx, params)
    assert_same_outputs(expected, got)
    assert len(got) == len(OUTPUTS) and len(got["features_t0.parquet"]) == 23_570
    for path in OUTPUTS:
        assert files.file_sha256(tmp_path / "spark" / path) == files.file_sha256(tmp_path / "duckdb" / path), path


def test_master_comes_from_params_unless_the_environment_overrides_it(monkeypatch):
    monkeypatch.delenv(spark.MASTER_ENV, raising=False)
    assert spark.spark_master(FeaturesParams()) == "local[2]"
    assert spark.spark_master(FeaturesParams(spark_master="yarn")) == "yarn"
    monkeypatch.setenv(spark.MASTER_ENV, "spark://head:7077")
    assert spark.spark_master(FeaturesParams(spark_master="yarn")) == "spark://head:7077"


def test_spark_conf_is_passed_through_on_top_of_the_defaults():
    conf = spark.session_conf(
        FeaturesParams(spark_conf={"spark.executor.memory": "8g", "spark.sql.shuffle.partitions": 64, "spark.sql.adaptive.enabled": True})
    )
    assert conf["spark.executor.memory"] == "8g"
    assert conf["spark.sql.shuffle.partitions"] == "64" and conf["spark.sql.adaptive.enabled"] == "true"
    assert conf["spark.sql.session.timeZone"] == "UTC"
    assert spark.session_conf(FeaturesParams())["spark.sql.shuffle.partitions"] == "8"


def test_a_session_time_zone_other_than_utc_is_refused():
    with pytest.raises(ConfigError, match=r"spark_conf sets spark\.sql\.session\.timeZone=Europe/Paris"):
        spark.session_conf(FeaturesParams(spark_conf={"spark.sql.session.timeZone": "Europe/Paris"}))


def test_without_pyspark_the_engine_stops_with_one_line_on_installing_the_extra(monkeypatch):
    monkeypatch.setattr(spark.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError) as err:
        with engines.connect(FeaturesParams(engine="pyspark")):
            pass
    message = str(err.value)
    assert "\n" not in message and "requirements-spark.lock" in message and "features.engine: duckdb" in message


@requires_pyspark
def test_without_java_the_engine_stops_with_one_line_naming_the_master(tmp_path):
    """In a fresh process (a JVM, once started, stays for the process)."""
    env = os.environ | {"JAVA_HOME": str(tmp_path / "no-java"), "PATH": str(Path(sys.executable).parent)}
    code = (
        "from pipelines import engines\nfrom pipelines.config import FeaturesParams\n"
        "with engines.connect(FeaturesParams(engine='pyspark')): pass\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("pipelines.config.ConfigError: features: could not start Spark with master 'local[2]'"), last
    assert "Java 17+" in last
