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

So 4 slides (3 normal), 3 lesions with TP probabilities {0.90, 0.70, 0.50}, FPs {0.40,
0.20, 0.80, 0.60, 0.70, 0.70}.  As in the organisers' code the ITC region keeps a TP
probability of 0, so 0 is the lowest distinct probability and is dropped: 0.2 is a
threshold.  The lesion values are float32: f32(0.9) = 0.89999998 and f32(0.7) = 0.69999999
lie just below 0.9 and 0.7 (f32(0.5) = 0.5 exactly), so f32(0.7) and the FPs' 0.7 are two
thresholds.  Counts >= t (FPs / 4 slides, TPs / 3 lesions, lesions compared in float32):

  t=0.2:     6 FP -> 1.50, 3 TP -> 1        t=f32(.7): 3 FP -> 0.75, 2 TP -> 2/3
  t=0.4:     5 FP -> 1.25, 3 TP -> 1        t=0.7:     3 FP -> 0.75, 2 TP -> 2/3
  t=0.5:     4 FP -> 1.00, 3 TP -> 1        t=0.8:     1 FP -> 0.25, 1 TP -> 1/3
  t=0.6:     4 FP -> 1.00, 2 TP -> 2/3      t=f32(.9): 0 FP -> 0,    1 TP -> 1/3
  closing point (0, 0).

(At t = 0.7 the lesion f32(0.7) still counts: numpy rounds the threshold to float32 too.
Here the float32 point only repeats its neighbour; test_float32_tie is where it matters.)

Interpolated (np.interp on the reversed curve): 0.25 -> 1/3; 0.5 -> mid-diagonal from
(.25, 1/3) to (.75, 2/3) -> 1/2; 1 -> 1 (np.interp takes the last of the equal x); 2, 4, 8
-> 1 (right end).  Mean = (1/3 + 1/2 + 1 + 3)/6 = 29/36.
Nearest point (built order, smallest |fp - r|, first wins a tie): 0.25 -> (.25, 1/3);
0.5 -> |.75 - .5| = |.25 - .5| = .25, a tie: (.75, 2/3) comes first; 1 -> first point at
1.0, (1.0, 1); 2, 4, 8 -> (1.5, 1).  Mean = (1/3 + 2/3 + 1 + 3)/6 = 5/6.  (The old
"first point at or above the rate" rule gave 0.5 -> 2/3 and 1 -> 2/3, i.e. 7/9: wrong.)
Organisers' grading (FPs of the 3 normal slides only {.8, .6, .7, .7}, per normal slide):
t=.2, .4, .5: 4/3, 1; t=.6: 4/3, 2/3; t=f32(.7), .7: 1, 2/3; t=.8: 1/3, 1/3; t=f32(.9):
0, 1/3; (0, 0).  0.25 -> (1/3, 1/3) (|1/3 - .25| < .25); 0.5 -> (1/3, 1/3); 1 -> (1, 2/3);
2, 4, 8 -> (4/3, 1).  Mean = (1/3 + 1/3 + 2/3 + 3)/6 = 13/18.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from pfascannet import camelyon
from pfascannet.evaluation import froc, submission
from tests.froc_support import NORMAL, T1_DETECTIONS
from tests.froc_support import cell_xy as _xy
from tests.froc_support import golden_mask as _mask


def _results():
    labels = froc.evaluation_mask(_mask())
    itc = froc.itc_labels(labels)
    classes = {int(labels[10, 30]): "macro", int(labels[35, 15]): "micro", int(labels[25, 72]): "micro"}
    out = [froc.score_slide("T1", T1_DETECTIONS, labels, itc, classes)]
    out += [froc.score_slide(n, d, None) for n, d in NORMAL.items()]
    return out, labels, itc


def test_thresholds_are_the_organisers_numbers():
    assert camelyon.froc_growth_limit_px() == pytest.approx(75 / (0.243 * 32 * 2))
    assert camelyon.froc_growth_limit_px() == pytest.approx(4.8225, abs=1e-4)
    assert camelyon.froc_itc_limit_px() == pytest.approx(35.365, abs=1e-3)


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
    assert t1.tp_probs.dtype == np.float32     # as the organisers' TP_probs
    assert sorted(t1.tp_probs.tolist()) == pytest.approx([0.5, 0.7, 0.9], abs=1e-7)
    # 0.55 (duplicate on A), 0.85 (growth of A), 0.65 (C = BC), 0.95 (ITC).
    assert t1.n_ignored == 4 and t1.n_itc == 1
    assert sorted(results[1].fp_probs.tolist()) == [0.6, 0.8]
    assert all(r.n_lesions == 0 for r in results[1:])


def test_curve_and_three_scores_by_hand():
    results, _, _ = _results()
    fps, sens, thr = froc.froc_curve(results)
    np.testing.assert_array_equal(thr[:-1], [0.2, 0.4, 0.5, 0.6, float(np.float32(0.7)), 0.7, 0.8,
                                             float(np.float32(0.9))])
    np.testing.assert_allclose(fps, [1.5, 1.25, 1.0, 1.0, 0.75, 0.75, 0.25, 0.0, 0.0])
    np.testing.assert_allclose(sens, [1, 1, 1, 2 / 3, 2 / 3, 2 / 3, 1 / 3, 1 / 3, 0])
    interp, interp_at = froc.froc_interpolated(fps, sens)
    nearest, nearest_at = froc.froc_nearest_point(fps, sens)
    np.testing.assert_allclose(interp_at, [1 / 3, 1 / 2, 1, 1, 1, 1])
    np.testing.assert_allclose(nearest_at, [1 / 3, 2 / 3, 1, 1, 1, 1])
    assert interp == pytest.approx(29 / 36)
    assert nearest == pytest.approx(5 / 6)
    scores = froc.froc_scores(results)
    np.testing.assert_allclose(scores["froc_organisers"][1], [1 / 3, 1 / 3, 2 / 3, 1, 1, 1])
    assert scores["froc_organisers"][0] == pytest.approx(13 / 18)
    rep = froc.evaluate(results, n_bootstrap=0)
    assert [rep[k] for k in froc.SCORE_KEYS] == pytest.approx([29 / 36, 5 / 6, 13 / 18])


def _slide(name, fps, lesions=(), n_itc=0, tumour=True):
    """A SlideResult from its FP list and its lesions' highest-hit probabilities."""
    return froc.SlideResult(name, np.asarray(fps, float), np.asarray(lesions, np.float32),
                            list(range(1, len(lesions) + 1)), ["micro"] * len(lesions), n_itc=n_itc,
                            tumour=tumour)


def test_design_worked_check():
    """shared/DESIGN.md section 3, to the sixth decimal.

    2 tumour + 3 normal slides; lesions .95, .80, .60, .45 and 0 (missed), 2 ITC (0);
    FPs on tumour slides .30, .35, .20, .75; on normal slides .85, .50, .10, .65.
    Distinct values {0, .1, .2, .3, .35, .45, .5, .6, .65, .75, .8, .85, .95} (no float32
    collision: no FP equals a lesion value); 0 dropped.  All slides (8 FPs / 5, TPs / 5):
      .1: 8 -> 1.6, 4 -> .8   .2: 1.4, .8   .3: 1.2, .8   .35: 1.0, .8   .45: .8, .8
      .5: .8, .6   .6: .6, .6   .65: .6, .4   .75: .4, .4   .8: .2, .4   .85: .2, .2
      .95: 0, .2   then (0, 0).
    Interpolated: .25 -> between (.2, .4) and (.4, .4): .4; .5 -> between (.4, .4) and
      (.6, .4): .4; 1 -> .8; 2, 4, 8 -> .8.  (.4 + .4 + 4 * .8)/6 = 4.0/6 = 0.666667.
    Nearest: .25 -> fp .2, first such point (.2, .4): .4; .5 -> |.6 - .5| = |.4 - .5| (equal
      in float64 too), first is (.6, .6): .6; 1 -> (1.0, .8); 2, 4, 8 -> (1.6, .8).
      (.4 + .6 + 4 * .8)/6 = 4.2/6 = 0.700000.
    Organisers (normal FPs .85, .5, .1, .65 over 3 slides): .1: 4/3, .8; .2 .. .45: 1, .8;
      .5: 1, .6; .6, .65: 2/3, (.6, .4); .75, .8: 1/3, .4; .85: 1/3, .2; .95: 0, .2; (0, 0).
      .25 -> 1/3 (|1/3 - .25| < .25), first is t=.75: .4; .5 -> 2/3 - .5 < .5 - 1/3 in
      float64 (0.16666666666666663 < 0.16666666666666669): t=.6: .6; 1 -> t=.2: .8;
      2, 4, 8 -> 4/3: .8.  (.4 + .6 + 4 * .8)/6 = 0.700000.
    Interpolated on the normal-FP curve: .25 -> between (0, .2) and (1/3, .2): .2; .5 ->
      between (1/3, .4) and (2/3, .4): .4; 1 -> last point at 1: .8; 2, 4, 8 -> .8.
      (.2 + .4 + 4 * .8)/6 = 3.8/6 = 0.633333.
    """
    results = [_slide("T1", [.30, .35], [.95, .80, .60], n_itc=1),
               _slide("T2", [.20, .75], [.45, 0.0], n_itc=1),
               _slide("N1", [.85, .50], tumour=False), _slide("N2", [.10], tumour=False),
               _slide("N3", [.65], tumour=False)]
    fps, sens, _ = froc.froc_curve(results)
    np.testing.assert_allclose(fps, [1.6, 1.4, 1.2, 1.0, .8, .8, .6, .6, .4, .2, .2, 0, 0])
    np.testing.assert_allclose(sens, [.8, .8, .8, .8, .8, .6, .6, .4, .4, .4, .2, .2, 0])
    scores = froc.froc_scores(results)
    assert round(scores["froc_interpolated"][0], 6) == 0.666667
    assert round(scores["froc_nearest_point"][0], 6) == 0.700000
    assert round(scores["froc_organisers"][0], 6) == 0.700000
    nfps, nsens, _ = froc.froc_curve(results, fps_of="normal")
    assert round(froc.froc_interpolated(nfps, nsens)[0], 6) == 0.633333


def test_issue_reproduction_disk():
    """Issue 11's smallest case: one tumour slide, level-5 mask 64 x 64 with a disk of
    radius 15 px at (32, 32) (grown ~40 px across > 35.4: a lesion, not ITC).
    Detections: 0.5 at (1040, 1040) -> mask (32, 32): the lesion; 0.8 at (80, 80) -> (2, 2)
    and 0.2 at (80, 1936) -> (60, 2): background, FPs.  1 slide, 1 lesion.
    Distinct {.2, .5, .8}, .2 dropped: t=.5: 1 FP, 1 TP -> (1, 1); t=.8: (1, 0); (0, 0).
    Interpolated: .25, .5 -> on (0, 0)-(1, 0): 0; 1 -> last at 1: 1; 2, 4, 8 -> 1: 4/6.
    Nearest: .25 -> (0, 0): 0; .5 -> |1 - .5| = |0 - .5|, first (1, 1): 1; 1, 2, 4, 8 ->
    (1, 1): 1.  5/6 (the old rule printed 0.5).  No normal slide: no organisers' grading.
    """
    rr, cc = np.mgrid[:64, :64]
    mask = np.where((rr - 32) ** 2 + (cc - 32) ** 2 <= 15 ** 2, 255, 0).astype(np.uint8)
    labels = froc.evaluation_mask(mask)
    itc = froc.itc_labels(labels)
    assert labels.max() == 1 and not itc
    det = np.array([[0.5, 1040, 1040], [0.8, 80, 80], [0.2, 80, 1936]])
    results = [froc.score_slide("disk", det, labels, itc, dimensions_xy=(2048, 2048))]
    scores = froc.froc_scores(results)
    assert round(scores["froc_interpolated"][0], 6) == 0.666667
    assert round(scores["froc_nearest_point"][0], 6) == 0.833333
    assert scores["froc_organisers"] is None
    rep = froc.evaluate(results, n_bootstrap=10)
    assert rep["froc_organisers"] is None and rep["froc_organisers_ci"] is None


def test_float32_tie():
    """A lesion and a FP at v = 0.3, where f32(0.3) = 0.30000001 > 0.3.

    Tumour slide T: lesion L1 hit at 0.3, lesion L2 missed (0), a FP at 0.3; normal slide N:
    a FP at 0.6.  2 slides, 2 lesions.  Distinct {0, 0.3, f32(0.3), 0.6}, 0 dropped:
      t=0.3:      FPs >= .3: 2 -> 1.0;   lesions >= f32(.3): 1 -> .5
      t=f32(0.3): FP 0.3 < t: 1 -> 0.5;  lesion f32(.3) >= t: 1 -> .5   <- the quirk's point
      t=0.6:      1 -> 0.5, 0 -> 0;  then (0, 0).
    Interpolated: .25 -> on (0, 0)-(.5, 0): 0; .5 -> last at .5: .5; 1, 2, 4, 8 -> .5.
      2.5/6 = 0.416667.  Nearest: .25 -> |.5 - .25| = |0 - .25|, first (.5, .5): .5; every
      other rate .5: 3/6 = 0.5.  Organisers (N's FP only, 1 normal slide): (1, .5) (1, .5)
      (1, 0) (0, 0); .25 -> (0, 0): 0; .5 -> tie, first (1, .5): .5; 1 .. 8 -> .5: 2.5/6.
    With float64 lesions (the "fix") 0.3 would be one threshold: (1, .5) (.5, 0) (0, 0),
      interpolated 2/6 and nearest 2/6: the quirk moves both scores, so it is kept.
    """
    assert float(np.float32(0.3)) > 0.3
    results = [_slide("T", [0.3], [0.3, 0.0]), _slide("N", [0.6], tumour=False)]
    fps, sens, thr = froc.froc_curve(results)
    np.testing.assert_array_equal(thr[:-1], [0.3, float(np.float32(0.3)), 0.6])
    np.testing.assert_allclose(fps, [1.0, 0.5, 0.5, 0.0])
    np.testing.assert_allclose(sens, [0.5, 0.5, 0.0, 0.0])
    scores = froc.froc_scores(results)
    assert round(scores["froc_interpolated"][0], 6) == 0.416667
    assert round(scores["froc_nearest_point"][0], 6) == 0.5
    assert round(scores["froc_organisers"][0], 6) == 0.416667
    # Without the quirk the numbers would be 1/3: the float32 point is what moves them.
    # A value whose float32 lies below it (f32(0.7) = 0.69999999) only repeats a point:
    # t=.6: (1, .5); t=f32(.7): FP .7 >= t, (.5, .5); t=.7: the lesion still counts (the
    # threshold is rounded to float32 for the lesions), (.5, .5) again; (0, 0).
    down = [_slide("T", [0.7], [0.7, 0.0]), _slide("N", [0.6], tumour=False)]
    fps, sens, _ = froc.froc_curve(down)
    np.testing.assert_allclose(fps, [1.0, 0.5, 0.5, 0.0])
    np.testing.assert_allclose(sens, [0.5, 0.5, 0.5, 0.0])


def test_nearest_point_first_wins_ties_and_takes_points_below():
    """fps (built order) [2, 1, 1, .5, 0] with sens [1, .75, .5, .25, 0]: rate 1 -> the first
    point at 1 (.75), not the second; rate .25 -> |.5 - .25| = |0 - .25|, first (.5, .25);
    rate 8 -> (2, 1); rate .5 -> .25; rate 2 -> 1; rate 4 -> 1."""
    fps = np.array([2.0, 1.0, 1.0, 0.5, 0.0])
    sens = np.array([1.0, 0.75, 0.5, 0.25, 0.0])
    score, at = froc.froc_nearest_point(fps, sens)
    assert at == [0.25, 0.25, 0.75, 1.0, 1.0, 1.0]
    assert score == pytest.approx(4.25 / 6)


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
    assert set(rep["score_names"]) == set(froc.SCORE_KEYS) == {"froc_interpolated", "froc_nearest_point",
                                                               "froc_organisers"}
    assert "do not say which rule" in rep["paper_comparability"] and "89.1" in rep["paper_comparability"]
    assert rep["froc_organisers_ci"] is not None


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


def test_detection_outside_the_slide_is_an_error_on_normal_slides_too():
    # 3200 x 2048 slide: X = 3200 is one past the last column; negative never fits.
    ok = froc.score_slide("N", np.array([[0.5, 3199, 2047]]), None, dimensions_xy=(3200, 2048))
    assert ok.fp_probs.tolist() == [0.5]
    for x, y in ((3200, 10), (10, 2048), (-1, 10), (10, -0.5)):
        with pytest.raises(froc.FrocError, match=r"N\.csv: detection .* outside the 3200x2048 slide"):
            froc.score_slide("N", np.array([[0.5, x, y]]), None, dimensions_xy=(3200, 2048), source="N.csv")
    labels = froc.evaluation_mask(_mask())
    with pytest.raises(froc.FrocError, match="outside the 3000x2048 slide"):
        froc.score_slide("T1", np.array([[0.5, 3100, 10]]), labels, dimensions_xy=(3000, 2048))


def test_read_detections_csv(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text("0.9,100,200\n0.5,3,4\n\n")
    np.testing.assert_array_equal(submission.read_detections_csv(p), [[0.9, 100, 200], [0.5, 3, 4]])
    p.write_text("confidence,X,Y\n0.9,100,200\n")          # a header: first line, names only
    np.testing.assert_array_equal(submission.read_detections_csv(p), [[0.9, 100, 200]])
    p.write_text("")
    assert submission.read_detections_csv(p).shape == (0, 3)


@pytest.mark.parametrize("content, line, what", [
    (b"0.9,100\n", 1, "three finite numbers"),                     # two fields
    (b"0.9,100,200,7\n", 1, "three finite numbers"),               # four fields
    (b"0.9,100,200\nconfidence,X,Y\n", 2, "three finite numbers"),  # a header, but not first
    (b"0.9,nan,200\n", 1, "three finite numbers"),
    (b"inf,1,2\n", 1, "three finite numbers"),
    (b"nan,x,y\n", 1, "three finite numbers"),                     # 'nan' is a number, not a name
    (b"conf,1,2\n0.5,1,2\n", 1, "three finite numbers"),          # numbers in a "header"
    (b"\x01\x02\x03,ab,cd\n0.5,1,2\n", 1, "three finite numbers"),  # garbage is no header
    (b"0.5,1,2\n\x89PNG\r\n\x1a\n\xff\xfe\n", 2, "not UTF-8"),      # binary
    (b"0.5,1,2\n0.6,\x00,1\n", 2, "NUL"),
    (b"0.5,-3,2\n", 1, "outside the slide"),
])
def test_read_detections_csv_cannot_be_misread(tmp_path, content, line, what):
    p = tmp_path / "slide.csv"
    p.write_bytes(content)
    with pytest.raises(froc.FrocError, match=f"slide\\.csv:{line}: .*{what}"):
        submission.read_detections_csv(p)


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
        submission.score_submission(str(tmp_path), refs)
    results = submission.score_submission(str(tmp_path), refs, allow_missing=True)
    assert [r.fp_probs.tolist() for r in results] == [[0.7], []]
    refs["test_003"] = SlideRef("test_003", True)
    (tmp_path / "test_003.csv").write_text("")
    with pytest.raises(froc.FrocError, match="tumour slide test_003: no mask"):
        submission.score_submission(str(tmp_path), refs, masks_dir=str(tmp_path), allow_missing=True)


def test_extra_csv_is_an_error_unless_ignored(tmp_path):
    from pfascannet.evaluation.reference import SlideRef

    (tmp_path / "test_001.csv").write_text("0.7,10,10\n")
    (tmp_path / "test_999.csv").write_text("0.9,10,10\n")
    (tmp_path / "notes.txt").write_text("not a CSV: not a submission file\n")
    refs = {"test_001": SlideRef("test_001", False)}
    with pytest.raises(froc.FrocError, match=r"test_999\.csv: lesion CSV of slide 'test_999', which is not in "
                                             r"the reference ref\.csv"):
        submission.score_submission(str(tmp_path), refs, reference_name="ref.csv")
    results = submission.score_submission(str(tmp_path), refs, ignore_extra=True)
    assert [r.name for r in results] == ["test_001"]
    # A slide of the reference outside the scored split is known, not extra.
    results = submission.score_submission(str(tmp_path), refs, known_slides=["test_001", "TEST_999"])
    assert [r.name for r in results] == ["test_001"]


def test_camelyon16_exclusions():
    refs = {"Test_001": 1, "test_049": 2, "Test_114": 3, "Test_115": 4}
    kept, dropped = submission.split_excluded(refs, froc.CAMELYON16_EXCLUDED)
    assert sorted(kept) == ["Test_001", "Test_115"] and dropped == ["Test_114", "test_049"]
    assert submission.split_excluded(refs, ())[1] == []


def test_unknown_size_is_reported(tmp_path):
    from pfascannet.evaluation.reference import SlideRef

    (tmp_path / "a.csv").write_text("0.7,10,10\n")
    (tmp_path / "b.csv").write_text("0.7,10,10\n")
    refs = {"a": SlideRef("a", False), "b": SlideRef("b", False, dimensions_xy=(100, 100))}
    results = submission.score_submission(str(tmp_path), refs)
    assert [r.size_known for r in results] == [False, True]
    (tmp_path / "b.csv").write_text("0.7,100,10\n")
    with pytest.raises(froc.FrocError, match=r"b\.csv: detection .* outside the 100x100 slide"):
        submission.score_submission(str(tmp_path), refs)


def test_froc_limits_in_um_on_a_20x_slide_with_each_slides_pixel_size(half_cohort, tmp_path):
    """A 330 um micro-metastasis on a 0.486 um/px copy: the organisers' fixed 0.243 um/px makes it a
    165 um ITC (not counted); the slide's own pixel size keeps it a lesion to find."""
    from pfascannet.evaluation import reference as ref_mod  # noqa: PLC0415

    refs = {k: v for k, v in ref_mod.read_reference(str(half_cohort / "slides.csv")).items()
            if k == "patient_001_node_0"}
    lesions = tmp_path / "lesions"
    lesions.mkdir()
    (lesions / "patient_001_node_0.csv").write_text("")
    kw = dict(masks_dir=str(half_cohort / "masks"), images_dir=str(half_cohort / "images"))
    organisers = submission.score_submission(str(lesions), refs, mpp=0.243, **kw)[0]
    own = submission.score_submission(str(lesions), refs, mpp=None, **kw)[0]
    assert organisers.lesion_classes == [] and organisers.n_itc == 2
    assert own.lesion_classes == ["micro"] and own.n_itc == 1 and list(own.tp_probs) == [0.0]
    with pytest.raises(froc.FrocError, match="its own pixel size"):
        submission.score_submission(str(lesions), refs, mpp=None, masks_dir=str(half_cohort / "masks"))
