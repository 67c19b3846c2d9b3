"""The scanner with a real (tiny, random-weight) detector: patch mode = dense, and the CLI end to end."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pfascannet import geometry
from pfascannet.inference import engine, model_run, scan_settings
from pfascannet.inference.plan import make_plan
from tests.scan_support import write_slide

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny_model():
    from pfascannet.model.config import ModelConfig
    from pfascannet.model.detector import build_detector
    from tests.model_support import randomise_weights

    model = build_detector(ModelConfig.tiny(), alpha=16)
    randomise_weights(model)
    return model


@pytest.fixture(scope="module")
def slide_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_slides")
    write_slide(str(folder / "patient_001_node_0.tif"), seed=1)
    (folder / "patient_001_node_1.tif").write_bytes(b"not a slide")
    return folder


def test_patch_mode_equals_dense_with_a_real_detector(tiny_model, slide_dir):
    from pfascannet.inference.detectors import KerasDetector

    lr = geometry.roi_px(2, 16)
    det = KerasDetector(tiny_model, 16, lr)
    grid = geometry.ScanGeometry(16, lr)
    path = str(slide_dir / "patient_001_node_0.tif")
    plan = make_plan((1000, 700), grid)
    plan = dataclasses.replace(plan, rois_rowcol=plan.rois_rowcol[[0, 17]])  # a corner ROI and an inner one
    options = scan_settings.ScanSettings(progress=False, heatmap=False, tissue="all", batch=2, patch_batch=4)
    dense, _ = engine.scan_map(path, model_run.ModelRun(det, grid, "dense"), plan, options)
    patch, _ = engine.scan_map(path, model_run.ModelRun(det, grid, "patch"), plan, options)
    scanned = np.zeros(dense.shape, bool)
    for k in range(len(plan)):
        r0, r1, c0, c1 = plan.roi_window(k)
        scanned[r0:r1, c0:c1] = True
    assert scanned.sum() == 8
    assert dense[scanned].std() > 2e-3  # positions differ 20x more than the tolerance: a misplacement shows
    np.testing.assert_allclose(patch[scanned], dense[scanned], atol=1e-4)
    assert not dense[~scanned].any() and not patch[~scanned].any()


@pytest.mark.slow  # a child process that imports TensorFlow and scans; 15 s under load
def test_cli_ensemble_bad_slide_and_exit_status(tiny_model, slide_dir, tmp_path):
    from pfascannet.inference.export import export_detector
    from pfascannet.model.config import ModelConfig

    export = str(tmp_path / "export")
    export_detector(tiny_model, ModelConfig.tiny(), export, alpha=16, roi_px=916, formats=("keras",))
    out = str(tmp_path / "scan")
    cmd = [
        sys.executable, os.path.join(REPO, "experiments", "scan.py"), f"--model={export}", f"--slides={slide_dir}",
        f"--out={out}", f"--ensemble={export}", "--tissue=all", "--heatmap=false", "--progress=false",
    ]
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "error: patient_001_node_1:" in proc.stderr and "1 done" in proc.stderr and "1 failed" in proc.stderr
    with open(os.path.join(out, "maps", "patient_001_node_0.json")) as f:
        meta = json.load(f)
    assert meta["stride_px"] == 32
    assert [(m["alpha"], m["roi_px"], m["stride_px"]) for m in meta["members"]] == [(16, 916, 32), (32, 916, 16)]
    prob_map = np.load(os.path.join(out, "maps", "patient_001_node_0.npy"))
    assert prob_map.shape == (22, 32) and 0.0 <= prob_map.min() and prob_map.max() <= 1.0
    with open(os.path.join(out, "slide_scores.csv")) as f:
        # The slide score is the most confident candidate after its views (the first line of its lesion CSV).
        scores = f.read().splitlines()
    with open(os.path.join(out, "lesions", "patient_001_node_0.csv")) as f:
        top = float(f.readline().split(",")[0])
    assert scores == ["name,probability", f"patient_001_node_0,{top:.6f}"]
    assert meta["candidate_views"]["views"] == 8 and meta["candidate_views"]["cells"]

    bad = subprocess.run(cmd[:2] + [f"--model={export}", f"--slides={slide_dir}", f"--out={out}", "--roi=917"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: ")
