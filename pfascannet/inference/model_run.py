"""The model side of a scan: the detector protocol, ``ModelRun``, edge-ROI detectors and the batch prediction.

The detector protocol, the one every model of a scan satisfies (``inference.detectors.load_detector``
gives one, ``detectors.KerasDetector`` wraps a live model in it):
``alpha``, ``roi_px``, ``tile_px``, ``stride_px`` and
``predict(uint8 [N, LR, LR, 3]) -> float32 [N, Lm, Lm]`` tumour probability
(Zhao et al., MICCAI 2019, §2.2).  Patch mode (the speed baseline) runs the
same weights as the 692 patch classifier over every stride-spaced patch.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Protocol, runtime_checkable

import numpy as np

from pfascannet import geometry
from pfascannet.inference.plan import edge_split
from pfascannet.inference.scan_settings import ScanError, ScanSettings


@runtime_checkable
class Detector(Protocol):
    """What the scanner needs from a detector, whatever its format (``inference.detectors``).

    Detectors may also say ``training_mpp`` (um/px of their training slides);
    the scanner then warns about slides at another pixel size.
    """

    alpha: int
    roi_px: int

    @property
    def tile_px(self) -> int: ...

    @property
    def stride_px(self) -> int: ...

    def predict(self, rois: np.ndarray) -> np.ndarray: ...


@dataclasses.dataclass
class ModelRun:
    """One model of a scan (an ensemble has several) and the grid it fills.

    Attributes:
      detector: the model.
      grid: alpha and ROI side of the map grid and of the ROIs read.
      mode: ``"dense"`` (the detector is the FCN at ``grid``) or ``"patch"``
        (the speed baseline: the same weights as the patch classifier, alpha 1
        on one 692 patch -- the detector's ``predict_patches``, or ``predict``
        of an alpha-1 / 692 detector -- applied to every ``stride``-spaced
        patch of each ROI).
      name: the model's path or id, recorded in the outputs.
      digest: the model's content (a hash of its files or weights); resume and
        skip decisions compare it, so a model replaced behind the same path is
        rescanned.  None: ``content_digest(detector)`` (the detector's own
        ``digest``, else a hash of the weights of the Keras model it holds),
        else the name (a detector whose content cannot be read: give
        ``digest`` to have it rescanned when it changes).
    """

    detector: Detector
    grid: geometry.ScanGeometry
    mode: str = "dense"
    name: str = "model"
    digest: Optional[str] = None

    def __post_init__(self):
        d = self.detector
        if self.digest is None:
            self.digest = content_digest(d) or self.name
        if self.mode == "dense":
            if (int(d.alpha), int(d.roi_px)) != (self.grid.alpha, self.grid.roi_px):
                raise ScanError(
                    f"{self.name}: detector is alpha={d.alpha}, roi={d.roi_px} but the grid is "
                    f"alpha={self.grid.alpha}, roi={self.grid.roi_px}"
                )
        elif self.mode == "patch":
            if patch_classifier(d) is None:
                raise ScanError(
                    f"{self.name}: patch mode needs a detector with predict_patches() or the patch "
                    f"classifier itself (alpha=1, roi={geometry.PATCH_PX}); got alpha={d.alpha}, roi={d.roi_px}"
                )
        else:
            raise ScanError(f"mode must be 'dense' or 'patch', got {self.mode!r}")

    @property
    def precision(self) -> str:
        """What the detector computes in (``model.precision``); float32 for detectors that do not say."""
        return str(getattr(self.detector, "precision", "float32"))

    def describe(self) -> dict:
        out = {
            "name": self.name, "mode": self.mode, "alpha": self.grid.alpha, "roi_px": self.grid.roi_px,
            "digest": self.digest,
        }
        out.update(numeric_settings(self.detector))
        return out


def numeric_settings(detector) -> dict:
    """Every runtime setting of ``detector`` that changes the numbers of its maps (part of their fingerprint).

    The weights (hence the digest) are the same under each, but the map is
    not: a bfloat16 map is another map, and XLA's kernels and oneDNN's differ
    by up to 0.05 in bfloat16 (``model.precision``); JAX and PyTorch run
    other kernels again.  Each is named only when not the default (float32,
    no XLA, TensorFlow), so maps made before it was a setting stay valid.
    """
    out = {}
    precision = str(getattr(detector, "precision", "float32"))
    if precision != "float32":
        out["precision"] = precision
    if bool(getattr(detector, "xla", False)):
        out["xla"] = True
    backend = getattr(detector, "backend", None)
    if backend not in (None, "tensorflow"):
        out["backend"] = str(backend)
    return out


def content_digest(detector) -> Optional[str]:
    """The detector's ``digest``, else a hash of the weights of the Keras model it is or holds (``model``), or None."""
    digest = getattr(detector, "digest", None)
    if digest is not None:
        return str(digest)
    for model in (detector, getattr(detector, "model", None)):
        if model is not None and hasattr(model, "weights") and hasattr(model, "get_weights"):
            from pfascannet.inference.detectors import weights_digest  # noqa: PLC0415  (Keras only when a model is there)

            return "weights:" + weights_digest(model)
    return None


def patch_classifier(detector) -> Optional[Callable[[np.ndarray], np.ndarray]]:
    """The detector's 692 patch classifier ``uint8 [N, 692, 692, 3] -> float32 [N]``, or None if it has none.

    Its ``predict_patches`` (the same weights at alpha 1), else the ``predict`` of an alpha-1 detector on
    692 px inputs (the patch classifier itself).  Patch mode and the candidate views (``inference.views``)
    classify patches through it.
    """
    classify = getattr(detector, "predict_patches", None)
    if classify is None and int(detector.alpha) == 1 and int(detector.roi_px) == geometry.PATCH_PX:
        classify = detector.predict
    if classify is None:
        return None
    return lambda patches: np.asarray(classify(patches), np.float32).reshape(len(patches))


EDGE_SPLIT = 2
"""Edge ROIs are quarter tiles (``plan.make_plan(split=...)``)."""


def edge_detector(run: ModelRun, side_px: int):
    """The run's detector serving ROIs of ``side_px`` (the same model), or None if it cannot."""
    if side_px == run.grid.roi_px:
        return run.detector
    cache = run.__dict__.setdefault("_edge_detectors", {})
    if side_px not in cache:
        at = getattr(run.detector, "at_roi_px", None)
        cache[side_px] = at(side_px) if run.mode == "dense" and callable(at) else None
    return cache[side_px]


def plan_split(run: ModelRun, options: ScanSettings) -> int:
    """The ``split`` of a run's plan: ``EDGE_SPLIT`` where edge ROIs are on and possible, else 1."""
    split = edge_split(run.grid, EDGE_SPLIT) if options.edge_rois and run.mode == "dense" else 1
    if split > 1 and edge_detector(run, geometry.roi_px(run.grid.tile_px // split, run.grid.alpha)) is None:
        return 1
    return split


def predict_tiles(run: ModelRun, rois: np.ndarray, patch_batch: int) -> np.ndarray:
    """Tiles ``[N, Lm, Lm]`` of the batch, dense or patch by patch (edge ROIs: their smaller Lm)."""
    lm, stride = run.grid.tile_px, run.grid.stride_px
    if run.mode == "dense" and rois.shape[1] != run.grid.roi_px:
        lm = geometry.tile_px(int(rois.shape[1]), run.grid.alpha)
        probs = np.asarray(edge_detector(run, int(rois.shape[1])).predict(rois), np.float32)
    elif run.mode == "dense":
        probs = np.asarray(run.detector.predict(rois), np.float32)
    else:
        probs = np.empty((rois.shape[0], lm, lm), np.float32)
        p = geometry.PATCH_PX
        classify = patch_classifier(run.detector)
        for n, roi in enumerate(rois):
            # Views, not copies: only patch_batch patches are materialised at a time.
            windows = np.lib.stride_tricks.sliding_window_view(roi, (p, p, 3))[::stride, ::stride, 0]
            flat = windows.reshape(lm * lm, p, p, 3)
            out = np.empty(lm * lm, np.float32)
            for s in range(0, lm * lm, patch_batch):
                chunk = np.ascontiguousarray(flat[s : s + patch_batch])
                out[s : s + len(chunk)] = classify(chunk)
            probs[n] = out.reshape(lm, lm)
    if probs.shape != (rois.shape[0], lm, lm):
        raise ScanError(f"{run.name}: detector returned {probs.shape}, expected {(rois.shape[0], lm, lm)}")
    return probs

