"""One place for defaults: the typed config (pipelines/config.py). The domain dataclasses have no
defaults of their own and are built from the config sections (pipelines/domain.py); the few
defaults kept outside it (an sklearn estimator's __init__, module constants used without params)
equal the config's."""

from __future__ import annotations

import dataclasses
import datetime as dt
import inspect

import pytest

from features import customer
from features.customer import FeatureSpec
from features.ingest import IngestRules
from models import drift, gate
from models import segments as seg
from models.churn import ChurnClassifier
from models.clv import ClvSettings
from pipelines import domain
from pipelines.config import (
    ChurnParams,
    ClvParams,
    CutParams,
    DataParams,
    DriftParams,
    FeaturesParams,
    GateParams,
    LifecycleParams,
    LightGBMParams,
    Params,
    RelationshipParams,
    SegmentParams,
    TierParams,
)

# Params with every default: only the columns mapping is required.
PARAMS = Params(data={"columns": {"customer_id": "customer", "timestamp": "date", "amount": "amount"}})

DOMAIN_CLASSES = (seg.CutRule, seg.TierRule, seg.LifecycleRule, seg.RelationshipRule, seg.SegmentRules,
                  IngestRules, drift.DriftThresholds, gate.MetricRule, ClvSettings)
FEATURE_SETTINGS = ("horizon_days", "days_per_unit", "windows_days", "trend_days")  # the rest are facts about the data


def defaulted(cls) -> list[str]:
    """Init fields of a dataclass with a default or a default factory."""
    return [f.name for f in dataclasses.fields(cls)
            if f.init and (f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING)]


@pytest.mark.parametrize("cls", DOMAIN_CLASSES, ids=lambda c: c.__name__)
def test_domain_dataclasses_have_no_defaults(cls):
    assert defaulted(cls) == []


def test_the_feature_spec_settings_have_no_defaults():
    assert not set(defaulted(FeatureSpec)) & set(FEATURE_SETTINGS)
    assert set(defaulted(FeatureSpec)) == {"has_order_id", "has_quantity", "has_cost", "decimal_sums"}


@pytest.mark.parametrize(("section", "rule"), [
    (CutParams, seg.CutRule), (TierParams, seg.TierRule), (LifecycleParams, seg.LifecycleRule),
    (RelationshipParams, seg.RelationshipRule),
])
def test_config_sections_and_their_rules_have_the_same_fields(section, rule):
    """So ``Rule(**section.model_dump())`` passes every setting, and a field added on one side fails."""
    assert list(section.model_fields) == [f.name for f in dataclasses.fields(rule)]


def test_drift_thresholds_are_the_drift_section_without_its_columns():
    assert set(DriftParams.model_fields) - {"psi_columns"} == {f.name for f in dataclasses.fields(drift.DriftThresholds)}


def test_segment_rules_from_default_params_carry_the_config_values():
    rules = domain.segment_rules(PARAMS)
    defaults = SegmentParams()
    # growth potential auto: the value model's when it won on the holdout, else the combined rule
    assert (defaults.growth_potential, rules.growth_potential, rules.value_basis) == ("auto", "combined", defaults.value_basis)
    assert domain.segment_rules(PARAMS, value_model_won=True).growth_potential == "value"
    fixed = PARAMS.model_copy(update={"segment": defaults.model_copy(update={"growth_potential": "clv"})})
    assert domain.segment_rules(fixed, value_model_won=True).growth_potential == "clv"
    assert rules.margin == ClvParams().margin == 0.3
    assert dataclasses.asdict(rules.cut) == defaults.cut.model_dump() == {"method": "quantile", "current_value": 0.5,
                                                                          "growth_potential": 0.5}
    assert rules.pyramid == (("vip", 0.01), ("major", 0.04), ("ordinary", 0.15), ("small", 0.80))
    assert rules.abc == (defaults.abc.a, defaults.abc.b) == (0.80, 0.95)
    assert dataclasses.asdict(rules.tier) == defaults.tier.model_dump()
    assert dataclasses.asdict(rules.lifecycle) == defaults.lifecycle.model_dump()
    assert dataclasses.asdict(rules.relationship) == defaults.relationship.model_dump()
    changed = PARAMS.model_copy(update={"segment": SegmentParams(tier=TierParams(top_share=0.3), value_basis="current")})
    assert domain.segment_rules(changed).tier.top_share == 0.3 and domain.segment_rules(changed).value_basis == "current"


def test_drift_gate_and_clv_settings_from_default_params_carry_the_config_values():
    assert dataclasses.asdict(domain.drift_thresholds(PARAMS)) == DriftParams().model_dump(exclude={"psi_columns"})
    rules = {r.name: r for r in domain.gate_rules(PARAMS)}
    tolerances = GateParams()
    assert {name: r.tolerance for name, r in rules.items()} == {
        "churn.roc_auc": tolerances.churn_auc, "churn.brier": tolerances.churn_brier,
        "clv.spend_mae": tolerances.clv_mae, "clv.spearman": tolerances.clv_spearman,
        "clv.interval_coverage": tolerances.interval_coverage}
    assert [name for name, r in rules.items() if r.relative] == ["clv.spend_mae"]
    assert [name for name, r in rules.items() if r.target is not None] == ["clv.interval_coverage"]
    assert rules["clv.interval_coverage"].target == 0.80
    assert [name for name, r in rules.items() if r.higher_is_better and r.target is None] == ["churn.roc_auc", "clv.spearman"]
    assert domain.clv_settings(PARAMS) == ClvSettings(days_per_unit=7.0, horizon_days=91, margin=0.3,
                                                      discount_rate=0.10, discount_period_days=30)


def test_ingest_rules_and_feature_spec_from_default_params_carry_the_config_values():
    rules = domain.ingest_rules(PARAMS.data, today=dt.date(2024, 5, 1))
    data = DataParams.model_validate(PARAMS.data.model_dump())
    assert (rules.timestamp_format, rules.valid_from, rules.timezone, rules.decimal) == (
        data.timestamp_format, data.valid_from, data.timezone, data.decimal)
    assert rules.valid_to == dt.date(2024, 5, 2)  # valid_to null: the day after the run date
    assert dict(rules.columns) == {"customer_id": "customer", "timestamp": "date", "amount": "amount"}
    spec = domain.feature_spec(PARAMS, {"n_quantity": 3, "n_order_id": 0})
    features = FeaturesParams()
    assert (spec.horizon_days, spec.days_per_unit, spec.windows_days, spec.trend_days) == (
        data.horizon_days, data.days_per_unit, features.windows_days, features.trend_days)
    assert (spec.has_quantity, spec.has_order_id, spec.has_cost, spec.decimal_sums) == (True, False, False, False)


def test_the_churn_classifier_defaults_equal_the_config():
    """An sklearn estimator keeps its __init__ defaults (get_params/clone need them): they must be the config's."""
    signature = inspect.signature(ChurnClassifier.__init__).parameters
    init_defaults = {name: p.default for name, p in signature.items() if p.default is not inspect.Parameter.empty}
    config = {**LightGBMParams().model_dump(), **ChurnParams().model_dump(include={"calibration", "calibration_fraction"}),
              "random_state": Params.model_fields["seed"].default}
    assert init_defaults == config
    built = domain.churn_classifier_factory(PARAMS)().get_params()
    assert {k: built[k] for k in config} == config


def test_the_value_model_defaults_equal_the_config():
    """The value model's __init__ defaults are the config's (value.lightgbm, seed)."""
    from models.value import ValueModel
    from pipelines.config import ValueLightGBMParams

    signature = inspect.signature(ValueModel.__init__).parameters
    init_defaults = {name: p.default for name, p in signature.items() if p.default is not inspect.Parameter.empty}
    assert init_defaults == {**ValueLightGBMParams().model_dump(), "random_state": Params.model_fields["seed"].default}


def test_constants_used_without_params_equal_the_config_defaults():
    assert customer.DEFAULT_WINDOWS_DAYS == FeaturesParams().windows_days
    assert (drift.DEFAULT_BINS, drift.DEFAULT_EPSILON) == (DriftParams().psi_bins, DriftParams().psi_epsilon)
