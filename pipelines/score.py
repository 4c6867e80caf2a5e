"""`cvp score`: apply a registered pyfunc to data/features/features_t0.parquet.

``model="scores"`` (default) is the whole chain the segment stage registers
(``segment.model_name``): it writes the export contract, the rows of exports/scores.parquet.
``model="clv"`` is the CLV model (``clv.model_name``): it writes the CLV predictions contract.
The version is ``models:/<name>@champion`` when that alias exists, else the one in the stage's
registration.json. ``engine="pandas"`` loads it in this process; ``engine="pyspark"`` applies
it with ``mlflow.pyfunc.spark_udf`` on the Spark session of ``params.features`` (spark_master,
spark_conf), as a batch-scoring job would on a cluster. Rows are sorted by customer_id.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Literal

import pandas as pd

from features.errors import DataError
from pipelines import io, paths, spark, tracking
from models.scores import SCORE_COLUMNS, coerce_scores, validate_scores
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
Model = Literal["scores", "clv"]
#: Spark SQL type of each export column the model returns (as_of comes from the input's cutoff).
SPARK_TYPES = {"str": "string", "float64": "double", "int64": "long"}


def model_uri(name: str, model_dir: Path = paths.CLV_MODEL_DIR, stage: str = "clv") -> str:
    """``models:/name@champion`` if the alias exists in the registry, else the registered
    version recorded by ``stage`` in ``model_dir``. Raises DataError when there is neither."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient().get_model_version_by_alias(name, CHAMPION_ALIAS)
        return f"models:/{name}@{CHAMPION_ALIAS}"
    except MlflowException:
        pass
    registration = paths.registration_file(model_dir)
    if not registration.exists():
        raise DataError(
            f"no '{name}@{CHAMPION_ALIAS}' alias and no {registration}; run `cvp {stage}` with {stage}.register_model: true"
        )
    info = io.read_json(registration)
    return f"models:/{info['name']}/{info['version']}"


def load_features(path: Path, model: Model = "clv") -> pd.DataFrame:
    """The model's input columns (and cutoff) of a features file: every column for the chain."""
    if not path.exists():
        raise DataError(f"{path} not found; run `cvp features` first")
    if model == "scores":
        return pd.read_parquet(path)
    frame = pd.read_parquet(path, columns=[*INPUT_COLUMNS, "cutoff"])
    return frame.astype({"frequency": "int64", "recency": "float64", "T": "float64", "monetary_value": "float64"})


def score_pandas(uri: str, features: pd.DataFrame) -> pd.DataFrame:
    """Scores in this process (mlflow.pyfunc.load_model)."""
    import mlflow.pyfunc

    return mlflow.pyfunc.load_model(uri).predict(features)


def result_type(model: Model) -> str:
    """The Spark struct the udf returns: the model's output columns but the dates."""
    if model == "scores":
        columns = {c.name: c.dtype for c in SCORE_COLUMNS if c.name not in ("customer_id", "as_of")}
    else:
        columns = SCORE_DTYPES
    return ", ".join(f"{name} {SPARK_TYPES[dtype]}" for name, dtype in columns.items())


def score_spark(uri: str, features: pd.DataFrame, params: FeaturesParams, model: Model = "clv") -> pd.DataFrame:
    """Scores with ``mlflow.pyfunc.spark_udf`` on the Spark session of ``params``; the model
    runs in the executors' Python (env_manager="local": the same installed environment), on
    batches of rows. The chain labels each customer against the stored population, so how Spark
    splits the rows does not change the scores."""
    import mlflow.pyfunc
    from pyspark.sql import functions as F

    columns = list(features.columns) if model == "scores" else [*INPUT_COLUMNS, "cutoff"]
    with spark.session(params, app_name="cvp-score") as session:
        frame = session.createDataFrame(features)
        udf = mlflow.pyfunc.spark_udf(session, uri, result_type=result_type(model), env_manager="local")
        scored = frame.select("customer_id", "cutoff", udf(*[F.col(c) for c in columns]).alias("score"))
        return scored.select("customer_id", "cutoff", "score.*").toPandas()


def normalise(scores: pd.DataFrame, features: pd.DataFrame, model: Model = "clv") -> pd.DataFrame:
    """The model's contract (columns, dtypes, sorted, schema-checked), the date from the features."""
    out = scores.astype({"customer_id": "str"})
    cutoff = out["customer_id"].map(features.astype({"customer_id": "str"}).set_index("customer_id")["cutoff"])
    if model == "clv":
        return to_predictions(out.assign(cutoff=cutoff))
    out = coerce_scores(out.assign(as_of=cutoff), "scores")[[c.name for c in SCORE_COLUMNS]]
    return validate_scores(out.sort_values("customer_id", kind="mergesort").reset_index(drop=True))


def score(params: Params, engine: Engine, out: Path, model: Model = "scores") -> int:
    """Score features_t0 with a registered model and write Parquet to ``out``; return rows."""
    started = time.perf_counter()
    if engine == "pyspark":
        spark.require_pyspark()
    tracking.configure(params)
    if model == "scores":
        uri = model_uri(params.segment.model_name, paths.SEGMENT_MODEL_DIR, "segment")
    else:
        uri = model_uri(params.clv.model_name)
    features = load_features(paths.features_at(0), model)
    log.info("scoring %d customers with %s on %s", len(features), uri, engine)
    raw = score_spark(uri, features, params.features, model) if engine == "pyspark" else score_pandas(uri, features)
    result = normalise(raw, features, model)
    io.write_parquet(result, out)
    log.info("wrote %s (%d rows, %.1f s)", out, len(result), time.perf_counter() - started)
    return len(result)
