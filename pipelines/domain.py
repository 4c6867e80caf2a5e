"""The domain objects of the pure layers, built from the typed config (pipelines/config.py, the
only place defaults live). Every stage gets its rules and settings here, so no stage imports
another to share them.

Where a config section's fields and a domain object's fields match, the object is built with
``**section.model_dump(...)``; the domain dataclasses have no defaults of their own, so a field
added on one side and not the other fails here, at construction, instead of silently taking a
second default. The heavy model modules are imported inside the adapters that need them, so a
stage pays only for its own.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from pipelines.config import ConfigError, DataParams, Params

if TYPE_CHECKING:
    from features.customer import FeatureSpec
    from features.ingest import IngestRules
    from models import drift, gate
    from models import segments as seg
    from models.churn import ChurnClassifier
    from models.clv import ClvSettings


def clv_settings(params: Params) -> ClvSettings:
    """How fitted BTYD models become CLV: time unit, horizon, margin and discounting."""
    from models.clv import ClvSettings

    return ClvSettings(
        days_per_unit=params.data.days_per_unit,
        horizon_days=params.data.horizon_days,
        **params.clv.model_dump(include={"margin", "discount_rate", "discount_period_days"}),
    )


def interval_config(params: Params):
    """How the clv stage computes clv_p10/p50/p90 (models/clv_intervals.py)."""
    from models.clv_intervals import IntervalConfig

    cfg = params.clv
    return IntervalConfig(cfg.interval_draws, cfg.interval_process_draws, params.seed, cfg.fit_max_iterations,
                          cfg.fit_time_budget_s, cfg.interval_bootstrap_sample)


def churn_classifier_factory(params: Params) -> Callable[[], ChurnClassifier]:
    """Factory of unfitted churn classifiers configured from params.churn and params.seed."""
    from models.churn import ChurnClassifier

    cfg = params.churn

    def build() -> ChurnClassifier:
        return ChurnClassifier(
            **cfg.lightgbm.model_dump(),
            **cfg.model_dump(include={"calibration", "calibration_fraction"}),
            random_state=params.seed,
        )

    return build


def segment_rules(params: Params, value_model_won: bool = False) -> seg.SegmentRules:
    """The pure segment rules from the ``segment`` section (and clv.margin); growth potential
    ``auto`` becomes ``value`` when ``value_model_won`` (metrics/value.json), else ``combined``."""
    from models import segments as seg

    s = params.segment
    return seg.SegmentRules(
        growth_potential=seg.resolve_growth_potential(s.growth_potential, value_model_won),
        **s.model_dump(include={"value_basis", "uncertain_below"}),
        margin=params.clv.margin,
        cut=seg.CutRule(**s.cut.model_dump()),
        pyramid=tuple(s.pyramid.model_dump().items()),
        abc=(s.abc.a, s.abc.b),
        tier=seg.TierRule(**s.tier.model_dump()),
        lifecycle=seg.LifecycleRule(**s.lifecycle.model_dump()),
        relationship=seg.RelationshipRule(**s.relationship.model_dump()),
    )


#: The gated metrics: (metric key, higher is better, retrain.gate tolerance key, relative tolerance).
GATED_METRICS: tuple[tuple[str, bool, str, bool], ...] = (
    ("churn.roc_auc", True, "churn_auc", False),
    ("churn.brier", False, "churn_brier", False),
    ("clv.spend_mae", False, "clv_mae", True),
    ("clv.spearman", True, "clv_spearman", False),
)


#: The CLV interval's holdout coverage (metrics/clv.json intervals.holdout.coverage_pit) and its nominal level.
INTERVAL_COVERAGE, INTERVAL_LEVEL = "clv.interval_coverage", 0.80


def gate_rules(params: Params) -> tuple[gate.MetricRule, ...]:
    """The gated metrics with their directions and the tolerances of retrain.gate, plus the band rule on
    the P10-P90 interval's holdout coverage (retrain.gate.interval_coverage; null = not gated)."""
    from models import gate

    tolerance = params.retrain.gate.model_dump()
    rules = [gate.MetricRule(name, higher, tolerance[key], relative, None) for name, higher, key, relative in GATED_METRICS]
    if tolerance["interval_coverage"] is not None:
        rules.append(gate.MetricRule(INTERVAL_COVERAGE, True, tolerance["interval_coverage"], False, INTERVAL_LEVEL))
    return tuple(rules)


def drift_thresholds(params: Params) -> drift.DriftThresholds:
    """The limits of every drift check (retrain.drift without the list of PSI columns)."""
    from models import drift

    return drift.DriftThresholds(**params.retrain.drift.model_dump(exclude={"psi_columns"}))


def feature_spec(params: Params, columns: Mapping[str, Any]) -> FeatureSpec:
    """What the features stage computes: horizon and time unit (data), windows (features), and
    the optional columns that carry data (``columns``: a transactions summary, see
    features.customer.column_flags)."""
    from features.customer import FeatureSpec, column_flags

    return FeatureSpec(
        horizon_days=params.data.horizon_days,
        days_per_unit=params.data.days_per_unit,
        **params.features.model_dump(include={"windows_days", "trend_days", "trend_purchases"}),
        **column_flags(columns),
    )


def run_date() -> dt.date:
    """Today in UTC: rows dated after it are quarantined."""
    return dt.datetime.now(dt.timezone.utc).date()


def valid_until(data: DataParams, today: dt.date) -> dt.date:
    """The exclusive upper bound of plausible timestamps: data.valid_to, but never later than the
    day after the run date (a transaction cannot be dated in the future)."""
    tomorrow = today + dt.timedelta(days=1)
    return tomorrow if data.valid_to is None else min(data.valid_to, tomorrow)


def ingest_rules(data: DataParams, today: dt.date | None = None) -> IngestRules:
    """The classification rules of the data params, with the run date ``today`` (default: UTC today)."""
    from features.ingest import IngestRules

    valid_to = valid_until(data, run_date() if today is None else today)
    if data.valid_from >= valid_to:
        raise ConfigError(f"data.valid_from {data.valid_from} is not before {valid_to} "
                          "(data.valid_to or the day after the run date); fix it in params.yaml")
    return IngestRules(
        columns=data.columns.mapped(),
        valid_to=valid_to,
        **data.model_dump(include={"timestamp_format", "valid_from", "timezone", "decimal"}),
    )
