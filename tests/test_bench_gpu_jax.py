"""The GPU benchmark (experiments/bench_gpu_jax.py) runs without TensorFlow: a tiny CPU smoke test."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow  # the benchmark end to end; 57 s under load
def test_bench_gpu_jax_runs_on_cpu_without_tensorflow(tmp_path):
    out = tmp_path / "bench.json"
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "experiments", "bench_gpu_jax.py"), "--config=tiny", "--roi_px=948",
         "--wsi_roi_px=948", "--precisions=float32,bfloat16", "--repeats=1", "--wsi_rois=3", "--slide_px=2048",
         f"--workdir={tmp_path}", f"--out={out}", "--workers=2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["backend"] == "jax" and result["tensorflow_imported"] is False
    assert [(r["roi_px"], r["precision"]) for r in result["rois"]] == [(948, "float32"), (948, "bfloat16")]
    assert all(r["ms_per_roi"] > 0 and r["tile_px"] == 9 for r in result["rois"])
    assert [w["rois"] for w in result["wsi"]] == [3, 3]
    assert all(w["minutes_per_400_rois"] > 0 and w["model_s"] > 0 for w in result["wsi"])
    assert os.path.exists(tmp_path / "wsi_2048.tif")  # a real JPEG-tiled TIFF was read


@pytest.mark.slow  # the benchmark in a child process
def test_bench_gpu_jax_refuses_another_backend(tmp_path):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "experiments", "bench_gpu_jax.py"), "--config=tiny", "--wsi_rois=0",
         "--roi_px=948"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0 and "KERAS_BACKEND=jax" in proc.stderr
