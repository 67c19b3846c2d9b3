"""The pipeline end to end, as resumable steps: cohort -> model -> export -> scan -> evaluate.

``pfascannet demo`` and ``experiments/table1.py`` are both made of these
steps.  Every step writes files (ARCHITECTURE.md) and is skipped when its
output already exists with the same settings, so a killed run resumes where
it stopped: the cohort by its ``cohort.json``, training by its checkpoints,
exports by ``export.json``, scans slide by slide (and ROI by ROI).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable, Optional, Sequence

import numpy as np

from pfascannet import datasets, geometry
from pfascannet.errors import PfaError
from pfascannet.evaluation import reference
from pfascannet.inference import engine, runs, scan_settings
from pfascannet.layout import CohortFolder, ExportFolder, RunFolder, ScanFolder
from pfascannet.model.config import get_config
from pfascannet.progress import Progress
from pfascannet.slide.reader import SlideReader
from pfascannet.synthetic import cohort
from pfascannet.synthetic.cohort import CohortSettings

SHIPPED_WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")


class Log:
    """Step-by-step progress with the elapsed time of each step, through ``pfascannet.progress``.

    ``log(message)`` is a message line (``logging``, or ``stream`` when given);
    ``counter(total, noun)`` a ``Progress`` over the step's items, with rate and ETA.
    """

    def __init__(self, stream=None, total_steps: int = 0):
        self.stream = stream
        self.total_steps = total_steps
        self.step = 0
        self.reporter = Progress(total_steps or None, label="steps", unit="step", stream=stream)
        self.t0 = time.perf_counter()
        self.step_t0 = self.t0

    def begin(self, title: str) -> None:
        self.step += 1
        self.step_t0 = time.perf_counter()
        of = f"/{self.total_steps}" if self.total_steps else ""
        self(f"[{self.step}{of}] {title}")

    def end(self, what: str = "done") -> float:
        dt = time.perf_counter() - self.step_t0
        self(f"      {what} in {dt:.0f} s (total {time.perf_counter() - self.t0:.0f} s)")
        return dt

    def counter(self, total: int, noun: str) -> Callable[[str], None]:
        """A callback to call each time one of ``total`` items finishes: ``k/total``, rate and ETA."""
        items = Progress(total, label=f"      {noun}", unit=noun, stream=self.stream)

        def tick(message: str = "") -> None:
            items.advance(1, extra=message)

        return tick

    def __call__(self, message: str) -> None:
        self.reporter.message(message, always=True)


# --------------------------------------------------------------------------- cohort


def ensure_cohort(cohort_dir: str, settings: CohortSettings, log: Log) -> None:
    """Generates the synthetic cohort unless ``cohort_dir`` already holds it with these settings."""
    marker = CohortFolder(cohort_dir).cohort_json
    if os.path.isfile(marker):
        with open(marker, encoding="utf-8") as f:
            have = json.load(f)
        if all(have.get(k) == v for k, v in dataclasses.asdict(settings).items()):
            log(f"      cohort already in {cohort_dir}: reused")
            return
        raise PfaError(f"{cohort_dir} holds a different cohort ({marker}); choose another --out or remove it")
    n = settings.patients * settings.nodes_per_patient
    cohort.make_cohort(cohort_dir, settings, progress=log.counter(n, "slide"))


def cohort_slides(cohort_dir: str, split: Optional[str] = None) -> list[str]:
    """Slide paths of a cohort's ``slides.csv`` (one split, or all), found by ``datasets``' one rule."""
    folder = CohortFolder(cohort_dir)
    refs = reference.select_split(reference.read_reference(folder.slides_csv), split)
    images = datasets.SlideIndex(folder.images)
    return [images.require(s) for s in sorted(refs)]


# --------------------------------------------------------------------------- model


def shipped_weights(name: str) -> Optional[tuple[str, dict]]:
    """``(weights path, provenance)`` of weights shipped with the package, or None."""
    path = os.path.join(SHIPPED_WEIGHTS_DIR, f"{name}.weights.h5")
    meta_path = os.path.join(SHIPPED_WEIGHTS_DIR, f"{name}.json")
    if not (os.path.isfile(path) and os.path.isfile(meta_path)):
        return None
    with open(meta_path, encoding="utf-8") as f:
        return path, json.load(f)


def train_model(settings, log: Log) -> str:
    """Trains (or resumes) a run with ``training.trainer.train``; returns its final weights."""
    from pfascannet.training import trainer  # noqa: PLC0415  (imports TensorFlow and Keras)

    final = RunFolder(settings.workdir).final_weights
    cfg = RunFolder(settings.workdir).config_json
    if os.path.isfile(final) and os.path.isfile(cfg):
        with open(cfg, encoding="utf-8") as f:
            done = json.load(f).get("settings", {})
        if done.get("steps") == settings.steps and done.get("max_seconds") == settings.max_seconds:
            log(f"      trained weights already in {final}: reused")
            return final

    result = trainer.train(settings, on_progress=trainer.progress_printer(log.stream))
    return result.final_weights


def export_model(weights: str, config_name: str, out_dir: str, alpha: int, roi_px: int,
                 log: Log, extra: Optional[dict] = None) -> str:
    """Exports the detector at ``alpha`` (SavedModel + .keras) unless already exported from these weights."""
    from pfascannet.inference import export, export_meta  # noqa: PLC0415  (imports Keras)
    from pfascannet.inference.model_io import load_training_model  # noqa: PLC0415  (imports Keras)

    meta_path = ExportFolder(out_dir).export_json
    stamp = {"weights": os.path.abspath(weights), "weights_mtime": os.path.getmtime(weights)}
    if os.path.isfile(meta_path):
        meta = export_meta.read_export_json(out_dir)
        if (meta.get("alpha"), meta.get("roi_px")) == (alpha, roi_px) and meta.get("extra", {}).get("source") == stamp:
            log(f"      export already in {out_dir}: reused")
            return out_dir
    model = load_training_model(weights, config_name)
    export.export_detector(model, get_config(config_name), out_dir, alpha=alpha, roi_px=roi_px,
                           extra=dict(extra or {}, source=stamp))
    return out_dir


# --------------------------------------------------------------------------- scan


def scan(model_dirs: Sequence[str], slides: Sequence[str], out_dir: str, *, mode: str = "dense",
         batch: int = 1, workers: int = 2, threshold: float = 0.5):
    """Scans ``slides`` with the first model (and the rest as an ensemble at their own alphas)."""
    model_runs = [runs.load_run(m, mode=mode, batch=batch) for m in model_dirs]
    options = scan_settings.ScanSettings(batch=batch, workers=workers, threshold=threshold)
    summary = engine.scan_slides(list(slides), model_runs, out_dir, options)
    if not summary.ok:
        raise PfaError(f"{len(summary.failed)} slide(s) failed to scan: "
                       + "; ".join(f"{r.slide}: {r.message}" for r in summary.failed))
    return summary


def scan_timing(scan_dir: str) -> dict:
    """Seconds per ROI over a scan folder's maps (model time and wall time), from each map's JSON."""
    n_rois = model_s = wall_s = 0.0
    slides = 0
    scan_folder = ScanFolder(scan_dir)
    for name in sorted(os.listdir(scan_folder.maps)):
        if not name.endswith(".json"):
            continue
        with open(scan_folder.map_json(name[: -len(".json")]), encoding="utf-8") as f:
            meta = json.load(f)
        slides += 1
        members = meta.get("timing", [])
        if members:
            # An ensemble reads each ROI once per member: count the first
            # member's ROIs and every member's time (seconds per ensemble ROI).
            n_rois += members[0]["n_rois"] - members[0].get("n_resumed", 0)
            model_s += sum(t["model_s"] for t in members)
            wall_s += sum(t["wall_s"] for t in members)
    if not n_rois:
        return {"slides": slides, "rois": 0}
    return {"slides": slides, "rois": int(n_rois), "model_s_per_roi": model_s / n_rois,
            "wall_s_per_roi": wall_s / n_rois, "wall_s": wall_s}


def minutes_per_wsi(seconds_per_roi: float, rois_per_wsi: int = 400) -> float:
    """The paper's conversion (Sec. 3): a typical WSI is about 400 ROIs of 2708 x 2708."""
    return seconds_per_roi * rois_per_wsi / 60.0



def time_patch_mode(export_dir: str, cohort_dir: str, n_patches: int = 32, batch: int = 8) -> dict:
    """Seconds per 2708 ROI of the patch-wise baseline, from ``n_patches`` timed patches.

    Patch mode applies the same weights at alpha = 1 to every 692 patch of the
    32-px grid: 64 x 64 = 4096 patches per 2708 ROI give the same 64 x 64
    outputs as one dense pass.  Timing all of them on a CPU takes minutes per
    ROI, so a sample of real tissue patches is timed and scaled to 4096.
    """
    run = runs.load_run(export_dir, mode="patch")
    slide = cohort_slides(cohort_dir)[0]
    with SlideReader(slide) as reader:
        w, h = reader.dimensions
        rng = np.random.default_rng(0)
        patches = np.stack([
            reader.read_region((int(rng.integers(0, max(w - geometry.PATCH_PX, 1))),
                                int(rng.integers(0, max(h - geometry.PATCH_PX, 1)))), 0,
                               (geometry.PATCH_PX, geometry.PATCH_PX))
            for _ in range(n_patches)])
    run.detector.predict_patches(patches[:batch])  # warm-up (graph build)
    t0 = time.perf_counter()
    for i in range(0, n_patches, batch):
        run.detector.predict_patches(patches[i:i + batch])
    per_patch = (time.perf_counter() - t0) / n_patches
    per_roi_patches = geometry.tile_px(geometry.PAPER_ROI_PX, geometry.PAPER_ALPHA) ** 2
    return {"s_per_patch": per_patch, "patches_per_roi": per_roi_patches,
            "s_per_roi": per_patch * per_roi_patches, "n_timed": n_patches}
