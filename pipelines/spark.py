"""Spark sessions for the ``pyspark`` features engine (needs the ``spark`` extra and Java 17+).

The master comes from ``features.spark_master`` (default ``local[2]``), overridden by the
environment variable CVP_SPARK_MASTER when set (e.g. ``yarn`` or ``spark://host:7077`` on a
cluster, without editing params.yaml). ``features.spark_conf`` is passed through to the session
builder on top of SESSION_DEFAULTS. The session time zone is pinned to UTC: timestamps are
naive, and calendar days must not depend on the machine's or the cluster's zone.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

from features.errors import DataError
from pipelines.config import ConfigError, FeaturesParams

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

MASTER_ENV = "CVP_SPARK_MASTER"
TIME_ZONE_KEY = "spark.sql.session.timeZone"
SESSION_DEFAULTS: dict[str, str] = {
    TIME_ZONE_KEY: "UTC",
    "spark.sql.shuffle.partitions": "8",  # the data per cutoff is small; Spark's 200 only adds overhead
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",  # no progress bars on the terminal
    "spark.sql.execution.arrow.pyspark.enabled": "true",  # results come back through Arrow
}
INSTALL_HINT = (
    "features.engine is 'pyspark' but pyspark is not installed; install the spark extra "
    "(make env-spark, or pip install --require-hashes --no-deps -r requirements-spark.lock) or set features.engine: duckdb"
)


def require_pyspark() -> None:
    """Raise a one-line DataError saying how to install the extra when pyspark is missing."""
    if importlib.util.find_spec("pyspark") is None:
        raise DataError(INSTALL_HINT)


def spark_master(params: FeaturesParams) -> str:
    """The master URL: CVP_SPARK_MASTER when set, else ``params.spark_master``."""
    return os.environ.get(MASTER_ENV) or params.spark_master


def session_conf(params: FeaturesParams) -> dict[str, str]:
    """SESSION_DEFAULTS updated with ``params.spark_conf`` (values as Spark strings)."""
    extra = {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in params.spark_conf.items()}
    if extra.get(TIME_ZONE_KEY, "UTC") != "UTC":
        raise ConfigError(
            f"features.spark_conf sets {TIME_ZONE_KEY}={extra[TIME_ZONE_KEY]}; remove it "
            "(calendar days of the naive timestamps are computed in UTC)"
        )
    return SESSION_DEFAULTS | extra


@contextlib.contextmanager
def session(params: FeaturesParams, app_name: str = "cvp-features") -> Iterator[SparkSession]:
    """A Spark session configured from params, stopped on exit unless it was already running
    (inside a notebook or a cluster job the caller's session is reused and left open)."""
    require_pyspark()
    from pyspark.sql import SparkSession

    master, conf = spark_master(params), session_conf(params)
    if master.startswith("local") and not os.environ.get("PYSPARK_PYTHON"):
        # Python UDF workers (model scoring) run this interpreter (Spark's own setting, so the
        # process environment is left as it is)
        conf = {"spark.pyspark.python": sys.executable} | conf
    existing = SparkSession.getActiveSession()
    builder = SparkSession.builder.master(master).appName(app_name)
    for key, value in conf.items():
        builder = builder.config(key, value)
    try:
        spark = builder.getOrCreate()
    except Exception as exc:  # no Java, a bad master URL, an unreachable cluster
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"features: could not start Spark with master '{master}' ({reason}); "
            "check features.spark_master / CVP_SPARK_MASTER and that Java 17+ is installed (java -version)"
        ) from None
    if existing is not None:  # getOrCreate reused it: only SQL settings could be applied
        for key, value in conf.items():
            if key.startswith("spark.sql."):
                spark.conf.set(key, value)
    spark.sparkContext.setLogLevel("WARN")
    log.info("Spark engine: master %s, Spark %s, %s", spark.sparkContext.master, spark.version, conf)
    try:
        yield spark
    finally:
        if existing is None:
            spark.stop()
