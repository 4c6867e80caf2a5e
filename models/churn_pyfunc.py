"""The exported churn model as an MLflow pyfunc: prepared churn features in, ``churn_probability`` out.

The exported model (:class:`models.churn.ChurnClassifier`, or :class:`models.churn.CalibratedBaseline`
when metrics/churn.json says ``churn_source: baseline:<name>``) travels as a pickled artifact, so the
served probability equals the written one. Loading imports only this module and models.churn (with
models.metrics and features.errors): no pandera, ibis, matplotlib or pipelines code.
"""

from __future__ import annotations

import pickle

import mlflow.pyfunc
import pandas as pd

#: Distributions the pyfunc and the unpickled model import (models.churn: lightgbm, scikit-learn,
#: scipy, numpy, pandas; MLflow stores the python model with cloudpickle); pinned when logged.
REQUIREMENTS = ("lightgbm", "scikit-learn", "scipy", "numpy", "pandas", "mlflow", "cloudpickle")


class ChurnPyfuncModel(mlflow.pyfunc.PythonModel):
    """Prepared churn features in (the columns of models/artifacts/churn/features.json), the
    calibrated ``churn_probability`` out, one row per input row."""

    ARTIFACT = "classifier"

    def load_context(self, context) -> None:
        with open(context.artifacts[self.ARTIFACT], "rb") as fh:
            self.classifier = pickle.load(fh)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        X = pd.DataFrame(model_input)
        return pd.DataFrame({"churn_probability": self.classifier.predict_churn_probability(X)}, index=X.index)


def serving_example(model, X: pd.DataFrame, n: int = 5) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(input example, its output) for the signature: the first ``n`` rows of the prepared features
    and the model's churn probability for them, both with a plain 0..n-1 index."""
    example = X.head(n).reset_index(drop=True)
    return example, pd.DataFrame({"churn_probability": model.predict_churn_probability(example)})
