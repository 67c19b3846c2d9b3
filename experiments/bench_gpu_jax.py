"""GPU benchmark without TensorFlow (KERAS_BACKEND=jax): per-ROI time and minutes per 400-ROI WSI.

Zhao et al., MICCAI 2019, Table 1: 1.08 s per 2708 ROI and 7.2 min per WSI
(about 400 ROIs) on one TITAN Xp.  This measures the same two figures for
the paper's VGG16 widths under JAX (XLA-compiled; no TensorFlow is imported,
which the script checks and reports):

1. per-ROI milliseconds of the detector alone at alpha 16, for each ``--roi_px``
   (2708 and larger) and ``--precisions`` (float32, bfloat16): one warm-up
   call (compilation) then ``--repeats`` timed calls, median, with the
   device synchronised (``block_until_ready``);
2. minutes per WSI of ``--wsi_rois`` ROIs of 2708 px, the whole scan loop
   (``inference.engine.scan_map``: reader threads decoding the JPEG tiles of
   a real pyramidal TIFF with OpenSlide while the device computes, stitching),
   on a synthetic H&E-like slide written once into ``--workdir`` (tissue
   everywhere; where the slide holds fewer ROIs than asked, the plan visits
   its ROIs again, which OpenSlide's small tile cache does not hold).

Random weights (speed does not depend on them).  Usage::

    KERAS_BACKEND=jax python experiments/bench_gpu_jax.py --workdir /tmp/bench_gpu --out /tmp/bench_gpu.json
    # CPU smoke test (what tests/test_bench_gpu_jax.py runs):
    KERAS_BACKEND=jax JAX_PLATFORMS=cpu python experiments/bench_gpu_jax.py --config tiny --roi_px 948 \\
        --wsi_roi_px 948 --precisions float32,bfloat16 --repeats 1 --wsi_rois 3 --slide_px 2048 --workdir /tmp/b

Goals (issue 14): <= 10 ms per 2708 ROI and <= 15 s per 400-ROI WSI on one H100.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")  # before Keras is imported

import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np
from absl import flags  # noqa: E402

from pfascannet import cliutil, geometry  # noqa: E402
from pfascannet.inference import engine, model_run, scan_settings
from pfascannet.inference.plan import make_plan
from pfascannet.model.config import get_config
from pfascannet.model.equivalence import structured_roi
from pfascannet.model.precision import check_precision
from pfascannet.slide.reader import SlideReader
from pfascannet.slide.tiff_writer import write_pyramid_tiff

import bench_util  # noqa: E402  (experiments/bench_util.py, beside this script)

FLAGS = flags.FLAGS
flags.DEFINE_string("config", "paper", "Model widths: paper (VGG16) or tiny (smoke tests).")
flags.DEFINE_integer("alpha", 16, "Dense coefficient.")
flags.DEFINE_list("roi_px", ["2708", "3732", "4756", "6804"], "ROI sides to time per ROI (eq. (1) at alpha).")
flags.DEFINE_list("precisions", ["float32", "bfloat16"], "Precisions: float32, bfloat16, float16.")
flags.DEFINE_integer("batch", 1, "ROIs per call.")
flags.DEFINE_integer("repeats", 20, "Timed calls per ROI side and precision (after one warm-up).")
flags.DEFINE_integer("wsi_roi_px", 2708, "ROI side of the WSI scan.")
flags.DEFINE_integer("wsi_rois", 400, "ROIs per WSI (the paper's Table 1 uses about 400); 0 skips the WSI scan.")
flags.DEFINE_integer("slide_px", 40960, "Side of the synthetic slide (40960: 20 x 20 ROIs of 2708 at alpha 16).")
flags.DEFINE_integer("workers", 8, "Reader threads decoding ROIs during the WSI scan.")
flags.DEFINE_integer("prefetch", 4, "Batches read ahead of the device.")
flags.DEFINE_string("workdir", "/tmp/pfascannet_bench_gpu", "Where the synthetic slide is written (once).")
flags.DEFINE_string("out", None, "Write the results as JSON here.")


def write_slide(path: str, side_px: int, seed: int = 0) -> None:
    """A JPEG-tiled pyramidal TIFF of H&E-like texture over the whole slide (0.243 um/px)."""
    textures = bench_util.he_textures(np.random.default_rng(seed), count=16)

    def tiles(x, y, w, h):
        v = bench_util.texture_at(textures, x, y)
        out = np.empty((h, w, 3), np.uint8)
        out[:] = v[:h, :w]
        return out

    write_pyramid_tiff(path, (side_px, side_px), tiles, tiff_tile_px=bench_util.HE_TILE_PX, compression="jpeg",
                       quality=85)


def _time_roi(keras, np, config, lr: int, precision: str) -> dict:
    from pfascannet.model.detector import build_detector  # noqa: PLC0415  (imports Keras)

    model = build_detector(config, alpha=FLAGS.alpha, input_px=lr, precision=precision)
    x = np.repeat(structured_roi(lr)[None], FLAGS.batch, axis=0).astype(np.float32)
    import jax  # noqa: PLC0415

    x = jax.device_put(x)  # host-to-device copy outside the timing: the scan overlaps it with compute
    t0 = time.perf_counter()
    predict = jax.jit(lambda v, nv, inp: model.stateless_call(v, nv, inp, training=False)[0])
    values = [w.value for w in model.trainable_variables]
    others = [w.value for w in model.non_trainable_variables]
    jax.block_until_ready(predict(values, others, x))  # compilation
    warm_s = time.perf_counter() - t0
    times = []
    for _ in range(FLAGS.repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(predict(values, others, x))
        times.append(time.perf_counter() - t0)
    per_roi_ms = 1000 * statistics.median(times) / FLAGS.batch
    lm = geometry.tile_px(lr, FLAGS.alpha)
    return {"roi_px": lr, "tile_px": lm, "precision": precision, "batch": FLAGS.batch, "warmup_s": warm_s,
            "ms_per_roi": per_roi_ms, "ms_per_roi_min": 1000 * min(times) / FLAGS.batch,
            "map_mpx_per_s": lm * lm * geometry.output_stride_px(FLAGS.alpha) ** 2 / (per_roi_ms / 1000) / 1e6}


def _wsi(config, precision: str) -> dict:
    from pfascannet.inference.detectors import KerasDetector  # noqa: PLC0415  (imports Keras)
    from pfascannet.model.detector import build_detector  # noqa: PLC0415  (imports Keras)

    os.makedirs(FLAGS.workdir, exist_ok=True)
    slide = os.path.join(FLAGS.workdir, f"wsi_{FLAGS.slide_px}.tif")
    t0 = time.perf_counter()
    if not os.path.exists(slide):
        write_slide(slide, FLAGS.slide_px)
    write_s = time.perf_counter() - t0
    grid = geometry.ScanGeometry(FLAGS.alpha, FLAGS.wsi_roi_px)
    det = KerasDetector(build_detector(config, alpha=FLAGS.alpha, precision=precision), FLAGS.alpha,
                        FLAGS.wsi_roi_px, digest="random")
    with SlideReader(slide) as reader:
        dims = reader.dimensions
    plan = make_plan(dims, grid)  # no tissue mask: every ROI of the slide
    reps = -(-FLAGS.wsi_rois // len(plan))
    plan = type(plan)(plan.geometry, plan.dimensions, 0, 1, np.tile(plan.rois_rowcol, (reps, 1))[: FLAGS.wsi_rois])
    warm = np.full((FLAGS.batch, FLAGS.wsi_roi_px, FLAGS.wsi_roi_px, 3), 200, np.uint8)
    det.predict(warm)  # compilation is not part of a scan's steady state
    options = scan_settings.ScanSettings(batch=FLAGS.batch, workers=FLAGS.workers, prefetch_batches=FLAGS.prefetch,
                                 progress=False, heatmap=False)
    run = model_run.ModelRun(det, grid, name="random", digest="random")
    _, stats = engine.scan_map(slide, run, plan, options)
    return {"precision": precision, "roi_px": FLAGS.wsi_roi_px, "rois": len(plan), "slide_px": FLAGS.slide_px,
            "distinct_rois": -(-FLAGS.slide_px // grid.roi_step_px) ** 2, "wall_s": stats.wall_s,
            "model_s": stats.model_s, "read_wait_s": stats.wait_s, "minutes_per_wsi": stats.wall_s / 60,
            "minutes_per_400_rois": stats.wall_s / len(plan) * 400 / 60, "slide_write_s": write_s}


def main(argv):
    del argv
    import keras  # noqa: PLC0415

    if keras.backend.backend() != "jax":
        raise bench_util.BenchError(f"this benchmark runs under KERAS_BACKEND=jax, not {keras.backend.backend()!r}")
    import jax  # noqa: PLC0415

    sizes = bench_util.roi_sides(FLAGS.roi_px, FLAGS.alpha)
    geometry.ScanGeometry(FLAGS.alpha, FLAGS.wsi_roi_px)
    precisions = [check_precision(p) for p in FLAGS.precisions]
    if FLAGS.repeats < 1 or FLAGS.batch < 1 or FLAGS.wsi_rois < 0:
        raise bench_util.BenchError("--repeats and --batch must be >= 1, --wsi_rois >= 0")
    config = get_config(FLAGS.config)
    device = jax.devices()[0]
    print(f"JAX {jax.__version__} on {device.platform}: {device.device_kind}; config {config.name}", flush=True)

    rois = []
    for lr in sizes:
        for p in precisions:
            try:
                row = _time_roi(keras, np, config, lr, p)
            except Exception as exc:  # noqa: BLE001  (out of device memory at large ROIs: record, go on)
                row = {"roi_px": lr, "precision": p, "error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"}
            rois.append(row)
            if "error" in row:
                print(f"LR {lr} {p}: {row['error']}", flush=True)
            else:
                print(f"LR {lr:5d} {p:8s}: {row['ms_per_roi']:9.2f} ms/ROI (warm-up {row['warmup_s']:.1f} s) | "
                      f"{row['map_mpx_per_s']:.1f} Mpx of map/s", flush=True)
    wsi = []
    if FLAGS.wsi_rois:
        for p in precisions:
            row = _wsi(config, p)
            wsi.append(row)
            print(f"WSI {p:8s}: {row['rois']} ROIs of {row['roi_px']} in {row['wall_s']:.1f} s "
                  f"({row['minutes_per_400_rois']:.2f} min per 400 ROIs; model {row['model_s']:.1f} s, "
                  f"waited for reads {row['read_wait_s']:.1f} s)", flush=True)
    imported_tf = "tensorflow" in sys.modules
    print(f"TensorFlow imported: {imported_tf}", flush=True)
    result = {
        "backend": keras.backend.backend(), "jax": jax.__version__, "keras": keras.__version__,
        "device": f"{device.platform}: {device.device_kind}", "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(), "config": config.to_dict(), "alpha": FLAGS.alpha,
        "repeats": FLAGS.repeats, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "rois": rois, "wsi": wsi, "tensorflow_imported": imported_tf,
    }
    if FLAGS.out:
        with open(FLAGS.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    cliutil.run_main(main)
