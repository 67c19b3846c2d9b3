"""Every place a FROC is printed names the three scores and states the paper caveat."""

from __future__ import annotations

from pfascannet import results_page
from pfascannet.evaluation import froc, metric_reports


def test_table1_has_the_three_named_froc_scores():
    evaluation = {"auc": {"auc": 0.5}, "pn_stage": None,
                  "froc": {"froc_interpolated": 29 / 36, "froc_nearest_point": 5 / 6, "froc_organisers": 13 / 18}}
    row = results_page.results_row("PFA-ScanNet", evaluation, None)
    md = results_page.table1_markdown([row, {"method": "patch-wise", "s_per_roi": 60.0, "min_per_wsi": 400.0}])
    lines = md.splitlines()
    header = [c.strip() for c in lines[2].strip("|").split("|")]
    assert header[2:4] == ["AUC (map max)", "AUC (classifier)"]  # both named slide scores (issue 21)
    assert header[4:7] == ["FROC (interpolated)", "FROC (nearest point)", "FROC (organisers' grading)"]
    cells = [c.strip() for c in lines[4].strip("|").split("|")]
    assert cells[2:4] == ["50.0%", "-"]  # no slide classifier in this evaluation
    assert cells[4:7] == ["80.6%", "83.3%", "72.2%"] and cells[7] == "-"
    assert [c.strip() for c in lines[5].strip("|").split("|")][4:7] == ["-", "-", "-"]
    for key in froc.SCORE_KEYS:
        assert froc.SCORE_NAMES[key] in md
    assert froc.PAPER_COMPARABILITY in md
    # The demo page renders the same notes as HTML.
    html = results_page._md_table_html(md)
    assert "FROC (organisers&#x27; grading)" in html
    assert "do not say which rule" in html


def test_froc_markdown_names_scores_exclusions_and_missing_organisers():
    rep = {"froc_interpolated": 0.6, "froc_nearest_point": 0.7, "froc_organisers": None,
           "fp_rates": list(froc.FP_RATES), "sensitivity_at_rates_interpolated": [0.5] * 6,
           "sensitivity_at_rates_nearest_point": [0.5] * 6, "sensitivity_at_rates_organisers": None,
           "n_slides": 1, "n_normal_slides": 0, "n_lesions": 1, "n_false_positives": 2,
           "n_false_positives_normal_slides": 0, "n_ignored_hits": 0, "class_threshold": 0.5,
           "sensitivity_by_class": {}, "excluded_slides": ["Test_049"], "exclusion_asked": ["Test_049", "Test_114"],
           "slides_size_unknown": []}
    md = metric_reports.froc_markdown(rep)
    assert "**froc_organisers** = n/a (no normal slide" in md
    assert "Excluded from the FROC as the Camelyon16 organisers did: Test_049 (asked: Test_049, Test_114)" in md
    assert froc.PAPER_COMPARABILITY in md
    assert "| sensitivity, nearest point |" in md and "| sensitivity, organisers' grading |" not in md
