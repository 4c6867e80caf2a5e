"""Columns and dtypes of the CLV predictions files (data/clv/predictions_t{k}.parquet), and the
names of the candidate purchase models (their ``model`` column).

Kept apart from models/clv.py (which imports scikit-learn and SciPy) so that the data contracts
(pipelines/contracts.py), read by every stage, import no model library.
"""

from __future__ import annotations

PREDICTION_DTYPES = {
    "customer_id": "str", "cutoff": "datetime64[us]", "model": "str", "p_alive": "float64",
    "expected_purchases": "float64", "p_no_purchase": "float64", "expected_avg_spend": "float64",
    "clv": "float64", "clv_p10": "float64", "clv_p50": "float64", "clv_p90": "float64",
    "clv_expected_p10": "float64", "clv_expected_p90": "float64",
}  # fmt: skip
#: The interval columns (models/clv_intervals.py): NaN where a cutoff has no intervals (t_2).
INTERVAL_COLUMNS = ("clv_p10", "clv_p50", "clv_p90")
#: 10% and 90% quantiles of the EXPECTED clv over the bootstrap parameter draws (parameter uncertainty
#: only, models/clv_intervals.py expected_quantiles): what the quadrant probability reads. NaN where
#: a cutoff has no intervals (t_2).
EXPECTED_COLUMNS = ("clv_expected_p10", "clv_expected_p90")
PREDICTION_COLUMNS = list(PREDICTION_DTYPES)
#: Candidate purchase models, in tie-break order (the most established model first).
CANDIDATE_ORDER: tuple[str, ...] = ("bgnbd", "paretonbd", "mbgnbd")
