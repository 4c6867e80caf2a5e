"""`cvp segment` end to end on small input files in a temporary project."""

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from features.errors import DataError
from models import segment_eval
from models import segments as seg
from pipelines import domain, segment
from pipelines.catalog import Catalog
from pipelines.config import parse_params

AS_OF = pd.Timestamp("2021-06-30")
T1 = AS_OF - pd.Timedelta(days=91)
N = 120


def _ids(n=N):
    return [f"{i:05d}" for i in range(n)]


def _scores(rng, cutoff, n=N):
    """CLV and churn predictions at one cutoff."""
    p_no = rng.uniform(0.05, 0.95, n)
    expected = -np.log(p_no) * rng.uniform(1.0, 1.5, n)
    spend = rng.gamma(3.0, 15.0, n)
    clv = pd.DataFrame(
        {
            "customer_id": _ids(n),
            "cutoff": cutoff,
            "model": "bgnbd",
            "p_alive": rng.uniform(0.1, 1.0, n),
            "expected_purchases": expected,
            "p_no_purchase": p_no,
            "expected_avg_spend": spend,
            "clv": expected * spend * 0.3 * 0.98,
            "clv_p10": 0.0,
            "clv_p50": expected * spend * 0.3 * 0.5,
            "clv_p90": expected * spend * 0.3 * 3.0,
            "clv_expected_p10": expected * spend * 0.3 * 0.7,
            "clv_expected_p90": expected * spend * 0.3 * 1.4,
        }
    )
    churn = pd.DataFrame({"customer_id": _ids(n), "cutoff": cutoff, "churn_probability": rng.uniform(0.02, 0.98, n)})
    return clv, churn


def write_inputs(paths: Catalog, seed=0):
    """The columns of the stage's inputs it reads, with their producers' dtypes; by catalog key."""
    rng = np.random.default_rng(seed)
    repeat = rng.random(N) < 0.6
    features = pd.DataFrame(
        {
            "customer_id": _ids(),
            "cutoff": AS_OF,
            "spend_trailing": np.where(rng.random(N) < 0.55, 0.0, rng.gamma(2.0, 30.0, N)),
            "margin_trailing": np.nan,
            "days_since_first": rng.integers(5, 540, N),
            "days_since_last": rng.integers(0, 400, N),
            "ipi_mean": np.where(repeat, rng.uniform(7, 150, N), np.nan),
        }
    )
    clv0, churn0 = _scores(rng, AS_OF)
    clv1, churn1 = _scores(rng, T1)
    bought = rng.random(N) < (1 - churn1["churn_probability"])
    labels = pd.DataFrame(
        {
            "customer_id": _ids(),
            "cutoff": T1,
            "purchased": bought.astype("int8"),
            "n_purchase_days": bought.astype(int),
            "spend": np.where(bought, rng.gamma(2.0, 40.0, N), 0.0),
        }
    )
    files = {
        "features_t0": features,
        "clv_predictions_t0": clv0,
        "churn_predictions_t0": churn0,
        "labels_t1": labels,
        "clv_predictions_t1": clv1,
        "churn_predictions_t1": churn1,
    }
    for key, frame in files.items():
        paths.path(key).parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(paths.path(key), index=False)
    return files


@pytest.fixture
def project(tmp_path, monkeypatch):
    """(catalog of a tmp project, params, the input frames by catalog key); the stage runs from elsewhere."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.delenv("CVP_PIPELINE_RUN_ID", raising=False)
    raw = {
        "data": {"columns": {"customer_id": "customer_id", "timestamp": "date", "amount": "dollar_value"}},
        "mlflow": {"tracking_dir": str(tmp_path / "tracking")},
        "segment": {"log_model": False},  # no CLV/churn model files here (served model: test_pipeline_e2e)
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    paths = Catalog(tmp_path, tmp_path / "params.yaml")
    files = write_inputs(paths)
    return paths, parse_params(raw), files


def test_stage_writes_validated_deterministic_outputs_and_logs_to_mlflow(project):
    paths, params, files = project
    segment.run(params, paths)

    out = pd.read_parquet(paths.SEGMENTS)
    assert list(out.columns) == list(segment_eval.SEGMENT_COLUMNS)
    assert out["customer_id"].tolist() == _ids() and (out["as_of"] == AS_OF).all()
    # The written labels are the pure rules applied to the joined inputs.
    joined = (
        files["features_t0"]
        .merge(files["clv_predictions_t0"][["customer_id", "clv", "p_no_purchase", "clv_expected_p10", "clv_expected_p90"]],
               on="customer_id")
        .merge(files["churn_predictions_t0"][["customer_id", "churn_probability"]], on="customer_id")
    )
    expected = seg.segment_customers(joined, domain.segment_rules(params)).customers
    for column in ("quadrant", "tier", "pyramid_level", "abc_class", "lifecycle_state", "relationship_level",
                   "quadrant_uncertain"):
        assert out[column].tolist() == expected[column].tolist(), column
    np.testing.assert_allclose(out["growth_potential"], expected["growth_potential"])
    np.testing.assert_allclose(out["quadrant_probability"], expected["quadrant_probability"])

    summary = pd.read_parquet(paths.SEGMENT_SUMMARY)
    for _, part in summary.groupby("group_by"):
        assert part["customers"].sum() == N
        assert part["share_of_value"].sum() == pytest.approx(1.0)

    metrics = json.loads(paths.metrics_file("segment").read_text())
    assert metrics["customers"] == N and metrics["as_of"] == "2021-06-30"
    for column, counts in metrics["counts"].items():
        assert sum(counts.values()) == N, column
        assert counts == out[column].value_counts().reindex(list(counts), fill_value=0).to_dict()
    sleeping_high_growth = out["lifecycle_state"].isin(["drowsy", "half_asleep", "dormant"]) & out["quadrant"].isin(["II", "IV"])
    assert metrics["reactivation_targets"] == sleeping_high_growth.sum() > 0
    holdout = metrics["holdout"]
    assert holdout["customers"] == N and holdout["cutoff"] == str(T1.date())
    assert -1 <= holdout["combined"]["spearman"] <= 1
    assert holdout["oracle"]["top_share_capture"] >= holdout["clv"]["top_share_capture"]
    assert 0 < metrics["concentration"]["gini"] < 1

    plots = paths.plots_dir("segment")
    for name in ("quadrant_scatter.png", "lorenz.png", "value_by_quadrant.png", "lifecycle.png"):
        assert (plots / name).read_bytes()[:4] == b"\x89PNG", name
    lorenz = pd.read_csv(plots / "lorenz.csv")
    assert len(lorenz) == 101 and lorenz["share_of_value"].is_monotonic_increasing
    assert lorenz["share_of_value"].iloc[-1] == pytest.approx(1.0)

    run = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`cvp.stage` = 'segment'", output_format="list")
    assert len(run) == 1
    assert run[0].data.metrics["counts.quadrant.IV"] == metrics["counts"]["quadrant"]["IV"]
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run[0].info.run_id)}
    assert {"summary.json", "plots", "segment.json"} <= artifacts

    # Same inputs -> byte-identical outputs.
    outputs = [paths.SEGMENTS, paths.SEGMENT_SUMMARY, paths.metrics_file("segment"), *sorted(plots.iterdir())]
    first = {p: p.read_bytes() for p in outputs}
    segment.run(params, paths)
    for p, content in first.items():
        assert p.read_bytes() == content, p


def test_customer_missing_from_an_input_names_the_file(project):
    paths, params, files = project
    churn = files["churn_predictions_t0"].iloc[1:]
    churn.to_parquet(paths.churn_predictions_at(0), index=False)
    with pytest.raises(DataError, match=r"data/churn/predictions_t0.parquet: 1 customer\(s\) missing \(e.g. 00000\)"):
        segment.run(params, paths)
    assert not paths.SEGMENTS.exists()


def test_extra_customer_in_an_input_names_the_file_it_is_missing_from(project):
    paths, params, files = project
    clv = files["clv_predictions_t0"]
    extra = pd.concat([clv, clv.iloc[[0]].assign(customer_id="99999")], ignore_index=True)
    extra.to_parquet(paths.clv_predictions_at(0), index=False)
    with pytest.raises(DataError, match=r"data/features/features_t0.parquet: 1 customer\(s\) missing \(e.g. 99999\)"):
        segment.run(params, paths)


def test_missing_input_file_and_bad_values_are_data_errors(project):
    paths, params, files = project
    paths.clv_predictions_at(0).unlink()
    with pytest.raises(DataError, match=r"data/clv/predictions_t0.parquet: not found; run `cvp clv` first"):
        segment.run(params, paths)
    files["clv_predictions_t0"].to_parquet(paths.clv_predictions_at(0), index=False)
    churn = files["churn_predictions_t0"].assign(churn_probability=1.5)
    churn.to_parquet(paths.churn_predictions_at(0), index=False)
    with pytest.raises(DataError, match=r"data/churn/predictions_t0.parquet: does not match the churn predictions .*contract: .*churn_probability"):
        segment.run(params, paths)
    # A column with another dtype than its producer writes (whole days as floats) breaks the contract too.
    files["churn_predictions_t0"].to_parquet(paths.churn_predictions_at(0), index=False)
    files["features_t0"].astype({"days_since_last": float}).to_parquet(paths.features_at(0), index=False)
    with pytest.raises(DataError, match=r"data/features/features_t0.parquet: does not match the .* contract: .*days_since_last"):
        segment.run(params, paths)


def test_holdout_is_skipped_without_t1_files_or_rows(project):
    paths, params, files = project
    assert len(segment.holdout_inputs(params, paths)) == N
    files["clv_predictions_t1"].iloc[0:0].to_parquet(paths.clv_predictions_at(1), index=False)
    assert segment.holdout_inputs(params, paths) is None
    paths.labels_at(1).unlink()
    assert segment.holdout_inputs(params, paths) is None


BASE = {"data": {"columns": {"customer_id": "customer_id", "timestamp": "date", "amount": "dollar_value"}}}


@pytest.mark.parametrize(
    "section,message",
    [
        ({"lifecycle": {"drowsy": 3.0, "half_asleep": 2.5}}, "drowsy < half_asleep < dormant"),
        ({"abc": {"a": 0.9, "b": 0.9}}, "abc.a must be below abc.b"),
        ({"tier": {"top_share": 0.6, "lead_share": 0.5}}, "must not exceed 1"),
        ({"cut": {"method": "quantile", "current_value": 5}}, "between 0 and 1"),
        ({"relationship": {"many_share": 0.1, "few_share": 0.2}}, "few_share"),
        ({"value_basis": "revenue"}, "segment.value_basis"),
    ],
)
def test_inconsistent_segment_params_are_config_errors(section, message):
    from pipelines.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        parse_params({**BASE, "segment": section})


def test_rules_follow_the_params():
    raw = {
        **BASE,
        "clv": {"margin": 0.25},
        "segment": {
            "growth_potential": "clv",
            "cut": {"method": "fixed", "current_value": 10, "growth_potential": 20},
            "pyramid": {"vip": 0.1, "major": 0.1, "ordinary": 0.3, "small": 0.5},
            "tier": {"top_share": 0.3, "growing_ratio": 0.8},
            "lifecycle": {"one_time_buyer_interval_days": 45},
        },
    }
    rules = domain.segment_rules(parse_params(raw))
    assert rules.margin == 0.25 and rules.growth_potential == "clv"
    assert rules.cut == seg.CutRule("fixed", 10.0, 20.0)
    assert rules.pyramid == (("vip", 0.1), ("major", 0.1), ("ordinary", 0.3), ("small", 0.5))
    assert rules.tier == seg.TierRule(top_share=0.3, lead_share=0.2, lead_max_value=0.0, growing_ratio=0.8)
    assert rules.lifecycle.one_time_buyer_interval_days == 45 and rules.abc == (0.8, 0.95)


def _value_outputs(paths: Catalog, use: bool) -> pd.Series:
    """metrics/value.json saying whether the value model won, and its t0 predictions (returned)."""
    predicted = pd.Series(np.linspace(0.0, 50.0, N)[::-1], index=_ids())
    frame = pd.DataFrame({"customer_id": _ids(), "cutoff": AS_OF, "predicted_value": predicted.to_numpy(), "source": "value_model"})
    paths.path("value_predictions_t0").parent.mkdir(parents=True, exist_ok=True)
    frame.astype({"cutoff": "datetime64[us]"}).to_parquet(paths.path("value_predictions_t0"), index=False)
    comparison = {"value_model": {"spearman": 0.5}, "clv": {"spearman": 0.4}}
    paths.metrics_file("value").parent.mkdir(parents=True, exist_ok=True)
    paths.metrics_file("value").write_text(json.dumps({"use": use, "reason": "measured", "comparison": comparison,
                                                       "evaluation": {"mode": "out_of_time"}}))  # fmt: skip
    return predicted


@pytest.mark.parametrize("use", [True, False], ids=["value-model-won", "value-model-lost"])
def test_auto_growth_potential_is_the_value_model_only_when_it_won(project, use):
    paths, params, files = project
    segment.run(params, paths)
    combined = pd.read_parquet(paths.SEGMENTS)
    predicted = _value_outputs(paths, use)
    segment.run(params, paths)
    out = pd.read_parquet(paths.SEGMENTS)
    source = json.loads(paths.metrics_file("segment").read_text())["growth_potential_source"]
    assert source["configured"] == "auto" and source["used"] == ("value" if use else "combined")
    assert source["value_holdout"]["comparison"]["clv"]["spearman"] == 0.4
    if use:
        assert out["growth_potential"].tolist() == predicted.tolist()
        assert out["growth_potential_clv"].tolist() == files["clv_predictions_t0"]["clv"].tolist()
    else:
        assert out.equals(combined)
