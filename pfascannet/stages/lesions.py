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

import os
import sys

from absl import flags

from pfascannet import camelyon
from pfascannet.errors import PfaError
from pfascannet.inference import postprocess, slide_list
from pfascannet.progress import Progress

FLAGS = flags.FLAGS
flags.DEFINE_string("scan_dir", None, "A scan's output folder (it holds maps/<slide>.npy and .json).")
flags.DEFINE_float("threshold", 0.5, "Probability for the contours (lesion candidates: every local maximum >= 0.05).")
flags.DEFINE_bool("heatmap", True, "Write heatmap PNGs (needs the slide files for their thumbnails).")
flags.DEFINE_string("slides", None, "Where the slides are now, for the heatmaps' thumbnails (a folder, a slide or a "
                    "list file); default: the paths the scan recorded.")
flags.DEFINE_multi_string("slide", [], "Only this slide id (repeatable); default: every map in the folder.")
flags.DEFINE_bool("progress", True, "Report progress with rate and ETA.")


def main(argv) -> None:
    if not FLAGS.scan_dir:
        raise PfaError("--scan_dir is required")
    if not os.path.isdir(FLAGS.scan_dir):
        raise PfaError(f"--scan_dir {FLAGS.scan_dir}: no such folder")
    settings = postprocess.PostSettings(threshold=FLAGS.threshold, heatmap=FLAGS.heatmap)
    paths = None
    if FLAGS.slides:
        paths = {camelyon.slide_id(p): p for p in slide_list.list_slides(FLAGS.slides)}
    progress = Progress(label="post-processing", unit="slide", enabled=FLAGS.progress)
    results = postprocess.postprocess_scan(FLAGS.scan_dir, settings, slides=FLAGS.slide or None,
                                           slide_paths=paths, progress=progress)
    if any(r.status == "failed" for r in results):
        sys.exit(1)
