"""CAMELYON16 and CAMELYON17 roots as downloaded, end to end through the ``pfascannet`` command.

``synthetic.layouts.make_layout_cohort`` (what ``pfascannet cohort --layout``
runs) writes tiny synthetic slides in each official layout (official names,
zipped ASAP XML, CAMELYON16's header-less reference.csv with ``Test_NNN`` for
files named ``test_NNN.tif``, CAMELYON17's stage_labels.csv).  Every stage then
runs as a user runs it, in a child process, on the root with no renaming:
train (2 steps), export, scan, froc, auc, and for CAMELYON17 pn-stage and kappa.

Each child runs with the user's defaults (no TF_CPP_MIN_LOG_LEVEL, no
PFASCANNET_DEBUG): its stderr must hold none of TensorFlow's start-up lines nor
absl's ``I1202 ... progress.py:178]`` prefix, and still the progress lines
(item 6 of issue 19; ``test_quiet.py`` checks the ``warning:`` lines).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile

import pytest

from pfascannet.synthetic.layouts import make_layout_cohort

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NOISE = [
    re.compile(p) for p in (
        r"absl::InitializeLog", r"oneDNN custom operations", r"cuda drivers", r"cuInit", r"cpu_feature_guard",
        r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+\.(py|cc):\d+\]",  # absl's prefix (Python or C++)
        r"^WARNING: All log messages", r"Traceback")
]

TRAIN = ["--config", "tiny", "--steps", "2", "--batch_size", "2", "--random_per_class", "2", "--boundary", "1",
         "--checkpoint_every", "2", "--log_every", "1", "--num_parallel_calls", "1"]


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "PFASCANNET_DEBUG")}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _cli(tmp_path, *args, timeout=300):
    proc = subprocess.run([sys.executable, "-m", "pfascannet.cli", *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=timeout, env=_env())
    assert proc.returncode == 0, f"pfascannet {' '.join(args)}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    noisy = [line for line in proc.stderr.splitlines() if any(p.search(line) for p in NOISE)]
    assert not noisy, f"pfascannet {args[0]} printed start-up noise on stderr: {noisy[:3]}"
    return proc


def _model(tmp_path, root, itc: int):
    """Train 2 steps on the root's training/ slides and export: the first two stages, on the root as is."""
    tr = _cli(tmp_path, "train", "--data", str(root), "--workdir", "W", *TRAIN, "--itc", str(itc))
    # Progress lines reach stderr, plain (no absl prefix).
    assert re.search(r"^train: 2/2 100\.0%", tr.stderr, re.M), tr.stderr
    _cli(tmp_path, "export", "--workdir", "W", "--alpha", "16", "--roi_px", "2708", "--out", "M")
    return "M"


@pytest.mark.slow  # about 90 s: 7 child processes on tiny slides
def test_camelyon16_root_train_export_scan_froc_auc(tmp_path):
    root = tmp_path / "CAMELYON16"
    make_layout_cohort(root, layout="camelyon16", seed=3, patients=2, nodes_per_patient=2, slide_size=2816,
                       test_fraction=0.5, node_labels=[["negative", "micro"], ["micro", "negative"]], workers=1)
    assert sorted(os.listdir(root / "testing" / "images")) == ["test_001.tif", "test_002.tif"]
    assert sorted(os.listdir(root / "training" / "normal")) == ["normal_001.tif"]
    with zipfile.ZipFile(root / "training" / "lesion_annotations.zip") as zf:
        assert zf.namelist() == ["tumor_001.xml"]
    reference = (root / "testing" / "reference.csv").read_text().splitlines()
    assert sorted(line.split(",")[:2][1] for line in reference) == ["Normal", "Tumor"]
    assert all(line.startswith("Test_00") for line in reference)  # the download's case; files are test_00N

    model = _model(tmp_path, root, itc=0)  # micro and negative nodes only
    scan = _cli(tmp_path, "scan", "--model", model, "--slides", str(root / "testing" / "images"), "--out", "S")
    assert re.search(r"^scanned 2 slide\(s\) in .*2 done", scan.stderr, re.M), scan.stderr
    assert sorted(os.listdir(tmp_path / "S" / "lesions")) == ["test_001.csv", "test_002.csv"]

    fr = _cli(tmp_path, "froc", "--lesions_dir", "S/lesions", "--reference", str(root), "--split", "test",
              "--out", "R/froc", "--n_bootstrap", "0")
    assert "froc_interpolated =" in fr.stdout
    rep = json.loads((tmp_path / "R" / "froc" / "froc.json").read_text())
    assert rep["n_slides"] == 2 and rep["note"]  # the synthetic note: cohort.json at the root
    # The same FROC from the files a user would name: reference.csv, the zip, the images folder.
    _cli(tmp_path, "froc", "--lesions_dir", "S/lesions", "--reference", str(root / "testing" / "reference.csv"),
         "--annotations_dir", str(root / "testing" / "lesion_annotations.zip"),
         "--images_dir", str(root / "testing" / "images"), "--out", "R/froc2", "--n_bootstrap", "0")
    rep2 = json.loads((tmp_path / "R" / "froc2" / "froc.json").read_text())
    assert rep2["froc_interpolated"] == rep["froc_interpolated"]

    # Test_001 in reference.csv, test_001 in slide_scores.csv: ids match in any case.
    au = _cli(tmp_path, "auc", "--scores", "S/slide_scores.csv", "--reference",
              str(root / "testing" / "reference.csv"), "--out", "R/auc", "--n_bootstrap", "0")
    assert au.stdout.startswith("AUC = ")
    assert json.loads((tmp_path / "R" / "auc" / "auc.json").read_text())["n_slides"] == 2



@pytest.mark.slow  # about a minute and a half: 8 child processes on tiny slides
def test_camelyon17_root_train_export_scan_pn_stage_kappa(tmp_path):
    root = tmp_path / "CAMELYON17"
    # Seed 1 puts patients 0 (pN1mi) and 1 (pN0) in the test split, patient 2 (pN1mi) in training.
    info = make_layout_cohort(root, layout="camelyon17", seed=1, patients=3, nodes_per_patient=2, slide_size=3072,
                              test_fraction=0.67, workers=1,
                              node_labels=[["negative", "micro"], ["negative", "negative"], ["micro", "negative"]])
    test_patients = sorted({r["patient"] for r in info.slides if r["split"] == "test"})
    assert test_patients == ["patient_000", "patient_001"]
    assert os.path.isfile(root / "stage_labels.csv")
    assert {p.split(os.sep)[0] for p in (os.path.relpath(r["path"], root) for r in info.slides)} == {
        "training", "testing"}

    model = _model(tmp_path, root, itc=0)
    _cli(tmp_path, "scan", "--model", model, "--slides", str(root), "--out", "S")
    assert len([f for f in os.listdir(tmp_path / "S" / "maps") if f.endswith(".npy")]) == 6

    _cli(tmp_path, "froc", "--lesions_dir", "S/lesions", "--reference", str(root), "--split", "test",
         "--out", "R/froc", "--n_bootstrap", "0")
    _cli(tmp_path, "auc", "--scores", "S/slide_scores.csv", "--reference", str(root), "--split", "test",
         "--out", "R/auc", "--n_bootstrap", "0")
    pn = _cli(tmp_path, "pn-stage", "--maps_dir", "S/maps", "--reference", str(root), "--out", "R/pn",
              "--n_estimators", "20")
    assert "kappa_quadratic =" in pn.stdout, pn.stdout
    submission = (tmp_path / "R" / "pn" / "submission.csv").read_text()
    assert sorted(re.findall(r"^(patient_\d+)\.zip", submission, re.M)) == test_patients
    kp = _cli(tmp_path, "kappa", "--submission", "R/pn/submission.csv", "--reference", str(root), "--out", "R/kappa")
    rep = json.loads((tmp_path / "R" / "kappa" / "kappa.json").read_text())
    assert rep["n_patients"] == 2 and "kappa_quadratic" in kp.stdout

    # The whole evaluation that demo and table1 run takes the root too, with the same numbers.
    from pfascannet.evaluation import run  # noqa: PLC0415

    ev = run.evaluate_scan(str(tmp_path / "S"), str(root), str(tmp_path / "E"), n_bootstrap=0, warn=lambda m: None)
    froc_cli = json.loads((tmp_path / "R" / "froc" / "froc.json").read_text())
    assert ev["froc"]["froc_interpolated"] == froc_cli["froc_interpolated"]
    assert ev["auc"]["auc"] == json.loads((tmp_path / "R" / "auc" / "auc.json").read_text())["auc"]
    assert ev["pn_stage"]["n_patients"] == 2
