"""Post-process a scan folder's maps: lesion candidates, contours, heatmaps, slide scores.

The post-processing stage on its own (``pfascannet.inference.postprocess``):
it reads ``S/maps/<slide>.npy`` + ``.json`` and writes ``S/lesions/``,
``S/contours/``, ``S/heatmaps/`` and ``S/slide_scores.csv``, without the
model.  Slides already post-processed with the same settings are skipped,
so a killed run resumes and a changed ``--threshold`` redoes only the files
that depend on it.

Examples::

    python -m pfascannet.stages.lesions --scan_dir scan/ --threshold 0.7
    python -m pfascannet.stages.lesions --scan_dir scan/ --slides cohort/ --noheatmap

Exit status (README): 0 all slides done, 1 some slide failed (each named),
2 bad input or flags (one ``error:`` line).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Optional

from absl import flags

from pfascannet import camelyon
from pfascannet import settings as settings_lib
from pfascannet.errors import PfaError
from pfascannet.inference import postprocess, slide_list
from pfascannet.inference.scan_settings import ScanSettings
from pfascannet.progress import Progress
from pfascannet.settings import setting

@dataclasses.dataclass(frozen=True)
class LesionsCommand:
    """The flags of ``pfascannet lesions`` that are not ``PostSettings`` (threshold, heatmap)."""

    scan_dir: Optional[str] = setting(None, help="A scan's output folder (it holds maps/<slide>.npy and .json).")
    slides: Optional[str] = setting(
        None, help="Where the slides are now, for the heatmaps' thumbnails (a folder, a slide or a list file); "
                   "default: the paths the scan recorded.")
    slide: tuple[str, ...] = setting((), repeat=True,
                                     help="Only this slide id (repeatable); default: every map in the folder.")
    progress: bool = settings_lib.same_as(ScanSettings, "progress")


FLAGS = flags.FLAGS
SETTINGS = (LesionsCommand, postprocess.PostSettings)
"""Every flag of the stage, generated from these dataclasses' fields (``pfascannet.settings``)."""
settings_lib.define_stage_flags(SETTINGS)


def main(argv) -> None:
    if not FLAGS.scan_dir:
        raise PfaError("--scan_dir is required")
    if not os.path.isdir(FLAGS.scan_dir):
        raise PfaError(f"--scan_dir {FLAGS.scan_dir}: no such folder")
    settings = settings_lib.from_flags(postprocess.PostSettings, FLAGS)
    paths = None
    if FLAGS.slides:
        paths = {camelyon.slide_id(p): p for p in slide_list.list_slides(FLAGS.slides)}
    progress = Progress(label="post-processing", unit="slide", enabled=FLAGS.progress)
    results = postprocess.postprocess_scan(FLAGS.scan_dir, settings, slides=FLAGS.slide or None,
                                           slide_paths=paths, progress=progress)
    if any(r.status == "failed" for r in results):
        sys.exit(1)
