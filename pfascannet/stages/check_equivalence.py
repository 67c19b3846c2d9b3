"""Checks the central invariant on a saved detector: dense output == patch classifier.

Samples output positions of one ROI (the four corners always included), runs
the patch classifier -- the same weights at alpha = 1 -- on the matching 692
patches (top-left at stride * (u, v) in the ROI, eq. (1)), and prints the
largest |difference|.  Exits 1 if it is above --tolerance.

    pfascannet check-equivalence --model EXPORT_DIR
    pfascannet check-equivalence --model EXPORT_DIR/detector.keras --roi_px 1716
    pfascannet check-equivalence --model EXPORT_DIR --slide S.tif --x 40000 --y 30000

The ROI is read from --slide (level 0, top-left --x, --y), from --image (its
top-left LR x LR), or made up (structured, so outputs vary by position).
The patch classifier is rebuilt from the .keras weights when the export has
them, else it is the SavedModel's ``patch_classifier`` endpoint.  --shift_px
offsets the patches: a control that must report a mismatch.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Optional

import cv2
import numpy as np
from absl import flags

from pfascannet import settings as settings_lib
from pfascannet.errors import PfaError
from pfascannet.io_utils import write_json
from pfascannet.model.equivalence import compare_dense_to_patches, structured_roi
from pfascannet.settings import setting
from pfascannet.slide.reader import SlideReader


@dataclasses.dataclass(frozen=True)
class CheckEquivalenceCommand:
    """The flags of ``pfascannet check-equivalence``."""

    model: Optional[str] = setting(None, required=True, help="Export directory, .keras file, or SavedModel directory.")
    format: str = setting("auto", choices=("auto", "savedmodel", "keras"),
                          help="Which format of the export computes the dense output.")
    roi_px: Optional[int] = setting(None, help="ROI side LR (default: the export's).")
    positions: int = setting(16, check=settings_lib.at_least(4),
                             help="Output positions to compare (>= 4: the corners are always included).")
    seed: int = setting(0, help="Seed of the position sample and of the made-up ROI.")
    tolerance: float = setting(1e-4, check=settings_lib.positive, help="Largest |dense - patch| accepted.")
    slide: Optional[str] = setting(None, help="Read the ROI from this whole-slide image (level 0).")
    x: int = setting(0, help="ROI top-left x in level-0 px (with --slide).")
    y: int = setting(0, help="ROI top-left y in level-0 px (with --slide).")
    image: Optional[str] = setting(None, help="Read the ROI from the top-left of this RGB image file.")
    shift_px: int = setting(0, help="Offset the patches by this many px (a control that should fail).")
    json_out: Optional[str] = setting(None, help="Also write the result as JSON here.")

    def __post_init__(self):
        settings_lib.check_fields(self, PfaError)


FLAGS = flags.FLAGS
SETTINGS = (CheckEquivalenceCommand,)
"""Every flag of the stage, generated from these dataclasses' fields (``pfascannet.settings``)."""
settings_lib.define_stage_flags(SETTINGS)


def _read_roi(lr: int):
    if FLAGS.slide and FLAGS.image:
        raise PfaError("give --slide or --image, not both")
    if FLAGS.slide:
        with SlideReader(FLAGS.slide) as reader:
            roi = reader.read_region((FLAGS.x, FLAGS.y), 0, (lr, lr))
        return np.ascontiguousarray(roi[..., :3], dtype=np.uint8), f"{FLAGS.slide} at ({FLAGS.x}, {FLAGS.y})"
    if FLAGS.image:
        if not os.path.isfile(FLAGS.image):
            raise FileNotFoundError(f"no image at {FLAGS.image}")
        bgr = cv2.imread(FLAGS.image, cv2.IMREAD_COLOR)
        if bgr is None:
            raise PfaError(f"cannot read {FLAGS.image} as an image")
        if bgr.shape[0] < lr or bgr.shape[1] < lr:
            raise PfaError(f"{FLAGS.image} is {bgr.shape[1]}x{bgr.shape[0]}, smaller than the ROI side {lr}")
        return np.ascontiguousarray(bgr[:lr, :lr, ::-1]), FLAGS.image
    return structured_roi(lr, FLAGS.seed), f"structured test ROI (seed {FLAGS.seed})"


def main(argv):
    del argv
    from pfascannet.inference import detectors  # noqa: PLC0415  (imports Keras: after flag parsing)

    settings_lib.from_flags(CheckEquivalenceCommand, FLAGS)  # the declared checks (--positions, --tolerance)
    dense = detectors.load_detector(FLAGS.model, format=FLAGS.format, roi_px=FLAGS.roi_px)
    patch = dense
    if isinstance(dense, detectors.SavedModelDetector):
        try:  # prefer literally rebuilding the alpha = 1 classifier from the .keras weights
            patch = detectors.load_detector(FLAGS.model, format="keras", roi_px=dense.roi_px)
        except (PfaError, FileNotFoundError):
            patch = dense
    roi, source = _read_roi(dense.roi_px)
    report = compare_dense_to_patches(
        dense.predict, patch.predict_patches, roi, dense.alpha,
        count=FLAGS.positions, seed=FLAGS.seed, shift_px=FLAGS.shift_px,
    )
    ok = report.max_abs_diff <= FLAGS.tolerance
    print(f"model        {FLAGS.model} ({type(dense).__name__}; patches by {type(patch).__name__})")
    print(f"geometry     alpha={dense.alpha} roi_px={dense.roi_px} tile_px={dense.tile_px} stride_px={dense.stride_px}")
    print(f"roi          {source}")
    print(f"positions    {len(report.positions)} incl. 4 corners; patch shift {FLAGS.shift_px} px")
    print(f"spread       {report.spread:.6g} (max - min tumour probability over the dense tile)")
    print(f"max |diff|   {report.max_abs_diff:.3g} (tolerance {FLAGS.tolerance:g}): {'OK' if ok else 'MISMATCH'}")
    if FLAGS.json_out:
        write_json(FLAGS.json_out, {
            "model": FLAGS.model, "alpha": dense.alpha, "roi_px": dense.roi_px, "tile_px": dense.tile_px,
            "roi": source, "shift_px": FLAGS.shift_px, "positions": report.positions,
            "dense": report.dense, "patch": report.patch, "spread": report.spread,
            "max_abs_diff": report.max_abs_diff, "tolerance": FLAGS.tolerance, "ok": ok,
        })
    if not ok:
        sys.exit(1)
