"""`cvp segment`: value-potential quadrants, tiers, pyramid, ABC, lifecycle and relationship levels.

Reads the features, CLV predictions and churn probabilities at as_of (t0), labels every
customer with the rules in models/segments.py, and checks on the last complete horizon (t1,
out-of-time predictions against the spend actually made) whether the combined growth
potential ranks customers at least as well as the CLV model alone.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa
from matplotlib.figure import Figure

from features.errors import DataError
from models import segments as seg
from models import scores_pyfunc
from pipelines import io, paths, tracking
from pipelines.churn import MODEL_FILE as CHURN_MODEL_FILE
from pipelines.clv import PURCHASE_PICKLE, SPEND_PICKLE, clv_settings
from pipelines.config import Params

log = logging.getLogger(__name__)

STAGE = "segment"
TOP_SHARE = 0.20  # "top 20%" of the concentration and holdout capture metrics
SCATTER_MAX_POINTS = 50_000
SLEEPING = ("drowsy", "half_asleep", "dormant")

_ID = {"customer_id": pa.Column(str, nullable=False, unique=True)}
_CUTOFF = {"cutoff": pa.Column("datetime64[ns]", nullable=False)}


def _num(nullable: bool = False, ge: float | None = None, le: float | None = None) -> pa.Column:
    checks = []
    if ge is not None:
        checks.append(pa.Check.ge(ge))
    if le is not None:
        checks.append(pa.Check.le(le))
    return pa.Column(float, nullable=nullable, checks=checks, coerce=True)


FEATURES_SCHEMA = pa.DataFrameSchema(
    {
        **_ID,
        **_CUTOFF,
        "spend_trailing": _num(),
        "margin_trailing": _num(nullable=True),
        "days_since_first": _num(ge=0),
        "days_since_last": _num(ge=0),
        "ipi_mean": _num(nullable=True, ge=0),
    },
    strict=False,
)
CLV_SCHEMA = pa.DataFrameSchema(
    {**_ID, **_CUTOFF, "clv": _num(), "p_no_purchase": _num(ge=0, le=1)}, strict=False
)
CHURN_SCHEMA = pa.DataFrameSchema({**_ID, **_CUTOFF, "churn_probability": _num(ge=0, le=1)}, strict=False)
LABELS_SCHEMA = pa.DataFrameSchema({**_ID, **_CUTOFF, "spend": _num()}, strict=False)

SEGMENT_COLUMNS = (
    "customer_id",
    "as_of",
    "current_value",
    "growth_potential",
    "growth_potential_clv",
    "quadrant",
    "resource_allocation",
    "retention_strategy",
    "tier",
    "pyramid_level",
    "abc_class",
    "lifecycle_state",
    "relationship_level",
)
SEGMENTS_SCHEMA = pa.DataFrameSchema(
    {
        **_ID,
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
    },
    strict=True,
    ordered=True,
    checks=pa.Check(lambda df: df["customer_id"].is_monotonic_increasing, error="rows not sorted by customer_id"),
)
SUMMARY_SCHEMA = pa.DataFrameSchema(
    {
        "group_by": pa.Column(str, pa.Check.isin(["quadrant", "tier"])),
        "segment": pa.Column(str),
        "customers": pa.Column(int, pa.Check.ge(0)),
        "share_of_customers": pa.Column(float, pa.Check.in_range(0, 1)),
    },
    strict=False,
)


# --------------------------------------------------------------------------- params


def rules_from_params(params: Params) -> seg.SegmentRules:
    """The pure rules' configuration from the parsed ``segment`` section (and clv.margin)."""
    s = params.segment
    return seg.SegmentRules(
        growth_potential=s.growth_potential,
        value_basis=s.value_basis,
        margin=params.clv.margin,
        cut=seg.CutRule(s.cut.method, s.cut.current_value, s.cut.growth_potential),
        pyramid=tuple(s.pyramid.model_dump().items()),
        abc=(s.abc.a, s.abc.b),
        tier=seg.TierRule(**s.tier.model_dump()),
        lifecycle=seg.LifecycleRule(**s.lifecycle.model_dump()),
        relationship=seg.RelationshipRule(**s.relationship.model_dump()),
    )


# --------------------------------------------------------------------------- inputs


def load_input(path: Path, schema: pa.DataFrameSchema, producer: str) -> pd.DataFrame:
    """Read one Parquet input and validate it; every problem is a one-line DataError naming the file."""
    if not path.exists():
        raise DataError(f"{path}: not found; run `cvp {producer}` first")
    frame = pd.read_parquet(path)
    missing = [c for c in schema.columns if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; re-run `cvp {producer}`")
    try:
        frame = schema.validate(frame)
    except (pa.errors.SchemaError, pa.errors.SchemaErrors) as err:
        raise DataError(f"{path}: {str(err).splitlines()[0]}; re-run `cvp {producer}`") from None
    return frame


def single_cutoff(frame: pd.DataFrame, path: Path) -> pd.Timestamp:
    cutoffs = frame["cutoff"].dropna().unique()
    if len(cutoffs) != 1:
        raise DataError(f"{path}: expected one cutoff date, found {len(cutoffs)}")
    return pd.Timestamp(cutoffs[0])


def join_inputs(inputs: dict[Path, pd.DataFrame], columns: dict[Path, list[str]]) -> pd.DataFrame:
    """Join the inputs on customer_id; every file must hold exactly the same customers and cutoff.

    The first input is the reference: a customer it has that another lacks (or the reverse) is a
    DataError naming the file the customer is missing from.
    """
    items = list(inputs.items())
    ref_path, ref = items[0]
    ref_cutoff = single_cutoff(ref, ref_path)
    ref_ids = pd.Index(ref["customer_id"])
    joined = ref[columns[ref_path]].set_index("customer_id")
    for path, frame in items[1:]:
        cutoff = single_cutoff(frame, path)
        if cutoff != ref_cutoff:
            raise DataError(f"{path}: cutoff {cutoff.date()} differs from {ref_path} ({ref_cutoff.date()}); re-run the stages")
        ids = pd.Index(frame["customer_id"])
        _check_same_customers(ref_ids, ref_path, ids, path)
        joined = joined.join(frame[columns[path]].set_index("customer_id"), how="left")
    return joined.reset_index().sort_values("customer_id", kind="mergesort").reset_index(drop=True)


def _check_same_customers(ref_ids: pd.Index, ref_path: Path, ids: pd.Index, path: Path) -> None:
    for absent_from, have, lack in ((path, ref_ids, ids), (ref_path, ids, ref_ids)):
        missing = have.difference(lack)
        if len(missing):
            example = ", ".join(map(str, missing[:3]))
            raise DataError(
                f"{absent_from}: {len(missing)} customer(s) missing (e.g. {example}); "
                "every input must cover the same customers, re-run the upstream stages"
            )


def load_scoring_inputs() -> pd.DataFrame:
    """Features, CLV and churn predictions at t0, one row per customer, with ``cutoff``."""
    features, clv, churn = paths.features_at(0), paths.clv_predictions_at(0), paths.churn_predictions_at(0)
    inputs = {
        features: load_input(features, FEATURES_SCHEMA, "features"),
        clv: load_input(clv, CLV_SCHEMA, "clv"),
        churn: load_input(churn, CHURN_SCHEMA, "churn"),
    }
    if inputs[features].empty:
        raise DataError(
            f"{features}: no customers to segment (nobody bought on or before data.as_of); "
            "set data.as_of on or after the first purchase, or null for the last one"
        )
    columns = {
        features: ["customer_id", "cutoff", "spend_trailing", "margin_trailing", "days_since_first", "days_since_last", "ipi_mean"],
        clv: ["customer_id", "clv", "p_no_purchase"],
        churn: ["customer_id", "churn_probability"],
    }
    return join_inputs(inputs, columns)


def load_holdout_inputs() -> pd.DataFrame | None:
    """Labels, CLV and out-of-time churn predictions at t1; None (with a warning) when absent."""
    labels, clv, churn = paths.labels_at(1), paths.clv_predictions_at(1), paths.churn_predictions_at(1)
    absent = [str(p) for p in (labels, clv, churn) if not p.exists()]
    if absent:
        log.warning("holdout comparison skipped: %s not found", ", ".join(absent))
        return None
    inputs = {
        labels: load_input(labels, LABELS_SCHEMA, "features"),
        clv: load_input(clv, CLV_SCHEMA, "clv"),
        churn: load_input(churn, CHURN_SCHEMA, "churn"),
    }
    empty = [str(p) for p, frame in inputs.items() if frame.empty]
    if empty:
        log.warning("holdout comparison skipped: %s has no rows", ", ".join(empty))
        return None
    columns = {
        labels: ["customer_id", "cutoff", "spend"],
        clv: ["customer_id", "clv", "p_no_purchase"],
        churn: ["customer_id", "churn_probability"],
    }
    return join_inputs(inputs, columns)


# --------------------------------------------------------------------------- holdout


def holdout_comparison(holdout: pd.DataFrame | None) -> dict:
    """Rank quality of the combined and CLV-only growth potential against the holdout spend."""
    if holdout is None:
        return {"skipped": "t1 labels or predictions not found or empty"}
    forecasts = {
        "combined": seg.growth_potential_combined(holdout["clv"], holdout["p_no_purchase"], holdout["churn_probability"]),
        "clv": holdout["clv"],
    }
    result = seg.rank_forecasts(holdout["spend"], forecasts, holdout["customer_id"], TOP_SHARE)
    holds = (
        result["combined"]["spearman"] >= result["clv"]["spearman"]
        and result["combined"]["top_share_capture"] >= result["clv"]["top_share_capture"]
    )
    if not holds:
        log.warning(
            "combined growth potential ranks holdout spend worse than CLV alone "
            "(Spearman %.4f vs %.4f, top-20%% capture %.4f vs %.4f)",
            result["combined"]["spearman"], result["clv"]["spearman"],
            result["combined"]["top_share_capture"], result["clv"]["top_share_capture"],
        )
    return {
        **result,
        "cutoff": str(pd.Timestamp(holdout["cutoff"].iloc[0]).date()),
        "customers": len(holdout),
        "top_share": TOP_SHARE,
        "combined_at_least_as_good": bool(holds),
    }


# --------------------------------------------------------------------------- outputs


def segments_table(labelled: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
    """The contract columns, sorted by customer_id, validated."""
    out = labelled.assign(as_of=pd.Series(as_of, index=labelled.index).astype("datetime64[ns]"))
    out = out[list(SEGMENT_COLUMNS)].sort_values("customer_id", kind="mergesort").reset_index(drop=True)
    for column in SEGMENT_COLUMNS[5:]:
        out[column] = out[column].astype(str)
    return SEGMENTS_SCHEMA.validate(out)


def stage_metrics(result: seg.SegmentResult, rules: seg.SegmentRules, as_of: pd.Timestamp, holdout: dict) -> dict:
    labelled = result.customers
    return {
        "as_of": str(as_of.date()),
        "customers": len(labelled),
        "growth_potential": rules.growth_potential,
        "value_basis": rules.value_basis,
        "cuts": {
            "method": rules.cut.method,
            "current_value": result.current_value_cut,
            "growth_potential": result.growth_potential_cut,
            "high_current_value_share": float(seg.is_high(labelled["current_value"], result.current_value_cut).mean()),
            "high_growth_potential_share": float(seg.is_high(labelled["growth_potential"], result.growth_potential_cut).mean()),
        },
        "counts": seg.label_counts(labelled),
        "reactivation_targets": int(
            (labelled["lifecycle_state"].isin(SLEEPING) & labelled["quadrant"].isin(["II", "IV"])).sum()
        ),
        "concentration": seg.concentration(labelled["value"], labelled["customer_id"], TOP_SHARE),
        "totals": {
            "current_value": float(labelled["current_value"].sum()),
            "growth_potential": float(labelled["growth_potential"].sum()),
            "growth_potential_clv": float(labelled["growth_potential_clv"].sum()),
        },
        "holdout": holdout,
    }


def _save(fig: Figure, target: Path) -> None:
    with io.atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})


def plot_quadrant_scatter(labelled: pd.DataFrame, cv_cut: float, gp_cut: float, target: Path, seed: int) -> None:
    """Current value vs growth potential on symmetric-log axes (linear near 0, so zero and
    negative values show), coloured by quadrant, with the two cut lines."""
    points = labelled
    if len(points) > SCATTER_MAX_POINTS:
        points = points.sample(SCATTER_MAX_POINTS, random_state=seed)
    positive = np.concatenate([points["current_value"].to_numpy(), points["growth_potential"].to_numpy()])
    positive = positive[positive > 0]
    linthresh = float(np.quantile(positive, 0.05)) if len(positive) else 1.0
    fig = Figure(figsize=(7, 6))
    ax = fig.subplots()
    colours = {"I": "#7f7f7f", "II": "#1f77b4", "III": "#ff7f0e", "IV": "#2ca02c"}
    for quadrant in seg.QUADRANTS:
        part = points[points["quadrant"] == quadrant]
        ax.scatter(part["current_value"], part["growth_potential"], s=4, alpha=0.4, c=colours[quadrant],
                   label=f"{quadrant} ({(labelled['quadrant'] == quadrant).sum():,})", rasterized=True)
    ax.set_xscale("symlog", linthresh=linthresh)
    ax.set_yscale("symlog", linthresh=linthresh)
    ax.axvline(cv_cut, color="black", lw=1, ls="--", zorder=0)
    ax.axhline(gp_cut, color="black", lw=1, ls="--", zorder=0)
    at_zero = int((labelled["current_value"] == 0).sum())
    if at_zero:
        ax.annotate(f"{at_zero:,} customers at current value 0\n(no purchase in the last horizon)",
                    xy=(0.15, 0.98), xycoords="axes fraction", va="top", fontsize=8)
    ax.set_xlabel(f"current value (margin, last horizon; symlog, linear below {linthresh:.3g})")
    ax.set_ylabel("growth potential (predicted margin, next horizon; symlog)")
    ax.set_title(f"Value-potential matrix: cuts at {cv_cut:.3g} / {gp_cut:.3g}")
    ax.legend(title="quadrant (customers)", loc="lower right", markerscale=3)
    _save(fig, target)


def plot_lorenz(lorenz: pd.DataFrame, conc: dict, target: Path) -> None:
    fig = Figure(figsize=(6, 6))
    ax = fig.subplots()
    ax.plot(lorenz["share_of_customers"], lorenz["share_of_value"], lw=2, label="Lorenz curve")
    ax.plot([0, 1], [0, 1], color="grey", ls="--", label="equal value")
    ax.set_xlabel("share of customers (least valuable first)")
    ax.set_ylabel("share of value")
    ax.set_title(f"Gini {conc['gini']:.3f}; top {conc['top_share']:.0%} hold {conc['top_share_of_value']:.1%} of value")
    ax.legend(loc="upper left")
    _save(fig, target)


def plot_value_by_quadrant(summary: pd.DataFrame, target: Path) -> None:
    part = summary[summary["group_by"] == "quadrant"].set_index("segment").reindex(seg.QUADRANTS)
    shares = {
        "customers": part["share_of_customers"],
        "current value": part["share_of_current_value"],
        "predicted value": part["share_of_predicted_value"],
    }
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    x = np.arange(len(seg.QUADRANTS))
    for i, (name, values) in enumerate(shares.items()):
        ax.bar(x + (i - 1) * 0.27, values.fillna(0.0), width=0.27, label=name)
    ax.set_xticks(x, [f"{q}\n{seg.QUADRANT_STRATEGY[q][0]}" for q in seg.QUADRANTS], fontsize=9)
    ax.set_ylabel("share of total")
    ax.set_title("Customers and value by quadrant")
    ax.legend()
    _save(fig, target)


def plot_lifecycle(labelled: pd.DataFrame, target: Path) -> None:
    grouped = labelled.groupby("lifecycle_state")
    counts = grouped.size().reindex(seg.LIFECYCLE_STATES, fill_value=0)
    churn = grouped["churn_probability"].mean().reindex(seg.LIFECYCLE_STATES)
    fig = Figure(figsize=(9, 4))
    left, right = fig.subplots(1, 2)
    left.bar(seg.LIFECYCLE_STATES, counts.to_numpy(), color="#1f77b4")
    left.set_title("customers per lifecycle state")
    right.bar(seg.LIFECYCLE_STATES, churn.fillna(0.0).to_numpy(), color="#d62728")
    right.set_ylim(0, 1)
    right.set_title("mean churn probability")
    for ax in (left, right):
        ax.tick_params(axis="x", labelrotation=30)
    fig.tight_layout()
    _save(fig, target)


def write_plots(result: seg.SegmentResult, summary: pd.DataFrame, conc: dict, seed: int) -> Path:
    out = paths.plots_dir(STAGE)
    labelled = result.customers
    plot_quadrant_scatter(labelled, result.current_value_cut, result.growth_potential_cut, out / "quadrant_scatter.png", seed)
    lorenz = seg.lorenz_curve(labelled["value"]).round(10)
    io.write_csv(lorenz, out / "lorenz.csv")
    plot_lorenz(lorenz, conc, out / "lorenz.png")
    plot_value_by_quadrant(summary, out / "value_by_quadrant.png")
    plot_lifecycle(labelled, out / "lifecycle.png")
    return out


# --------------------------------------------------------------------------- the served model

# Pinned to the running versions (the chain unpickles the CLV and churn models).
PYFUNC_REQUIREMENTS = ("lifetimes", "lightgbm", "scikit-learn", "scipy", "mpmath", "numpy", "pandas", "pandera", "mlflow")
MODEL_FILES = {
    scores_pyfunc.PURCHASE_ARTIFACT: PURCHASE_PICKLE,
    scores_pyfunc.SPEND_ARTIFACT: SPEND_PICKLE,
    scores_pyfunc.CHURN_ARTIFACT: paths.CHURN_MODEL_DIR / CHURN_MODEL_FILE,
    scores_pyfunc.REFERENCE_ARTIFACT: paths.SEGMENT_REFERENCE,
}


def log_scores_model(params: Params, rules: seg.SegmentRules, version: str):
    """Log the scoring chain as one pyfunc (registered as segment.model_name when asked).

    Its input example is the first rows of features_t0; its output example is what the chain
    answers for them, so a broken chain fails here, not at serving time.
    """
    import mlflow.pyfunc
    from mlflow.models import infer_signature
    from mlflow.pyfunc import PythonModelContext

    absent = [str(p) for p in MODEL_FILES.values() if not p.exists()]
    if absent:
        raise DataError(f"{absent[0]}: not found; run `cvp clv` and `cvp churn` first")
    model = scores_pyfunc.ScoresPyfuncModel(rules, clv_settings(params), version)
    artifacts = {key: str(path.resolve()) for key, path in MODEL_FILES.items()}
    example = pd.read_parquet(paths.features_at(0)).head(5)
    model.load_context(PythonModelContext(artifacts=artifacts, model_config=None))
    output = model.predict(None, example)
    cfg = params.segment
    with warnings.catch_warnings():
        # MLflow hints that integer columns cannot hold missing values: the features contract
        # has none in its integer columns (frequency, counts).
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column", category=UserWarning)
        signature = infer_signature(example, output)
    return mlflow.pyfunc.log_model(
        name="scores_model",
        python_model=model,
        artifacts=artifacts,
        signature=signature,
        input_example=example,
        pip_requirements=[f"{name}=={importlib.metadata.version(name)}" for name in PYFUNC_REQUIREMENTS],
        registered_model_name=cfg.model_name if cfg.register_model else None,
    )


def write_registration(info, params: Params) -> None:
    """registration.json of the registered scores model; a stale one is removed otherwise."""
    target = paths.registration_file(paths.SEGMENT_MODEL_DIR)
    if info is None or not params.segment.register_model or info.registered_model_version is None:
        target.unlink(missing_ok=True)
        return
    version = int(info.registered_model_version)
    io.write_json({"name": params.segment.model_name, "version": version, "run_id": info.run_id}, target)
    log.info("registered %s version %s", params.segment.model_name, version)


# --------------------------------------------------------------------------- stage


def run(params: Params, params_path: Path = Path("params.yaml")) -> None:
    """Label every customer at as_of, write segments + summary, metrics, plots; log to MLflow."""
    import mlflow

    rules = rules_from_params(params)
    scoring = load_scoring_inputs()
    as_of = pd.Timestamp(scoring["cutoff"].iloc[0])
    log.info("segmenting %d customers at %s (growth potential: %s)", len(scoring), as_of.date(), rules.growth_potential)
    result = seg.segment_customers(scoring, rules)
    segments = segments_table(result.customers, as_of)
    summary = SUMMARY_SCHEMA.validate(seg.summarise_segments(result.customers).round(10))
    holdout = holdout_comparison(load_holdout_inputs())
    metrics = stage_metrics(result, rules, as_of, holdout)

    io.write_parquet(segments, paths.SEGMENTS)
    io.write_parquet(summary, paths.SEGMENT_SUMMARY)
    io.write_json(metrics, paths.metrics_file(STAGE))
    # Exact floats (not write_json's rounding): the boundaries are compared with values as computed.
    io.write_text(json.dumps(result.reference.to_dict(), indent=2, sort_keys=True) + "\n", paths.SEGMENT_REFERENCE)
    plots = write_plots(result, summary, metrics["concentration"], params.seed)
    log.info("wrote %s, %s and %s", paths.SEGMENTS, paths.SEGMENT_SUMMARY, plots)

    section = {"segment": params.segment.model_dump(), "clv.margin": params.clv.margin}
    tags = {"cvp.input_sha256": io.frame_sha256(scoring)}
    with tracking.stage_run(STAGE, params, section=section, tags=tags, params_path=params_path):
        tracking.log_metrics({k: v for k, v in metrics.items() if k != "as_of"})
        with warnings.catch_warnings():  # mlflow's select_dtypes call warns under pandas 3
            warnings.filterwarnings("ignore", message=".*'str' dtypes are included by select_dtypes")
            mlflow.log_table(summary, artifact_file="summary.json")
        mlflow.log_artifacts(str(plots), artifact_path="plots")
        mlflow.log_artifact(str(paths.metrics_file(STAGE)))
        info = log_scores_model(params, rules, tracking.scoring_model_version()) if params.segment.log_model else None
    write_registration(info, params)
