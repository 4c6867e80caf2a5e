"""params.yaml is parsed once into typed objects; a bad key fails with one clear line."""

import datetime as dt
from pathlib import Path

import pytest
import yaml

from pipelines.config import (
    ConfigError,
    check_params_file,
    dvc_fix_hint,
    dvc_unreadable_values,
    load_params,
    parse_params,
)

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


def test_unquoted_yaml_dates_load_as_dates(tmp_path):
    """cvp stages run by hand read an unquoted date (only DVC cannot)."""
    (tmp_path / "params.yaml").write_text(
        "data:\n  columns: {customer_id: c, timestamp: t, amount: a}\n"
        "  as_of: 1998-03-31\n  valid_from: 1997-01-01\n  valid_to: 1998-07-01\n"
    )
    params = load_params(tmp_path / "params.yaml")
    assert (params.data.as_of, params.data.valid_from, params.data.valid_to) == (
        dt.date(1998, 3, 31), dt.date(1997, 1, 1), dt.date(1998, 7, 1))


def test_values_dvc_cannot_read_are_found_anywhere_with_their_key():
    raw = {"data": {"as_of": dt.date(1998, 3, 31), "n": 3, "x": None, "ok": ["a", 1.5, True, b"z"]},
           "other": {"days": [dt.date(2024, 1, 2), {"at": dt.datetime(2024, 1, 2, 10, 30)}], "s": {1, 2}}}
    assert dvc_unreadable_values(raw) == [
        ("data.as_of", dt.date(1998, 3, 31)),
        ("other.days[0]", dt.date(2024, 1, 2)),
        ("other.days[1].at", dt.datetime(2024, 1, 2, 10, 30)),
        ("other.s", {1, 2}),
    ]
    assert dvc_unreadable_values(_raw()) == []


@pytest.mark.parametrize(
    ("key", "value", "hint"),
    [
        ("data.as_of", dt.date(1998, 3, 31),
         'p.yaml: data.as_of is an unquoted date; write it quoted: as_of: "1998-03-31"'),
        ("other.days[0]", dt.date(2024, 1, 2), 'p.yaml: other.days[0] is an unquoted date; write it quoted: "2024-01-02"'),
        ("a.at", dt.datetime(2024, 1, 2, 10, 30),
         'p.yaml: a.at is an unquoted datetime; write it quoted: at: "2024-01-02 10:30:00"'),
        ("other.s", {1}, "p.yaml: other.s is a YAML set, which DVC cannot read; "
                         "write it as a quoted string, a number, a list or a mapping"),
    ],
)
def test_dvc_fix_hint_shows_the_quoted_form(key, value, hint):
    assert dvc_fix_hint(key, value, "p.yaml") == hint


def test_check_params_file_reports_the_first_unreadable_value_and_how_many_more(tmp_path):
    (tmp_path / "params.yaml").write_text(
        "data:\n  columns: {customer_id: c, timestamp: t, amount: a}\n  as_of: 1998-03-31\n  valid_from: 1970-01-01\n"
    )
    with pytest.raises(ConfigError) as err:
        check_params_file(tmp_path / "params.yaml")
    assert str(err.value) == (
        f'{tmp_path / "params.yaml"}: data.as_of is an unquoted date; write it quoted: as_of: "1998-03-31" '
        "(and 1 more such value(s))")
    assert check_params_file(ROOT / "params.yaml") == load_params(ROOT / "params.yaml")
