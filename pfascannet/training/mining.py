"""Hard-negative mining from whole-slide maps of the training slides (Sec. 1, [5, 7]).

The paper cites hard-negative mining as the usual answer to the false
positives that decide a slide's score (the map's maximum) and fights them with
its boundary-aware decoder; a from-scratch run needs both.  A round here does
what a user would do by hand: export the current weights as the dense detector,
scan every training slide with the production scanner, and turn the map's
confident maxima in normal tissue into ``hard_negative`` training patches.
Random normal patches (``sampling.HardNegativeMiner``, the ``patches`` source)
rarely land on the few mimics a slide holds; the whole-slide map finds all of
them, at the cost of one scan of the training slides per round.

A round's scan goes to its own folder (``<workdir>/mining/step_<N>/``, laid out
as any scan): a killed round resumes slide by slide, and the maps stay for
inspection.  Under several workers every worker runs the round; the scanner's
per-slide locks share the slides between them (each worker passes over a slide
another holds and waits for it only once its own are done, as ``scan_slides``
does), and every worker then reads the same maps, so all pick the same negatives.

A negative is a maximum of the map at or above ``threshold``, in tissue (the
Otsu mask the sampler uses: glass inside a scanned ROI is never a "mimic"),
more than ``TUMOUR_CLEARANCE_PX`` from annotated tumour, at most ``per_slide``
from one slide (``negatives_from_map``).

A run's rounds (``TrainSettings.mining_steps``) each leave one CSV in the
workdir (``round_path``: ``hard_negatives.csv``, ``hard_negatives_step<N>.csv``),
written by the chief and read back on a resume instead of mined again
(``load_round``); ``run_round`` runs one with the current weights, from the
slides' maps or from random normal patches (``hard_negative_source``).
"""

from __future__ import annotations

import os
import time
from typing import Optional

from pfascannet import geometry
from pfascannet.data import sampling
from pfascannet.evaluation.features import read_probability_map
from pfascannet.evaluation.mimics import CohortMimics
from pfascannet.inference import engine
from pfascannet.inference.detectors import KerasDetector
from pfascannet.inference.lesions import lesion_candidates
from pfascannet.inference.model_run import ModelRun
from pfascannet.inference.scan_settings import ScanSettings
from pfascannet.layout import RunFolder, ScanFolder
from pfascannet.model.detector import build_detector, transfer_weights
from pfascannet.model.precision import dtype_policy
from pfascannet.progress import LOGGER
from pfascannet.training.settings import TrainSettings

MINING_RADIUS_UM = 100.0
"""Reach of a map maximum when picking negatives: one point per ~0.2 mm blob of false positive."""

TUMOUR_CLEARANCE_PX = 64
"""A candidate within this many level-0 pixels of annotated tumour is a boundary case, not a mimic."""


def mine_from_slides(
    model,
    model_config,
    sampler: sampling.PatchSampler,
    out_dir: str,
    *,
    threshold: float = 0.5,
    max_keep: int = 64,
    per_slide: Optional[int] = None,
    alpha: int = geometry.PAPER_ALPHA,
    roi_px: int = geometry.PAPER_ROI_PX,
    batch: int = 2,
    precision: str = "float32",
) -> list[sampling.PatchSample]:
    """One mining round: dense maps of ``sampler``'s slides -> hard-negative samples.

    Args:
      model: the training model (or any model holding the detector's layers).
      model_config: the ``ModelConfig`` it was built with.
      sampler: the training cohort's sampler (slides and their truth).
      out_dir: the round's scan folder (resumable; maps kept).
      threshold: tumour probability from which a normal-tissue maximum is a false positive.
      max_keep: most negatives returned, most confident first.
      per_slide: most negatives from one slide (None: ``max(4, max_keep // 4)``),
        so one slide full of mimics does not take the whole round.
      alpha, roi_px: the scan grid (the paper's 16 / 2708 by default).
      batch: ROIs per model call.
      precision: the scan's precision, the run's own (a bf16 run mines at bf16, 2x the float32
        speed on an AVX512-BF16 CPU; BENCHMARKS.md, issue 24).

    Returns:
      ``hard_negative`` samples (label 0) centred on the maxima, by decreasing probability.
    """

    per_slide = max(4, max_keep // 4) if per_slide is None else int(per_slide)
    detector = _detector(model_config, alpha, precision)
    transfer_weights(model, detector)
    run = ModelRun(KerasDetector(detector, alpha, roi_px), geometry.ScanGeometry(alpha=alpha, roi_px=roi_px),
                   name="training weights")
    options = ScanSettings(batch=batch, heatmap=False, progress=False)
    slides = sorted(sampler.slides.items())
    # Slides another worker holds are passed over, then waited for once ours are done.
    locked = [(sid, entry) for sid, entry in slides
              if engine.scan_slide(entry.image_path, [run], out_dir, options).status == "locked"]
    for _, entry in locked:
        engine.scan_slide(entry.image_path, [run], out_dir, options, wait=True)
    found: list[tuple[float, sampling.PatchSample]] = []
    for slide_id, _ in slides:
        prob_map, meta = read_probability_map(ScanFolder(out_dir).map_npy(slide_id))
        found += negatives_from_map(prob_map, int(meta["stride_px"]), sampler.truth(slide_id), slide_id,
                                    threshold=threshold, per_slide=per_slide)
    found.sort(key=lambda cs: (-cs[0], cs[1].slide_id, cs[1].y, cs[1].x))
    return [s for _, s in found[:max_keep]]


def negatives_from_map(
    prob_map, stride_px: int, truth: sampling.SlideTruth, slide_id: str, *, threshold: float, per_slide: int,
) -> list[tuple[float, sampling.PatchSample]]:
    """``(probability, hard_negative sample)`` of a slide's map, most confident first (see the module docstring).

    Maxima (``lesion_candidates`` within ``MINING_RADIUS_UM``) at or above
    ``threshold`` whose centre lies in ``truth``'s tissue mask and more than
    ``TUMOUR_CLEARANCE_PX`` level-0 pixels from annotated tumour, at most ``per_slide``.
    """
    out: list[tuple[float, sampling.PatchSample]] = []
    r = TUMOUR_CLEARANCE_PX
    ds = truth.tissue_downsample
    rows, cols = truth.tissue.shape
    for cand in lesion_candidates(prob_map, int(stride_px), floor=threshold, radius_um=MINING_RADIUS_UM,
                                  mpp=truth.mpp, dimensions_xy=truth.dimensions):
        if len(out) == per_slide:
            break
        if not truth.tissue[min(cand.y // ds, rows - 1), min(cand.x // ds, cols - 1)]:
            continue  # glass (inside a scanned ROI): not a mimic of tumour
        if truth.mask_window((cand.x - r, cand.y - r), (2 * r, 2 * r)).any():
            continue  # a boundary case, not a mimic
        x, y = truth.top_left((cand.x, cand.y))  # the patch centred on it, at the model's pixel size
        out.append((cand.confidence, sampling.PatchSample(slide_id, x, y, 0, "hard_negative")))
    return out


_DETECTORS: dict = {}


def _detector(model_config, alpha: int, precision: str = "float32"):
    """One detector model per (config, alpha) for the whole run: each round loads the current weights into it.

    A new Keras model every round kept its traced functions alive: resident
    memory stepped up ~0.2 GB a round in a 2,000-step run (BENCHMARKS.md).
    """
    key = (model_config, alpha, precision)
    if key not in _DETECTORS:
        with dtype_policy(precision):
            _DETECTORS[key] = build_detector(model_config, alpha=alpha, input_px=None)
    return _DETECTORS[key]


# The rounds of a run (``TrainSettings.mining_steps``): one CSV of negatives per
# round in the workdir, read back on a resume instead of mined again.


def round_path(workdir: str, s: TrainSettings, step: int) -> str:
    """The CSV of the hard-negative round at ``step`` in ``workdir``."""
    # The first round keeps the name runs made before rounds existed gave it.
    return RunFolder(workdir).hard_negatives_csv(step, first=step == s.mining.at)


def load_round(workdir: str, s: TrainSettings, step: int) -> Optional[list]:
    """The negatives a finished round found (None: the round has not run)."""
    path = round_path(workdir, s, step)
    return sampling.load_samples(path) if os.path.exists(path) else None


def join_rounds(hard: list, found: Optional[list]) -> list:
    """Earlier rounds' negatives plus a round's new ones (a place found twice counts once)."""
    seen = {(h.slide_id, h.x, h.y) for h in hard}
    return hard + [h for h in found or [] if (h.slide_id, h.x, h.y) not in seen]


def run_round(s: TrainSettings, sampler, reader, model, model_config, chief: bool, workdir: str, step: int) -> list:
    """One hard-negative round with the current weights (Sec. 1; ``hard_negative_source``)."""
    t0 = time.perf_counter()
    m = s.mining
    if m.source == "slides":
        found = mine_from_slides(model, model_config, sampler, RunFolder(workdir).mining_dir(step),
                                 threshold=m.threshold, max_keep=m.max_keep, precision=s.model.precision)
        what = f"{len(sampler.slides)} training slides scanned"
        on = CohortMimics(s.data).count_on((h.slide_id, *sampler.truth(h.slide_id).centre_of((h.x, h.y)))
                                           for h in found) if s.data else None
        if on is not None:  # a synthetic cohort: does the round pick the generator's mimics?
            what += f"; {on} of them on the cohort's recorded mimics"
    else:
        miner = sampling.HardNegativeMiner(
            candidates=m.candidates, threshold=m.threshold, max_keep=m.max_keep,
            batch_size=max(1, min(8, s.batch_size)),
        )
        seed = s.seed + 1 + s.mining_steps().index(step)
        found = miner(sampler, sampling.classifier_predict_fn(model), reader.read_patch, seed=seed)
        what = f"{m.candidates} normal patches scored"
    if chief:
        sampling.save_samples(round_path(workdir, s, step), found)
    LOGGER.info(f"hard-negative round at step {step}: {len(found)} false positives >= {m.threshold:g} "
                f"({what}, {time.perf_counter() - t0:.0f} s)")
    return found
