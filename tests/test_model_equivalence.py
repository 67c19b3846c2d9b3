"""The central invariant (shared/DESIGN.md section 1, eq. (1)): dense scanning == the patch classifier.

Tiny widths, full 692 / 2708 geometry.  Weights and ROI are chosen so the
tumour probability varies over most of (0, 1) across positions, so a
mismatch of one output stride, a wrong crop or a padded convolution would be
seen; the 8-px-shifted control proves the comparison can fail.
"""

import json
import os
import subprocess
import sys

import pytest

from tests.model_support import equivalence_case, run_case

TOLERANCE = 1e-4
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CASES = [(16, 2708), (32, 2708), (16, 1204)]


def _check(result):
    corners = {(0, 0), (result["tile_px"] - 1, 0), (0, result["tile_px"] - 1), (result["tile_px"] - 1,) * 2}
    assert len(result["positions"]) >= 16
    assert corners <= {tuple(p) for p in result["positions"]}
    # Outputs vary by far more than the tolerance: the test can fail.
    assert result["spread"] > 0.5, result
    assert result["sampled_spread"] > 1000 * TOLERANCE, result
    assert result["max_abs_diff"] <= TOLERANCE, result
    # Control: the patch 8 px off is a different patch, and the comparison sees it.
    assert result["shifted_max_abs_diff"] > 50 * TOLERANCE, result


@pytest.fixture(scope="module")
def case():
    return equivalence_case(seed=0, roi_px=2708)


@pytest.mark.parametrize("alpha,roi_px", CASES)
def test_dense_equals_patch_classifier(case, alpha, roi_px):
    result = run_case(alpha, roi_px, case)
    assert result["tile_px"] == (roi_px - 692) // (512 // alpha) + 1
    _check(result)


@pytest.mark.slow  # a JAX child process; 54 s under load
def test_dense_equals_patch_classifier_under_jax():
    # The backend is fixed when Keras is imported, hence a subprocess.
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-m", "tests.model_support", "16", "2708", "32", "1204"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(line[len("RESULT "):]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert [(r["alpha"], r["roi_px"]) for r in results] == [(16, 2708), (32, 1204)]
    for r in results:
        assert r["backend"] == "jax"
        _check(r)
