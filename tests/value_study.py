"""Does the value model rank next-horizon value better than the BTYD CLV? Holdout study.

For one synthetic world (``cvp generate`` with ``--behaviours``, seeded, no noise rows; see
tests/signal_study.py, whose in-memory features, labels and CLV fits this reuses) the value
stage's evaluation runs in memory: the value model (models/value.py) trained on features_t2
against the value realised in (t2, t1], tested on every t1 customer against the value realised
in (t1, t0]; beside it the BTYD CLV, the combined growth potential (CLV x the churn classifier's
out-of-time P(active), as the segment stage's rule) and the textbook quick estimate. It reports
Spearman, top-20% capture, normalized Gini and total predicted / realised of each, and of one
diagnostic forecast, ``purchase_x_btyd``: the value model's P(any purchase) times the BTYD value
given a purchase (clv / (1 - p_no_purchase)), which shows how much of a Spearman comes from
ordering buyers against non-buyers (docs/value.md, "Why Spearman and the value-weighted metrics
disagree").

    .venv/bin/python -m tests.value_study --customers 10000 --worlds none,all   # the table in docs/value.md
    .venv/bin/python -m tests.value_study --customers 10000 --worlds all --world retail
"""

from __future__ import annotations

import pandas as pd

from models import churn_eval as ce
from models import segments as seg
from models import value as v
from models import value_eval as ve
from pipelines import domain
from pipelines.value import model_factory
from pipelines.config import Params, load_params
from tests.signal_study import make_world, run_study, world_frames

FORECASTS = ("value_model", "clv", "combined", "quick_estimate", "purchase_x_btyd")


def measure(behaviours: str, customers: int, seed: int, params: Params | None = None, world: str = "default") -> dict:
    """The holdout metrics of each forecast on the t1 customers of one world (of the preset ``world``)."""
    params = params or load_params()
    features, labels, predictions = world_frames(make_world(behaviours, customers, seed, world), params)
    cfg = params.clv
    discount = v.mean_discount_factor(params.data.horizon_days, cfg.discount_rate, cfg.discount_period_days)
    X = {k: v.prepare_value_features(features[k], predictions[k]) for k in (1, 2)}
    y = {k: v.realised_value(labels[k], cfg.margin, discount) for k in (1, 2)}
    model = model_factory(params)().fit(X[2], y[2])
    snaps = {k: ce.snapshot(k, features[k], predictions[k], labels[k], f"features_t{k}", f"clv_t{k}") for k in (1, 2)}
    churn = ce.evaluate(domain.churn_classifier_factory(params), snaps[1], snaps[2], "value study",
                        params.churn.test_fraction, params.seed)  # fmt: skip
    X1 = X[1]
    churn_t1 = churn.t1_probability.rename("churn_probability").rename_axis("customer_id").reset_index()
    references = ve.reference_forecasts(features[1], X1, churn_t1, params.data.horizon_days, cfg.margin)
    # the combined rule's formula with the value model's P(any purchase) in place of the classifier's
    no_purchase = pd.Series(1.0 - model.predict_purchase_probability(X1), index=X1.index)
    forecasts = {"value_model": pd.Series(model.predict(X1), index=X1.index), **references,
                 "purchase_x_btyd": seg.growth_potential_combined(X1["clv"], X1["p_no_purchase"], no_purchase)}
    ids = pd.Series(X1.index, index=X1.index)
    result = v.compare_forecasts(y[1].reindex(X1.index), forecasts, ids)
    return {"world": behaviours, "customers_test": len(X1), "buyers_test": int((y[1] > 0).sum()),
            **{name: result[name] for name in FORECASTS}}  # fmt: skip


def table(rows: list[dict]) -> str:
    """A markdown table of :func:`measure` results (Spearman / top-20% capture / normalized Gini /
    total predicted over realised)."""
    head = ("| world | test customers (buyers) | value model | BTYD CLV | combined | quick estimate | model P(buy) x BTYD |\n"
            "|---|---|---|---|---|---|---|")  # fmt: skip

    def cell(m: dict) -> str:
        return f"{m['spearman']:.4f} / {m['top_share_capture']:.4f} / {m['normalized_gini']:.4f} / {m['total_ratio']:.2f}"

    lines = [f"| {r['world']} | {r['customers_test']:,} ({r['buyers_test']:,}) | "
             + " | ".join(cell(r[name]) for name in FORECASTS) + " |" for r in rows]  # fmt: skip
    return "\n".join([head, *lines])


def main(argv: list[str] | None = None) -> None:
    run_study(__doc__, measure, table, "none,all", argv)


if __name__ == "__main__":
    main()
