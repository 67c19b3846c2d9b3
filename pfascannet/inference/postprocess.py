"""Post-processing, a stage of its own: a scan folder's maps -> lesions, contours, heatmaps, slide scores.

Reads ``S/maps/<slide>.npy`` and ``S/maps/<slide>.json`` (and the slide, for
the heatmap's thumbnail, when its file is still where the scan found it) and
writes, each file atomically:

- ``S/lesions/<slide>.csv``: the FROC candidates (``lesions.lesion_candidates``);
- ``S/contours/<slide>.geojson|.xml``: the map's regions above ``threshold``;
- ``S/heatmaps/<slide>.png``: the map over the slide's thumbnail;
- the sidecar again, last, with ``post`` (the settings used), ``slide_score``
  and ``n_lesions``; then ``S/slide_scores.csv`` rebuilt from every sidecar.

A map's fingerprint (``engine.map_fingerprint``) holds only what the map
depends on; the post-processing settings are recorded apart, in ``post``.
So a changed threshold reruns this stage alone, never the model, and a
slide whose ``post`` and files match the settings is skipped (a killed run
resumes).  The scan runs it after each map (``engine.scan_slide``); the
``pfascannet/stages/lesions.py`` main runs it alone on a scan folder.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Optional, Sequence

import numpy as np

from pfascannet import camelyon
from pfascannet import settings as settings_lib
from pfascannet.errors import PfaError
from pfascannet.inference import lesions as lesions_lib
from pfascannet.inference import outputs, views
from pfascannet.inference.scan_settings import ScanSettings
from pfascannet.io_utils import remove_stale_temps, write_json
from pfascannet.layout import ScanFolder
from pfascannet.progress import Progress
from pfascannet.slide.reader import SlideReader


class PostprocessError(PfaError):
    """A scan folder or a map that post-processing cannot read, or bad settings."""


@dataclasses.dataclass(frozen=True)
class PostSettings:
    """What post-processing is asked for.

    Attributes:
      threshold: probability for the contours (the lesion candidates have
        their own floor, ``lesions.CANDIDATE_FLOOR``).
      heatmap: write the heatmap PNG (needs the slide file for its thumbnail).
    """

    threshold: float = settings_lib.same_as(ScanSettings, "threshold")
    heatmap: bool = settings_lib.same_as(ScanSettings, "heatmap")

    def __post_init__(self):
        settings_lib.check_fields(self, PostprocessError)

    def record(self) -> dict:
        """The sidecar's ``post``: what the lesion and contour files depend on (the heatmap's presence is not)."""
        return {"threshold": float(self.threshold), "candidates": dict(lesions_lib.CANDIDATE_RULE)}


@dataclasses.dataclass
class PostResult:
    """One slide's post-processing: ``done``, ``skipped`` (already matched the settings) or ``failed``."""

    slide: str
    status: str
    message: str = ""
    meta: dict = dataclasses.field(default_factory=dict)


def slide_file(out_dir: str, slide: str, meta: dict) -> Optional[str]:
    """The slide's file, for the heatmap's thumbnail: the path the scan recorded, else one in ``scan_config*.json``."""
    recorded = meta.get("slide_path")
    if recorded and os.path.isfile(recorded):
        return recorded
    for config in sorted(glob.glob(ScanFolder(out_dir).scan_config_glob)):
        try:
            with open(config, encoding="utf-8") as f:
                listed = json.load(f).get("slides", [])
        except (OSError, ValueError, AttributeError):
            continue
        for path in listed:
            if camelyon.slide_id(str(path)) == slide and os.path.isfile(path):
                return path
    return None


def post_done(out_dir: str, slide: str, settings: PostSettings, meta: dict, slide_path: Optional[str]) -> bool:
    """True if the slide's derived files exist and were made with these settings."""
    paths = outputs.map_paths(out_dir, slide)
    if meta.get("post") != settings.record() or "slide_score" not in meta:
        return False
    if not all(os.path.exists(paths[k]) for k in ("lesions", "geojson", "xml")):
        return False
    # A heatmap is wanted only where it can be drawn (the slide file is there).
    return not (settings.heatmap and slide_path is not None) or os.path.exists(paths["heatmap"])


def postprocess_slide(
    out_dir: str,
    slide: str,
    settings: PostSettings = PostSettings(),
    slide_path: Optional[str] = None,
    mpp: Optional[float] = None,
) -> tuple[dict, bool]:
    """Post-processes one finished map (see the module docstring); the caller holds the slide's lock.

    Args:
      out_dir: the scan folder S.
      slide: the slide id.
      settings: threshold and heatmap.
      slide_path: the slide file for the heatmap's thumbnail; None: found by ``slide_file``.
      mpp: microns per level-0 pixel overriding the slide's (as the scan was told).

    Returns:
      ``(sidecar, redone)``: the sidecar as it now is, and whether anything was written.

    Raises:
      PostprocessError: no finished map of the slide, or a map that cannot be read.
    """
    paths = outputs.map_paths(out_dir, slide)
    meta = outputs.read_sidecar(out_dir, slide)
    if meta is None or not os.path.exists(paths["npy"]):
        raise PostprocessError(f"{slide}: no finished map in {ScanFolder(out_dir).maps} (scan the slide first)")
    if slide_path is None:
        slide_path = slide_file(out_dir, slide, meta)
    if post_done(out_dir, slide, settings, meta, slide_path):
        return meta, False
    try:
        prob_map = np.load(paths["npy"], allow_pickle=False).astype(np.float32)
    except (OSError, ValueError) as exc:
        raise PostprocessError(f"{paths['npy']}: cannot read the map ({' '.join(str(exc).split())})") from None
    if prob_map.ndim != 2:
        raise PostprocessError(f"{paths['npy']}: expected a 2-D map, got shape {prob_map.shape}")
    stride = int(meta["stride_px"])
    map_mpp = meta.get("mpp")
    # FROC candidates: every local maximum down to a low floor, not the contour threshold (ARCHITECTURE.md).
    # A map made with candidate views carries their scores (``inference.views``): the candidates' confidences.
    rescored = views.rescored_cells(meta)
    found = lesions_lib.lesion_candidates(prob_map, stride, mpp=map_mpp, dimensions_xy=meta.get("dimensions"),
                                          rescored=rescored)
    outputs.write_lesions_csv(paths["lesions"], found)
    outputs.write_contours(paths["geojson"], paths["xml"],
                           lesions_lib.lesion_contours(prob_map, stride, settings.threshold))
    if settings.heatmap and slide_path is not None:
        _write_heatmap(paths, slide, prob_map, stride, slide_path, mpp)
    elif not settings.heatmap:
        try:  # no stale heatmap of other settings left behind
            os.remove(paths["heatmap"])
        except FileNotFoundError:
            pass
    # The slide score is the most confident candidate: the map's maximum, or its views' mean where re-scored.
    score = max(c.confidence for c in found) if rescored and found else lesions_lib.slide_score(prob_map)
    meta = dict(meta, post=settings.record(), slide_score=score, n_lesions=len(found),
                threshold=float(settings.threshold), candidate_floor=lesions_lib.CANDIDATE_FLOOR)
    write_json(paths["json"], meta)
    return meta, True


def _write_heatmap(paths: dict, slide: str, prob_map: np.ndarray, stride: int, slide_path: str,
                   mpp: Optional[float]) -> None:
    f = outputs.heatmap_grid(prob_map.shape)
    with SlideReader(slide_path, mpp=mpp) as reader:
        thumbnail = reader.read_at_downsample(stride * f)
    scanned = outputs.read_scanned_png(paths["scanned"], prob_map.shape)
    small = outputs.block_max(prob_map, f)
    small_scanned = None if scanned is None else outputs.block_max(scanned, f)
    outputs.write_heatmap_png(paths["heatmap"], thumbnail[: small.shape[0], : small.shape[1]], small,
                              small_scanned, slide)


def scan_folder_slides(out_dir: str) -> list[str]:
    """The slide ids with a map in ``S/maps`` (sorted)."""
    scan = ScanFolder(out_dir)
    maps_dir = scan.maps
    if not os.path.isdir(maps_dir):
        raise PostprocessError(f"{out_dir}: not a scan folder (no maps/ folder)")
    return sorted(
        name[: -len(".json")] for name in os.listdir(maps_dir)
        if name.endswith(".json") and not name.startswith(".")
        and os.path.exists(scan.map_npy(name[: -len(".json")]))
    )


def postprocess_scan(
    out_dir: str,
    settings: PostSettings = PostSettings(),
    slides: Optional[Sequence[str]] = None,
    slide_paths: Optional[dict] = None,
    progress: Optional[Progress] = None,
) -> list[PostResult]:
    """Post-processes every map of a scan folder (or the named slides) and rebuilds ``slide_scores.csv``.

    Each slide is done under its lock (``outputs.slide_lock``), so this may
    run beside a scan of the same folder; a slide that fails is reported and
    the others go on.

    Args:
      out_dir: the scan folder S.
      settings: threshold and heatmap.
      slides: slide ids to do; None: every map in ``S/maps``.
      slide_paths: slide id -> slide file, for the thumbnails (else ``slide_file``).
      progress: reporter (default: one on stderr / logging).

    Raises:
      PostprocessError: not a scan folder, no maps, or a named slide without a map.
    """
    have = scan_folder_slides(out_dir)
    if slides is None:
        slides = have
        if not slides:
            raise PostprocessError(f"{out_dir}: no maps to post-process in {ScanFolder(out_dir).maps}")
    missing = sorted(set(slides) - set(have))
    if missing:
        raise PostprocessError(f"{missing[0]}: no finished map in {ScanFolder(out_dir).maps}")
    progress = progress or Progress(len(slides), label="post-processing", unit="slide")
    progress.total = len(slides)
    remove_stale_temps(out_dir)
    results = []
    for slide in slides:
        lock = outputs.slide_lock(out_dir, slide)
        lock.acquire(blocking=True)
        try:
            for sub in ScanFolder.POST_SUBDIRS:
                remove_stale_temps(ScanFolder(out_dir).sub(sub), prefix="." + slide)
            path = (slide_paths or {}).get(slide)
            meta, redone = postprocess_slide(out_dir, slide, settings, slide_path=path)
            results.append(PostResult(slide, "done" if redone else "skipped", meta=meta))
        except Exception as exc:  # noqa: BLE001  (one bad map must not stop the others)
            message = str(exc) if isinstance(exc, PfaError) else f"{type(exc).__name__}: {exc}"
            progress.error(f"{slide}: {message}")
            results.append(PostResult(slide, "failed", message))
        finally:
            lock.release()
        if results[-1].status == "skipped":
            progress.skip(1)  # no time spent: not in the rate
        else:
            progress.advance()
    progress.close()
    outputs.write_slide_scores(out_dir)
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")}
    progress.message(f"post-processed {len(results)} slide(s): {counts['done']} done, "
                     f"{counts['skipped']} already done, {counts['failed']} failed", always=True)
    return results
