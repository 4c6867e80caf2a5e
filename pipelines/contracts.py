"""The data contracts at the stage boundaries: one pandera schema per catalogued artifact.

The catalog (:mod:`pipelines.catalog`) names each artifact's contract; :func:`schema` returns it
(the features contract depends on ``features.windows_days``) and :func:`check` validates a frame
with a one-line error naming the file. The schemas of the pure layers (transactions, features,
labels) are declared next to the code that builds those frames and only gathered here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pandera.pandas as pa

from features.customer import LABELS_SCHEMA, features_schema
from features.errors import DataError, contract_problem
from features.ingest import TRANSACTIONS_SCHEMA
from models import segments as seg
from models.clv_columns import CANDIDATE_ORDER, EXPECTED_COLUMNS, INTERVAL_COLUMNS, PREDICTION_DTYPES
from models.scores import SCORE_COLUMNS, ScoreColumn, value_checks

if TYPE_CHECKING:
    from pipelines.config import Params

_PROBABILITY = [pa.Check.ge(0), pa.Check.le(1)]


def sorted_by_customer() -> pa.Check:
    return pa.Check(lambda df: df["customer_id"].is_monotonic_increasing, error="rows sorted by customer_id")


def _intervals_all_or_none(df: pd.DataFrame, columns=INTERVAL_COLUMNS) -> bool:
    values = df[list(columns)].to_numpy(dtype=float)
    if pd.isna(values).all():
        return True
    return bool(pd.notna(values).all() and (np.diff(values, axis=1) >= 0).all())


CLV_PREDICTIONS_SCHEMA = pa.DataFrameSchema(
    {
        "customer_id": pa.Column("str", unique=True),
        "cutoff": pa.Column("datetime64[us]"),
        "model": pa.Column("str", pa.Check.isin(CANDIDATE_ORDER)),
        "p_alive": pa.Column("float64", _PROBABILITY),
        "expected_purchases": pa.Column("float64", pa.Check.ge(0)),
        "p_no_purchase": pa.Column("float64", _PROBABILITY),
        "expected_avg_spend": pa.Column("float64"),
        "clv": pa.Column("float64"),
        # The interval columns are all NaN in a file without intervals (t_2), else finite and ordered.
        **{name: pa.Column("float64", nullable=True) for name in (*INTERVAL_COLUMNS, *EXPECTED_COLUMNS)},
    },
    strict=True,
    ordered=True,
    checks=[
        sorted_by_customer(),
        pa.Check(lambda df: _intervals_all_or_none(df), error="clv_p10..clv_p90 all NaN, or finite with p10 <= p50 <= p90"),
        pa.Check(lambda df: _intervals_all_or_none(df, EXPECTED_COLUMNS),
                 error="clv_expected_p10, clv_expected_p90 both NaN, or finite with p10 <= p90"),
        pa.Check(lambda df: df["cutoff"].nunique() <= 1, error="one cutoff per file"),
        pa.Check(lambda df: df["model"].nunique() <= 1, error="one model per file"),
    ],
    name="clv predictions",
)
# The dtypes written (models.clv.as_predictions casts to them); not derived from the schema, whose
# dtypes pandera reports as string[pyarrow] and datetime64[ns].
CLV_PREDICTION_DTYPES = PREDICTION_DTYPES

CHURN_PREDICTIONS_SCHEMA = pa.DataFrameSchema(
    {
        "customer_id": pa.Column("str", unique=True),
        "cutoff": pa.Column("datetime64[us]"),
        "churn_probability": pa.Column("float64", _PROBABILITY),
    },
    strict=True,
    ordered=True,
    checks=[sorted_by_customer()],
    name="churn predictions",
)

VALUE_PREDICTIONS_SCHEMA = pa.DataFrameSchema(
    {
        "customer_id": pa.Column("str", unique=True),
        "cutoff": pa.Column("datetime64[us]"),
        "predicted_value": pa.Column("float64", pa.Check(lambda s: s.abs() < float("inf"), error="finite")),
        "source": pa.Column("str", pa.Check.isin(["value_model", "clv"])),
    },
    strict=True,
    ordered=True,
    checks=[
        sorted_by_customer(),
        pa.Check(lambda df: df["cutoff"].nunique() <= 1, error="one cutoff per file"),
        pa.Check(lambda df: df["source"].nunique() <= 1, error="one source per file"),
    ],
    name="value predictions",
)

SEGMENTS_SCHEMA = pa.DataFrameSchema(
    {
        "customer_id": pa.Column(str, nullable=False, unique=True),
        "as_of": pa.Column("datetime64[ns]", nullable=False),
        "current_value": pa.Column(float, nullable=False),
        "growth_potential": pa.Column(float, nullable=False),
        "growth_potential_clv": pa.Column(float, nullable=False),
        "quadrant": pa.Column(str, pa.Check.isin(seg.QUADRANTS)),
        "resource_allocation": pa.Column(str, pa.Check.isin([s[0] for s in seg.QUADRANT_STRATEGY.values()])),
        "retention_strategy": pa.Column(str, pa.Check.isin([s[1] for s in seg.QUADRANT_STRATEGY.values()])),
        "tier": pa.Column(str, pa.Check.isin(seg.TIERS)),
        "pyramid_level": pa.Column(str, pa.Check.isin(seg.PYRAMID_LEVELS)),
        "abc_class": pa.Column(str, pa.Check.isin(seg.ABC_CLASSES)),
        "lifecycle_state": pa.Column(str, pa.Check.isin(seg.LIFECYCLE_STATES)),
        "relationship_level": pa.Column(str, pa.Check.isin(seg.RELATIONSHIP_LEVELS)),
        "quadrant_probability": pa.Column(float, _PROBABILITY, nullable=False),
        "quadrant_uncertain": pa.Column("int64", pa.Check.isin([0, 1])),
    },
    strict=True,
    ordered=True,
    checks=[sorted_by_customer()],
    name="segments",
)
SEGMENT_SUMMARY_SCHEMA = pa.DataFrameSchema(
    {
        "group_by": pa.Column(str, pa.Check.isin(["quadrant", "tier"])),
        "segment": pa.Column(str),
        "customers": pa.Column(int, pa.Check.ge(0)),
        "share_of_customers": pa.Column(float, pa.Check.in_range(0, 1)),
    },
    strict=False,
    name="segment summary",
)


def _score_checks(column: ScoreColumn) -> list[pa.Check]:
    """The value checks of an export column (models.scores.value_checks, the pure copy the served
    model runs) as pandera checks; nullability and uniqueness are Column arguments."""
    checks = []
    for name, failing in value_checks(column):
        if name not in ("not_nullable", "field_uniqueness"):
            checks.append(pa.Check(lambda s, failing=failing: ~failing(s), name=name.split("(")[0], error=name))
    return checks


SCORES_SCHEMA = pa.DataFrameSchema(
    {c.name: pa.Column(c.dtype, _score_checks(c), nullable=False, unique=c.name == "customer_id") for c in SCORE_COLUMNS},
    strict=True,
    ordered=True,
    name="scores",
)

_SCHEMAS: dict[str, Callable[[Params | None], pa.DataFrameSchema]] = {
    "transactions": lambda params: TRANSACTIONS_SCHEMA,
    "features": lambda params: features_schema(params.features.windows_days) if params is not None else features_schema(),
    "labels": lambda params: LABELS_SCHEMA,
    "clv_predictions": lambda params: CLV_PREDICTIONS_SCHEMA,
    "churn_predictions": lambda params: CHURN_PREDICTIONS_SCHEMA,
    "value_predictions": lambda params: VALUE_PREDICTIONS_SCHEMA,
    "segments": lambda params: SEGMENTS_SCHEMA,
    "segment_summary": lambda params: SEGMENT_SUMMARY_SCHEMA,
    "scores": lambda params: SCORES_SCHEMA,
}
NAMES = tuple(_SCHEMAS)


def schema(name: str, params: Params | None = None) -> pa.DataFrameSchema:
    """The contract called ``name`` (a catalog artifact's ``contract``) under these params."""
    return _SCHEMAS[name](params)


def subset(full: pa.DataFrameSchema, columns: Sequence[str]) -> pa.DataFrameSchema:
    """The column checks of ``full`` for ``columns`` only (frame-wide checks need every column)."""
    unknown = [c for c in columns if c not in full.columns]
    if unknown:
        raise KeyError(f"column(s) {unknown} are not in the {full.name} contract")
    return pa.DataFrameSchema({c: full.columns[c] for c in columns}, name=f"{full.name} ({', '.join(columns)})")


def first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


def check(contract: pa.DataFrameSchema, frame: pd.DataFrame, label: str, fix: str) -> pd.DataFrame:
    """``frame`` validated against ``contract``; a violation is one DataError line: the file (``label``),
    the contract, the first problem and ``fix``. Checked in place (no contract coerces, so nothing
    changes): pandera otherwise copies the whole frame first, about 1 s at a million customers."""
    try:
        return contract.validate(frame, inplace=True)
    except (pa.errors.SchemaError, pa.errors.SchemaErrors) as exc:
        raise DataError(f"{label}: does not match the {contract.name} contract: {contract_problem(exc)}; {fix}") from None
