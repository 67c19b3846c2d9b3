"""Scan whole slides with an exported detector: probability maps, lesions, heatmaps, contours.

Zhao et al., MICCAI 2019, §2.2: dense ROIs of eq. (1) over tissue, stitched
into a map at stride 512/alpha (32 level-0 px at alpha 16: Camelyon's level 5).
Output layout: ARCHITECTURE.md "Files between stages".

Examples::

    python experiments/scan.py --model runs/export --slides cohort/ --out scan/
    python experiments/scan.py --model m16 --ensemble m32 --slides list.txt --out scan/ --roi auto
    python experiments/scan.py ... --shard 0/4     # on machine 0 of 4; no slide is done twice
    python experiments/scan.py ... --mode patch    # the patch-by-patch speed baseline
    python experiments/scan.py ... --stream        # no ROI border computed twice (same map; inference/stream.py)
    python experiments/scan.py ... --precision bfloat16   # mixed precision (2.5x on an AVX512-BF16 CPU; BENCHMARKS.md)
    python experiments/scan.py ... --ray           # one Ray task per slide on a local Ray (pip install -e '.[ray]')
    python experiments/scan.py ... --ray=auto      # ... or on the Ray cluster this machine belongs to (BUILD.md)

Kill it at any time and rerun the same command: finished slides are skipped
and a slide in progress resumes from its last checkpoint, giving the same map.
Several processes may scan one folder into one --out at once: each slide is
scanned by one of them (a lock per slide), the others pass over it and come
back to it at the end.
Exit status (README): 0 all slides done, 1 some slide failed (each named in
the summary), 2 bad input or flags (one ``error:`` line, before any model loads).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Optional

from absl import flags, logging

from pfascannet import geometry
from pfascannet import settings as settings_lib
from pfascannet.cliutil import fail
from pfascannet.inference import engine, ray_scan, runs, scan_settings, slide_list
from pfascannet.inference import xla as xla_policy
from pfascannet.model.precision import CHOICES as PRECISION_CHOICES
from pfascannet.settings import setting

MODES = ("dense", "patch")


@dataclasses.dataclass(frozen=True)
class ScanCommand:
    """The flags of ``pfascannet scan`` that are not ``ScanSettings`` or ``RaySettings`` (inputs, models)."""

    model: Optional[str] = setting(None, help="Export directory, .keras file or SavedModel directory.")
    slides: Optional[str] = setting(
        None, help="A slide, a folder of slides (or a cohort with images/), or a list file (.txt/.csv).")
    out: Optional[str] = setting(None, help="Output folder.")
    alpha: Optional[int] = setting(None, help="Dense coefficient of the map (default: the export's); 16 -> 32 px map.")
    roi: Optional[str] = setting(None, help="ROI side LR on the grid of eq. (1) (e.g. 2708), or 'auto' for the largest "
                                            "that fits --memory_gb; default: the export's.")
    memory_gb: Optional[float] = setting(
        None, check=settings_lib.optional(settings_lib.positive),
        help="Memory budget of one batch for --roi=auto (default: a quarter of RAM).")
    precision: Optional[str] = setting(
        None, choices=PRECISION_CHOICES,
        help="Compute precision (mixed; softmax in float32); default: the export's. auto: bfloat16 where the CPU "
             "has amx_bf16 or avx512_bf16, else float32 (the scan says which). Another than the export's loads "
             "its .keras model.")
    xla: str = setting("auto", choices=xla_policy.XLA_SETTINGS,
                       help="XLA-compile the forward pass: auto = where measured faster (TensorFlow on a GPU; "
                            "always under JAX).")
    mode: str = setting("dense", choices=MODES, help="dense FCN scan, or the patch-by-patch baseline.")
    ensemble: tuple[str, ...] = setting(
        (), repeat=True, help="Another model to average with (repeatable); scanned at --ensemble_alpha.")
    ensemble_alpha: int = setting(32, help="Alpha of the ensemble members (the paper pairs 16 with 32).")
    shard: Optional[str] = setting(
        None, help="i/N: scan only slides k with k mod N == i of the sorted list (0 <= i < N).")

    def __post_init__(self):
        settings_lib.check_fields(self, scan_settings.ScanError)


FLAGS = flags.FLAGS
SETTINGS = (ScanCommand, scan_settings.ScanSettings, ray_scan.RaySettings)
"""Every flag of the stage, generated from these dataclasses' fields (``pfascannet.settings``)."""
settings_lib.define_stage_flags(SETTINGS)


def main(argv) -> None:
    for name in ("model", "slides", "out"):
        if not getattr(FLAGS, name):
            _usage(f"--{name} is required")

    if FLAGS.ray is not None:
        ray_scan.import_ray()  # not installed: one line, before anything else

    # Every flag and input is checked here, before the (slow) model load.
    shard = slide_list.parse_shard(FLAGS.shard) if FLAGS.shard else None
    options = settings_lib.from_flags(scan_settings.ScanSettings, FLAGS)
    roi = FLAGS.roi
    if roi not in (None, "auto"):
        try:
            roi = int(roi)
        except ValueError:
            _usage(f"--roi must be an integer or 'auto', got {FLAGS.roi!r}")
    settings_lib.from_flags(ScanCommand, FLAGS)  # the declared checks (--memory_gb > 0)

    for name in ("alpha", "ensemble_alpha"):
        if getattr(FLAGS, name) is not None:
            geometry.check_alpha(getattr(FLAGS, name))  # even when no --ensemble uses it
    if os.path.exists(FLAGS.out) and not os.path.isdir(FLAGS.out):
        _usage(f"--out {FLAGS.out} exists and is not a folder")
    existing = os.path.abspath(FLAGS.out)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.access(existing, os.W_OK | os.X_OK):
        _usage(f"--out {FLAGS.out}: cannot write in {existing} (permission denied)")
    if FLAGS.stream and FLAGS.mode != "dense":
        _usage("--stream computes the dense map; it cannot be used with --mode=patch")
    specs = runs.resolve_runs(
        FLAGS.model,
        alpha=FLAGS.alpha,
        roi=roi,
        mode=FLAGS.mode,
        ensemble=FLAGS.ensemble,
        ensemble_alpha=FLAGS.ensemble_alpha,
        batch=FLAGS.batch,
        memory_budget_bytes=None if FLAGS.memory_gb is None else FLAGS.memory_gb * 2**30,
        precision=FLAGS.precision,
        xla=FLAGS.xla,
        layers=FLAGS.stream,
    )
    slides = slide_list.list_slides(FLAGS.slides)
    _check_slides(slide_list.shard_slides(slides, shard) if shard is not None else slides)
    if FLAGS.ray is not None:  # the workers load the model; the driver never does
        summary = ray_scan.scan_slides_ray(slides, specs, FLAGS.out, options, shard=shard,
                                           ray_options=settings_lib.from_flags(ray_scan.RaySettings, FLAGS))
        sys.exit(0 if summary.ok else 1)
    model_runs = [runs.load_spec(spec) for spec in specs]
    for r in model_runs:
        logging.info(
            f"model {r.name}: alpha={r.grid.alpha} roi={r.grid.roi_px} tile={r.grid.tile_px} "
            f"stride={r.grid.stride_px} px mode={r.mode} precision={r.precision} "
            f"xla={'on' if getattr(r.detector, 'xla', False) else 'off'} digest={r.digest}"
        )
    summary = engine.scan_slides(slides, model_runs, FLAGS.out, options, shard=shard)  # prints the summary
    if not summary.ok:
        sys.exit(1)


def _check_slides(slides) -> None:
    """Exit 2 (one line) for a missing slide path, or when no listed slide can be scanned at all.

    Slides that exist but cannot be scanned (unreadable, no pixel size) among
    others that can are left to the scan, which names each as failed (exit 1).
    """
    missing = [p for p in slides if not os.path.exists(p)]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        _usage(f"{missing[0]}: no such slide file{more}")
    problems = [slide_list.check_slide(p, FLAGS.mpp) for p in slides]
    if problems and all(problems):
        more = f" (and {len(problems) - 1} more slide(s) that cannot be scanned)" if len(problems) > 1 else ""
        _usage(f"{problems[0]}{more}")


def _usage(message: str) -> None:
    fail(message)


def prepare_argv(argv: list) -> list:
    # A bare --ray (no address) means a local Ray; absl string flags need a value.
    return [a + "=local" if a == "--ray" and (argv[i + 1:i + 2] or ["-"])[0].startswith("-") else a
            for i, a in enumerate(argv)]
