"""Typed view of params.yaml, parsed once per stage.

Every section is a pydantic model with ``extra="forbid"``, so a misspelt key stops the
stage with one line naming the key (and the closest valid one) instead of being ignored.
"""

from __future__ import annotations

import datetime as dt
import difflib
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_PARAMS = Path("params.yaml")


class ConfigError(ValueError):
    """A params file that cannot be used; the message is one line, meant for the user."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnsParams(_Section):
    """Mapping from the pipeline's column roles to the source file's column names."""

    customer_id: str
    timestamp: str
    amount: str
    order_id: str | None = None
    quantity: str | None = None
    cost: str | None = None

    def mapped(self) -> dict[str, str]:
        """Role -> source column, for every role that is mapped."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


class DataParams(_Section):
    path: str = "lifetimes:CDNOW_master"
    columns: ColumnsParams
    timestamp_format: str | tuple[str, ...] | None = None  # strptime format(s), tried in order; null = ISO 8601
    timezone: str | None = None  # IANA zone of naive timestamps; null = UTC
    decimal: Literal[".", ","] = "."
    encoding: str = "utf-8"
    as_of: dt.date | None = None
    horizon_days: int = Field(91, gt=0)
    time_unit: Literal["D", "W"] = "W"
    valid_from: dt.date = dt.date(1970, 1, 1)
    valid_to: dt.date | None = None  # exclusive; null = the day after the run date (UTC)
    max_rejected_share: float = Field(0.05, ge=0, le=1)
    ingest_threads: int | None = Field(None, gt=0)
    ingest_memory_limit: str | None = None

    @field_validator("timestamp_format")
    @classmethod
    def _formats(cls, v: str | tuple[str, ...] | None) -> str | tuple[str, ...] | None:
        if v is not None and (not v or any(not f.strip() for f in ((v,) if isinstance(v, str) else v))):
            raise ValueError("timestamp_format must be a strptime format, a non-empty list of them, or null")
        return v

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, v: str) -> str:
        import codecs

        try:
            codecs.lookup(v)
        except LookupError:
            raise ValueError(f"unknown encoding {v!r} (e.g. utf-8, latin-1, cp1252, utf-16)") from None
        return v

    @model_validator(mode="after")
    def _check_range(self) -> "DataParams":
        if self.valid_to is not None and self.valid_from >= self.valid_to:
            raise ValueError("valid_from must be before valid_to")
        return self

    @property
    def days_per_unit(self) -> float:
        """Length of one model time unit in days (1 for D, 7 for W)."""
        return 1.0 if self.time_unit == "D" else 7.0


class FeaturesParams(_Section):
    engine: Literal["duckdb", "pyspark"] = "duckdb"
    windows_days: tuple[int, ...] = (30, 90, 180, 365)
    trend_days: int = Field(182, gt=0)
    trend_purchases: int = Field(3, ge=2)
    threads: int | None = Field(None, gt=0)
    memory_limit: str | None = None
    temp_directory: str | None = None
    spark_master: str = Field("local[2]", min_length=1)  # engine pyspark: local[N], yarn, spark://host:7077
    spark_conf: dict[str, str | int | float | bool] = {}  # engine pyspark: extra Spark settings

    @field_validator("windows_days")
    @classmethod
    def _positive_sorted(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(w <= 0 for w in v):
            raise ValueError("windows_days must be a non-empty list of positive day counts")
        return tuple(sorted(set(v)))


class ClvParams(_Section):
    model: Literal["bgnbd", "paretonbd", "mbgnbd", "auto"] = "auto"
    penalizer: float = Field(0.0, ge=0)
    retry_penalizer: float = Field(0.001, gt=0)
    margin: float = Field(0.3, gt=0, le=1)
    discount_rate: float = Field(0.10, ge=0)
    discount_period_days: int = Field(30, gt=0)
    spend_correlation_warn: float = Field(0.3, gt=0, le=1)
    spend_penalizer: float = Field(0.0, ge=0)
    spend_retry_penalizer: float = Field(0.001, gt=0)
    spend_fallback: Literal["credibility", "population_mean"] | None = "credibility"
    fit_time_budget_s: float = Field(300.0, gt=0)
    fit_max_iterations: int = Field(1000, gt=0)
    min_customers: int = Field(100, gt=0)
    selection_max_customers: int = Field(200_000, gt=0)
    interval_draws: int = Field(20, gt=0)  # parameter draws of the customer bootstrap (1 = point estimate only)
    interval_process_draws: int = Field(200, ge=20)  # purchase-process draws per distinct (frequency, T) group
    interval_bootstrap_sample: int | None = Field(50_000, gt=0)  # m of the m-out-of-n bootstrap; null = n
    model_name: str = "cvp-clv"
    register_model: bool = True


class _BoostingParams(_Section):
    """LightGBM settings the churn classifier and the value model share (their leaf minimums differ)."""

    n_estimators: int = Field(300, gt=0)
    learning_rate: float = Field(0.02, gt=0)
    num_leaves: int = Field(4, gt=1)
    subsample: float = Field(0.8, gt=0, le=1)
    subsample_freq: int = Field(1, ge=0)
    colsample_bytree: float = Field(0.8, gt=0, le=1)
    reg_lambda: float = Field(1.0, ge=0)
    n_jobs: int = Field(2, gt=0)
    max_fit_customers: int | None = Field(200000, gt=0)  # customers of one LightGBM fit (seeded stratified sample); null = all


class LightGBMParams(_BoostingParams):
    min_child_samples: int = Field(300, gt=0)  # cap of the leaf minimum
    min_child_share: float | None = Field(0.05, gt=0, le=1)  # leaf minimum as a share of the fit customers; null = absolute
    tree_tolerance: float | None = Field(None, ge=0)  # trees: fewest within this log loss of the out-of-time minimum; null = the cap
    boost_from: Literal["p_no_purchase", "expected_purchases"] | None = "p_no_purchase"  # start the boosting from this CLV baseline's log-odds


class ChurnParams(_Section):
    lightgbm: LightGBMParams = LightGBMParams()
    calibration: Literal["auto", "isotonic", "sigmoid", "none"] = "auto"
    calibration_fraction: float = Field(0.3, gt=0, lt=1)
    test_fraction: float = Field(0.3, gt=0, lt=1)
    min_train_customers: int = Field(500, gt=0)
    min_class_customers: int = Field(5, ge=2)
    auc_tolerance: float = Field(0.005, ge=0, lt=1)
    top_features: int = Field(10, gt=0)
    shap_sample: int = Field(5000, gt=0)  # customers whose SHAP values are computed (seeded sample)
    bootstrap_sample: int | None = Field(50000, gt=0)  # test customers the bootstrap resamples; null = all
    model_name: str = "cvp-churn"
    register_model: bool = True


class ValueLightGBMParams(_BoostingParams):
    kind: Literal["two_part", "single"] = "two_part"
    min_child_samples: int = Field(100, gt=0)  # cap of the leaf minimum
    min_child_share: float | None = Field(0.02, gt=0, le=1)  # leaf minimum as a share of the fit rows; null = absolute
    boost_from_btyd: bool = True


class ValueParams(_Section):
    enabled: bool = True
    lightgbm: ValueLightGBMParams = ValueLightGBMParams()
    min_train_customers: int = Field(500, gt=0)
    min_train_buyers: int = Field(50, gt=0)
    win_metric: Literal["spearman", "top_share_capture", "normalized_gini"] = "spearman"
    min_gain: float = Field(0.02, ge=0)
    win_interval: float | None = Field(0.9, gt=0, lt=1)  # level of each gain's paired bootstrap interval (must be > 0); null = none
    bootstrap_sample: int | None = Field(50000, gt=0)  # holdout customers each resample draws; null = all


class CutParams(_Section):
    method: Literal["quantile", "fixed"] = "quantile"
    current_value: float = 0.5
    growth_potential: float = 0.5

    @model_validator(mode="after")
    def _quantiles_in_range(self) -> "CutParams":
        if self.method == "quantile" and not (0 <= self.current_value <= 1 and 0 <= self.growth_potential <= 1):
            raise ValueError("quantile cuts must be between 0 and 1 (use method: fixed for amounts)")
        return self


class PyramidParams(_Section):
    vip: float = 0.01
    major: float = 0.04
    ordinary: float = 0.15
    small: float = 0.80

    @model_validator(mode="after")
    def _sum_to_one(self) -> "PyramidParams":
        total = self.vip + self.major + self.ordinary + self.small
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"pyramid shares must sum to 1 (got {total:g})")
        return self


class AbcParams(_Section):
    a: float = Field(0.80, gt=0, lt=1)
    b: float = Field(0.95, gt=0, lt=1)

    @model_validator(mode="after")
    def _a_before_b(self) -> "AbcParams":
        if self.a >= self.b:
            raise ValueError("abc.a must be below abc.b (cumulative value shares)")
        return self


class LifecycleParams(_Section):
    drowsy: float = Field(1.5, gt=0)
    half_asleep: float = Field(2.5, gt=0)
    dormant: float = Field(4.0, gt=0)
    new_days: int = Field(90, gt=0)
    one_time_buyer_interval_days: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _increasing(self) -> "LifecycleParams":
        if not self.drowsy < self.half_asleep < self.dormant:
            raise ValueError("lifecycle multiples must increase: drowsy < half_asleep < dormant")
        return self


class TierParams(_Section):
    top_share: float = Field(0.20, gt=0, lt=1)
    lead_share: float = Field(0.20, ge=0, lt=1)
    lead_max_value: float = 0.0
    growing_ratio: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _fits(self) -> "TierParams":
        if self.top_share + self.lead_share > 1:
            raise ValueError("tier.top_share + tier.lead_share must not exceed 1")
        return self


class RelationshipParams(_Section):
    many_share: float = Field(0.10, gt=0, le=1)
    few_share: float = Field(0.02, ge=0, le=1)

    @model_validator(mode="after")
    def _ordered(self) -> "RelationshipParams":
        if self.few_share > self.many_share:
            raise ValueError("relationship.few_share must not exceed relationship.many_share")
        return self


class SegmentParams(_Section):
    growth_potential: Literal["auto", "combined", "clv", "value"] = "auto"
    value_basis: Literal["total", "current", "growth"] = "total"
    cut: CutParams = CutParams()
    pyramid: PyramidParams = PyramidParams()
    abc: AbcParams = AbcParams()
    tier: TierParams = TierParams()
    lifecycle: LifecycleParams = LifecycleParams()
    relationship: RelationshipParams = RelationshipParams()
    # The quadrant scatter draws a seeded sample of at most this many customers (all when fewer).
    scatter_sample_size: int = Field(50_000, gt=0)
    uncertain_below: float = Field(0.8, ge=0, le=1)  # quadrant_uncertain below this quadrant_probability
    log_model: bool = True
    model_name: str = "cvp-scores"
    register_model: bool = True


class ExportParams(_Section):
    database_url: str | None = None
    table: str = Field("customer_scores", pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")
    batch_size: int = Field(5000, gt=0)


class ReportParams(_Section):
    # ISO 4217 code of the money amounts (EUR, USD, GBP...); null = plain numbers in "money units"
    currency: str | None = Field(None, pattern=r"^[A-Z]{3}$")


class MlflowParams(_Section):
    experiment: str = "customer-value"
    tracking_dir: str | None = None


class DriftParams(_Section):
    psi_columns: tuple[str, ...] = (
        "frequency", "monetary_value", "avg_spend", "n_transactions", "spend_trailing", "ipi_mean",
    )
    psi_bins: int = Field(10, ge=2)
    psi_epsilon: float = Field(1e-4, gt=0, lt=1)
    max_psi: float = Field(0.25, gt=0)
    max_row_drop: float = Field(0.10, ge=0, le=1)
    max_row_growth: float | None = Field(None, ge=0)
    max_quarantine_increase: float = Field(0.02, ge=0, le=1)
    max_start_shift_days: int | None = Field(0, ge=0)


class GateParams(_Section):
    churn_auc: float = Field(0.01, ge=0)
    churn_brier: float = Field(0.005, ge=0)
    clv_mae: float = Field(0.05, ge=0)
    clv_spearman: float = Field(0.02, ge=0)
    interval_coverage: float | None = Field(0.05, ge=0)  # |P10-P90 holdout coverage - 0.80| at most this; null = not gated


class RetrainParams(_Section):
    lock_timeout_s: float = Field(900, ge=0)
    drift: DriftParams = DriftParams()
    gate: GateParams = GateParams()


class Params(_Section):
    seed: int = 42
    data: DataParams
    features: FeaturesParams = FeaturesParams()
    clv: ClvParams = ClvParams()
    churn: ChurnParams = ChurnParams()
    value: ValueParams = ValueParams()
    segment: SegmentParams = SegmentParams()
    export: ExportParams = ExportParams()
    report: ReportParams = ReportParams()
    mlflow: MlflowParams = MlflowParams()
    retrain: RetrainParams = RetrainParams()


def _valid_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names valid at ``loc`` (the path of a bad key), for a 'did you mean' hint."""
    current: type[BaseModel] | None = model
    for part in loc[:-1]:
        if current is None or part not in current.model_fields:
            return []
        annotation = current.model_fields[part].annotation
        current = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return list(current.model_fields) if current is not None else []


def _one_line(err: ValidationError, source: str) -> str:
    # An unknown key usually explains a "missing" one (a typo), so report it first.
    errors = sorted(err.errors(), key=lambda e: e["type"] != "extra_forbidden")
    first = errors[0]
    loc = tuple(first["loc"])
    key = ".".join(str(p) for p in loc)
    if first["type"] == "extra_forbidden":
        close = difflib.get_close_matches(str(loc[-1]), _valid_keys(Params, loc), n=1)
        hint = f" (did you mean '{'.'.join([*map(str, loc[:-1]), close[0]])}'?)" if close else ""
        return f"{source}: unknown key '{key}'{hint}; remove or rename it"
    if first["type"] == "missing":
        return f"{source}: missing required key '{key}'; add it"
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"{source}: bad value for '{key}': {first['msg']}{more}"


def parse_params(raw: dict, source: str = "params.yaml") -> Params:
    """Validate a params mapping; raise ConfigError with a one-line message if it is wrong."""
    try:
        return Params.model_validate(raw or {})
    except ValidationError as err:
        raise ConfigError(_one_line(err, source)) from None


def read_params_yaml(path: Path | str) -> dict:
    """The params file as a mapping (YAML dates stay ``datetime.date``); ConfigError if unreadable."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found; run from the project root or pass --params") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except ValueError as exc:  # YAML's own constructors, e.g. an unquoted date that does not exist
        raise ConfigError(
            f'{path}: cannot read a value ({exc}); write dates quoted, as real days: "1998-03-31"'
        ) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return raw


def load_params(path: Path | str = DEFAULT_PARAMS) -> Params:
    """Read and validate a params file (an unquoted YAML date is accepted: ``cvp`` reads it)."""
    return parse_params(read_params_yaml(path), str(Path(path)))


# Scalars DVC can read from a params file (dvc.parsing.context.PRIMITIVES), besides lists and
# mappings; anything else (a YAML date, datetime or set) stops `dvc repro` before any stage runs.
DVC_SCALARS = (type(None), bool, int, float, str, bytes)


def dvc_unreadable_values(raw: object, key: str = "") -> list[tuple[str, object]]:
    """(dotted key, value) of every value in a parsed params mapping that DVC cannot read."""
    if isinstance(raw, dict):
        return [bad for k, v in raw.items() for bad in dvc_unreadable_values(v, f"{key}.{k}" if key else str(k))]
    if isinstance(raw, list):
        return [bad for i, v in enumerate(raw) for bad in dvc_unreadable_values(v, f"{key}[{i}]")]
    return [] if isinstance(raw, DVC_SCALARS) else [(key, raw)]


def dvc_fix_hint(key: str, value: object, source: str) -> str:
    """One line saying which value DVC cannot read and how to write it."""
    if isinstance(value, dt.date):  # datetime.datetime is a date too
        kind = "datetime" if isinstance(value, dt.datetime) else "date"
        text = value.isoformat(sep=" ") if isinstance(value, dt.datetime) else value.isoformat()
        quoted = f'"{text}"' if key.endswith("]") else f'{key.rsplit(".", 1)[-1]}: "{text}"'
        return f"{source}: {key} is an unquoted {kind}; write it quoted: {quoted}"
    return (
        f"{source}: {key} is a YAML {type(value).__name__}, which DVC cannot read; "
        "write it as a quoted string, a number, a list or a mapping"
    )


def check_params_file(path: Path | str = DEFAULT_PARAMS) -> Params:
    """Validate a params file for the stages AND for DVC (which reads it before any stage runs)."""
    raw = read_params_yaml(path)
    params = parse_params(raw, str(Path(path)))
    unreadable = dvc_unreadable_values(raw)
    if unreadable:
        more = f" (and {len(unreadable) - 1} more such value(s))" if len(unreadable) > 1 else ""
        raise ConfigError(dvc_fix_hint(*unreadable[0], str(Path(path))) + more)
    return params
