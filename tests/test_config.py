"""params.yaml is parsed once into typed objects; a bad key fails with one clear line."""

import datetime as dt
from pathlib import Path

import pytest
import yaml

from pipelines.config import ConfigError, load_params, parse_params

ROOT = Path(__file__).resolve().parents[1]


def _raw() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_project_params_parse_with_documented_defaults():
    params = load_params(ROOT / "params.yaml")
    assert params.data.path == "lifetimes:CDNOW_master"
    assert params.data.horizon_days == 91
    assert params.data.time_unit == "W" and params.data.days_per_unit == 7.0
    assert params.data.as_of is None
    assert params.data.columns.mapped() == {
        "customer_id": "customer_id", "timestamp": "date", "amount": "dollar_value", "quantity": "number_of_cds",
    }


def test_misspelt_key_names_the_key_and_the_closest_valid_one():
    raw = _raw()
    raw["clv"]["margn"] = raw["clv"].pop("margin")
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    message = str(err.value)
    assert "\n" not in message
    assert "'clv.margn'" in message and "'clv.margin'" in message


def test_typo_in_a_required_section_is_reported_as_unknown_not_missing():
    raw = _raw()
    raw["data"]["colums"] = raw["data"].pop("columns")
    with pytest.raises(ConfigError, match=r"unknown key 'data.colums' \(did you mean 'data.columns'\?\)"):
        parse_params(raw)


@pytest.mark.parametrize(
    ("section", "key", "value", "fragment"),
    [
        ("data", "time_unit", "M", "data.time_unit"),
        ("data", "horizon_days", 0, "data.horizon_days"),
        ("clv", "model", "prophet", "clv.model"),
    ],
)
def test_bad_values_name_the_parameter(section, key, value, fragment):
    raw = _raw()
    raw[section][key] = value
    with pytest.raises(ConfigError, match=fragment):
        parse_params(raw)


def test_pyramid_shares_must_sum_to_one():
    raw = _raw()
    raw["segment"]["pyramid"]["vip"] = 0.5
    with pytest.raises(ConfigError, match="segment.pyramid"):
        parse_params(raw)


def test_dates_parse_to_date_objects():
    raw = _raw()
    raw["data"]["as_of"] = "1998-03-31"
    assert parse_params(raw).data.as_of == dt.date(1998, 3, 31)


def test_missing_params_file_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
