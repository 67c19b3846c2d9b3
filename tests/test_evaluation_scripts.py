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
from pfascannet.evaluation import pn_stage
from pfascannet.slide import annotations as ann
from tests.test_evaluation_froc import NORMAL, T1_DETECTIONS

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
    assert rep["froc_nearest_point"] == pytest.approx(7 / 9)
    md = (tmp_path / "r" / "froc.md").read_text()
    assert "Which FROC score is which" in md and "nearest curve point" in md and "Synthetic cohort" in md
    assert (tmp_path / "r" / "froc.png").stat().st_size > 0
    assert "froc_interpolated = 0.8056" in out
    # From the ASAP XML instead of the mask TIFF: the same truth, the same scores.
    rc, _, err = _run("froc.py", f"--lesions_dir={cohort / 'lesions'}", f"--reference={cohort / 'slides.csv'}",
                      f"--annotations_dir={cohort / 'annotations'}", "--split=test", "--n_bootstrap=0",
                      f"--out={tmp_path / 'x'}")
    assert rc == 0, err
    rep = json.loads((tmp_path / "x" / "froc.json").read_text())
    assert rep["froc_nearest_point"] == pytest.approx(7 / 9)


def test_froc_script_missing_csv_is_one_line_error(cohort, tmp_path):
    rc, out, err = _run("froc.py", f"--lesions_dir={cohort / 'lesions'}", f"--reference={cohort / 'slides.csv'}",
                        f"--masks_dir={cohort / 'masks'}", f"--out={tmp_path / 'r'}")   # train slides have no CSV
    assert rc == 2
    assert err.startswith("error: no lesion CSV for slide patient_002_node_0") and err.count("\n") == 1
    assert "Traceback" not in err


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
