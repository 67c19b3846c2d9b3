"""What the benchmarks share: their error, peak RSS, an H&E-like slide texture and the child-process protocol.

Benchmarks run as scripts (``python experiments/bench_x.py``), so this folder
is on ``sys.path`` and they ``import bench_util``.  It imports neither
TensorFlow nor Keras (``bench_gpu_jax.py`` must run without TensorFlow).

- ``BenchError``: bad benchmark settings, or a child that reported nothing
  (a ``PfaError``: one ``error:`` line, exit status 2); ``roi_sides`` reads
  a list flag of ROI sides on the grid of eq. (1).
- ``peak_rss_mib()``: this process's peak resident memory (``ru_maxrss``).
  A measurement of one variant runs in a fresh child, so the peak is its own.
- ``he_textures`` / ``texture_at``: 512 px tiles of H&E-coloured noise with
  dark nuclei, and the one a slide tile at (x, y) uses: what the scan
  benchmarks' synthetic slides are painted with (``write_pyramid_tiff``).
- The child protocol: the parent runs ``child_command(__file__, flags...)``
  through ``run_child``; the child does its one measurement and ends with
  ``report(result)``, a line ``RESULT <json>`` on stdout (its last such line
  is the result; anything else it prints is passed over).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from typing import Optional, Sequence

import numpy as np

from pfascannet import geometry
from pfascannet.errors import PfaError

RESULT_PREFIX = "RESULT "
HE_TILE_PX = 512


class BenchError(PfaError):
    """Bad benchmark settings, or a child process that reported no result."""


class ChildFailed(BenchError):
    """A child ended without a ``RESULT`` line: its exit status and the last line it wrote on stderr."""

    def __init__(self, message: str, returncode: int, last_line: str):
        super().__init__(message)
        self.returncode = returncode
        self.last_line = last_line


def roi_sides(values: Sequence[str], alpha: int, flag: str = "--roi_px") -> list[int]:
    """A list flag of ROI sides as integers, each on the grid of eq. (1) at ``alpha`` (else one error line)."""
    try:
        sides = [int(s) for s in values]
    except ValueError:
        raise BenchError(f"{flag} must be integers, got {list(values)}") from None
    for side in sides:
        geometry.ScanGeometry(alpha=alpha, roi_px=side)
    return sides


def cpu_features() -> dict:
    """The CPU's model name (as ``lscpu`` prints it), its bf16 features and core count: record them with every timing."""
    from pfascannet.model.precision import read_cpu_flags  # noqa: PLC0415

    model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            model = next((v.strip() for k, _, v in (ln.partition(":") for ln in f) if k.strip() == "model name"),
                         model)
    except OSError:
        pass
    found = read_cpu_flags() or frozenset()
    return {"cpu": model, "amx_bf16": "amx_bf16" in found, "avx512_bf16": "avx512_bf16" in found,
            "cores": os.cpu_count()}


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB (Linux's ``ru_maxrss`` is KiB); / 1024 for GiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def he_textures(rng: np.random.Generator, count: int = 8, tile_px: int = HE_TILE_PX) -> list[np.ndarray]:
    """``count`` uint8 [tile_px, tile_px, 3] tiles: pink H&E noise with a quarter of 8 px cells dark purple nuclei."""
    textures = []
    for _ in range(count):
        base = np.array([205, 125, 185], np.float32) + rng.normal(0, 18, (tile_px, tile_px, 3))
        nuclei = np.kron(rng.random((tile_px // 8, tile_px // 8)) < 0.25, np.ones((8, 8), bool))
        base[nuclei] = base[nuclei] * 0.45 + np.array([40, 20, 70]) * 0.55
        textures.append(np.clip(base, 0, 255).astype(np.uint8))
    return textures


def texture_at(textures: Sequence[np.ndarray], x: int, y: int, tile_px: int = HE_TILE_PX) -> np.ndarray:
    """The texture of the slide tile whose top-left is level-0 (x, y): neighbours differ, the pattern repeats."""
    return textures[((x // tile_px) * 7 + (y // tile_px) * 3) % len(textures)]


def report(result: dict) -> None:
    """The child's answer to its parent: one ``RESULT <json>`` line on stdout."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def read_result(stdout: str) -> Optional[dict]:
    """The last ``RESULT`` line of a child's stdout, parsed (None: it reported nothing)."""
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    return json.loads(lines[-1][len(RESULT_PREFIX):]) if lines else None


def child_command(script: str, *args: str) -> list[str]:
    """The command that runs ``script`` (a benchmark's ``__file__``) with ``args`` under this Python."""
    return [sys.executable, os.path.abspath(script), *args]


def run_child(cmd: Sequence[str], *, env: Optional[dict] = None, cwd: Optional[str] = None,
              capture_stderr: bool = True) -> dict:
    """Runs a child to its end and returns what it ``report``-ed.

    ``capture_stderr`` False lets the child's stderr (its progress) through to
    this process's.  A reported result counts even if the child's exit then
    fails (TensorFlow's teardown can); ``ChildFailed`` when it reported nothing.
    """
    proc = subprocess.run(list(cmd), env=env, cwd=cwd, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE if capture_stderr else None, text=True, check=False)
    result = read_result(proc.stdout)
    if result is not None:
        return result
    last = ((proc.stderr or "").strip().splitlines() or ["no output"])[-1]
    raise ChildFailed(f"{os.path.basename(cmd[1]) if len(cmd) > 1 else cmd[0]} child failed "
                      f"(exit {proc.returncode}): {last}", proc.returncode, last)
