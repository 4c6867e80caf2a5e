"""`cvp score`: apply the registered CLV pyfunc to data/features/features_t0.parquet.

The model is ``models:/<clv.model_name>@champion`` when that alias exists, else the version in
models/artifacts/clv/registration.json. ``engine="pandas"`` loads it in this process;
``engine="pyspark"`` applies it with ``mlflow.pyfunc.spark_udf`` on the Spark session of
``params.features`` (spark_master, spark_conf), as a batch-scoring job would on a cluster.
Both write the CLV predictions contract (one row per customer, sorted by customer_id).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Literal

import pandas as pd

from features.errors import DataError
from pipelines import io, paths, spark, tracking
from pipelines.clv import to_predictions
from pipelines.config import FeaturesParams, Params

log = logging.getLogger(__name__)

CHAMPION_ALIAS = "champion"
INPUT_COLUMNS = ("customer_id", "frequency", "recency", "T", "monetary_value")
#: Model outputs (besides customer_id and cutoff, taken from the input) and their dtypes.
SCORE_DTYPES = {
    "model": "str", "p_alive": "float64", "expected_purchases": "float64", "p_no_purchase": "float64",
    "expected_avg_spend": "float64", "clv": "float64",
}  # fmt: skip
Engine = Literal["pandas", "pyspark"]


def model_uri(name: str) -> str:
    """``models:/name@champion`` if the alias exists in the registry, else the registered
    version recorded by the clv stage. Raises DataError when there is neither."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient().get_model_version_by_alias(name, CHAMPION_ALIAS)
        return f"models:/{name}@{CHAMPION_ALIAS}"
    except MlflowException:
        pass
    registration = paths.registration_file(paths.CLV_MODEL_DIR)
    if not registration.exists():
        raise DataError(
            f"no '{name}@{CHAMPION_ALIAS}' alias and no {registration}; run `cvp clv` with clv.register_model: true"
        )
    info = io.read_json(registration)
    return f"models:/{info['name']}/{info['version']}"


def load_features(path: Path) -> pd.DataFrame:
    """The model's input columns (and cutoff) of a features file."""
    if not path.exists():
        raise DataError(f"{path} not found; run `cvp features` first")
    frame = pd.read_parquet(path, columns=[*INPUT_COLUMNS, "cutoff"])
    return frame.astype({"frequency": "int64", "recency": "float64", "T": "float64", "monetary_value": "float64"})


def score_pandas(uri: str, features: pd.DataFrame) -> pd.DataFrame:
    """Scores in this process (mlflow.pyfunc.load_model)."""
    import mlflow.pyfunc

    return mlflow.pyfunc.load_model(uri).predict(features)


def score_spark(uri: str, features: pd.DataFrame, params: FeaturesParams) -> pd.DataFrame:
    """Scores with ``mlflow.pyfunc.spark_udf`` on the Spark session of ``params``; the model
    runs in the executors' Python (env_manager="local": the same installed environment)."""
    import mlflow.pyfunc
    from pyspark.sql import functions as F

    result_type = ", ".join(f"{c} {'string' if t == 'str' else 'double'}" for c, t in SCORE_DTYPES.items())
    with spark.session(params, app_name="cvp-score") as session:
        frame = session.createDataFrame(features)
        udf = mlflow.pyfunc.spark_udf(session, uri, result_type=result_type, env_manager="local")
        scored = frame.select("customer_id", "cutoff", udf(*[F.col(c) for c in (*INPUT_COLUMNS, "cutoff")]).alias("score"))
        return scored.select("customer_id", "cutoff", "score.*").toPandas()


def normalise(scores: pd.DataFrame, features: pd.DataFrame) -> pd.DataFrame:
    """The CLV predictions contract (columns, dtypes, sorted, schema-checked), cutoff from the features."""
    out = scores.astype({"customer_id": "str"})
    out["cutoff"] = out["customer_id"].map(features.astype({"customer_id": "str"}).set_index("customer_id")["cutoff"])
    return to_predictions(out)


def score(params: Params, engine: Engine, out: Path) -> int:
    """Score features_t0 with the registered CLV model and write Parquet to ``out``; return rows."""
    started = time.perf_counter()
    if engine == "pyspark":
        spark.require_pyspark()
    tracking.configure(params)
    uri = model_uri(params.clv.model_name)
    features = load_features(paths.features_at(0))
    log.info("scoring %d customers with %s on %s", len(features), uri, engine)
    raw = score_spark(uri, features, params.features) if engine == "pyspark" else score_pandas(uri, features)
    result = normalise(raw, features)
    io.write_parquet(result, out)
    log.info("wrote %s (%d rows, %.1f s)", out, len(result), time.perf_counter() - started)
    return len(result)
