"""Quiet by default (issue 19, item 6): no TensorFlow / absl start-up lines unless asked for."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from pfascannet import quiet
from pfascannet.slide.tiff_writer import write_pyramid_tiff

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_WEIGHTS = os.path.join(ROOT, "pfascannet", "weights", "tiny_demo.weights.h5")

NOISE = re.compile(r"absl::InitializeLog|oneDNN custom operations|cuda drivers|cuInit|cpu_feature_guard|"
                   r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+\.(py|cc):\d+\]", re.M)


def _cli(cwd, *args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "PFASCANNET_DEBUG")}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(env_extra or {})
    proc = subprocess.run([sys.executable, "-m", "pfascannet.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, f"{args}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_verbosity_is_asked_by_the_absl_flag_or_the_debug_variable(monkeypatch):
    monkeypatch.delenv("PFASCANNET_DEBUG", raising=False)
    assert not quiet.verbose_requested(["scan", "--model", "M", "--slides", "x.tif"])
    assert quiet.verbose_requested(["scan", "--verbosity=1"]) and quiet.verbose_requested(["scan", "-v", "0"])
    assert not quiet.verbose_requested(["scan", "--", "--verbosity"])  # after --: not a flag
    monkeypatch.setenv("PFASCANNET_DEBUG", "1")
    assert quiet.verbose_requested(["scan"])
    monkeypatch.setenv("PFASCANNET_DEBUG", "0")
    assert not quiet.verbose_requested(["scan"])


@pytest.mark.slow  # three child processes that load TensorFlow: about 30 s
def test_a_real_stage_prints_plain_progress_and_warnings_and_no_startup_noise(tmp_path):
    blank = str(tmp_path / "blank.tif")
    write_pyramid_tiff(blank, (800, 600), lambda x, y, w, h: np.full((h, w, 3), 250, np.uint8), tiff_tile_px=256,
                       compression="deflate", num_levels=1, mpp=0.243, workers=1)
    export = _cli(tmp_path, "export", "--weights", TINY_WEIGHTS, "--config", "tiny", "--formats", "keras",
                  "--out", "M")
    assert not NOISE.search(export.stderr), export.stderr
    scan = _cli(tmp_path, "scan", "--model", "M", "--slides", blank, "--out", "S")
    assert not NOISE.search(scan.stderr), scan.stderr
    # The user's own lines still reach stderr, plain: the warning and the summary.
    assert re.search(r"^warning: .*blank", scan.stderr, re.M), scan.stderr
    assert re.search(r"^scanned 1 slide\(s\) in ", scan.stderr, re.M), scan.stderr
    # Asked for, the logging comes back: absl's prefix and TensorFlow's own lines.
    loud = _cli(tmp_path, "scan", "--model", "M", "--slides", blank, "--out", "S2", "--verbosity", "0")
    assert NOISE.search(loud.stderr) and re.search(r"progress\.py:\d+\] scanned 1 slide", loud.stderr), loud.stderr
