"""`cvp score`: apply a registered pyfunc to the t_0 features (data/features/features_t0.parquet).

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
from features.frames import same_ids, sorted_by_id
from models.clv import PREDICTION_DTYPES, as_predictions
from models.clv_pyfunc import INPUT_COLUMNS
from models.retrain_rules import ALIAS as CHAMPION_ALIAS
from models.scores import SCORE_COLUMNS, coerce_scores, validate_scores
from pipelines import contracts, files, spark, tracking
from pipelines.catalog import Catalog
from pipelines.config import FeaturesParams, Params

log = logging.getLogger(__name__)

Engine = Literal["pandas", "pyspark"]
Model = Literal["scores", "clv"]
#: Spark SQL type of each column the model returns (the dates come from the input's cutoff).
SPARK_TYPES = {"str": "string", "float64": "double", "int64": "long"}


def model_uri(name: str, model_dir: Path, stage: str) -> str:
    """``models:/name@champion`` if the alias exists in the registry, else the registered
    version recorded by ``stage`` in ``model_dir``. Raises DataError when there is neither."""
    if tracking.alias_version(name, CHAMPION_ALIAS) is not None:
        return f"models:/{name}@{CHAMPION_ALIAS}"
    registration = Catalog.registration_file(model_dir)
    if not registration.exists():
        raise DataError(f"no '{name}@{CHAMPION_ALIAS}' alias and no {registration}; run `cvp {stage}` with {stage}.register_model: true")
    info = tracking.read_registration(model_dir, stage)
    return f"models:/{info['name']}/{info['version']}"


def load_features(params: Params, paths: Catalog, model: Model) -> pd.DataFrame:
    """The model's inputs from the t_0 features: every column for the chain, the CLV model's
    input columns and cutoff for the CLV model (contract-checked)."""
    return paths.read("features_t0", params, columns=None if model == "scores" else [*INPUT_COLUMNS, "cutoff"])


def score_pandas(uri: str, features: pd.DataFrame) -> pd.DataFrame:
    """Scores in this process (mlflow.pyfunc.load_model)."""
    import mlflow.pyfunc

    return mlflow.pyfunc.load_model(uri).predict(features)


def result_type(model: Model) -> str:
    """The Spark struct the udf returns: the model's output columns but the ids and dates."""
    if model == "scores":
        columns = {c.name: c.dtype for c in SCORE_COLUMNS if c.name not in ("customer_id", "as_of")}
    else:
        columns = {k: v for k, v in PREDICTION_DTYPES.items() if k not in ("customer_id", "cutoff")}
    return ", ".join(f"{name} {SPARK_TYPES[dtype]}" for name, dtype in columns.items())


def score_spark(uri: str, features: pd.DataFrame, params: FeaturesParams, model: Model) -> pd.DataFrame:
    """Scores with ``mlflow.pyfunc.spark_udf`` on the Spark session of ``params``; the model
    runs in the executors' Python (env_manager="local": the same installed environment), on
    batches of rows. The chain labels each customer against the stored population, so how Spark
    splits the rows does not change the scores."""
    import mlflow.pyfunc
    from pyspark.sql import functions as F

    with spark.session(params, app_name="cvp-score") as session:
        frame = session.createDataFrame(features)
        udf = mlflow.pyfunc.spark_udf(session, uri, result_type=result_type(model), env_manager="local")
        scored = frame.select("customer_id", "cutoff", udf(*[F.col(c) for c in features.columns]).alias("score"))
        return scored.select("customer_id", "cutoff", "score.*").toPandas()


def normalise(scores: pd.DataFrame, features: pd.DataFrame, model: Model) -> pd.DataFrame:
    """The model's contract (columns, dtypes, sorted, schema-checked), the date from the features."""
    out = scores.astype({"customer_id": "str"})
    feature_ids = features["customer_id"].astype("str")
    if same_ids(out["customer_id"], feature_ids):  # the usual case: the model kept the features' row order
        cutoff = pd.Series(features["cutoff"].to_numpy(), index=out.index)
    else:
        cutoff = out["customer_id"].map(pd.Series(features["cutoff"].to_numpy(), index=feature_ids))
    if model == "clv":
        predictions = as_predictions(out.assign(cutoff=cutoff))
        return contracts.check(contracts.schema("clv_predictions"), predictions, "scores", "the model's output breaks its contract")
    return validate_scores(sorted_by_id(coerce_scores(out.assign(as_of=cutoff), "scores")[[c.name for c in SCORE_COLUMNS]]))


def score(params: Params, paths: Catalog, engine: Engine, out: Path, model: Model = "scores") -> int:
    """Score features_t0 with a registered model and write Parquet to ``out``; return rows."""
    started = time.perf_counter()
    if engine == "pyspark":
        spark.require_pyspark()
    tracking.configure(params, paths.root)
    if model == "scores":
        uri = model_uri(params.segment.model_name, paths.SEGMENT_MODEL_DIR, "segment")
    else:
        uri = model_uri(params.clv.model_name, paths.CLV_MODEL_DIR, "clv")
    features = load_features(params, paths, model)
    log.info("scoring %d customers with %s on %s", len(features), uri, engine)
    raw = score_spark(uri, features, params.features, model) if engine == "pyspark" else score_pandas(uri, features)
    result = normalise(raw, features, model)
    files.write_parquet(result, out)
    log.info("wrote %s (%d rows, %.1f s)", out, len(result), time.perf_counter() - started)
    return len(result)
