"""The whole scoring chain as one MLflow pyfunc: a customer's features in, their export row out.

CLV models -> churn classifier -> segment rules, the same functions the batch stages call, so a
served answer equals the customer's row of exports/scores.parquet (the contract in
models/scores.py). Population-relative labels (quadrant cuts, tiers, pyramid, ABC, relationship)
come from the :class:`~models.segments.SegmentReference` of the population scored at as_of, so
a customer is labelled as in the batch whoever else is in the request.

Artifacts: the pickled purchase, spend and churn models, the reference as JSON, and the clv stage's
parameter draws (JSON) from which the chain recomputes clv_p10/p50/p90 and clv_expected_p10/p90
(models/clv_intervals.py); when
growth potential is the value model's (segment.growth_potential value, or auto after it won on the
holdout), its pickle too: the chain then predicts it from the features and the CLV outputs.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass

import mlflow.pyfunc
import pandas as pd

from features.frames import join_on_id
from models.churn import prepare_features
from models.clv import ClvSettings
from models.clv_columns import EXPECTED_COLUMNS, INTERVAL_COLUMNS
from models.clv_intervals import ParameterDraws, fill_intervals, from_served_artifact, interval_frame, point_spend_of
from models.scores import assemble_scores
from models.segments import VALUE_PREDICTION, SegmentReference, SegmentRules, segment_customers
from models.value import prepare_value_features

PURCHASE_ARTIFACT = "purchase_model"
SPEND_ARTIFACT = "spend_model"
CHURN_ARTIFACT = "churn_classifier"
REFERENCE_ARTIFACT = "segment_reference"
VALUE_ARTIFACT = "value_model"  # only when the rules' growth potential is "value"
INTERVAL_ARTIFACT = "clv_interval_draws"
ARTIFACTS = (PURCHASE_ARTIFACT, SPEND_ARTIFACT, CHURN_ARTIFACT, REFERENCE_ARTIFACT, INTERVAL_ARTIFACT)
#: The distributions the chain imports (here, models/clv.py and its lifetimes door, whose fitter uses
#: autograd, models/churn.py, models/scores.py, models/segments.py), pinned at logging time;
#: tests/test_scores_pyfunc.py checks it.
REQUIREMENTS = ("mlflow", "pandas", "pyarrow", "numpy", "scipy", "mpmath", "scikit-learn", "lightgbm", "lifetimes", "autograd")
#: Columns of a features row the chain reads besides the churn classifier's own inputs.
REQUIRED_COLUMNS = (
    "customer_id", "cutoff", "frequency", "recency", "T", "monetary_value",
    "spend_trailing", "margin_trailing", "days_since_first", "days_since_last", "ipi_mean",
)  # fmt: skip


@dataclass(frozen=True)
class ScoringChain:
    """The fitted models and rules of one pipeline run; :meth:`score` gives export rows."""

    purchase_model: object
    spend_model: object
    churn_classifier: object
    reference: SegmentReference
    rules: SegmentRules
    clv: ClvSettings
    model_version: str
    value_model: object | None = None  # models.value.ValueModel; None: growth potential "value" is the CLV
    intervals: tuple[ParameterDraws, object] | None = None  # the t_0 parameter draws and IntervalSettings

    def score(self, features: pd.DataFrame) -> pd.DataFrame:
        """Export rows (the contract of models/scores.py, sorted by customer_id) for rows of a features file."""
        missing = [c for c in REQUIRED_COLUMNS if c not in features.columns]
        if missing:
            raise ValueError(f"features: missing column(s) {missing}; send rows of data/features/features_t0.parquet")
        features = features.reset_index(drop=True).copy()
        features["customer_id"] = features["customer_id"].astype(str)
        features["cutoff"] = pd.to_datetime(features["cutoff"])
        clv = self.clv.predict(self.purchase_model, self.spend_model, features)
        if self.intervals is not None:  # the clv stage's P10/P50/P90, history by history as in the batch
            spend = point_spend_of(clv, features)
            quantiles = interval_frame(self.intervals[0], features, self.intervals[1], spend)
            columns = [*INTERVAL_COLUMNS, *EXPECTED_COLUMNS]
            clv = fill_intervals(clv, features, quantiles[columns].to_numpy(), columns)
        X = prepare_features(features, clv)
        churn = pd.DataFrame(
            {
                "customer_id": X.index.to_numpy(),
                "cutoff": features.set_index("customer_id").loc[X.index, "cutoff"].to_numpy(),
                "churn_probability": self.churn_classifier.predict_churn_probability(X),
            }
        )
        clv_columns = ["customer_id", "clv", "p_no_purchase", *INTERVAL_COLUMNS, *EXPECTED_COLUMNS]
        inputs = join_on_id(features, clv[clv_columns])
        inputs = join_on_id(inputs, churn[["customer_id", "churn_probability"]])
        if self.rules.growth_potential == "value":
            inputs[VALUE_PREDICTION] = self.value_prediction(features, clv).reindex(inputs["customer_id"]).to_numpy()
        labelled = segment_customers(inputs, self.rules, self.reference).customers
        segments = labelled.assign(as_of=features["cutoff"].to_numpy())
        return assemble_scores(features, clv, churn, segments, self.model_version)

    def value_prediction(self, features: pd.DataFrame, clv: pd.DataFrame) -> pd.Series:
        """The value model's prediction by customer_id (the CLV when the value stage fitted no model,
        as its predictions file then holds)."""
        X = prepare_value_features(features, clv)
        if self.value_model is None:
            return X["clv"]
        return pd.Series(self.value_model.predict(X), index=X.index)


class ScoresPyfuncModel(mlflow.pyfunc.PythonModel):
    """Features rows in, export rows out (see :class:`ScoringChain`)."""

    def __init__(self, rules: SegmentRules, clv: ClvSettings, model_version: str):
        self.rules = rules
        self.clv = clv
        self.model_version = model_version

    def load_context(self, context) -> None:
        loaded = {}
        for key in (PURCHASE_ARTIFACT, SPEND_ARTIFACT, CHURN_ARTIFACT):
            with open(context.artifacts[key], "rb") as fh:
                loaded[key] = pickle.load(fh)
        with open(context.artifacts[REFERENCE_ARTIFACT], encoding="utf-8") as fh:
            reference = SegmentReference.from_dict(json.load(fh))
        value_model = None
        if VALUE_ARTIFACT in context.artifacts:
            with open(context.artifacts[VALUE_ARTIFACT], "rb") as fh:
                value_model = pickle.load(fh)
        intervals = None
        if INTERVAL_ARTIFACT in context.artifacts:
            with open(context.artifacts[INTERVAL_ARTIFACT], encoding="utf-8") as fh:
                intervals = from_served_artifact(json.load(fh), self.clv)
        self.chain = ScoringChain(
            loaded[PURCHASE_ARTIFACT], loaded[SPEND_ARTIFACT], loaded[CHURN_ARTIFACT], reference,
            self.rules, self.clv, self.model_version, value_model, intervals,
        )  # fmt: skip

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return self.chain.score(pd.DataFrame(model_input))
