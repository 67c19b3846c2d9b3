"""The second named slide score (a forest on map features) and the held-out false-positive report (issue 21).

Uses the session cohort (tests/conftest.py) and its truth scan (maps equal to
the truth, lesion CSVs from them), plus hand-made maps and lesion CSVs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from pfascannet import camelyon_files, heldout, results_page
from pfascannet.errors import PfaError
from pfascannet.evaluation import reference, run, slide_classifier
from pfascannet.evaluation.features import slide_features
from pfascannet.evaluation.mimics import MIMIC_MARGIN_UM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _refs(cohort):
    return reference.read_reference(str(cohort / "slides.csv"))


def _blob_map(rng, tumour: bool) -> np.ndarray:
    """A 64x64 map: normal slides hold one sharp bright pixel pair (a mimic), tumour slides a wide blob."""
    prob = rng.uniform(0, 0.1, (64, 64)).astype(np.float32)
    r, c = rng.integers(10, 50, 2)
    if tumour:
        prob[r - 6:r + 6, c - 6:c + 6] = rng.uniform(0.8, 0.88)
    else:
        prob[r, c:c + 2] = rng.uniform(0.9, 0.99)  # brighter than any lesion, but tiny
    return prob


def test_forest_ranks_by_shape_where_the_maximum_fails():
    """Normal slides with a bright speck beat tumour slides on the maximum (AUC 0); the forest learns area."""
    rng = np.random.default_rng(0)
    feats, truth = {}, {}
    for i in range(40):
        tumour = i % 2 == 0
        feats[f"s{i}"] = slide_features(_blob_map(rng, tumour), um_per_px=7.8)
        truth[f"s{i}"] = tumour
    train = {s: t for s, t in truth.items() if int(s[1:]) < 24}
    test = sorted(s for s in truth if int(s[1:]) >= 24)
    forest = slide_classifier.fit(feats, train, seed=0)
    scores = slide_classifier.score(forest, feats, test)
    from sklearn.metrics import roc_auc_score  # noqa: PLC0415

    y = [int(truth[s]) for s in test]
    assert roc_auc_score(y, [feats[s]["max_prob"] for s in test]) == 0.0
    assert roc_auc_score(y, [scores[s] for s in test]) == 1.0
    assert set(slide_classifier.importances(forest)) == set(slide_classifier.SLIDE_FEATURES)


def test_forest_needs_both_classes():
    rng = np.random.default_rng(1)
    feats = {f"s{i}": slide_features(_blob_map(rng, False), 7.8) for i in range(4)}
    assert slide_classifier.fit(feats, {s: False for s in feats}) is None


def test_report_on_a_scan_scores_only_test_slides(cohort, truth_scan, tmp_path):
    refs = _refs(cohort)
    rep = run.slide_classifier_report(str(truth_scan / "maps"), refs, str(tmp_path / "clf"), n_bootstrap=0)
    test = reference.select_split(refs, "test")
    assert sorted(r["slide"] for r in rep["slides"]) == sorted(test)
    assert rep["slide_score"] == "classifier"
    assert rep["classifier"]["n_train_slides"] == 3 and rep["classifier"]["features"] == list(
        slide_classifier.SLIDE_FEATURES)
    # Truth maps: every tumour slide has tumour area, no normal slide has any.
    assert rep["auc"] == 1.0
    md = (tmp_path / "clf" / "slide_classifier.md").read_text()
    assert "slide classifier" in md and "Feature importances" in md
    assert (tmp_path / "clf" / "roc.png").exists()


def test_evaluate_scan_reports_both_named_scores_and_the_table_shows_them(cohort, truth_scan, tmp_path):
    ev = run.evaluate_scan(str(truth_scan), str(cohort), str(tmp_path / "eval"), n_bootstrap=0,
                           warn=lambda m: None)
    assert ev["auc"]["slide_score"] == "map_max"
    assert ev["slide_classifier"]["slide_score"] == "classifier"
    row = results_page.results_row("truth", ev, None)
    assert row["auc_classifier"] == ev["slide_classifier"]["auc"]
    table = results_page.table1_markdown([row])
    assert "| AUC (map max) | AUC (classifier) |" in table
    assert f"| {100 * row['auc']:.1f}% | {100 * row['auc_classifier']:.1f}% |" in table


def _auc_cli(*args):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "eval", "auc.py"), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def test_auc_stage_reports_the_classifier_beside_the_maximum(cohort, truth_scan, tmp_path):
    out = tmp_path / "auc"
    rc, so, se = _auc_cli("--scores", str(truth_scan / "slide_scores.csv"), "--maps_dir", str(truth_scan / "maps"),
                          "--reference", str(cohort / "slides.csv"), "--split", "test", "--out", str(out),
                          "--n_bootstrap", "0")
    assert rc == 0, se
    assert "AUC = " in so and "AUC (slide classifier) = " in so
    first = json.loads((out / "auc.json").read_text())
    second = json.loads((out / "slide_classifier" / "slide_classifier.json").read_text())
    assert first["slide_score"] is None  # a submission's own scores
    assert second["slide_score"] == "classifier" and second["n_slides"] == first["n_slides"] == 3
    rc, so, se = _auc_cli("--scores", str(truth_scan / "slide_scores.csv"), "--maps_dir", str(tmp_path / "nope"),
                          "--reference", str(cohort / "slides.csv"), "--out", str(tmp_path / "a2"))
    assert rc != 0 and "--maps_dir" in se and "Traceback" not in se and len(se.strip().splitlines()) == 1


# --- The held-out report's false positives on normal slides and their share on recorded mimics.


def test_generator_records_every_planned_mimic(cohort):
    from pfascannet.synthetic.cohort import plan_cohort  # noqa: PLC0415
    from tests.conftest import COHORT_KWARGS  # noqa: PLC0415

    mimics = camelyon_files.read_mimics(str(cohort / "mimics.csv"))
    for entry in plan_cohort(**COHORT_KWARGS):
        got = mimics.get(entry.plan.slide_id, [])
        assert [m.kind for m in got] == [k for k, _ in entry.plan.mimics]
        for m, (_, poly) in zip(got, entry.plan.mimics):
            x0, y0, x1, y1 = m.box
            assert x0 <= poly[:, 0].min() and poly[:, 0].max() <= x1 and y0 <= poly[:, 1].min()
            assert x0 <= m.centre_xy[0] <= x1 and y0 <= m.centre_xy[1] <= y1
    assert sum(len(v) for v in mimics.values()) >= 6  # every slide draws at least one


def test_mimics_file_is_read_strictly(tmp_path):
    path = tmp_path / "mimics.csv"
    path.write_text("slide,mimic_id,kind,centre_x,centre_y,major_axis_um,x0,y0,x1\ns,0,germinal_centre,1,1,1,0,0,2\n")
    with pytest.raises(camelyon_files.CamelyonFileError, match="header"):
        camelyon_files.read_mimics(path)
    path.write_text("slide,mimic_id,kind,centre_x,centre_y,major_axis_um,x0,y0,x1,y1\n"
                    "s,0,germinal_centre,nan,1,1,0,0,2,2\n")
    with pytest.raises(camelyon_files.CamelyonFileError, match=":2: centre and box"):
        camelyon_files.read_mimics(path)


def test_false_positives_counted_per_normal_slide_and_on_mimics(cohort, tmp_path):
    refs = reference.select_split(_refs(cohort), "test")
    normal = sorted(s for s, r in refs.items() if not r.tumour)
    tumour = sorted(s for s, r in refs.items() if r.tumour)
    assert normal and tumour
    mimics = camelyon_files.read_mimics(str(cohort / "mimics.csv"))
    sid = next(s for s in normal if mimics.get(s))
    m = mimics[sid][0]
    margin_px = MIMIC_MARGIN_UM / 0.243
    far = next((x, y) for x in range(100, 3800, 100) for y in range(100, 3800, 100)
               if not any(mm.near(x, y, 3 * margin_px) for mm in mimics[sid]))
    lesions = tmp_path / "lesions"
    lesions.mkdir()
    rows = [(0.9, *m.centre_xy), (0.6, m.box[2] + 100, m.box[1]),  # on the mimic, and 24 um outside its box
            (0.7, *far), (0.3, *m.centre_xy)]  # elsewhere; under the threshold
    (lesions / f"{sid}.csv").write_text("".join(f"{p},{x:.0f},{y:.0f}\n" for p, x, y in rows))
    (lesions / f"{tumour[0]}.csv").write_text("0.99,10,10\n")  # a tumour slide's candidate is no false positive
    fp = heldout.false_positives(str(lesions), str(cohort), refs)
    assert fp["normal_slides"] == len(normal) and fp["count"] == 3
    assert fp["per_slide"][sid] == 3 and fp["per_normal_slide"] == pytest.approx(3 / len(normal))
    assert fp["on_mimics"] == 2 and fp["share_on_mimics"] == pytest.approx(2 / 3)
    assert fp["on_mimics_by_kind"] == {m.kind: 2}
    # Without the generator's mimics (real data) the share is unknown, not zero.
    bare = tmp_path / "bare"
    shutil.copytree(cohort, bare, ignore=shutil.ignore_patterns("images", "masks", "mimics.csv"))
    fp = heldout.false_positives(str(lesions), str(bare), refs)
    assert fp["count"] == 3 and fp["on_mimics"] is None and fp["share_on_mimics"] is None


def test_heldout_cohort_size_and_summary():
    c = heldout.cohort_size(13, 10)
    assert c.patients == 13 and len(heldout.plan_test_patients(c)) == 10
    with pytest.raises(PfaError):
        heldout.cohort_size(6, 6)
    line = heldout.summary_line({
        "seed": 5, "test_patients": 10, "auc": 0.99, "auc_classifier": 1.0, "froc_interpolated": 1.0,
        "froc_nearest_point": 0.98, "froc_organisers": None,
        "false_positives": {"per_normal_slide": 0.2, "threshold": 0.5, "share_on_mimics": 0.5}})
    assert "0.990 (map max), 1.000 (classifier)" in line and "0.20 false positives >= 0.5 per normal slide" in line
    assert "(50 % on mimics)" in line and "organisers' grading n/a" in line


def test_eval_heldout_rejects_a_test_split_without_training_patients(tmp_path):
    weights = tmp_path / "w.weights.h5"
    weights.write_bytes(b"x")
    proc = subprocess.run([sys.executable, "-m", "pfascannet.cli", "eval-heldout", "--weights", str(weights),
                           "--workdir", str(tmp_path / "w"), "--patients", "4", "--test_patients", "4"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode != 0 and "--test_patients 4" in proc.stderr and "Traceback" not in proc.stderr


def test_calibration_reports_normal_tissue_at_threshold_and_slide_maxima(cohort, truth_scan, tmp_path):
    from pfascannet.inference.plan import tissue_on_map
    from pfascannet.slide.reader import SlideReader
    from pfascannet.slide.tissue import tissue_mask

    refs = reference.select_split(_refs(cohort), "test")
    normal = sorted(s for s, r in refs.items() if not r.tumour)
    scan = tmp_path / "scan"
    shutil.copytree(truth_scan, scan)
    # Truth maps stay under 0.5 on every normal slide. Light four tissue pixels of one normal slide at 0.9.
    sid = normal[0]
    prob = np.load(scan / "maps" / f"{sid}.npy")
    stride = json.loads((scan / "maps" / f"{sid}.json").read_text())["stride_px"]
    with SlideReader(str(cohort / "images" / f"{sid}.tif")) as reader:
        ds = heldout.CALIBRATION_TISSUE_DOWNSAMPLE
        on_map = tissue_on_map(tissue_mask(reader, downsample=ds), ds, reader.dimensions, stride)
    rows, cols = np.nonzero(on_map)
    prob[rows[:4], cols[:4]] = 0.9
    np.save(scan / "maps" / f"{sid}.npy", prob)
    cal = heldout.calibration(str(scan), str(cohort), refs)
    normal_tissue = cal["normal_tissue"]
    assert normal_tissue["share_at_or_above_0.5"] == pytest.approx(4 / normal_tissue["n_pixels"])
    assert len(cal["slide_max_normal"]) == len(normal)
    maxima = sorted(float(np.load(scan / "maps" / f"{s}.npy").max()) for s in normal)
    assert cal["slide_max_normal"] == pytest.approx(maxima) and maxima[-1] == pytest.approx(0.9)
    # Inside the tumour the truth map is tumour: every tumour slide's maximum, and most of its tumour, >= 0.5.
    assert len(cal["slide_max_tumour"]) == len(refs) - len(normal)
    assert min(cal["slide_max_tumour"]) >= 0.5 and cal["tumour"]["p50"] >= 0.5
