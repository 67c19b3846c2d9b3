"""Golden Camelyon16 FROC, computed by hand (shared/DESIGN.md section 3).

The level-5 mask (64 rows x 100 cols, tumour 255):

  A    rows  5..14, cols  5..54   (10 x 50 px)    a lesion
  D    rows  5..44, cols 70..74   (40 x  5 px)    a lesion, found late
  B    rows 30..39, cols  5..24                   } 8 px apart: the 4.82 px growth
  C    rows 30..39, cols 33..52                   } on each side merges them into one lesion BC
  ITC  rows 55..57, cols 90..92   (3 x 3 px)      grown ~11 px < 35.4 px: ITC, hits ignored

Growth limit 75/(0.243*32*2) = 4.8225 px: a pixel 4 px from A (row 18) is inside the
grown A, a pixel 5 px away (row 19) is not.  In level-0 px, Y = 607 maps to row 18 and
Y = 608 to row 19: one level-0 pixel decides TP-area versus FP.

Detections (confidence, level-0 X, Y) -> outcome:
  T1 (the mask):
    0.55 on A, then 0.90 on A            A keeps 0.90; the 0.55 hit is ignored
    0.85 on A's growth (row 18)          repeated hit on A: ignored (not a FP)
    0.40 just outside A (row 19)         FP
    0.70 on B, 0.65 on C                 one lesion BC = 0.70; the C hit is ignored
    0.50 on D                            D = 0.50
    0.95 on the ITC                      ignored
    0.20 on background                   FP
  N1 (normal): 0.80, 0.60 -> FP;  N2: 0.70 -> FP;  N3: 0.70 -> FP.

So 4 slides, 3 lesions with TP probabilities {0.90, 0.70, 0.50}, FPs {0.40, 0.20,
0.80, 0.60, 0.70, 0.70}.  As in the organisers' code the ITC region keeps a TP probability
of 0, so the distinct probabilities are {0, 0.2, 0.4, ..., 0.9} and the lowest one dropped
is 0: 0.2 is a threshold.  Counts >= t (FPs / 4 slides, TPs / 3 lesions):

  t=0.2: 6 FP -> 1.50, 3 TP -> 1
  t=0.4: 5 FP -> 1.25, 3 TP -> 1        t=0.7: 3 FP -> 0.75, 2 TP -> 2/3
  t=0.5: 4 FP -> 1.00, 3 TP -> 1        t=0.8: 1 FP -> 0.25, 1 TP -> 1/3
  t=0.6: 4 FP -> 1.00, 2 TP -> 2/3      t=0.9: 0 FP -> 0,    1 TP -> 1/3
  closing point (0, 0).

Reversed (increasing FP): fps [0, 0, .25, .75, 1, 1, 1.25, 1.5], sens [0, 1/3, 1/3, 2/3, 2/3, 1, 1, 1].
The tie at 0.7 (two FPs and a TP) makes a diagonal from (.25, 1/3) to (.75, 2/3), and
rate 1 falls on the vertical jump at FP = 1: exactly where the two scores differ.

Interpolated (np.interp): 0.25 -> 1/3; 0.5 -> mid-diagonal 1/2; 1 -> 1 (np.interp takes
the last of the equal x); 2, 4, 8 -> 1 (right end).  Mean = (1/3 + 1/2 + 1 + 3)/6 = 29/36.
Nearest point (first reversed point with FP >= rate): 0.25 -> 1/3; 0.5 -> point at .75 ->
2/3; 1 -> first point at 1 -> 2/3; 2, 4, 8 -> last point -> 1.  Mean = (1/3 + 2/3 + 2/3 +
3)/6 = 28/36 = 7/9.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from pfascannet.evaluation import froc


def _mask() -> np.ndarray:
    m = np.zeros((64, 100), np.uint8)
    m[5:15, 5:55] = 255      # A
    m[5:45, 70:75] = 255     # D
    m[30:40, 5:25] = 255     # B
    m[30:40, 33:53] = 255    # C
    m[55:58, 90:93] = 255    # ITC
    return m


def _xy(row: int, col: int, dy: int = 16, dx: int = 16) -> tuple[int, int]:
    return col * 32 + dx, row * 32 + dy


def _det(prob: float, row: int, col: int, dy: int = 16) -> list[float]:
    x, y = _xy(row, col, dy=dy)
    return [prob, x, y]


T1_DETECTIONS = np.array([
    _det(0.55, 10, 10),            # A, lower first
    _det(0.90, 10, 30),            # A, highest
    [0.85, 30 * 32, 607],          # A's growth, row 18
    [0.40, 30 * 32, 608],          # just outside the growth, row 19: FP
    _det(0.70, 35, 15),            # B
    _det(0.65, 35, 45),            # C (same lesion as B after the growth)
    _det(0.50, 25, 72),            # D
    _det(0.95, 56, 91),            # ITC
    _det(0.20, 60, 40),            # background: FP
])
NORMAL = {"N1": np.array([[0.8, 100, 100], [0.6, 5000, 900]]),
          "N2": np.array([[0.7, 10, 10]]),
          "N3": np.array([[0.7, 20, 20]])}


def _results():
    labels = froc.evaluation_mask(_mask())
    itc = froc.itc_labels(labels)
    classes = {int(labels[10, 30]): "macro", int(labels[35, 15]): "micro", int(labels[25, 72]): "micro"}
    out = [froc.score_slide("T1", T1_DETECTIONS, labels, itc, classes)]
    out += [froc.score_slide(n, d, None) for n, d in NORMAL.items()]
    return out, labels, itc


def test_thresholds_are_the_organisers_numbers():
    assert froc.growth_threshold_px() == pytest.approx(75 / (0.243 * 32 * 2))
    assert froc.growth_threshold_px() == pytest.approx(4.8225, abs=1e-4)
    assert froc.itc_threshold_px() == pytest.approx(35.365, abs=1e-3)


def test_evaluation_mask_growth_merge_and_itc():
    labels = froc.evaluation_mask(_mask())
    # A, D, BC (merged), ITC: four regions.
    assert labels.max() == 4
    assert labels[35, 15] == labels[35, 45] == labels[35, 29] != 0   # B and C merged
    assert labels[18, 30] == labels[10, 30] != 0                      # 4 px from A: grown
    assert labels[19, 30] == 0                                        # 5 px: not grown
    assert labels[1, 1] == 0                                          # corner: sqrt(32) > 4.82
    itc = froc.itc_labels(labels)
    assert itc == {int(labels[56, 91])}
    # Without the growth B and C stay apart: the growth, not the labelling, merges them.
    from skimage import measure
    assert measure.label(_mask() == 255, connectivity=2).max() == 5


def test_fill_holes():
    m = np.zeros((60, 60), np.uint8)
    m[10:50, 10:50] = 255
    m[13:47, 13:47] = 0            # hole centre is 17 px from tumour: survives the growth
    labels = froc.evaluation_mask(m)
    assert labels.max() == 1 and labels[30, 30] == 1


def test_slide_counting():
    results, labels, _ = _results()
    t1 = results[0]
    assert sorted(t1.fp_probs.tolist()) == [0.2, 0.4]
    assert sorted(t1.tp_probs.tolist()) == [0.5, 0.7, 0.9]
    # 0.55 (duplicate on A), 0.85 (growth of A), 0.65 (C = BC), 0.95 (ITC).
    assert t1.n_ignored == 4 and t1.n_itc == 1
    assert sorted(results[1].fp_probs.tolist()) == [0.6, 0.8]
    assert all(r.n_lesions == 0 for r in results[1:])


def test_curve_and_both_scores_by_hand():
    results, _, _ = _results()
    fps, sens, thr = froc.froc_curve(results)
    np.testing.assert_allclose(thr[:-1], [0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    np.testing.assert_allclose(fps, [1.5, 1.25, 1.0, 1.0, 0.75, 0.25, 0.0, 0.0])
    np.testing.assert_allclose(sens, [1, 1, 1, 2 / 3, 2 / 3, 1 / 3, 1 / 3, 0])
    interp, interp_at = froc.froc_interpolated(fps, sens)
    nearest, nearest_at = froc.froc_nearest_point(fps, sens)
    np.testing.assert_allclose(interp_at, [1 / 3, 1 / 2, 1, 1, 1, 1])
    np.testing.assert_allclose(nearest_at, [1 / 3, 2 / 3, 2 / 3, 1, 1, 1])
    assert interp == pytest.approx(29 / 36)
    assert nearest == pytest.approx(7 / 9)


def test_lowest_probability_is_not_a_threshold():
    """Every lesion found, no ITC: probabilities {0.1, 0.3, 0.5}; 0.1 is dropped, so the
    0.1 FP never counts: curve (t=0.3: 1 FP, 1/1), (t=0.5: 0 FP, 1/1), (0, 0).
    With one ITC region the organisers' 0 joins the set and 0.1 becomes a threshold."""
    r = froc.SlideResult("s", np.array([0.3, 0.1]), np.array([0.5]), [1], ["micro"])
    fps, sens, thr = froc.froc_curve([r])
    np.testing.assert_allclose(thr[:-1], [0.3, 0.5])
    np.testing.assert_allclose(fps, [1, 0, 0])
    np.testing.assert_allclose(sens, [1, 1, 0])
    r.n_itc = 1
    fps, _, thr = froc.froc_curve([r])
    np.testing.assert_allclose(thr[:-1], [0.1, 0.3, 0.5])
    np.testing.assert_allclose(fps, [2, 1, 0, 0])


def test_wrong_rules_give_other_numbers():
    """Each rule matters: breaking it changes the score."""
    results, labels, itc = _results()
    good = froc.evaluate(results, n_bootstrap=0)["froc_interpolated"]
    # Counting ITC hits as lesions / treating ITC as a lesion.
    no_itc = [froc.score_slide("T1", T1_DETECTIONS, labels, set())] + results[1:]
    assert froc.evaluate(no_itc, n_bootstrap=0)["froc_interpolated"] != pytest.approx(good)
    # Without the growth: C becomes its own lesion and row 18 a FP.
    from skimage import measure
    raw_labels = measure.label(_mask() == 255, connectivity=2)
    no_growth = [froc.score_slide("T1", T1_DETECTIONS, raw_labels, froc.itc_labels(raw_labels))] + results[1:]
    assert froc.evaluate(no_growth, n_bootstrap=0)["froc_interpolated"] != pytest.approx(good)


def test_class_sensitivity_and_bootstrap():
    results, _, _ = _results()
    rep = froc.evaluate(results, n_bootstrap=50, seed=3, class_threshold=0.6)
    assert rep["sensitivity_by_class"]["macro"] == {"n_lesions": 1, "n_detected": 1, "sensitivity": 1.0}
    assert rep["sensitivity_by_class"]["micro"] == {"n_lesions": 2, "n_detected": 1, "sensitivity": 0.5}
    lo, hi = rep["froc_interpolated_ci"]
    assert 0 <= lo <= hi <= 1
    # Only T1 has lesions: replicates that miss it are skipped and counted.
    assert rep["bootstrap"]["skipped_without_lesions"] > 0
    assert rep == froc.evaluate(results, n_bootstrap=50, seed=3, class_threshold=0.6)  # seeded
    assert set(rep["score_names"]) == {"froc_interpolated", "froc_nearest_point"}


def test_classes_from_truth_merged_takes_largest():
    labels = froc.evaluation_mask(_mask())
    truth = [(*_xy(35, 15), "micro"), (*_xy(35, 45), "macro"), (*_xy(10, 30), "micro")]
    cls = froc.classes_from_truth(labels, truth)
    assert cls[int(labels[35, 15])] == "macro"
    assert cls[int(labels[10, 30])] == "micro"


def test_detection_outside_mask_is_an_error():
    labels = froc.evaluation_mask(_mask())
    with pytest.raises(froc.FrocError, match="outside"):
        froc.score_slide("T1", np.array([[0.5, 100 * 32, 10]]), labels)


def test_read_detections_csv(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text("0.9,100,200\n0.5,3,4\n\n")
    np.testing.assert_array_equal(froc.read_detections_csv(p), [[0.9, 100, 200], [0.5, 3, 4]])
    p.write_text("0.9,100\n")
    with pytest.raises(froc.FrocError, match="three"):
        froc.read_detections_csv(p)
    p.write_text("")
    assert froc.read_detections_csv(p).shape == (0, 3)


def test_plot_is_a_png(tmp_path):
    results, _, _ = _results()
    fps, sens, _ = froc.froc_curve(results)
    out = tmp_path / "froc.png"
    froc.plot_froc(out, fps, sens, scores={"froc_interpolated": 29 / 36})
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [f for f in os.listdir(tmp_path)] == ["froc.png"]


def test_submission_folder_matches_names_case_insensitively(tmp_path):
    from pfascannet.evaluation.reference import SlideRef

    (tmp_path / "Test_001.csv").write_text("0.7,10,10\n")
    refs = {"test_001": SlideRef("test_001", False), "test_002": SlideRef("test_002", False)}
    with pytest.raises(froc.FrocError, match="no lesion CSV for slide test_002"):
        froc.score_submission(str(tmp_path), refs)
    results = froc.score_submission(str(tmp_path), refs, allow_missing=True)
    assert [r.fp_probs.tolist() for r in results] == [[0.7], []]
    refs["test_003"] = SlideRef("test_003", True)
    (tmp_path / "test_003.csv").write_text("")
    with pytest.raises(froc.FrocError, match="tumour slide test_003: no mask"):
        froc.score_submission(str(tmp_path), refs, masks_dir=str(tmp_path), allow_missing=True)
