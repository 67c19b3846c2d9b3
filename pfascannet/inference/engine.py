"""The streaming whole-slide scanner: ROIs read ahead on threads while the model runs.

Zhao et al., MICCAI 2019, §2.2 (and Table 1's 7.2 min per WSI): the detector
turns each ``LR x LR`` ROI of the plan (``inference.plan``, eq. (1)) into an
``Lm x Lm`` probability tile and the tiles are stitched into the slide's map.

How the scan keeps the model busy and the memory flat:

- Reader threads (``workers``, ``roi_readers``), each with its own OpenSlide
  handle (OpenSlide decodes with the GIL released), read the ROIs of the next
  ``prefetch_batches`` batches while the main thread runs the model on the
  current one (``model_run.predict_tiles``).  Only those ROIs and the map are
  ever in memory, never the slide.
- Batches are fixed chunks of the plan's ROI list, and the map plus a per-ROI
  'done' flag are checkpointed atomically (every ``checkpoint_every_s``
  seconds, and when the scan is stopped by an exception or Ctrl-C) at batch
  boundaries.  A rerun resumes from the checkpoint and runs the very same
  remaining batches, so the final map equals an uninterrupted run's.
- A slide's map is written last and atomically, then post-processed
  (``postprocess``: lesions, contours, heatmap, slide score).  Whether a
  rerun skips, redoes or resumes a slide's map depends on what determines
  it (``map_fingerprint``): the slide file (name, size, mtime), each model's
  content (a digest of its files or weights, ``ModelRun.digest``), alpha,
  ROI side, mode, scan level, tissue settings and mpp.  A checkpoint made
  with anything else (another model behind the same path, say) is discarded;
  a finished map made with them is kept.  The post-processing settings
  (threshold, heatmap) are not in the fingerprint: changing them reruns
  only ``postprocess``, never the model.
- One slide is scanned by one process at a time: ``scan_slide`` holds an
  ``flock`` on ``S/locks/<slide>.lock`` (``outputs.slide_lock``; released by
  the kernel if the process dies), so several processes started on one folder
  and one ``--out`` share the slides; ``scan_slides`` passes over a slide
  another process holds and comes back to it at the end.
- Temporary files are hidden (``.name.tmp-*``) and removed by the next run
  (``io_utils.remove_stale_temps``); the slide lister never lists dot-files.

Around it: ``scan_settings`` (settings), ``model_run`` (the detector protocol,
dense / patch / edge prediction), ``ensemble``, ``slide_list`` (slide lists
and shards), ``scan_summary`` (results, ``scan_config.json``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
import traceback
from typing import Callable, Optional, Sequence, TextIO

import numpy as np

from pfascannet import camelyon
from pfascannet.errors import PfaError
from pfascannet.inference import outputs, postprocess, views
from pfascannet.inference.ensemble import ensemble_maps
from pfascannet.inference.export_meta import mpp_warnings
from pfascannet.inference.model_run import EDGE_SPLIT, ModelRun, plan_split, predict_tiles
from pfascannet.inference.plan import RoiPlan, level_downsample, make_plan, tissue_on_map
from pfascannet.inference.roi_readers import ReadAhead, ThreadReaders
from pfascannet.inference.scan_settings import ScanError, ScanSettings
from pfascannet.inference.stream import scan_map_streaming, stream_settings
from pfascannet.inference.scan_summary import ScanSummary, SlideScanResult, write_scan_config
from pfascannet.inference.slide_list import list_slides, shard_slides
from pfascannet.io_utils import atomic_path, remove_stale_temps
from pfascannet.layout import ScanFolder
from pfascannet.progress import Progress, fmt_duration
from pfascannet.slide.reader import SlideReader
from pfascannet.slide.resample import ReadPlan, ResampleError, native_plan, plan_read
from pfascannet.slide.tissue import tissue_mask


@dataclasses.dataclass
class ScanStats:
    """Timings of one map: wall time, time in the model, time the model waited for reads."""

    n_rois: int = 0
    n_resumed: int = 0
    wall_s: float = 0.0
    model_s: float = 0.0
    wait_s: float = 0.0
    input_px: int = 0  # model pixels pushed through the detector (ROI sides squared, or streamed strips)
    views_s: float = 0.0  # the candidate views (``inference.views``) of the slide: on its first member's entry


# --------------------------------------------------------------------------- progress


class ScanProgress(Progress):
    """ROIs of the slide being scanned, rate, its ETA and the whole list's (``pfascannet.progress``).

    The rate counts ROIs computed in this run (resumed ones are not); the
    list's ETA counts the slides not yet planned at the mean ROIs per
    scanned slide so far.
    """

    def __init__(self, n_slides: int, stream: Optional[TextIO] = None, enabled: bool = True,
                 interval_s: float = 5.0):
        super().__init__(None, unit="ROI", stream=stream, enabled=enabled, interval_s=interval_s)
        self.n_slides = n_slides
        self.slide_index = 0
        self.name = ""
        self.slides_scanned = 0  # slides whose map was computed here
        self.rois_scanned = 0  # planned ROIs of those slides
        self._in_slide = False

    def next_slide(self, name: str, index: int) -> None:
        """Slide ``index`` (from 1) of the list is being looked at (scanned, post-processed or skipped)."""
        self.slide_index = index
        self.name = name

    def start_slide(self, n_rois: int) -> None:
        """The current slide's map is computed: ``n_rois`` ROIs over all members."""
        self.total, self.done, self._in_slide = n_rois, 0, True
        self.show(force=True)

    def end_slide(self) -> None:
        if self._in_slide:
            self.slides_scanned += 1
            self.rois_scanned += self.total or 0
            self._in_slide = False
        self.close()

    def line(self) -> str:
        rate = self.rate()
        n_rois = self.total or 0
        left = n_rois - self.done
        eta = left / rate if rate > 0 else float("nan")
        mean_rois = (self.rois_scanned + n_rois) / (self.slides_scanned + 1)
        later = (self.n_slides - self.slide_index) * mean_rois
        eta_all = (left + later) / rate if rate > 0 else float("nan")
        pct = 100.0 * self.done / n_rois if n_rois else 100.0
        return (
            f"[{self.slide_index}/{self.n_slides}] {self.name}: {self.done}/{n_rois} ROIs "
            f"{pct:5.1f}% {'--' if not rate > 0 else f'{rate:.2f}'} ROI/s ETA {fmt_duration(eta)} "
            f"| all slides ETA {fmt_duration(eta_all)}"
        )


def quiet_progress(options: ScanSettings) -> ScanProgress:
    """A reporter that shows only warnings and errors (for a slide scanned without one)."""
    return ScanProgress(1, options.progress_stream, enabled=False)


# --------------------------------------------------------------------------- one map


def fingerprint_id(fingerprint: dict) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]


def load_checkpoint(path: str, fid: str, map_shape: tuple[int, int], n_rois: int, warn: Callable[[str], None]):
    """The checkpoint's ``(map, done, rest)``, or None (and one warning) if it cannot serve this scan.

    ``fid`` is the scan's ``fingerprint_id``; ``rest`` holds the checkpoint's
    other arrays (a streamed scan's position and layer halos, ``stream``).  A
    checkpoint that cannot be read (truncated, empty, not a zip: any exception
    from loading it) or that another model or other settings made is deleted,
    and the map starts afresh.
    """
    if not os.path.exists(path):
        return None
    problem = None
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["fingerprint"]) != fid:
                problem = "was made by another model or with other settings"
            else:
                prob_map, done = np.asarray(data["map"]), np.asarray(data["done"])
                rest = {k: np.asarray(data[k]) for k in data.files if k not in ("map", "done", "fingerprint")}
                if prob_map.shape != tuple(map_shape) or done.shape != (n_rois,):
                    problem = f"holds a {prob_map.shape} map of {done.shape} ROIs, not {tuple(map_shape)} of {n_rois}"
    except Exception as exc:  # noqa: BLE001  (BadZipFile, EOFError, zlib.error, ...: all mean unreadable)
        problem = f"cannot be read ({type(exc).__name__}: {' '.join(str(exc).split()) or 'empty or truncated'})"
    if problem is None:
        return prob_map.astype(np.float32), done.astype(bool), rest
    warn(f"{path} {problem}; discarded, the slide's map starts afresh")
    try:
        os.remove(path)
    except OSError:
        pass
    return None


def save_checkpoint(path: str, fid: str, prob_map: np.ndarray, done: np.ndarray, **rest) -> None:
    """Writes a checkpoint atomically: the map, the ROIs done, the fingerprint id, and ``rest``."""
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, map=prob_map, done=done, fingerprint=np.array(fid), **rest)


def scan_map(
    slide_path: str,
    run: ModelRun,
    plan: RoiPlan,
    options: ScanSettings,
    checkpoint_path: Optional[str] = None,
    fingerprint: Optional[dict] = None,
    progress: Optional[ScanProgress] = None,
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
      progress: the scan's reporter, its slide already started by the caller.
      on_batch: called with the number of ROIs done after each batch (tests
        use it to stop a scan part way).

    Returns:
      ``(map, stats)``: float32 ``plan.map_shape``, 0 outside planned ROIs.
    """
    if options.stream:
        return scan_map_streaming(slide_path, run, plan, options, checkpoint_path, fingerprint, progress, on_batch)
    if plan.geometry != run.grid:
        raise ScanError(f"plan geometry {plan.geometry} does not match the model grid {run.grid}")
    fingerprint = dict(fingerprint or {}, plan=plan.describe(), run=run.describe())
    stats = ScanStats(n_rois=len(plan), input_px=plan.input_px())
    resumed = None
    if checkpoint_path:
        warn = (progress or quiet_progress(options)).warning
        resumed = load_checkpoint(checkpoint_path, fingerprint_id(fingerprint), plan.map_shape, len(plan), warn)
    if resumed is not None:
        prob_map, done, _ = resumed
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
        progress.skip(stats.n_resumed)  # the caller started the slide (all members' ROIs)
    readers = ThreadReaders(slide_path, options.mpp)

    def read_roi(k: int) -> np.ndarray:
        return plan.read_roi(readers.get(), k)

    t_start = time.perf_counter()
    last_ckpt = time.monotonic()
    dirty = False
    fid = fingerprint_id(fingerprint)
    ahead = ReadAhead(chunks, lambda pool, chunk: [pool.submit(read_roi, int(k)) for k in chunk], options.workers,
                      options.prefetch_batches + 1, "roi-reader")
    try:
        while ahead:
            chunk, futures = ahead.pop()
            t0 = time.perf_counter()
            rois = np.stack([f.result() for f in futures])
            t1 = time.perf_counter()
            ahead.refill()  # the next reads overlap this batch's model time
            probs = predict_tiles(run, rois, options.patch_batch)
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
                save_checkpoint(checkpoint_path, fid, prob_map, done)
                last_ckpt, dirty = time.monotonic(), False
            if progress is not None:
                progress.advance(len(chunk))
            if on_batch is not None:
                on_batch(int(done.sum()))
    except BaseException:
        # Stopped (Ctrl-C, a failing read, a test's injected error): keep the
        # whole batches done so far; the rerun starts after them.
        if checkpoint_path and dirty:
            save_checkpoint(checkpoint_path, fid, prob_map, done)
        raise
    finally:
        ahead.close()
        readers.close()
    if checkpoint_path and dirty:
        # Keep a finished map until the slide's outputs are written: an
        # ensemble killed in its second member resumes without redoing the first.
        save_checkpoint(checkpoint_path, fid, prob_map, done)
    stats.wall_s = time.perf_counter() - t_start
    return prob_map, stats


# --------------------------------------------------------------------------- one slide


def _tissue(reader: SlideReader, options: ScanSettings) -> Optional[np.ndarray]:
    if options.tissue == "all":
        return None
    if callable(options.tissue):
        return np.asarray(options.tissue(reader), bool)
    return tissue_mask(reader, downsample=options.tissue_downsample)


def slide_identity(path: str) -> dict:
    """What identifies a slide file's content cheaply: its name, size and modification time."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ScanError(f"{path}: no such slide file") from None
    return {"file": os.path.basename(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def map_fingerprint(path: str, runs: Sequence[ModelRun], options: ScanSettings, read: Optional[ReadPlan] = None) -> dict:
    """Everything a slide's map depends on (the model's content and the read plan included); see the module docstring."""
    tissue = options.tissue if isinstance(options.tissue, str) else getattr(options.tissue, "__name__", "custom")
    out = {
        "slide": slide_identity(path),
        "runs": [r.describe() for r in runs],
        "scan_level": options.scan_level,
        "tissue": tissue,
        "tissue_downsample": options.tissue_downsample,
        "mpp": options.mpp,
    }
    if read is not None:
        out["read"] = read.describe()
    if options.stream:  # another computation of the same map (float32 within 1e-5): another fingerprint
        out["stream"] = stream_settings(options)
    views_record = views.record(options.candidate_views)
    if views_record is not None:  # computed with the map (``inference.views``)
        out["candidate_views"] = views_record
    # Edge ROIs leave the glass-only quarters of an ROI at 0 where whole ROIs
    # computed them: another map, so another fingerprint (where they apply).
    if any(plan_split(r, options) > 1 for r in runs) and options.tissue != "all":
        out["edge_rois"] = EDGE_SPLIT
    return out


def post_settings(options: ScanSettings) -> postprocess.PostSettings:
    """The post-processing a scan asks for (``postprocess``); never part of a map's fingerprint."""
    return postprocess.PostSettings(threshold=options.threshold, heatmap=options.heatmap)


def scan_slide(
    path: str,
    runs: Sequence[ModelRun],
    out_dir: str,
    options: ScanSettings,
    progress: Optional[ScanProgress] = None,
    on_batch: Optional[Callable[[int], None]] = None,
    wait: bool = False,
) -> SlideScanResult:
    """Scans one slide with one model or an ensemble, writes its map and post-processes it.

    Safe to call from several processes (or threads) on one ``out_dir``: the
    slide's lock (``outputs.slide_lock``) makes one of them scan it.  A slide
    whose map was made with the same fingerprint is not scanned again: it is
    ``skipped`` if its post-processing matches too, else post-processed again
    from the saved map (``postprocess``) without calling the model (``done``).

    Args:
      path, runs, out_dir, options: the slide, its model(s), the scan folder and settings.
      progress: the scan's reporter (optional; without one only warnings are shown).
      on_batch: test hook, see ``scan_map``.
      wait: if another process holds the slide, wait for it (then usually
        find the slide done) instead of returning ``status="locked"``.

    Raises whatever the slide or model raises; ``scan_slides`` turns that into
    a failed result and goes on.
    """
    slide = camelyon.slide_id(path)
    lock = outputs.slide_lock(out_dir, slide)
    if not lock.acquire(blocking=False):
        if not wait:
            return SlideScanResult(slide, path, "locked", f"being scanned by {lock.holder()}")
        lock.acquire(blocking=True)
    try:
        # Under the lock nobody else writes this slide's files: its leftovers can go.
        for sub in ScanFolder.SLIDE_SUBDIRS:
            remove_stale_temps(ScanFolder(out_dir).sub(sub), prefix="." + slide)
        return _scan_slide_locked(path, slide, runs, out_dir, options, progress or quiet_progress(options), on_batch)
    finally:
        lock.release()


def _map_done(out_dir: str, slide: str, fingerprint: dict) -> bool:
    """True if the slide's map is finished and was made with ``fingerprint``."""
    meta = outputs.read_sidecar(out_dir, slide)
    if meta is None or meta.get("fingerprint") != fingerprint or not outputs.map_complete(out_dir, slide):
        return False
    try:  # an unreadable map is rescanned
        np.load(outputs.map_paths(out_dir, slide)["npy"], mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return False
    return True


def slide_read_plan(reader: SlideReader, runs: Sequence[ModelRun], options: ScanSettings) -> ReadPlan:
    """How a slide is read for these models (``slide.resample``): at their training pixel size.

    ``options.scan_level`` (``--scan_level``) reads that level pixel for pixel
    instead, as do models that state no training pixel size.  A slide without a
    pixel size is refused (the error names ``--mpp``): no silent 0.243 um/px.

    Raises:
      ScanError: an ensemble whose members were trained at different pixel sizes,
        or a scan level whose downsample is not whole in OpenSlide's mapping.
    """
    if reader.mpp is None:
        reader.require_mpp()
    if options.scan_level is not None:
        level = options.scan_level
        downsample = level_downsample(reader.level_downsamples, level)
        # OpenSlide maps level-0 xy onto a level with its own downsample; where
        # that is not the whole value (odd level sizes) ROIs would drift and
        # be interpolated, so such levels are refused rather than misread.
        os_ds = getattr(reader, "openslide_downsamples", reader.level_downsamples)[level]
        if abs(float(os_ds) - downsample) > 1e-9 * downsample:
            raise ScanError(
                f"{reader.path}: OpenSlide maps level {level} with downsample {float(os_ds):.6f}, "
                f"not exactly {downsample}; ROIs would not land on whole pixels: scan at level 0"
            )
        return native_plan(level, downsample)
    targets = sorted({float(m) for m in (getattr(r.detector, "training_mpp", None) for r in runs) if m is not None})
    if len(targets) > 1:
        raise ScanError(f"the ensemble's models were trained at different pixel sizes {targets} um/px; "
                        "scan them separately")
    try:
        return plan_read(reader.mpp, targets[0] if targets else None, reader.level_downsamples,
                         getattr(reader, "openslide_downsamples", None), [r.grid.stride_px for r in runs])
    except ResampleError as exc:
        raise ScanError(f"{reader.path}: {exc}") from None


def _read_plan(path: str, runs: Sequence[ModelRun], options: ScanSettings) -> ReadPlan:
    with SlideReader(path, mpp=options.mpp) as reader:
        return slide_read_plan(reader, runs, options)


def _scan_slide_locked(path, slide, runs, out_dir, options, progress, on_batch) -> SlideScanResult:
    read = _read_plan(path, runs, options)
    fingerprint = map_fingerprint(path, runs, options, read)
    post = post_settings(options)
    if _map_done(out_dir, slide, fingerprint):
        # Same map: only post-processing can be left to do; the model is not called.
        _remove_checkpoints(out_dir, slide)  # another model's, killed part way: this map is the slide's now
        meta, redone = postprocess.postprocess_slide(out_dir, slide, post, slide_path=path, mpp=options.mpp)
        if not redone:
            return SlideScanResult(slide, path, "skipped", "already scanned with these settings", meta=meta)
        return SlideScanResult(slide, path, "done", "lesions and heatmap redone from the saved map", meta=meta,
                               warnings=list(meta.get("warnings", [])))
    meta, stats, warnings = _make_map(path, slide, runs, out_dir, options, fingerprint, read, progress, on_batch)
    meta, _ = postprocess.postprocess_slide(out_dir, slide, post, slide_path=path, mpp=options.mpp)
    _remove_checkpoints(out_dir, slide)
    return SlideScanResult(slide, path, "done", "", stats=stats, meta=meta, warnings=warnings)


def _remove_checkpoints(out_dir: str, slide: str) -> None:
    """Removes every member's checkpoint of ``slide`` (``partial/<slide>.m<k>.npz``); called under its lock."""
    folder = ScanFolder(out_dir).partial
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return
    for name in names:
        found = ScanFolder.checkpoint_of(name)
        if found and found[0] == slide:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(folder, name))


def _make_map(path, slide, runs, out_dir, options, fingerprint, read, progress, on_batch):
    """Plans, scans (resuming any checkpoint) and writes the slide's map; ``(sidecar, stats, warnings)``."""
    with SlideReader(path, mpp=options.mpp) as reader:
        tissue = _tissue(reader, options)
        dims, mpp = reader.dimensions, reader.mpp
    plans = [
        make_plan(dims, r.grid, tissue, options.tissue_downsample, split=plan_split(r, options), read=read)
        for r in runs
    ]
    coarse = max(range(len(plans)), key=lambda i: plans[i].stride_px)
    grid_plan = plans[coarse]
    # The pixel size the models see: the read plan's (within a map step of theirs), or the
    # slide's own on a native read of --scan_level.
    warnings = mpp_warnings(slide, read.realised_mpp or mpp, [r.detector for r in runs])
    for w in warnings:
        progress.warning(w)
    if sum(len(p) for p in plans) == 0:
        warnings.append(f"{slide}: no tissue found, nothing scanned; its map is all 0 (--tissue=all scans every ROI)")
        progress.warning(warnings[-1])
    progress.start_slide(sum(len(p) for p in plans))
    maps, stats = [], []
    for m, (run, plan) in enumerate(zip(runs, plans)):
        ckpt = ScanFolder(out_dir).checkpoint(slide, m)
        prob_map, st = scan_map(path, run, plan, options, ckpt, fingerprint, progress, on_batch)
        maps.append(prob_map)
        stats.append(st)
    prob_map = ensemble_maps(maps, [p.stride_px for p in plans], grid_plan.map_shape)
    rescored = None
    if options.candidate_views > 1:
        t0 = time.perf_counter()
        with SlideReader(path, mpp=options.mpp) as reader:
            rescored = views.score_candidates(reader, runs, plans, prob_map, grid_plan.stride_px,
                                              options.candidate_views, mpp, options.patch_batch)
        stats[0].views_s = time.perf_counter() - t0  # a wall time: with the timings, not beside the cells
    scanned = grid_plan.planned_mask()
    if tissue is not None:
        # The heatmap tints tissue only: a scanned ROI's glass is left untinted.
        scanned &= tissue_on_map(tissue, options.tissue_downsample, dims, grid_plan.stride_px)
    meta = {
        "slide": slide,
        "slide_path": os.path.abspath(path),
        "alpha": grid_plan.geometry.alpha,
        "roi_px": grid_plan.geometry.roi_px,
        "stride_px": grid_plan.stride_px,
        "scan_level": read.level,
        "read": read.describe(),
        "dimensions": list(dims),
        "mpp": mpp,
        "model": runs[0].name if len(runs) == 1 else [r.name for r in runs],
        "mode": runs[0].mode,
        "members": [dict(r.describe(), **p.describe()) for r, p in zip(runs, plans)],
        "n_rois": [len(p) for p in plans],
        "fingerprint": fingerprint,
        "warnings": warnings,
        "timing": [dataclasses.asdict(s) for s in stats],
    }
    if rescored is not None:
        meta["candidate_views"] = rescored
    meta = outputs.write_map(out_dir, slide, prob_map, meta, scanned)
    return meta, stats, warnings


# --------------------------------------------------------------------------- slide lists


def scan_slides(
    slides: str | Sequence[str],
    runs: Sequence[ModelRun],
    out_dir: str,
    options: ScanSettings = ScanSettings(),
    shard: Optional[tuple[int, int]] = None,
    on_batch: Optional[Callable[[int], None]] = None,
) -> ScanSummary:
    """Scans a list of slides (optionally one shard of it); a failing slide does not stop the others.

    Args:
      slides: a slide, a folder, a list file, or a sequence of them (``list_slides``).
      runs: one ModelRun, or several for an ensemble (their maps are averaged
        on the coarsest member's grid).
      out_dir: the scan's output folder (layout: ARCHITECTURE.md).
      options: ScanSettings.
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
    progress = ScanProgress(len(paths), options.progress_stream, options.progress)
    t0 = time.perf_counter()

    def one(path: str, wait: bool) -> SlideScanResult:
        slide = camelyon.slide_id(path)
        progress.next_slide(slide, paths.index(path) + 1)
        try:
            result = scan_slide(path, runs, out_dir, options, progress, on_batch, wait=wait)
            progress.end_slide()
        except Exception as exc:  # noqa: BLE001  (one bad slide must not stop a 400-slide run)
            progress.end_slide()
            if os.environ.get("PFASCANNET_DEBUG"):
                traceback.print_exc()
            message = str(exc) if isinstance(exc, PfaError) else f"{type(exc).__name__}: {exc}"
            progress.error(f"{slide}: {message}")
            result = SlideScanResult(slide, path, "failed", message)
        return result

    results: dict[str, SlideScanResult] = {}
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
