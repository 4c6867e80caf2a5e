"""Does the churn classifier find the churn behaviours of the synthetic world? ROC-AUC study.

For one world (``cvp generate`` with ``--behaviours``, of the default population or of a named
preset such as ``--world retail`` (features.synthetic.WORLD_PRESETS), seeded, no noise rows) this runs the
project's pure code in memory (no DVC, no files, no MLflow): ingest's rules, the customer
features and labels at t0, t1, t2 (features.customer), the CLV models at each cutoff
(models.clv_select) and the churn stage's out-of-time evaluation (models.churn_eval: train at t2,
test on every t1 customer against their real activity in (t1, t0]). It reports the ROC-AUC of

- ``baseline``: the best BTYD churn signal (P(no purchase), expected purchases, 1 - P(alive));
- ``classifier``: the churn classifier (calibrated probability) on whatever features the stage gives it;
- ``oracle``: the same LightGBM given, besides, the generator's true behaviour features at the
  cutoff (from the ground truth: the behaviour flags, whether a slowdown or basket decline has
  begun, the share of the label window inside a seasonal buyer's season);
- ``oracle_seen``: the same without what no purchase record can show, a young customer's season
  (seasonal flag and season unknown before a year of history).

    .venv/bin/python -m tests.signal_study --customers 10000                 # the tables in docs/churn.md
    .venv/bin/python -m tests.signal_study --customers 10000 --world retail  # the harder, behaviour-driven base
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
from dataclasses import dataclass, replace

import ibis
import numpy as np
import pandas as pd
import pyarrow as pa

from features import customer as fc
from features.behaviours import BEHAVIOURS, SEASON_DAYS, parse_behaviours
from features.ingest import accepted_transactions, classify
from features.synthetic import OUTPUT_COLUMNS, SyntheticParams, WORLD_PRESETS, generate_transactions, world_preset
from models import churn_eval as ce
from models.churn import baseline_predictions, fit_recency_map
from models.clv_select import ClvFitting, fit_cutoffs, patterns_of
from models.metrics import roc_auc
from pipelines import domain
from pipelines.config import Params, load_params

log = logging.getLogger(__name__)

WORLDS = ("none", *BEHAVIOURS, "all")
BTYD_SCORES = ("baseline_p_no_purchase", "baseline_expected_purchases", "diagnostic_p_alive")


@dataclass(frozen=True)
class World:
    transactions: pd.DataFrame  # raw text rows, as `cvp generate` writes them
    truth: pd.DataFrame  # per customer (index customer_id), features.synthetic.customer_truth
    params: SyntheticParams


def make_world(behaviours: str, customers: int, seed: int, world: str = "default") -> World:
    """A seeded clean world (no noise rows) of the preset ``world`` (features.synthetic.WORLD_PRESETS)
    with ``behaviours`` ('none', a name or 'all', at the preset's strengths) on."""
    preset = world_preset(world)
    params = replace(preset.params, noise_rate=0.0)
    chosen = parse_behaviours("" if behaviours == "none" else behaviours, preset.strengths)
    sink: list[pa.Table] = []
    rows = generate_transactions(round(preset.rows_per_customer * customers), seed=seed, n_customers=customers,
                                 params=params, behaviours=chosen, truth_sink=sink)  # fmt: skip
    return World(rows, pa.concat_tables(sink).to_pandas().set_index("customer_id"), params)


def snapshots(world: World, params: Params) -> dict[int, ce.Snapshot]:
    """Ingest, features, labels and CLV predictions at t0, t1, t2 -> the churn stage's snapshots (t1, t2)."""
    features, labels, predictions = world_frames(world, params)
    return {k: ce.snapshot(k, features[k], predictions[k], labels[k], f"features_t{k}", f"clv_t{k}") for k in (1, 2)}


def world_frames(world: World, params: Params) -> tuple[dict, dict, dict]:
    """(features, labels, CLV predictions) by cutoff offset k, as the features and clv stages write them."""
    from features.ingest import IngestRules

    con = ibis.duckdb.connect()
    raw = pa.Table.from_pandas(world.transactions[list(OUTPUT_COLUMNS)], preserve_index=False)
    raw = raw.append_column("source_row", pa.array(np.arange(raw.num_rows, dtype="int64")))
    rules = IngestRules({c: c for c in OUTPUT_COLUMNS}, timestamp_format="%Y-%m-%d %H:%M:%S",
                        valid_from=dt.date(1970, 1, 1), valid_to=dt.date(2100, 1, 1), timezone=None, decimal=".")  # fmt: skip
    tx = ibis.memtable(con.to_pyarrow(accepted_transactions(classify(ibis.memtable(raw), rules))))
    summary = con.to_pandas(fc.transactions_summary(tx)).iloc[0].to_dict()
    spec = domain.feature_spec(params, summary)
    as_of = pd.Timestamp(summary["last_timestamp"]).date()
    cutoffs = fc.cutoff_dates(as_of, params.data.horizon_days, (0, 1, 2))
    days = ibis.memtable(con.to_pyarrow(fc.customer_days(tx, spec)))
    features, labels = {}, {}
    for k, cutoff in cutoffs.items():
        table = con.to_pyarrow(fc.features_from_days(days, cutoff, spec))
        features[k] = table.to_pandas()
        if k:
            labels[k] = con.to_pandas(fc.labels_from_days(days, ibis.memtable(table), cutoff, spec.horizon_days,
                                                          spec.decimal_sums))  # fmt: skip
    con.disconnect()
    fitting = ClvFitting.from_config(params.clv.model_dump(), params.seed)
    sources = {k: f"features_t{k}" for k in cutoffs}
    fits = fit_cutoffs(features, labels[1], {k: patterns_of(f) for k, f in features.items()}, fitting,
                       domain.clv_settings(params), sources)  # fmt: skip
    return features, labels, fits.predictions


def oracle_features(truth: pd.DataFrame, index: pd.Index, cutoff: pd.Timestamp, horizon_days: int) -> pd.DataFrame:
    """The generator's true behaviour state of each customer at ``cutoff`` (an oracle: not observable)."""
    t = truth.reindex(index)
    window = pd.date_range(cutoff + pd.Timedelta(days=1), periods=horizon_days, freq="D")
    day_of_year = (window - window.to_period("Y").start_time).days.to_numpy()
    start = t["season_start_day"].to_numpy()[:, None]
    in_season = ((day_of_year >= start) & (day_of_year < start + SEASON_DAYS)).mean(axis=1)
    out = {f"oracle_{name}": t[f"behaviour_{name}"].astype(float).to_numpy() for name in BEHAVIOURS}
    out["oracle_slowdown_begun"] = (t["slowdown_from"] <= cutoff).astype(float).to_numpy()
    out["oracle_basket_begun"] = (t["basket_from"] <= cutoff).astype(float).to_numpy()
    out["oracle_in_season_share"] = np.where(t["behaviour_seasonal"], in_season, np.nan)
    return pd.DataFrame(out, index=index)


def seen_oracle_features(truth: pd.DataFrame, X: pd.DataFrame, cutoff: pd.Timestamp, horizon_days: int) -> pd.DataFrame:
    """:func:`oracle_features` without what no purchase record can show: whether a customer is a
    seasonal buyer, and when the season is, before they have a year of history (first purchase
    under 365 days before the cutoff: one season seen at most)."""
    out = oracle_features(truth, X.index, cutoff, horizon_days)
    young = (X["days_since_first"] < 365).to_numpy()
    out.loc[young, ["oracle_seasonal", "oracle_in_season_share"]] = np.nan
    return out


def measure(behaviours: str, customers: int, seed: int, params: Params | None = None, world: str = "default") -> dict:
    """ROC-AUC on the t1 customers of the best BTYD score, the classifier and the oracle."""
    params = params or load_params()
    world_ = make_world(behaviours, customers, seed, world)
    snaps = snapshots(world_, params)
    t1, t2 = snaps[1], snaps[2]
    build = domain.churn_classifier_factory(params)
    ev = ce.evaluate(build, t1, t2, "signal study", params.churn.test_fraction, params.seed)
    y = ev.y_test.to_numpy()
    btyd = {name: ev.results[name]["roc_auc"] for name in BTYD_SCORES}
    best = max(btyd, key=btyd.get)
    horizon = params.data.horizon_days
    X2 = t2.X.join(oracle_features(world_.truth, t2.X.index, t2.cutoff, horizon))
    X1 = t1.X.join(oracle_features(world_.truth, t1.X.index, t1.cutoff, horizon))
    oracle = build().fit(X2, t2.y, eval_set=(X1, t1.y))
    S2 = t2.X.join(seen_oracle_features(world_.truth, t2.X, t2.cutoff, horizon))
    S1 = t1.X.join(seen_oracle_features(world_.truth, t1.X, t1.cutoff, horizon))
    seen = build().fit(S2, t2.y, eval_set=(S1, t1.y))
    recency = fit_recency_map(t2.X["days_since_last"].to_numpy(), t2.y.to_numpy())
    return {
        "world": behaviours,
        "customers_test": len(y),
        "churn_rate_test": float(y.mean()),
        "n_features": t1.X.shape[1],
        "recency": roc_auc(y, baseline_predictions(t1.X, recency)["baseline_recency"].score),
        "baseline": btyd[best],
        "baseline_name": best.split("_", 1)[1],
        "classifier": ev.results["classifier_calibrated"]["roc_auc"],
        "oracle": roc_auc(y, oracle.predict_churn_probability(X1)),
        "oracle_seen": roc_auc(y, seen.predict_churn_probability(S1)),
    }


def table(rows: list[dict]) -> str:
    """A markdown table of :func:`measure` results."""
    head = ("| world | test customers | churn rate | recency | best BTYD baseline | classifier | oracle | oracle (seen) |\n"
            "|---|---|---|---|---|---|---|---|")  # fmt: skip
    lines = [
        f"| {r['world']} | {r['customers_test']:,} | {r['churn_rate_test']:.3f} | {r['recency']:.4f} | "
        f"{r['baseline']:.4f} ({r['baseline_name']}) | {r['classifier']:.4f} | {r['oracle']:.4f} | {r['oracle_seen']:.4f} |"
        for r in rows
    ]
    return "\n".join([head, *lines])


def run_study(description: str, measure_world, tabulate, default_worlds: str, argv: list[str] | None = None) -> None:
    """The command line of a study: --customers, --seed, --worlds, --world; prints the table of one row per world."""
    parser = argparse.ArgumentParser(description=description.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--worlds", default=default_worlds, help="comma list of: " + ", ".join(WORLDS))
    parser.add_argument("--world", default="default", choices=list(WORLD_PRESETS),
                        help="the population (features.synthetic.WORLD_PRESETS); retail: the harder, behaviour-driven one")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    print(tabulate([measure_world(w, args.customers, args.seed, world=args.world) for w in args.worlds.split(",")]))


def main(argv: list[str] | None = None) -> None:
    run_study(__doc__, measure, table, ",".join(WORLDS), argv)


if __name__ == "__main__":
    main()
