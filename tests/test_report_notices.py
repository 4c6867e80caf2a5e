"""Notices at the top of the report and in the run summary: rows rejected by ingest, and which
churn probability was exported (churn_source)."""

from __future__ import annotations

import shutil

from pipelines import files, report, summary
from tests.test_export import assemble, tiny_inputs
from tests.test_export_fixture import exported_project, mlflow_store, project_env  # noqa: F401
from tests.test_report import parse

INGEST = {"rows_in": 1250, "rows_accepted": 1240, "rows_rejected": 10,
          "rejected_by_reason": {"bad_timestamp": 6, "bad_amount": 4, "missing_customer_id": 0}}  # fmt: skip
BASELINE = {
    "churn_source": "baseline:p_no_purchase",
    "churn_source_reason": "classifier ROC-AUC 0.5000 trails the best CLV baseline p_no_purchase (0.9444) by more than "
    "churn.auc_tolerance=0.005",
}
CLASSIFIER = {"churn_source": "classifier", "churn_source_reason": "classifier ROC-AUC 0.8391 is not below ..."}


def test_rejected_share_comes_from_the_metrics_or_is_computed():
    assert report.rejected_share({**INGEST, "rejected_share": 0.25}) == 0.25  # as ingest wrote it
    assert report.rejected_share(INGEST) == 10 / 1250
    assert report.rejected_share({"rows_accepted": 30, "rows_rejected": 10}) == 0.25  # rows_in = accepted + rejected
    assert report.rejected_share({"rows_accepted": 0, "rows_rejected": 0, "rows_in": 0}) is None
    assert report.rejected_share({}) is None


def test_rejected_rows_give_a_warning_with_counts_share_and_top_reasons():
    notice = report.rejected_share_notice(INGEST)
    assert notice.level == "warning" and notice.key == "rejected-share"
    assert notice.text == (
        "ingest rejected 10 of 1,250 input rows (0.8%; top reasons: bad_timestamp 6, bad_amount 4); "
        "they are left out of every score and kept in data/quarantine/rejected.parquet"
    )
    one_in_many = report.rejected_share_notice({"rows_in": 2427, "rows_accepted": 2426, "rows_rejected": 1})
    assert "1 of 2,427 input rows (0.0412%)" in one_in_many.text
    clean = {"rows_in": 5, "rows_accepted": 5, "rows_rejected": 0, "rejected_share": 0.0}
    assert report.rejected_share_notice(clean) is None and report.rejected_share_notice(None) is None


def test_churn_source_is_a_warning_for_a_baseline_and_a_note_for_the_classifier():
    warning = report.churn_source_notice(BASELINE)
    assert warning.level == "warning"
    assert warning.text.startswith("churn_probability from baseline:p_no_purchase (calibrated on the training labels), "
                                   "not from the classifier: classifier ROC-AUC 0.5000 trails")  # fmt: skip
    note = report.churn_source_notice(CLASSIFIER)
    assert note.level == "note" and note.text == "churn_probability from the classifier: classifier ROC-AUC 0.8391 is not below ..."
    assert report.churn_source_notice({"evaluation": "out_of_time"}) is None  # metrics from before the guard


def test_the_model_page_shows_the_notices_first():
    sources = report.ReportSources(metrics={"ingest": INGEST, "churn": BASELINE})
    html = report.render_report(assemble(tiny_inputs()), sources).models_html
    assert html.index('id="notice-rejected-share"') < html.index('id="notice-churn-source"') < html.index('<section id="overview">')
    assert '<p class="notice warning" id="notice-churn-source"><strong>Warning:</strong> churn_probability from baseline' in html
    parsed = parse(html)
    assert parsed.sections[0] == "overview"
    clean = report.render_report(assemble(tiny_inputs()), report.ReportSources(metrics={"churn": CLASSIFIER})).models_html
    assert 'id="notice-rejected-share"' not in clean
    assert '<p class="notice note" id="notice-churn-source"><strong>Note:</strong> churn_probability from the classifier' in clean


def test_the_run_summary_ends_with_the_notices(exported_project, tmp_path, capsys):  # noqa: F811
    root = tmp_path / "project"
    shutil.copytree(exported_project, root)
    with project_env(root) as paths:
        files.write_json({**files.read_json(paths.metrics_file("churn")), **BASELINE}, paths.metrics_file("churn"))
        assert summary.main([str(paths.params_file)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2] == ("  WARNING: ingest rejected 10 of 1,250 input rows (0.8%; top reasons: bad_timestamp 6, bad_amount 4); "
                         "they are left out of every score and kept in data/quarantine/rejected.parquet")  # fmt: skip
    assert lines[-1] == "  WARNING: " + report.churn_source_notice(BASELINE).text
    assert lines[-3].startswith("  total CLV ")
    with project_env(root) as paths:
        paths.metrics_file("ingest").unlink()
        files.write_json({**files.read_json(paths.metrics_file("churn")), **CLASSIFIER}, paths.metrics_file("churn"))
        summary.main([str(paths.params_file)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "  churn_probability from the classifier: classifier ROC-AUC 0.8391 is not below ..."
    assert not any("WARNING" in line for line in lines)


def test_a_spend_fallback_is_a_warning_and_a_fitted_spend_model_says_nothing():
    from pipelines.report_common import run_notices

    fitted = {"clv": {"gamma_gamma": {"source": "gamma_gamma", "p": 5.0, "q": 4.0, "v": 21.0}}}
    assert run_notices(fitted) == []
    fallback = {"clv": {"gamma_gamma": {"source": "fallback:population_mean", "population_mean_spend": 36.0886,
                                        "fit_failure": "Gamma-Gamma fit failed on 40 repeat customers"}}}
    [notice] = run_notices(fallback)
    assert notice.level == "warning" and notice.key == "spend-source"
    assert notice.text == ("expected spend per purchase from fallback:population_mean: the population mean spend "
                           "36.09 for every customer, because Gamma-Gamma could not be fitted: Gamma-Gamma fit failed "
                           "on 40 repeat customers")
    credibility = {"clv": {"gamma_gamma": {**fallback["clv"]["gamma_gamma"], "source": "fallback:credibility",
                                           "credibility_k": 2.5}}}
    [notice] = run_notices(credibility)
    assert notice.text == ("expected spend per purchase from fallback:credibility: each customer's mean spend weighted "
                           "x / (x + 2.5) against the population mean spend 36.09, because Gamma-Gamma could not be "
                           "fitted: Gamma-Gamma fit failed on 40 repeat customers")
    # k = 0 (a heavy-buyer base: purchases vary little next to customers): own means, said in words
    own = {"clv": {"gamma_gamma": {**credibility["clv"]["gamma_gamma"], "credibility_k": 0.0}}}
    [notice] = run_notices(own)
    assert "each repeat customer's own mean spend (credibility k = 0" in notice.text and "x + 0)" not in notice.text
