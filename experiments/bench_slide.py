"""Benchmark of annotation rasterising and mask-TIFF writing at Camelyon scale.

Issue 2 asks for "a Camelyon-sized slide's level-5 mask in seconds". This
times, on random lesion-like polygons over a ``--width`` x ``--height`` level-0
slide (default 98304 x 220160, a large Camelyon16 slide):

* ``rasterize`` of the whole slide at downsample 32 (the evaluation mask);
* ``rasterize`` of 512 x 512 level-0 training windows (per window);
* optionally (``--mask_tiff``) ``write_mask_tiff`` of the whole pyramid,
  level 0 included, with its peak RSS (it streams tile by tile).

Example (quiet machine)::

  python experiments/bench_slide.py --out /tmp/bench_slide --mask_tiff

Writes ``<out>/bench_slide.json`` (settings, seconds, peak RSS in MiB).
"""

from __future__ import annotations

import os
import time

import numpy as np
from absl import flags

from pfascannet import io_utils
from pfascannet.cliutil import run_main
from pfascannet.slide.annotations import Annotation, rasterize, write_mask_tiff

import bench_util  # experiments/bench_util.py, beside this script

FLAGS = flags.FLAGS
flags.DEFINE_string("out", None, "Output folder for bench_slide.json (and the mask TIFF).")
flags.DEFINE_integer("width", 98304, "Level-0 slide width in pixels.")
flags.DEFINE_integer("height", 220160, "Level-0 slide height in pixels.")
flags.DEFINE_integer("polygons", 200, "Number of tumour polygons (every 5th is an exclusion).")
flags.DEFINE_integer("vertices", 500, "Vertices per polygon.")
flags.DEFINE_integer("windows", 200, "Number of 512 x 512 level-0 windows to time.")
flags.DEFINE_bool("mask_tiff", False, "Also write the full pyramidal mask TIFF (minutes at full size).")
flags.DEFINE_integer("seed", 0, "Random seed of the polygons.")


def random_annotations(width: int, height: int, count: int, vertices: int, seed: int) -> list[Annotation]:
    """Wavy blobs of 0.1-5 mm radius (at 0.243 µm/px); every 5th is an exclusion."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    annotations = []
    for i in range(count):
        cx, cy = rng.uniform((0, 0), (width, height))
        r = rng.uniform(400, min(20000, width / 4))
        rr = r * (1 + 0.3 * np.sin(5 * t + i) + 0.05 * rng.standard_normal(vertices))
        group = "_2" if i % 5 == 0 else "_0"
        annotations.append(Annotation(f"Annotation {i}", group, np.c_[cx + rr * np.cos(t), cy + rr * np.sin(t)]))
    return annotations


def main(argv) -> None:
    del argv
    if not FLAGS.out:
        raise bench_util.BenchError("--out is required (a folder for bench_slide.json)")
    if FLAGS.width < 1 or FLAGS.height < 1 or FLAGS.polygons < 1 or FLAGS.vertices < 3:
        raise bench_util.BenchError("--width/--height/--polygons must be >= 1 and --vertices >= 3")
    dims = (FLAGS.width, FLAGS.height)
    annotations = random_annotations(*dims, FLAGS.polygons, FLAGS.vertices, FLAGS.seed)
    result = {"settings": {k: FLAGS[k].value for k in ("width", "height", "polygons", "vertices", "windows", "seed")}}

    t0 = time.perf_counter()
    level5 = rasterize(annotations, dims, 32)
    result["rasterize_level5_s"] = time.perf_counter() - t0
    result["level5_shape_hw"] = list(level5.shape)
    result["level5_tumour_fraction"] = float((level5 > 0).mean())

    rng = np.random.default_rng(FLAGS.seed + 1)
    tumour = [a for a in annotations if a.is_tumour]
    t0 = time.perf_counter()
    for i in range(FLAGS.windows):
        # Windows on lesion boundaries: the expensive case for training masks.
        x, y = tumour[i % len(tumour)].coords_xy[rng.integers(FLAGS.vertices)]
        rasterize(annotations, dims, 1, origin_xy=(int(x) - 256, int(y) - 256), size_wh=(512, 512))
    result["rasterize_window512_ms"] = 1e3 * (time.perf_counter() - t0) / max(FLAGS.windows, 1)
    result["peak_rss_mib_after_rasterize"] = bench_util.peak_rss_mib()

    if FLAGS.mask_tiff:
        path = os.path.join(FLAGS.out, "bench_mask.tif")
        t0 = time.perf_counter()
        write_mask_tiff(path, annotations, dims, mpp=0.243)
        result["write_mask_tiff_s"] = time.perf_counter() - t0
        result["mask_tiff_mib"] = os.path.getsize(path) / 2**20
        result["peak_rss_mib_after_mask_tiff"] = bench_util.peak_rss_mib()
        os.remove(path)

    io_utils.write_json(os.path.join(FLAGS.out, "bench_slide.json"), result)
    for key, value in result.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    run_main(main)
