"""The CLV models as one MLflow pyfunc: customer summaries in, the predictions frame out.

The fitted purchase (BG/NBD family) and spend (Gamma-Gamma) models travel as two pickled
artifacts, loaded in ``load_context``. The forecast horizon, discount rate, margin and
discount period are inference params (declared in the signature's ParamSchema with the
pipeline's defaults), so a caller can ask for another horizon without re-logging the model.
The model's time unit (days per unit) is fixed: the fitted parameters are in that unit.
"""

from __future__ import annotations

import pickle
from typing import Any

import mlflow.pyfunc
import pandas as pd
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

from models.clv import ClvSettings

#: Artifact keys of the two pickled models.
#: What the served model imports when it is unpickled and predicts (not lifetimes: fits only).
REQUIREMENTS = ("pandas", "numpy", "scipy", "mpmath", "scikit-learn", "mlflow", "cloudpickle")
PURCHASE_ARTIFACT = "purchase_model"
SPEND_ARTIFACT = "spend_model"
#: Columns a caller sends (``cutoff`` is optional and only copied to the output).
INPUT_COLUMNS = ("customer_id", "frequency", "recency", "T", "monetary_value")
#: Inference params and their MLflow types.
PARAM_TYPES = {"horizon_days": "long", "discount_rate": "double", "margin": "double", "discount_period_days": "long"}


class ClvPyfuncModel(mlflow.pyfunc.PythonModel):
    """Predict P(alive), expected purchases, expected spend and CLV for customer summaries.

    ``days_per_unit``: length in days of the model's time unit (recency and T are in it).
    ``defaults``: default values of the inference params (keys of PARAM_TYPES).
    """

    def __init__(self, days_per_unit: float, defaults: dict[str, Any]):
        missing = set(PARAM_TYPES) - set(defaults)
        if missing:
            raise ValueError(f"defaults lack inference params: {sorted(missing)}")
        self.days_per_unit = float(days_per_unit)
        self.defaults = {k: defaults[k] for k in PARAM_TYPES}

    @classmethod
    def from_settings(cls, settings: ClvSettings) -> ClvPyfuncModel:
        """The model whose inference params default to ``settings`` (horizon, discounting, margin)."""
        return cls(settings.days_per_unit, {name: getattr(settings, name) for name in PARAM_TYPES})

    def load_context(self, context) -> None:
        with open(context.artifacts[PURCHASE_ARTIFACT], "rb") as fh:
            self.purchase_model = pickle.load(fh)
        with open(context.artifacts[SPEND_ARTIFACT], "rb") as fh:
            self.spend_model = pickle.load(fh)

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        settings = {**self.defaults, **{k: v for k, v in (params or {}).items() if v is not None}}
        features = pd.DataFrame(model_input).copy()
        if "cutoff" not in features:
            features["cutoff"] = pd.NaT
        features["customer_id"] = features["customer_id"].astype(str)
        clv = ClvSettings(
            days_per_unit=self.days_per_unit,
            horizon_days=int(settings["horizon_days"]),
            margin=float(settings["margin"]),
            discount_rate=float(settings["discount_rate"]),
            discount_period_days=int(settings["discount_period_days"]),
        )
        return clv.predict(self.purchase_model, self.spend_model, features)


def model_signature(defaults: dict[str, Any], outputs: pd.DataFrame | None = None) -> ModelSignature:
    """Signature: the summary columns in (cutoff optional), the inference params with defaults."""
    inputs = Schema(
        [
            ColSpec("string", "customer_id"),
            ColSpec("long", "frequency"),
            ColSpec("double", "recency"),
            ColSpec("double", "T"),
            ColSpec("double", "monetary_value"),
            ColSpec("datetime", "cutoff", required=False),
        ]
    )
    params = ParamSchema([ParamSpec(name, dtype, _typed(dtype, defaults[name])) for name, dtype in PARAM_TYPES.items()])
    output_schema = None
    if outputs is not None:
        from mlflow.models import infer_signature

        output_schema = infer_signature(model_output=outputs).outputs
    return ModelSignature(inputs=inputs, outputs=output_schema, params=params)


def input_example(features: pd.DataFrame, n: int = 5) -> pd.DataFrame:
    """First ``n`` rows of a features frame, reduced to the model's input columns."""
    example = features.loc[:, [*INPUT_COLUMNS, "cutoff"]].head(n).reset_index(drop=True)
    example["customer_id"] = example["customer_id"].astype(str)
    example["frequency"] = example["frequency"].astype("int64")
    for col in INPUT_COLUMNS[2:]:
        example[col] = example[col].astype("float64")
    return example


def _typed(dtype: str, value: Any) -> Any:
    return int(value) if dtype == "long" else float(value)
