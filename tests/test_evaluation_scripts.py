"""The eval/ scripts end to end on a tiny Camelyon-like layout, and their one-line errors.

The tumour slide is the golden mask of test_evaluation_froc (written as a mask TIFF and
as ASAP XML), so the scripts must reproduce the hand-computed FROC scores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pfascannet import io_utils
from pfascannet.evaluation import froc, pn_stage
from pfascannet.slide import annotations as ann
from tests.froc_support import NORMAL, T1_DETECTIONS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIMS = (3200, 2048)                       # level 5: 100 x 64, the golden mask
TEST = {"patient_000_node_0": "T1", "patient_000_node_1": "N1",
        "patient_001_node_0": "N2", "patient_001_node_1": "N3"}
TRAIN = {"patient_002_node_0": "negative", "patient_002_node_1": "itc", "patient_002_node_2": "micro",
         "patient_002_node_3": "macro", "patient_003_node_0": "negative", "patient_003_node_1": "itc",
         "patient_003_node_2": "micro", "patient_003_node_3": "macro"}
# Side (map px at 16 um) of a square of p = 0.95 on each class's map: 0, 0.08, 0.8, 4 mm.
SIDE = {"negative": 0, "itc": 5, "micro": 50, "macro": 250}


def _rect(name, r0, r1, c0, c1):
    return ann.Annotation(name, "Tumor", np.array([[c0 * 32, r0 * 32], [(c1 + 1) * 32, r0 * 32],
                                                   [(c1 + 1) * 32, (r1 + 1) * 32], [c0 * 32, (r1 + 1) * 32]], float))


def _write_map(path, side, seed):
    prob = np.random.default_rng(seed).uniform(0, 0.2, (300, 300)).astype(np.float32)
    prob[20:20 + side, 20:20 + side] = 0.95
    io_utils.save_npy(path, prob)
    io_utils.write_json(os.path.splitext(path)[0] + ".json", {"stride_px": 32, "mpp": 0.5})


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    c = tmp_path_factory.mktemp("cohort")
    anns = [_rect("A", 5, 14, 5, 54), _rect("D", 5, 44, 70, 74), _rect("B", 30, 39, 5, 24),
            _rect("C", 30, 39, 33, 52), _rect("ITC", 55, 57, 90, 92)]
    ann.write_mask_tiff(c / "masks" / "patient_000_node_0_mask.tif", anns, DIMS, 0.243)
    ann.write_asap_xml(c / "annotations" / "patient_000_node_0.xml", anns)
    labels = {"patient_000_node_0": "macro", "patient_000_node_1": "negative",
              "patient_001_node_0": "negative", "patient_001_node_1": "negative"}
    rows = ["slide,patient,node,split,label,centre,width,height"]
    for slide, lab in list(labels.items()) + list(TRAIN.items()):
        split = "train" if slide in TRAIN else "test"
        rows.append(f"{slide},{slide[:11]},{slide[-1]},{split},{lab},0,{DIMS[0]},{DIMS[1]}")
    (c / "slides.csv").write_text("\n".join(rows) + "\n")
    (c / "cohort.json").write_text("{}")
    lesions = c / "lesions"
    lesions.mkdir()
    for slide, key in TEST.items():
        det = T1_DETECTIONS if key == "T1" else NORMAL[key]
        (lesions / f"{slide}.csv").write_text("".join(f"{p},{int(x)},{int(y)}\n" for p, x, y in det))
    maps = c / "maps"
    for i, (slide, lab) in enumerate(TRAIN.items()):
        _write_map(str(maps / f"{slide}.npy"), SIDE[lab], i)
    for i, (slide, lab) in enumerate(labels.items()):
        _write_map(str(maps / f"{slide}.npy"), SIDE[lab], 100 + i)
    return c


def _run(script, *args):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "eval", script), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


def test_froc_script_reproduces_the_golden_scores(cohort, tmp_path):
    rc, out, err = _run("froc.py", f"--lesions_dir={cohort / 'lesions'}", f"--reference={cohort / 'slides.csv'}",
                        f"--masks_dir={cohort / 'masks'}", "--split=test", "--n_bootstrap=20",
                        f"--out={tmp_path / 'r'}")
    assert rc == 0, err
    rep = json.loads((tmp_path / "r" / "froc.json").read_text())
    assert rep["froc_interpolated"] == pytest.approx(29 / 36)
    assert rep["froc_nearest_point"] == pytest.approx(5 / 6)
    assert rep["froc_organisers"] == pytest.approx(13 / 18)
    md = (tmp_path / "r" / "froc.md").read_text()
    assert "Which FROC score is which" in md and "Synthetic cohort" in md
    for key in froc.SCORE_KEYS:
        assert f"**{key}**" in md and froc.SCORE_NAMES[key] in md
    assert "do not say which rule" in md and "89.1" in md          # which score the paper's numbers compare with
    assert (tmp_path / "r" / "froc.png").stat().st_size > 0
    assert "froc_interpolated = 0.8056" in out and "froc_nearest_point = 0.8333" in out
    assert "froc_organisers = 0.7222" in out and "paper: " in out
    # From the ASAP XML instead of the mask TIFF: the same truth, the same scores.
    rc, _, err = _run("froc.py", f"--lesions_dir={cohort / 'lesions'}", f"--reference={cohort / 'slides.csv'}",
                      f"--annotations_dir={cohort / 'annotations'}", "--split=test", "--n_bootstrap=0",
                      f"--out={tmp_path / 'x'}")
    assert rc == 0, err
    rep = json.loads((tmp_path / "x" / "froc.json").read_text())
    assert rep["froc_nearest_point"] == pytest.approx(5 / 6)


@pytest.mark.slow  # a child process per case: the full suite runs it, the quick subset does not
def test_froc_script_missing_csv_is_one_line_error(cohort, tmp_path):
    rc, out, err = _run("froc.py", f"--lesions_dir={cohort / 'lesions'}", f"--reference={cohort / 'slides.csv'}",
                        f"--masks_dir={cohort / 'masks'}", f"--out={tmp_path / 'r'}")   # train slides have no CSV
    assert rc == 2
    assert err.startswith("error: no lesion CSV for slide patient_002_node_0") and err.count("\n") == 1
    assert "Traceback" not in err


@pytest.mark.slow  # a child process per case: the full suite runs it, the quick subset does not
def test_auc_script_from_lesion_csvs(cohort, tmp_path):
    # Top confidences: tumour slide 0.95 (the ITC hit), normals 0.8, 0.7, 0.7: AUC 1.
    rc, out, err = _run("auc.py", f"--lesions_dir={cohort / 'lesions'}", f"--reference={cohort / 'slides.csv'}",
                        "--split=test", "--n_bootstrap=20", f"--out={tmp_path}")
    assert rc == 0, err
    assert json.loads((tmp_path / "auc.json").read_text())["auc"] == 1.0
    assert (tmp_path / "roc.png").exists() and "AUC = 1.0000" in out


def test_pn_stage_and_kappa_scripts(cohort, tmp_path):
    rc, out, err = _run("pn_stage.py", f"--maps_dir={cohort / 'maps'}", f"--reference={cohort / 'slides.csv'}",
                        "--n_estimators=25", f"--out={tmp_path}")
    assert rc == 0, err
    sub = pn_stage.read_camelyon17_csv(tmp_path / "submission.csv")
    assert sub.stages == {"patient_000": "pN1", "patient_001": "pN0"}
    assert sub.nodes["patient_000_node_0"] == "macro"
    rep = json.loads((tmp_path / "pn_stage.json").read_text())
    assert rep["kappa_quadratic"] == 1.0 and rep["node_accuracy"] == 1.0
    assert (tmp_path / "features.csv").read_text().startswith("slide,max_prob")
    # kappa.py against a reference holding the pN1 / pN1mi trap.
    ref = tmp_path / "ref.csv"
    ref.write_text("patient,stage\npatient_000.zip,pN1mi\npatient_001.zip,pN0\npatient_002.zip,pN2\n")
    sub_path = tmp_path / "sub2.csv"
    sub_path.write_text("patient,stage\npatient_000.zip,PN1\npatient_001.zip,pn0\npatient_002.zip,pN1mi\n")
    rc, out, err = _run("kappa.py", f"--submission={sub_path}", f"--reference={ref}", f"--out={tmp_path / 'k'}")
    assert rc == 0, err
    # ranks r = [2, 0, 4], p = [3, 0, 2]: sum(w O) = 1 + 4 = 5; a = [1,0,1,0,1], b = [1,0,1,1,0];
    # sum(w E) = (0+4+9 + 4+0+1 + 16+4+1) / 3 = 13; kappa = 1 - 5/13 = 8/13.
    rep = json.loads((tmp_path / "k" / "kappa.json").read_text())
    assert rep["kappa_quadratic"] == pytest.approx(8 / 13)
    rc, _, err = _run("kappa.py", f"--submission={tmp_path / 'nope.csv'}", f"--reference={ref}")
    assert rc == 2 and err.startswith("error:") and err.count("\n") == 1


# ----------------------------------------------------------------------------
# Inputs that cannot be misread: each bad file is one `error:` line naming it,
# exit 2, and nothing written.


def _copy_lesions(cohort, tmp_path):
    import shutil

    dst = tmp_path / "lesions"
    shutil.copytree(cohort / "lesions", dst)
    return dst


def _assert_one_line_error(rc, err, names, out_dir):
    assert rc == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert str(names) in err, err
    assert not os.path.exists(out_dir), "nothing may be written"


T1 = "patient_000_node_0"
N1 = "patient_000_node_1"


@pytest.mark.slow  # a child process per case: the full suite runs it, the quick subset does not
@pytest.mark.parametrize("slide, content", [
    (N1, b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe"),         # binary: was "a header", exit 0
    (N1, b"\x01\x02\x03 garbage,in,here\n0.5,10,10\n"),                 # garbage first line
    (N1, b"0.5,10,10\nconfidence,X,Y\n"),                               # a header after data
    (N1, b"0.5,10\n"),                                                  # two fields
    (N1, b"0.5,10,10,3\n"),                                             # four fields
    (T1, b"0.5,nan,10\n"),
    (N1, b"0.5,3200,10\n"),                        # outside the 3200 x 2048 normal slide
    (N1, b"0.5,10,-1\n"),                          # negative
    (T1, b"0.5,10,2048\n"),                        # outside the tumour slide
])
def test_froc_script_bad_lesion_csv(cohort, tmp_path, slide, content):
    lesions = _copy_lesions(cohort, tmp_path)
    (lesions / f"{slide}.csv").write_bytes(content)
    out = tmp_path / "r"
    rc, _, err = _run("froc.py", f"--lesions_dir={lesions}", f"--reference={cohort / 'slides.csv'}",
                      f"--masks_dir={cohort / 'masks'}", "--split=test", "--n_bootstrap=0", f"--out={out}")
    _assert_one_line_error(rc, err, lesions / f"{slide}.csv", out)


@pytest.mark.slow  # a child process per case: the full suite runs it, the quick subset does not
def test_froc_script_extra_csv(cohort, tmp_path):
    lesions = _copy_lesions(cohort, tmp_path)
    (lesions / "patient_099_node_0.csv").write_text("0.9,10,10\n")      # not in slides.csv
    args = [f"--lesions_dir={lesions}", f"--reference={cohort / 'slides.csv'}", f"--masks_dir={cohort / 'masks'}",
            "--split=test", "--n_bootstrap=0"]
    rc, _, err = _run("froc.py", *args, f"--out={tmp_path / 'r'}")
    _assert_one_line_error(rc, err, lesions / "patient_099_node_0.csv", tmp_path / "r")
    assert "not in the reference" in err and "--ignore_extra" in err
    rc, out, err = _run("froc.py", *args, "--ignore_extra", f"--out={tmp_path / 'ok'}")
    assert rc == 0, err
    assert json.loads((tmp_path / "ok" / "froc.json").read_text())["froc_nearest_point"] == pytest.approx(5 / 6)


@pytest.mark.slow  # a child process per case: the full suite runs it, the quick subset does not
@pytest.mark.parametrize("content", [b"\xff\xfe\x00garbage", b"slide,label\n", b"test_001\n"])
def test_froc_script_bad_reference_names_it(cohort, tmp_path, content):
    ref = tmp_path / "bad_reference.csv"
    ref.write_bytes(content)
    rc, _, err = _run("froc.py", f"--lesions_dir={cohort / 'lesions'}", f"--reference={ref}",
                      f"--masks_dir={cohort / 'masks'}", f"--out={tmp_path / 'r'}")
    _assert_one_line_error(rc, err, ref, tmp_path / "r")


@pytest.mark.slow  # a child process per case: the full suite runs it, the quick subset does not
def test_froc_script_unknown_split_names_the_reference(cohort, tmp_path):
    rc, _, err = _run("froc.py", f"--lesions_dir={cohort / 'lesions'}", f"--reference={cohort / 'slides.csv'}",
                      f"--masks_dir={cohort / 'masks'}", "--split=val", f"--out={tmp_path / 'r'}")
    _assert_one_line_error(rc, err, cohort / "slides.csv", tmp_path / "r")


@pytest.mark.slow  # a child process per case: the full suite runs it, the quick subset does not
def test_froc_script_camelyon16_exclusions(cohort, tmp_path):
    """A Camelyon16-style reference: Test_049 and Test_114 carry FPs that the organisers'
    exclusion removes, which gives back the golden T1 + normal-slide scores."""
    import shutil

    masks, lesions = tmp_path / "masks", tmp_path / "lesions"
    masks.mkdir()
    lesions.mkdir()
    shutil.copy(cohort / "masks" / f"{T1}_mask.tif", masks / "Test_001_mask.tif")
    names = {"Test_001": T1, "Test_002": N1, "Test_003": "patient_001_node_0", "Test_004": "patient_001_node_1"}
    for new, old in names.items():
        shutil.copy(cohort / "lesions" / f"{old}.csv", lesions / f"{new}.csv")
    for s in ("Test_049", "Test_114"):
        (lesions / f"{s}.csv").write_text("0.99,10,10\n0.98,20,20\n0.97,30,30\n")
    ref = tmp_path / "reference.csv"
    ref.write_text("Test_001,Tumor,Macro,Primary\nTest_002,Normal\nTest_003,Normal\nTest_004,Normal\n"
                   "Test_049,Normal\nTest_114,Normal\n")
    args = [f"--lesions_dir={lesions}", f"--reference={ref}", f"--masks_dir={masks}", "--n_bootstrap=0"]
    rc, out, err = _run("froc.py", *args, "--camelyon16_exclusions", f"--out={tmp_path / 'ex'}")
    assert rc == 0, err
    rep = json.loads((tmp_path / "ex" / "froc.json").read_text())
    assert rep["excluded_slides"] == ["Test_049", "Test_114"] and rep["n_slides"] == 4
    assert [rep[k] for k in froc.SCORE_KEYS] == pytest.approx([29 / 36, 5 / 6, 13 / 18])
    assert "excluded from the FROC: Test_049, Test_114" in out
    assert "Test_049, Test_114" in (tmp_path / "ex" / "froc.md").read_text()
    # No slide sizes (no images, no width/height): the report says the normal slides were
    # checked for negative coordinates only.
    assert rep["slides_size_unknown"] == ["Test_002", "Test_003", "Test_004"]
    rc, _, err = _run("froc.py", *args, f"--out={tmp_path / 'all'}")
    assert rc == 0, err
    rep = json.loads((tmp_path / "all" / "froc.json").read_text())
    assert rep["excluded_slides"] == [] and rep["n_slides"] == 6
    assert rep["froc_nearest_point"] != pytest.approx(5 / 6)


@pytest.mark.slow  # a child process per case: the full suite runs it, the quick subset does not
@pytest.mark.parametrize("content", [
    b"name,probability\n\xff\xfe\x00\x00",                                 # binary
    b"\x01\x02,\x03\npatient_000_node_0,0.9\n",                             # garbage header
    b"patient_000_node_0,0.9\nname,probability\n",                          # header after data
    b"patient_000_node_0,0.9\npatient_000_node_1,0.1\npatient_001_node_0,0.2\n"
    b"patient_001_node_1,0.3\npatient_099_node_0,0.5\n",                    # a slide not in the reference
    b"patient_000_node_0,0.9\n",                                             # missing test slides
])
def test_auc_script_bad_scores_names_the_file(cohort, tmp_path, content):
    scores = tmp_path / "scores.csv"
    scores.write_bytes(content)
    rc, _, err = _run("auc.py", f"--scores={scores}", f"--reference={cohort / 'slides.csv'}", "--split=test",
                      "--n_bootstrap=0", f"--out={tmp_path / 'r'}")
    _assert_one_line_error(rc, err, scores, tmp_path / "r")


@pytest.mark.slow  # a child process per case: the full suite runs it, the quick subset does not
def test_auc_script_extra_lesion_csv(cohort, tmp_path):
    lesions = _copy_lesions(cohort, tmp_path)
    (lesions / "patient_099_node_0.csv").write_text("0.9,10,10\n")
    args = [f"--lesions_dir={lesions}", f"--reference={cohort / 'slides.csv'}", "--split=test", "--n_bootstrap=0"]
    rc, _, err = _run("auc.py", *args, f"--out={tmp_path / 'r'}")
    _assert_one_line_error(rc, err, lesions / "patient_099_node_0.csv", tmp_path / "r")
    rc, _, err = _run("auc.py", *args, "--ignore_extra", f"--out={tmp_path / 'ok'}")
    assert rc == 0, err


@pytest.mark.slow  # a child process per case: the full suite runs it, the quick subset does not
@pytest.mark.parametrize("content", [b"patient,stage\n\xff\xfe\x00", b"\x01\x02\n", b"patient,stage\nfoo.zip,pN1\n"])
def test_kappa_script_bad_csv_names_the_file(tmp_path, content):
    ref = tmp_path / "ref.csv"
    ref.write_text("patient,stage\npatient_000.zip,pN1\n")
    sub = tmp_path / "sub.csv"
    sub.write_bytes(content)
    rc, _, err = _run("kappa.py", f"--submission={sub}", f"--reference={ref}", f"--out={tmp_path / 'k'}")
    _assert_one_line_error(rc, err, sub, tmp_path / "k")
