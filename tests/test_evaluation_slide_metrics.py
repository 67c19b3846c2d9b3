"""Slide-level AUC, its bootstrap CI, score files and references."""

from __future__ import annotations

import numpy as np
import pytest

from pfascannet.evaluation import reference, slide_metrics


def test_auc_by_hand_and_ci_sanity():
    # Tumour scores {0.9, 0.8, 0.35}, normal {0.7, 0.3, 0.1}: of 9 pairs, only (0.35 vs 0.7)
    # is misordered, so AUC = 8/9.
    labels = [1, 1, 1, 0, 0, 0]
    scores = [0.9, 0.8, 0.35, 0.7, 0.3, 0.1]
    rep = slide_metrics.auc_with_ci(labels, scores, n_bootstrap=300, seed=1)
    assert rep["auc"] == pytest.approx(8 / 9)
    lo, hi = rep["auc_ci"]
    assert 0.0 <= lo <= rep["auc"] <= hi <= 1.0
    assert hi - lo > 0.05                          # six slides: a wide interval
    assert rep == slide_metrics.auc_with_ci(labels, scores, n_bootstrap=300, seed=1)   # seeded


def test_ci_narrows_with_more_slides():
    rng = np.random.default_rng(0)
    def ci_width(n):
        y = np.repeat([0, 1], n)
        s = y + rng.normal(0, 1.0, 2 * n)
        lo, hi = slide_metrics.auc_with_ci(y, s, n_bootstrap=200, seed=0)["auc_ci"]
        return hi - lo
    assert ci_width(200) < ci_width(10)


def test_perfect_and_degenerate():
    rep = slide_metrics.auc_with_ci([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8], n_bootstrap=50)
    assert rep["auc"] == 1.0 and rep["auc_ci"] == [1.0, 1.0]
    with pytest.raises(slide_metrics.SlideMetricsError, match="tumour and normal"):
        slide_metrics.auc_with_ci([1, 1], [0.2, 0.3])
    with pytest.raises(slide_metrics.SlideMetricsError, match="0 \\(normal\\) or 1"):
        slide_metrics.auc_with_ci([0, 2], [0.2, 0.3])


def test_read_scores_and_match(tmp_path):
    p = tmp_path / "scores.csv"
    p.write_text("name,probability\ntest_001.tif,0.9\ntest_002,0.1\n")
    scores = slide_metrics.read_slide_scores(p)
    assert scores == {"test_001": 0.9, "test_002": 0.1}
    with pytest.raises(slide_metrics.SlideMetricsError, match="no score for 1"):
        slide_metrics.match_scores({"test_001": 1, "test_003": 0}, scores)
    # test_002 has a score but is not in the reference: an error naming the source ...
    with pytest.raises(slide_metrics.SlideMetricsError, match="scores.csv: score for 1 slide.* not in the reference"):
        slide_metrics.match_scores({"test_001": 1, "test_003": 0}, scores, missing_score=0.0, source="scores.csv")
    # ... unless it is a known slide outside the scored split, or extras are ignored explicitly.
    names, y, s = slide_metrics.match_scores({"test_001": 1, "test_003": 0}, scores, missing_score=0.0,
                                             known_slides=["test_001", "test_002", "test_003"])
    assert (names, y, s) == (["test_001", "test_003"], [1, 0], [0.9, 0.0])
    assert slide_metrics.match_scores({"test_001": 1, "test_003": 0}, scores, missing_score=0.0,
                                      ignore_extra=True)[2] == [0.9, 0.0]
    p.write_text("test_001,0.5\ntest_002,abc\n")
    with pytest.raises(slide_metrics.SlideMetricsError, match=":2: probability 'abc'"):
        slide_metrics.read_slide_scores(p)


@pytest.mark.parametrize("content, line", [
    (b"test_001,0.5\nname,probability\n", 2),        # a header only on the first line
    (b"test_001,0.5,0.7\n", 1),                       # three fields
    (b"test_001,nan\n", 1),
    (b"\x01\x02,\x03\n", 1),                          # garbage is no header
    (b"name,probability\n\xff\xfe\x00\x01\n", 2),       # binary
    (b"name,probability\ntest_001,0.5\ntest_001,0.6\n", 3),  # listed twice
])
def test_read_scores_cannot_be_misread(tmp_path, content, line):
    p = tmp_path / "scores.csv"
    p.write_bytes(content)
    with pytest.raises(slide_metrics.SlideMetricsError, match=f"scores\\.csv:{line}: "):
        slide_metrics.read_slide_scores(p)


def test_reference_formats(tmp_path):
    cohort = tmp_path / "slides.csv"
    cohort.write_text("slide,patient,node,split,label,centre,width,height\n"
                      "patient_000_node_0,patient_000,0,train,macro,0,3200,2048\n"
                      "patient_000_node_1,patient_000,1,test,itc,0,3200,2048\n"
                      "patient_000_node_2,patient_000,2,test,negative,1,3200,2048\n")
    refs = reference.read_reference(cohort)
    assert refs["patient_000_node_1"].tumour and refs["patient_000_node_1"].node_label == "itc"
    assert not refs["patient_000_node_2"].tumour
    assert refs["patient_000_node_0"].dimensions_xy == (3200, 2048)
    assert set(reference.select_split(refs, "test")) == {"patient_000_node_1", "patient_000_node_2"}
    with pytest.raises(reference.ReferenceFileError, match="slides.csv: no slide in split 'val'"):
        reference.select_split(refs, "val", source=cohort)
    c16 = tmp_path / "reference.csv"
    c16.write_text("test_001,Tumor,Macro,Primary\ntest_002,Normal\n")
    refs = reference.read_reference(c16)
    assert refs["test_001"].tumour and not refs["test_002"].tumour
    c17 = tmp_path / "stages.csv"
    c17.write_text("patient,stage\npatient_004.zip,pN1mi\npatient_004_node_3.tif,micro\n"
                   "patient_004_node_4.tif,negative\n")
    refs = reference.read_reference(c17)
    assert refs["patient_004_node_3"].tumour and refs["patient_004_node_3"].patient == "patient_004"
    c16.write_text("test_001,Maybe\n")
    with pytest.raises(reference.ReferenceFileError, match=r"reference\.csv:1: unknown node label 'Maybe'"):
        reference.read_reference(c16)
    c16.write_text("test_001,Tumor\ntest_001,Normal\n")
    with pytest.raises(reference.ReferenceFileError, match=r"reference\.csv:2: slide 'test_001' is listed twice"):
        reference.read_reference(c16)
    c16.write_bytes(b"test_001,Tumor\n\x89PNG\xff\n")
    with pytest.raises(reference.ReferenceFileError, match=r"reference\.csv:2: .*not UTF-8"):
        reference.read_reference(c16)
    c16.write_text("test_001\n")
    with pytest.raises(reference.ReferenceFileError, match=r"reference\.csv:1: expected"):
        reference.read_reference(c16)


def test_roc_plot(tmp_path):
    out = tmp_path / "roc.png"
    slide_metrics.plot_roc(out, [0, 1, 0, 1], [0.1, 0.9, 0.6, 0.4])
    assert out.read_bytes()[:4] == b"\x89PNG"
