"""Benchmark of the scan itself: dense inference versus patch-wise scanning (Sec. 2.2, eq. (1)).

Both modes compute the same Lm x Lm tumour probabilities for one ROI (the
equivalence the tests check): dense mode runs the detector at alpha on the
whole LR x LR ROI; patch mode runs the patch classifier (alpha = 1) on each
of the Lm^2 692 patches.  Patch mode is timed on --patch_sample patches and
extrapolated to Lm^2.  Also reports parameters and MACs (the paper-width
trunk alone is 2.17 TMAC per 2708 ROI).  Weights are random: speed does not
depend on them.

    python experiments/bench_dense_vs_patch.py --config paper --roi_px 2708,3732 --out bench_dense_vs_patch.json
    python experiments/bench_dense_vs_patch.py --config tiny --roi_px 1204 --patch_sample 2 --repeats 1   # smoke test

Run it on a quiet machine: timings are wall-clock.  At the paper's widths a 3732
ROI holds ~3.6 GB per conv1 activation (~10 GB peak); 2708 about half.
"""

from __future__ import annotations

import os
import platform
import statistics
import time

import numpy as np
from absl import flags

from pfascannet import cliutil, geometry
from pfascannet.io_utils import write_json
from pfascannet.model.config import get_config
from pfascannet.model.equivalence import structured_roi

import bench_util  # experiments/bench_util.py, beside this script

FLAGS = flags.FLAGS
flags.DEFINE_string("config", "paper", "Model config: paper or tiny.")
flags.DEFINE_integer("alpha", geometry.PAPER_ALPHA, "Dense coefficient.")
flags.DEFINE_list("roi_px", ["2708", "3732"], "ROI sides LR to time (each must fit eq. (1) at alpha).")
flags.DEFINE_integer("patch_sample", 8, "Patches timed in patch mode (extrapolated to Lm^2).")
flags.DEFINE_integer("patch_batch", 4, "Patches per batch in patch mode.")
flags.DEFINE_integer("repeats", 2, "Timed dense passes per ROI size (after one warm-up pass).")
flags.DEFINE_string("out", None, "Write the results as JSON here.")


def _time(fn, repeats: int) -> float:
    fn()  # warm-up: tracing / compilation and memory allocation
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv):
    del argv
    import keras  # noqa: PLC0415

    from pfascannet.model.detector import build_detector, build_patch_classifier, detector_macs, transfer_weights  # noqa: PLC0415  (imports Keras)
    from pfascannet.model.trunk import trunk_macs  # noqa: PLC0415  (imports Keras)

    sizes = bench_util.roi_sides(FLAGS.roi_px, FLAGS.alpha)
    if FLAGS.patch_sample < 1 or FLAGS.patch_batch < 1 or FLAGS.repeats < 1:
        raise bench_util.BenchError("--patch_sample, --patch_batch and --repeats must be >= 1")
    config = get_config(FLAGS.config)

    patch_model = build_patch_classifier(config)
    patch_macs = detector_macs(geometry.PATCH_PX, config)
    rng = np.random.default_rng(0)
    n = FLAGS.patch_sample
    patches = rng.integers(0, 256, (n, geometry.PATCH_PX, geometry.PATCH_PX, 3), dtype=np.uint8).astype(np.float32)

    def run_patches():
        for i in range(0, n, FLAGS.patch_batch):
            patch_model.predict_on_batch(patches[i:i + FLAGS.patch_batch])

    per_patch_s = _time(run_patches, 1) / n
    results = []
    for lr in sizes:
        lm = geometry.tile_px(lr, FLAGS.alpha)
        dense = build_detector(config, alpha=FLAGS.alpha, input_px=lr)
        transfer_weights(patch_model, dense)
        roi = structured_roi(lr)[None].astype(np.float32)
        dense_s = _time(lambda d=dense: d.predict_on_batch(roi), FLAGS.repeats)
        patch_s = per_patch_s * lm * lm
        row = {
            "roi_px": lr,
            "tile_px": lm,
            "stride_px": geometry.output_stride_px(FLAGS.alpha),
            "dense_s_per_roi": dense_s,
            "patch_s_per_roi_extrapolated": patch_s,
            "patch_s_per_patch": per_patch_s,
            "speedup": patch_s / dense_s,
            "map_mpx_per_s_dense": lm * lm * geometry.output_stride_px(FLAGS.alpha) ** 2 / dense_s / 1e6,
            "dense_gmac_per_roi": detector_macs(lr, config, FLAGS.alpha) / 1e9,
            "trunk_gmac_per_roi": trunk_macs(lr, config) / 1e9,
            "patch_gmac_per_roi": patch_macs * lm * lm / 1e9,
        }
        results.append(row)
        print(
            f"LR {lr:5d} Lm {lm:3d}: dense {dense_s:8.2f} s/ROI | patch {patch_s:10.1f} s/ROI "
            f"({per_patch_s:.3f} s/patch x {lm * lm}) | speed-up {row['speedup']:7.1f}x | "
            f"MAC dense {row['dense_gmac_per_roi']:9.1f} G, patch {row['patch_gmac_per_roi']:11.1f} G | "
            f"{row['map_mpx_per_s_dense']:.3f} Mpx of map / s",
            flush=True,
        )
        del dense
    params = patch_model.count_params()
    print(f"config {config.name}: {params:,} detector parameters; trunk {trunk_macs(2708, config) / 1e12:.3f} TMAC per 2708 ROI")
    if FLAGS.out:
        write_json(FLAGS.out, {
            "config": config.to_dict(), "alpha": FLAGS.alpha, "parameters": params,
            "patch_sample": n, "patch_batch": FLAGS.patch_batch, "repeats": FLAGS.repeats,
            "backend": keras.backend.backend(), "keras": keras.__version__,
            "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
            "results": results,
        })


if __name__ == "__main__":
    cliutil.run_main(main)
