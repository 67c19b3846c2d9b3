"""The streaming whole-slide scanner: ROIs read ahead on threads while the model runs.

Zhao et al., MICCAI 2019, §2.2 (and Table 1's 7.2 min per WSI): the detector
turns each ``LR x LR`` ROI of the plan (``inference.plan``, eq. (1)) into an
``Lm x Lm`` probability tile and the tiles are stitched into the slide's map.

How the scan keeps the model busy and the memory flat:

- Reader threads (``workers``), each with its own OpenSlide handle (OpenSlide
  decodes with the GIL released), read the ROIs of the next
  ``prefetch_batches`` batches while the main thread runs the model on the
  current one.  Only those ROIs and the map are ever in memory, never the slide.
- Batches are fixed chunks of the plan's ROI list, and the map plus a per-ROI
  'done' flag are checkpointed atomically (every ``checkpoint_every_s``
  seconds, and when the scan is stopped by an exception or Ctrl-C) at batch
  boundaries.  A rerun resumes from the checkpoint and runs the very same
  remaining batches, so the final map equals an uninterrupted run's.
- A slide's outputs are written last and atomically.  Whether a rerun
  skips, redoes or resumes a slide depends on what determines its map: the
  slide file (name, size, mtime), each model's content (a digest of its
  files or weights, ``ModelRun.digest``), alpha, ROI side, mode, scan level,
  tissue settings and mpp.  A checkpoint made with anything else (another
  model behind the same path, say) is discarded; a finished map made with
  them is kept, and settings that only change what is derived from the map
  (lesion threshold, heatmap) are redone from the saved map without the model.
- One slide is scanned by one process at a time: ``scan_slide`` holds an
  ``flock`` on ``S/locks/<slide>.lock`` (released by the kernel if the
  process dies), so several processes started on one folder and one ``--out``
  share the slides; ``scan_slides`` passes over a slide another process holds
  and comes back to it at the end.
- Temporary files are hidden (``.name.tmp-*``) and removed by the next run
  (``io_utils.remove_stale_temps``); the slide lister never lists dot-files.

The detector protocol (``inference.export.load_detector`` gives one):
``alpha``, ``roi_px``, ``tile_px``, ``stride_px`` and
``predict(uint8 [N, LR, LR, 3]) -> float32 [N, Lm, Lm]`` tumour probability.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import json
import math
import os
import sys
import threading
import time
import traceback
from typing import Callable, Optional, Protocol, Sequence, TextIO

import numpy as np

from pfascannet import geometry
from pfascannet.errors import PfaError
from pfascannet.inference import lesions, outputs
from pfascannet.inference.export_meta import mpp_warnings
from pfascannet.inference.plan import RoiPlan, level_downsample, make_plan, tissue_on_map
from pfascannet.io_utils import FileLock, atomic_path, is_temp_name, remove_stale_temps, write_json
from pfascannet.slide.reader import SlideReader

SLIDE_EXTENSIONS = (".tif", ".tiff", ".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide")
"""File name endings taken as slides when a folder is scanned."""


class ScanError(PfaError):
    """Bad scan settings or inputs (slide list, shard, detector geometry)."""


class Detector(Protocol):
    """What the scanner needs from a model (see ``inference.export``)."""

    alpha: int
    roi_px: int
    tile_px: int
    stride_px: int

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
        rescanned.  None: the detector's own ``digest`` attribute (the
        exported detectors have one, computed once per load), else the name.
    """

    detector: Detector
    grid: geometry.ScanGeometry
    mode: str = "dense"
    name: str = "model"
    digest: Optional[str] = None

    def __post_init__(self):
        d = self.detector
        if self.digest is None:
            self.digest = getattr(d, "digest", None)
        if self.mode == "dense":
            if (int(d.alpha), int(d.roi_px)) != (self.grid.alpha, self.grid.roi_px):
                raise ScanError(
                    f"{self.name}: detector is alpha={d.alpha}, roi={d.roi_px} but the grid is "
                    f"alpha={self.grid.alpha}, roi={self.grid.roi_px}"
                )
        elif self.mode == "patch":
            is_patch_classifier = int(d.alpha) == 1 and int(d.roi_px) == geometry.PATCH_PX
            if not hasattr(d, "predict_patches") and not is_patch_classifier:
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
        # The weights (hence the digest) are the same at every precision, but
        # the map is not: a bfloat16 map is a different map.  Named only when
        # not float32, so maps made before precision was a setting stay valid.
        if self.precision != "float32":
            out["precision"] = self.precision
        return out


@dataclasses.dataclass(frozen=True)
class ScanOptions:
    """Runtime settings of a scan.

    ``scan_level``, ``tissue``, ``tissue_downsample`` and ``mpp`` (the tissue
    mask's morphology is physical) decide which ROIs are scanned, so they are
    part of a map's fingerprint; ``threshold`` and ``heatmap`` only change
    what is derived from the map; the rest are speed knobs.

    Attributes:
      batch: ROIs per model call.
      workers: reader threads.
      prefetch_batches: batches read ahead of the model.
      scan_level: pyramid level ROIs are read at (its downsample must be whole).
      tissue: ``"otsu"`` (``slide.tissue.tissue_mask``), ``"all"`` (every ROI),
        or a callable ``reader -> bool mask`` at ``tissue_downsample``.
      tissue_downsample: level-0 pixels per tissue-mask pixel.
      checkpoint_every_s: seconds between checkpoints (0: after every batch).
      patch_batch: patches per model call in patch mode.
      threshold: probability for the contours (lesion candidates are every local maximum >= 0.05).
      mpp: microns per level-0 pixel, overriding the slides' own.
      edge_rois: at the tissue's edge, plan quarter-tile ROIs where they cost
        fewer pixels than the whole ROI (``plan`` module docstring); dense
        mode with a detector that serves smaller sides (``at_roi_px``) only.
        The pixels computed are the whole ROIs' (the central invariant); the
        glass-only quarters are left at 0 like unplanned ROIs, so it is part
        of the map's fingerprint.
      heatmap: write the heatmap PNG.
      progress: print progress with ETA to ``progress_stream``.
      progress_stream: where progress goes (default stderr).
    """

    batch: int = 2
    workers: int = 2
    prefetch_batches: int = 2
    scan_level: int = 0
    tissue: object = "otsu"
    tissue_downsample: int = 32
    checkpoint_every_s: float = 30.0
    patch_batch: int = 32
    threshold: float = 0.5
    mpp: Optional[float] = None
    edge_rois: bool = True
    heatmap: bool = True
    progress: bool = True
    progress_stream: Optional[TextIO] = None

    def __post_init__(self):
        for name in ("batch", "workers", "prefetch_batches", "patch_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ScanError(f"{name} must be an integer >= 1, got {value!r}")
        if not (isinstance(self.tissue, str) and self.tissue in ("otsu", "all")) and not callable(self.tissue):
            raise ScanError(f"tissue must be 'otsu', 'all' or a callable, got {self.tissue!r}")
        if self.mpp is not None and not (_is_number(self.mpp) and math.isfinite(self.mpp) and self.mpp > 0):
            raise ScanError(f"mpp must be a positive number of microns per level-0 pixel, got {self.mpp!r}")
        if not (_is_number(self.threshold) and 0.0 <= self.threshold <= 1.0):
            raise ScanError(f"threshold must be a probability in [0, 1], got {self.threshold!r}")
        if isinstance(self.scan_level, bool) or not isinstance(self.scan_level, int) or self.scan_level < 0:
            raise ScanError(f"scan_level must be an integer >= 0, got {self.scan_level!r}")
        td = self.tissue_downsample
        if isinstance(td, bool) or not isinstance(td, int) or td < 1:
            raise ScanError(f"tissue_downsample must be an integer >= 1, got {td!r}")
        if not (_is_number(self.checkpoint_every_s) and 0 <= self.checkpoint_every_s < math.inf):
            raise ScanError(f"checkpoint_every_s must be a number of seconds >= 0, got {self.checkpoint_every_s!r}")


def _is_number(value) -> bool:
    # NaN fails every comparison, so range checks written as `lo <= x <= hi` reject it.
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


@dataclasses.dataclass
class ScanStats:
    """Timings of one map: wall time, time in the model, time the model waited for reads."""

    n_rois: int = 0
    n_resumed: int = 0
    wall_s: float = 0.0
    model_s: float = 0.0
    wait_s: float = 0.0


# --------------------------------------------------------------------------- progress


def _fmt_s(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "--:--"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """A small progress printer: ROIs done, rate and ETA for the slide and for the whole list.

    On a terminal it redraws one line; otherwise it prints a line at most
    every ``interval_s`` seconds (log files stay short).  The list's ETA
    counts the slides not yet planned at the mean ROIs per slide so far.
    """

    def __init__(self, n_slides: int, stream: Optional[TextIO] = None, enabled: bool = True, interval_s: float = 5.0):
        self.n_slides = n_slides
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval_s = 0.2 if self.tty else interval_s
        self.slide_index = 0
        self.slides_finished = 0
        self.rois_finished = 0  # planned ROIs of finished slides
        self.computed_total = 0
        self.compute_s_total = 0.0
        self._last = 0.0

    def start_slide(self, name: str, n_rois: int, n_done: int) -> None:
        self.slide_index += 1
        self.name, self.n_rois, self.n_done = name, n_rois, n_done
        self.n_computed = 0
        self.t0 = time.monotonic()
        self._print(force=True)

    def resume(self, n: int) -> None:
        """Counts ``n`` ROIs of the current slide as done by an earlier run."""
        if n:
            self.n_done += n
            self._print(force=True)

    def update(self, n: int) -> None:
        self.n_done += n
        self.n_computed += n
        self._print(force=self.n_done >= self.n_rois)

    def end_slide(self, ok: bool = True) -> None:
        self.slides_finished += 1
        self.rois_finished += getattr(self, "n_rois", 0)
        self.computed_total += getattr(self, "n_computed", 0)
        self.compute_s_total += time.monotonic() - getattr(self, "t0", time.monotonic())
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def _rate(self) -> float:
        n = self.computed_total + self.n_computed
        t = self.compute_s_total + (time.monotonic() - self.t0)
        return n / t if n and t > 0 else float("nan")

    def line(self) -> str:
        rate = self._rate()
        left = self.n_rois - self.n_done
        eta = left / rate if rate > 0 else float("nan")
        seen = self.slides_finished + 1
        mean_rois = (self.rois_finished + self.n_rois) / seen
        later = (self.n_slides - self.slide_index) * mean_rois
        eta_all = (left + later) / rate if rate > 0 else float("nan")
        pct = 100.0 * self.n_done / self.n_rois if self.n_rois else 100.0
        return (
            f"[{self.slide_index}/{self.n_slides}] {self.name}: {self.n_done}/{self.n_rois} ROIs "
            f"{pct:5.1f}% {'--' if not rate > 0 else f'{rate:.2f}'} ROI/s ETA {_fmt_s(eta)} | all slides ETA {_fmt_s(eta_all)}"
        )

    def _print(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < self.interval_s:
            return
        self._last = now
        if self.tty:
            self.stream.write("\r\x1b[K" + self.line())
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def message(self, text: str, always: bool = False) -> None:
        if self.enabled or always:
            self.stream.write(("\n" if self.tty else "") + text + "\n")
            self.stream.flush()


# --------------------------------------------------------------------------- one map


def _fingerprint_id(fingerprint: dict) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]


def _warn(text: str, progress: Optional[Progress] = None, options: Optional["ScanOptions"] = None) -> None:
    """One ``warning:`` line on the progress stream (always shown, progress or not)."""
    line = "warning: " + " ".join(str(text).split())
    if progress is not None:
        progress.message(line, always=True)
    else:
        stream = (options.progress_stream if options is not None else None) or sys.stderr
        stream.write(line + "\n")
        stream.flush()


def _load_checkpoint(
    path: str, fingerprint: dict, map_shape: tuple[int, int], n_rois: int, warn: Callable[[str], None] = _warn
):
    """The checkpoint's ``(map, done)``, or None (and one warning) if it cannot serve this scan.

    A checkpoint that cannot be read (truncated, empty, not a zip: any
    exception from loading it) or that another model or other settings made
    is deleted, and the map starts afresh.
    """
    if not os.path.exists(path):
        return None
    problem = None
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["fingerprint"]) != _fingerprint_id(fingerprint):
                problem = "was made by another model or with other settings"
            else:
                prob_map, done = np.asarray(data["map"]), np.asarray(data["done"])
                if prob_map.shape != tuple(map_shape) or done.shape != (n_rois,):
                    problem = f"holds a {prob_map.shape} map of {done.shape} ROIs, not {tuple(map_shape)} of {n_rois}"
    except Exception as exc:  # noqa: BLE001  (BadZipFile, EOFError, zlib.error, ...: all mean unreadable)
        problem = f"cannot be read ({type(exc).__name__}: {' '.join(str(exc).split()) or 'empty or truncated'})"
    if problem is None:
        return prob_map.astype(np.float32), done.astype(bool)
    warn(f"{path} {problem}; discarded, the slide's map starts afresh")
    try:
        os.remove(path)
    except OSError:
        pass
    return None


def _save_checkpoint(path: str, fingerprint: dict, prob_map: np.ndarray, done: np.ndarray) -> None:
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, map=prob_map, done=done, fingerprint=np.array(_fingerprint_id(fingerprint)))


class _ThreadReaders:
    """One SlideReader per reader thread (a shared handle would serialise on its lock)."""

    def __init__(self, path: str, mpp: Optional[float]):
        self.path, self.mpp = path, mpp
        self.local = threading.local()
        self.all: list[SlideReader] = []
        self.lock = threading.Lock()

    def get(self) -> SlideReader:
        reader = getattr(self.local, "reader", None)
        if reader is None:
            reader = SlideReader(self.path, mpp=self.mpp)
            self.local.reader = reader
            with self.lock:
                self.all.append(reader)
        return reader

    def close(self) -> None:
        for reader in self.all:
            reader.close()


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


def plan_split(run: ModelRun, options: "ScanOptions") -> int:
    """The ``split`` of a run's plan: ``EDGE_SPLIT`` where edge ROIs are on and possible, else 1."""
    from pfascannet.inference.plan import edge_split  # noqa: PLC0415

    split = edge_split(run.grid, EDGE_SPLIT) if options.edge_rois and run.mode == "dense" else 1
    if split > 1 and edge_detector(run, geometry.roi_px(run.grid.tile_px // split, run.grid.alpha)) is None:
        return 1
    return split


def _predict(run: ModelRun, rois: np.ndarray, patch_batch: int) -> np.ndarray:
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
        classify = getattr(run.detector, "predict_patches", run.detector.predict)
        for n, roi in enumerate(rois):
            # Views, not copies: only patch_batch patches are materialised at a time.
            windows = np.lib.stride_tricks.sliding_window_view(roi, (p, p, 3))[::stride, ::stride, 0]
            flat = windows.reshape(lm * lm, p, p, 3)
            out = np.empty(lm * lm, np.float32)
            for s in range(0, lm * lm, patch_batch):
                chunk = np.ascontiguousarray(flat[s : s + patch_batch])
                out[s : s + len(chunk)] = np.asarray(classify(chunk), np.float32).reshape(-1)
            probs[n] = out.reshape(lm, lm)
    if probs.shape != (rois.shape[0], lm, lm):
        raise ScanError(f"{run.name}: detector returned {probs.shape}, expected {(rois.shape[0], lm, lm)}")
    return probs


def scan_map(
    slide_path: str,
    run: ModelRun,
    plan: RoiPlan,
    options: ScanOptions,
    checkpoint_path: Optional[str] = None,
    fingerprint: Optional[dict] = None,
    progress: Optional[Progress] = None,
    on_batch: Optional[Callable[[int], None]] = None,
) -> tuple[np.ndarray, ScanStats]:
    """Runs one model over a plan and stitches the probability map (resumable).

    Args:
      slide_path: the slide.
      run: the model and its grid (must match ``plan.geometry``).
      plan: the ROIs to compute.
      options: batch, workers, prefetch, checkpoint interval, mpp.
      checkpoint_path: ``.npz`` for the partial map; None disables resuming.
      fingerprint: settings the checkpoint must match to be resumed.
      progress: progress printer, its slide already started by the caller.
      on_batch: called with the number of ROIs done after each batch (tests
        use it to stop a scan part way).

    Returns:
      ``(map, stats)``: float32 ``plan.map_shape``, 0 outside planned ROIs.
    """
    if plan.geometry != run.grid:
        raise ScanError(f"plan geometry {plan.geometry} does not match the model grid {run.grid}")
    fingerprint = dict(fingerprint or {}, plan=plan.describe(), run=run.describe())
    stats = ScanStats(n_rois=len(plan))
    resumed = None
    if checkpoint_path:
        warn = lambda text: _warn(text, progress, options)  # noqa: E731
        resumed = _load_checkpoint(checkpoint_path, fingerprint, plan.map_shape, len(plan), warn)
    if resumed is not None:
        prob_map, done = resumed
    else:
        prob_map, done = np.zeros(plan.map_shape, np.float32), np.zeros(len(plan), bool)
    stats.n_resumed = int(done.sum())
    # Fixed chunks of the ROI list: a resumed run repeats exactly the batches an
    # uninterrupted one would (checkpoints fall on chunk boundaries).  Whole
    # ROIs and edge ROIs are never in one batch (they differ in size).
    chunks = [
        np.arange(s, min(s + options.batch, end))
        for start, end in ((0, plan.n_whole), (plan.n_whole, len(plan)))
        for s in range(start, end, options.batch)
    ]
    chunks = [c for c in chunks if not done[c].all()]
    if progress is not None:
        progress.resume(stats.n_resumed)  # the caller started the slide (all members' ROIs)
    readers = _ThreadReaders(slide_path, options.mpp)

    def read_roi(k: int) -> np.ndarray:
        lr = plan.roi_side_px(k)
        return readers.get().read_region(plan.roi_xy(k), plan.scan_level, (lr, lr))

    t_start = time.perf_counter()
    last_ckpt = time.monotonic()
    dirty = False
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=options.workers, thread_name_prefix="roi-reader")
    pending: collections.deque = collections.deque()
    queue = iter(chunks)
    try:

        def refill() -> None:
            while len(pending) < options.prefetch_batches + 1:
                chunk = next(queue, None)
                if chunk is None:
                    return
                pending.append((chunk, [pool.submit(read_roi, int(k)) for k in chunk]))

        refill()
        while pending:
            chunk, futures = pending.popleft()
            t0 = time.perf_counter()
            rois = np.stack([f.result() for f in futures])
            t1 = time.perf_counter()
            refill()  # the next reads overlap this batch's model time
            probs = _predict(run, rois, options.patch_batch)
            t2 = time.perf_counter()
            stats.wait_s += t1 - t0
            stats.model_s += t2 - t1
            for n, k in enumerate(chunk):
                r0, r1, c0, c1 = plan.roi_window(int(k))
                prob_map[r0:r1, c0:c1] = probs[n, : r1 - r0, : c1 - c0]
            done[chunk] = True
            dirty = True
            del rois, probs
            if checkpoint_path and time.monotonic() - last_ckpt >= options.checkpoint_every_s:
                _save_checkpoint(checkpoint_path, fingerprint, prob_map, done)
                last_ckpt, dirty = time.monotonic(), False
            if progress is not None:
                progress.update(len(chunk))
            if on_batch is not None:
                on_batch(int(done.sum()))
    except BaseException:
        # Stopped (Ctrl-C, a failing read, a test's injected error): keep the
        # whole batches done so far; the rerun starts after them.
        if checkpoint_path and dirty:
            _save_checkpoint(checkpoint_path, fingerprint, prob_map, done)
        raise
    finally:
        for _, futures in pending:
            for f in futures:
                f.cancel()
        pool.shutdown(wait=True)
        readers.close()
    if checkpoint_path and dirty:
        # Keep a finished map until the slide's outputs are written: an
        # ensemble killed in its second member resumes without redoing the first.
        _save_checkpoint(checkpoint_path, fingerprint, prob_map, done)
    stats.wall_s = time.perf_counter() - t_start
    return prob_map, stats


# --------------------------------------------------------------------------- ensembles


def pool_to_stride(prob_map: np.ndarray, factor: int, out_shape: tuple[int, int]) -> np.ndarray:
    """Averages ``factor x factor`` blocks of a finer map onto a coarser grid.

    Cells of the coarse grid that run past the slide average only the fine
    cells that exist (the fine map of a 16-px grid has ceil(H/16) rows).
    """
    if factor == 1:
        return prob_map[: out_shape[0], : out_shape[1]]
    rows, cols = out_shape
    padded = np.full((rows * factor, cols * factor), np.nan, np.float64)
    r, c = min(prob_map.shape[0], rows * factor), min(prob_map.shape[1], cols * factor)
    padded[:r, :c] = prob_map[:r, :c]
    blocks = padded.reshape(rows, factor, cols, factor)
    count = np.isfinite(blocks).sum(axis=(1, 3))
    total = np.nansum(blocks, axis=(1, 3))
    return (total / np.maximum(count, 1)).astype(np.float32)


def ensemble_maps(maps: Sequence[np.ndarray], strides: Sequence[int], map_shape: tuple[int, int]) -> np.ndarray:
    """The mean of member maps on the coarsest member's grid (§3: alpha 16 and 32 ensembled).

    Args:
      maps: float maps, member m's pixel covering ``strides[m]`` level-0 pixels.
      strides: level-0 pixels per map pixel of each member.
      map_shape: shape of the coarsest grid.
    """
    coarse = max(strides)
    pooled = []
    for m, s in zip(maps, strides):
        if coarse % s:
            raise ScanError(f"ensemble strides {list(strides)} do not nest (each must divide {coarse})")
        pooled.append(pool_to_stride(np.asarray(m, np.float32), coarse // s, map_shape))
    return np.mean(np.stack(pooled), axis=0).astype(np.float32)


# --------------------------------------------------------------------------- one slide


@dataclasses.dataclass
class SlideResult:
    """What happened to one slide.

    ``status``: ``done`` (scanned now, or its lesions/heatmap redone from the
    saved map), ``skipped`` (already done with these settings), ``failed``, or
    ``locked`` (another live process holds the slide; nothing was done).
    ``warnings``: lines worth a user's eye (e.g. no tissue found).
    """

    slide: str
    path: str
    status: str
    message: str = ""
    stats: list = dataclasses.field(default_factory=list)
    meta: dict = dataclasses.field(default_factory=dict)
    warnings: list = dataclasses.field(default_factory=list)


def _tissue(reader: SlideReader, options: ScanOptions) -> Optional[np.ndarray]:
    if options.tissue == "all":
        return None
    if callable(options.tissue):
        return np.asarray(options.tissue(reader), bool)
    from pfascannet.slide.tissue import tissue_mask  # noqa: PLC0415

    return tissue_mask(reader, downsample=options.tissue_downsample)


def slide_identity(path: str) -> dict:
    """What identifies a slide file's content cheaply: its name, size and modification time."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ScanError(f"{path}: no such slide file") from None
    return {"file": os.path.basename(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def map_fingerprint(path: str, runs: Sequence[ModelRun], options: ScanOptions) -> dict:
    """Everything a slide's map depends on (the model's content included); see the module docstring."""
    tissue = options.tissue if isinstance(options.tissue, str) else getattr(options.tissue, "__name__", "custom")
    out = {
        "slide": slide_identity(path),
        "runs": [r.describe() for r in runs],
        "scan_level": options.scan_level,
        "tissue": tissue,
        "tissue_downsample": options.tissue_downsample,
        "mpp": options.mpp,
    }
    # Edge ROIs leave the glass-only quarters of an ROI at 0 where whole ROIs
    # computed them: another map, so another fingerprint (where they apply).
    if any(plan_split(r, options) > 1 for r in runs) and options.tissue != "all":
        out["edge_rois"] = EDGE_SPLIT
    return out


def post_settings(options: ScanOptions) -> dict:
    """The settings of what is derived from a finished map (lesions, contours); they never force a rescan."""
    return {"threshold": float(options.threshold), "candidates": dict(lesions.CANDIDATE_RULE)}


def slide_lock(out_dir: str, slide: str) -> FileLock:
    """The lock a process holds while it scans ``slide`` into ``out_dir``."""
    return FileLock(os.path.join(out_dir, "locks", f"{slide}.lock"))


_SLIDE_SUBDIRS = ("maps", "lesions", "heatmaps", "contours", "partial")


def scan_slide(
    path: str,
    runs: Sequence[ModelRun],
    out_dir: str,
    options: ScanOptions,
    progress: Optional[Progress] = None,
    on_batch: Optional[Callable[[int], None]] = None,
    wait: bool = False,
) -> SlideResult:
    """Scans one slide with one model or an ensemble and writes its outputs.

    Safe to call from several processes (or threads) on one ``out_dir``: the
    slide's lock (``slide_lock``) makes one of them scan it.  A slide already
    done with the same map fingerprint is ``skipped`` (or, if only the lesion
    threshold or the heatmap differ, post-processed again from its saved map
    without calling the model).

    Args:
      path, runs, out_dir, options: the slide, its model(s), the scan folder and settings.
      progress: progress printer (optional).
      on_batch: test hook, see ``scan_map``.
      wait: if another process holds the slide, wait for it (then usually
        find the slide done) instead of returning ``status="locked"``.

    Raises whatever the slide or model raises; ``scan_slides`` turns that into
    a failed result and goes on.
    """
    slide = os.path.splitext(os.path.basename(path))[0]
    lock = slide_lock(out_dir, slide)
    if not lock.acquire(blocking=False):
        if not wait:
            return SlideResult(slide, path, "locked", f"being scanned by {lock.holder()}")
        lock.acquire(blocking=True)
    try:
        # Under the lock nobody else writes this slide's files: its leftovers can go.
        for sub in _SLIDE_SUBDIRS:
            remove_stale_temps(os.path.join(out_dir, sub), prefix="." + slide)
        return _scan_slide_locked(path, slide, runs, out_dir, options, progress, on_batch)
    finally:
        lock.release()


def _saved_map(out_dir: str, slide: str, fingerprint: dict, options: ScanOptions) -> tuple[bool, Optional[np.ndarray]]:
    """``(skip, map)``: skip when done with these settings; else the saved map if only post-processing differs."""
    meta = outputs.read_sidecar(out_dir, slide)
    if meta is None or meta.get("fingerprint") != fingerprint or not outputs.outputs_complete(out_dir, slide):
        return False, None
    heatmap_ok = not options.heatmap or os.path.exists(outputs.map_paths(out_dir, slide)["heatmap"])
    if meta.get("post") == post_settings(options) and heatmap_ok:
        return True, None
    try:
        return False, np.load(outputs.map_paths(out_dir, slide)["npy"], allow_pickle=False).astype(np.float32)
    except Exception:  # noqa: BLE001  (an unreadable map is rescanned)
        return False, None


def _scan_slide_locked(path, slide, runs, out_dir, options, progress, on_batch) -> SlideResult:
    fingerprint = map_fingerprint(path, runs, options)
    skip, saved = _saved_map(out_dir, slide, fingerprint, options)
    if skip:
        return SlideResult(slide, path, "skipped", "already scanned with these settings")
    with SlideReader(path, mpp=options.mpp) as reader:
        if reader.mpp is None:
            reader.require_mpp()  # the error names --mpp: no silent 0.243 um/px
        downsample = level_downsample(reader.level_downsamples, options.scan_level)
        # OpenSlide maps level-0 xy onto a level with its own downsample; where
        # that is not the whole value (odd level sizes) ROIs would drift and
        # be interpolated, so such levels are refused rather than misread.
        os_ds = getattr(reader, "openslide_downsamples", reader.level_downsamples)[options.scan_level]
        if abs(float(os_ds) - downsample) > 1e-9 * downsample:
            raise ScanError(
                f"{path}: OpenSlide maps level {options.scan_level} with downsample {float(os_ds):.6f}, "
                f"not exactly {downsample}; ROIs would not land on whole pixels: scan at level 0"
            )
        tissue = _tissue(reader, options)
        dims, mpp = reader.dimensions, reader.mpp
    plans = [
        make_plan(dims, r.grid, tissue, options.tissue_downsample, options.scan_level, downsample, plan_split(r, options))
        for r in runs
    ]
    coarse = max(range(len(plans)), key=lambda i: plans[i].stride_px)
    grid_plan = plans[coarse]
    if saved is not None and saved.shape != tuple(grid_plan.map_shape):
        saved = None
    warnings = mpp_warnings(slide, mpp, [r.detector for r in runs])
    for w in warnings:
        _warn(w, progress, options)
    if sum(len(p) for p in plans) == 0:
        warnings.append(f"{slide}: no tissue found, nothing scanned; its map is all 0 (--tissue=all scans every ROI)")
        _warn(warnings[-1], progress, options)
    stats = []
    if saved is not None:
        # Same map, other post-processing settings: lesions, contours and
        # heatmap are redone from the saved map; the model is not called.
        prob_map = saved
    else:
        if progress is not None:
            progress.start_slide(slide, sum(len(p) for p in plans), 0)
        maps = []
        for m, (run, plan) in enumerate(zip(runs, plans)):
            ckpt = os.path.join(out_dir, "partial", f"{slide}.m{m}.npz")
            prob_map, st = scan_map(path, run, plan, options, ckpt, fingerprint, progress, on_batch)
            maps.append(prob_map)
            stats.append(st)
        prob_map = ensemble_maps(maps, [p.stride_px for p in plans], grid_plan.map_shape)
        if not options.heatmap:
            # A heatmap of the previous map would now be stale.
            try:
                os.remove(outputs.map_paths(out_dir, slide)["heatmap"])
            except FileNotFoundError:
                pass
    scanned = np.zeros(grid_plan.map_shape, bool)
    for k in range(len(grid_plan)):
        r0, r1, c0, c1 = grid_plan.roi_window(k)
        scanned[r0:r1, c0:c1] = True
    if tissue is not None:
        # The heatmap tints tissue only: a scanned ROI's glass is left untinted.
        scanned &= tissue_on_map(tissue, options.tissue_downsample, dims, grid_plan.stride_px)
    thumbnail = None
    if options.heatmap:
        with SlideReader(path, mpp=options.mpp) as reader:
            thumbnail = reader.read_at_downsample(grid_plan.stride_px * outputs.heatmap_grid(prob_map.shape))
    meta = {
        "slide": slide,
        "alpha": grid_plan.geometry.alpha,
        "roi_px": grid_plan.geometry.roi_px,
        "stride_px": grid_plan.stride_px,
        "scan_level": options.scan_level,
        "dimensions": list(dims),
        "mpp": mpp,
        "model": runs[0].name if len(runs) == 1 else [r.name for r in runs],
        "mode": runs[0].mode,
        "members": [dict(r.describe(), **p.describe()) for r, p in zip(runs, plans)],
        "n_rois": [len(p) for p in plans],
        "fingerprint": fingerprint,
        "post": post_settings(options),
        "warnings": warnings,
    }
    if saved is not None:
        old = outputs.read_sidecar(out_dir, slide) or {}
        meta["timing"] = old.get("timing", [])
    else:
        meta["timing"] = [dataclasses.asdict(s) for s in stats]
    meta = outputs.write_slide_outputs(
        out_dir, slide, prob_map, meta, thumbnail, scanned, options.threshold, write_map=saved is None
    )
    for m in range(len(runs)):
        try:
            os.remove(os.path.join(out_dir, "partial", f"{slide}.m{m}.npz"))
        except FileNotFoundError:
            pass
    message = "lesions and heatmap redone from the saved map" if saved is not None else ""
    return SlideResult(slide, path, "done", message, stats=stats, meta=meta, warnings=warnings)


def check_slide(path: str, mpp: Optional[float] = None) -> Optional[str]:
    """Why ``path`` cannot be scanned (missing, unreadable, no pixel size without ``mpp``), or None.

    Opens the slide's directories only (no pixels): cheap enough to check a
    whole list before a model loads.
    """
    try:
        with SlideReader(path, mpp=mpp) as reader:
            reader.require_mpp()
    except PfaError as exc:
        return str(exc)
    except OSError as exc:
        return f"{path}: {exc.strerror or exc}"
    return None


# --------------------------------------------------------------------------- slide lists


def list_slides(spec: str | Sequence[str]) -> list[str]:
    """Slide paths from a slide file, a folder (or a cohort with ``images/``), or a list file.

    A list file (``.txt``, ``.csv``, ``.lst``) holds one path per line
    (relative paths are relative to the list file; ``#`` starts a comment; a
    CSV's first column is used and a header line whose first field is not a
    path is skipped).  A sequence of such specs is concatenated.  The result
    is sorted, without duplicates.  A folder's dot-files and temporary files
    (``io_utils.is_temp_name``) are not slides.

    Raises:
      ScanError: nothing found, or two slides with the same id (their outputs would collide).
    """
    specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    paths: list[str] = []
    for s in specs:
        s = os.fspath(s)
        if os.path.isdir(s):
            folder = os.path.join(s, "images") if os.path.isdir(os.path.join(s, "images")) else s
            # Dot-files (a copy's or a writer's temporaries, macOS "._" files) are never slides.
            paths += [
                os.path.join(folder, f)
                for f in sorted(os.listdir(folder))
                if f.lower().endswith(SLIDE_EXTENSIONS) and not f.startswith(".") and not is_temp_name(f)
            ]
        elif s.lower().endswith((".txt", ".csv", ".lst")):
            if not os.path.exists(s):
                raise ScanError(f"{s}: no such slide list")
            base = os.path.dirname(os.path.abspath(s))
            with open(s, encoding="utf-8") as f:
                for line in f:
                    item = line.split("#", 1)[0].strip().split(",")[0].strip()
                    if not item:
                        continue
                    if not item.lower().endswith(SLIDE_EXTENSIONS):
                        continue  # a CSV header or a non-slide column
                    paths.append(item if os.path.isabs(item) else os.path.join(base, item))
        else:
            paths.append(s)  # a slide; a missing one fails later with a clear message
    paths = sorted(set(os.path.normpath(p) for p in paths))
    if not paths:
        raise ScanError(f"no slides found in {specs} (looked for {', '.join(SLIDE_EXTENSIONS)})")
    ids: dict[str, str] = {}
    for p in paths:
        sid = os.path.splitext(os.path.basename(p))[0]
        if sid in ids:
            raise ScanError(f"two slides share the id {sid!r}: {ids[sid]} and {p}")
        ids[sid] = p
    return paths


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/N"`` (0 <= i < N) -> ``(i, N)``."""
    try:
        i_text, n_text = str(text).split("/")
        i, n = int(i_text), int(n_text)
    except ValueError:
        raise ScanError(f"shard must look like i/N (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ScanError(f"shard {text!r}: need 0 <= i < N")
    return i, n


def shard_slides(paths: Sequence[str], shard: tuple[int, int]) -> list[str]:
    """Slide ``k`` of the sorted list goes to shard ``k mod N``: disjoint, and together all slides."""
    i, n = shard
    return [p for k, p in enumerate(sorted(paths)) if k % n == i]


@dataclasses.dataclass
class ScanSummary:
    """The results of a scan over a list of slides."""

    results: list[SlideResult]
    wall_s: float

    @property
    def failed(self) -> list[SlideResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed

    def text(self) -> str:
        counts = collections.Counter(r.status for r in self.results)
        lines = [
            f"scanned {len(self.results)} slide(s) in {_fmt_s(self.wall_s)}: "
            f"{counts['done']} done, {counts['skipped']} already done, {counts['failed']} failed"
            + (f", {counts['locked']} left to another process" if counts["locked"] else "")
        ]
        lines += [f"  WARNING {w}" for r in self.results for w in r.warnings]
        lines += [f"  FAILED {r.slide}: {r.message}" for r in self.failed]
        return "\n".join(lines)


def write_scan_config(out_dir: str, runs: list, options: ScanOptions, paths: Sequence[str],
                      shard: Optional[tuple[int, int]] = None, **extra) -> None:
    """Writes ``scan_config.json`` (``scan_config.shard<i>of<N>.json`` for a shard): what a scan was asked for."""
    os.makedirs(out_dir, exist_ok=True)
    write_json(
        os.path.join(out_dir, "scan_config.json" if shard is None else f"scan_config.shard{shard[0]}of{shard[1]}.json"),
        {
            "runs": runs,
            "options": {
                f.name: (v if isinstance(v, (int, float, str, type(None))) else repr(v))
                for f in dataclasses.fields(options)
                if f.name != "progress_stream"
                for v in [getattr(options, f.name)]
            },
            "shard": list(shard) if shard else None,
            "slides": list(paths),
            **extra,
        },
    )


def scan_slides(
    slides: str | Sequence[str],
    runs: Sequence[ModelRun],
    out_dir: str,
    options: ScanOptions = ScanOptions(),
    shard: Optional[tuple[int, int]] = None,
    on_batch: Optional[Callable[[int], None]] = None,
) -> ScanSummary:
    """Scans a list of slides (optionally one shard of it); a failing slide does not stop the others.

    Args:
      slides: a slide, a folder, a list file, or a sequence of them (``list_slides``).
      runs: one ModelRun, or several for an ensemble (their maps are averaged
        on the coarsest member's grid).
      out_dir: the scan's output folder (layout: ARCHITECTURE.md).
      options: ScanOptions.
      shard: ``(i, N)``: scan only slides ``k`` with ``k mod N == i``.
      on_batch: test hook, see ``scan_map``.

    Returns:
      A ScanSummary; ``slide_scores.csv`` is rebuilt from every finished slide.

    Several processes may run this on one ``out_dir`` at once (the same list,
    overlapping lists or shards): each slide is scanned by one of them (see
    ``scan_slide``), and each process's summary reports every slide of its list.
    """
    if not runs:
        raise ScanError("no model to scan with")
    paths = list_slides(slides)
    if shard is not None:
        paths = shard_slides(paths, shard)
    write_scan_config(out_dir, [r.describe() for r in runs], options, paths, shard)
    remove_stale_temps(out_dir)  # slide_scores.csv, scan_config: a killed run's temporaries
    progress = Progress(len(paths), options.progress_stream, options.progress)
    t0 = time.perf_counter()

    def one(path: str, wait: bool) -> SlideResult:
        slide = os.path.splitext(os.path.basename(path))[0]
        try:
            result = scan_slide(path, runs, out_dir, options, progress, on_batch, wait=wait)
            progress.end_slide()
        except Exception as exc:  # noqa: BLE001  (one bad slide must not stop a 400-slide run)
            progress.end_slide(ok=False)
            if os.environ.get("PFASCANNET_DEBUG"):
                traceback.print_exc()
            message = str(exc) if isinstance(exc, PfaError) else f"{type(exc).__name__}: {exc}"
            progress.message(f"error: {slide}: {' '.join(message.split())}", always=True)
            result = SlideResult(slide, path, "failed", message)
        return result

    results: dict[str, SlideResult] = {}
    for path in paths:
        results[path] = one(path, wait=False)
    # Slides another process was scanning: come back to them once ours are
    # done, and wait for their lock (then they are usually done; if that
    # process died or failed, this one scans them).
    for path in [p for p, r in results.items() if r.status == "locked"]:
        progress.message(f"{results[path].slide}: {results[path].message}; waiting for it", always=True)
        results[path] = one(path, wait=True)
    results = [results[p] for p in paths]
    outputs.write_slide_scores(out_dir)
    summary = ScanSummary(list(results), time.perf_counter() - t0)
    progress.message(summary.text(), always=True)
    return summary
