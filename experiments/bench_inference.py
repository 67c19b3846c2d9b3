"""Benchmark of the whole-slide scanner (§2.2, Table 1: 7.2 min per WSI).

Measures, on synthetic slides (so the numbers describe the pipeline, not any
clinical accuracy):

1. the wall time of the whole scan (tissue mask, reads, model, outputs) over
   the model-only time on the very same ROIs (goal <= 1.1: I/O hidden behind
   compute), and ROIs per second;
2. dense versus patch-wise wall time on the same grid (the patch classifier,
   alpha 1 on 692 patches, over a few small ROIs; extrapolated per 2708 ROI);
3. the peak RSS of a scan of a 16k and a 64k slide, each in a fresh process
   (goal <= 3 GB for both: flat in the slide's size).

The slides are written once into ``--workdir`` (mostly white glass with
H&E-coloured tissue squares, JPEG tiles, so writing a 64k slide is quick).

Usage (tiny widths, CPU; use --config=paper on an accelerator)::

    python experiments/bench_inference.py --workdir /tmp/bench --config tiny

Results: a table on stdout and ``<workdir>/bench_inference.json``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

import numpy as np
from absl import flags

from pfascannet import geometry
from pfascannet.cliutil import run_main
from pfascannet.inference import engine, model_run, scan_settings
from pfascannet.inference.plan import make_plan
from pfascannet.io_utils import write_json
from pfascannet.model.config import get_config
from pfascannet.slide.reader import SlideReader
from pfascannet.slide.tiff_writer import write_pyramid_tiff
from pfascannet.slide.tissue import tissue_mask

import bench_util  # experiments/bench_util.py, beside this script

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "/tmp/pfascannet_bench", "Folder for the synthetic slides and scan outputs.")
flags.DEFINE_enum("config", "tiny", ["tiny", "paper"], "Model widths (random weights: speed only).")
flags.DEFINE_integer("alpha", 16, "Dense coefficient.")
flags.DEFINE_integer("roi", 2708, "ROI side LR.")
flags.DEFINE_integer("batch", 1, "ROIs per model call.")
flags.DEFINE_integer("workers", 2, "Reader threads.")
flags.DEFINE_list("sizes", ["16384", "65536"], "Slide sides (level-0 px) for the RSS runs; the first one is timed.")
flags.DEFINE_integer("tissue_px", 8192, "Side of the tissue area (px) per slide; the 64k slide splits it in 4 squares.")
flags.DEFINE_integer("compare_roi", 916, "ROI side for the dense-versus-patch comparison (916: 8x8 map px).")
flags.DEFINE_integer("compare_rois", 1, "ROIs in the dense-versus-patch comparison.")
flags.DEFINE_integer("patch_batch", 16, "Patches per model call in patch mode.")
flags.DEFINE_string("_child", None, "Internal: scan this slide and report a JSON result (bench_util.report).")
flags.DEFINE_bool("_child_model_only", False, "Internal: also time model-only and dense-vs-patch.")


def write_bench_slide(path: str, side_px: int, tissue_px: int, seed: int = 0) -> None:
    """A square slide of white glass with ``tissue_px``-wide H&E-coloured squares (1 or 4 of them)."""
    textures = bench_util.he_textures(np.random.default_rng(seed))
    if side_px > 4 * tissue_px // 2:
        half = tissue_px // 2
        q = side_px // 4
        squares = [(q - half // 2, q - half // 2), (3 * q - half // 2, q - half // 2),
                   (q - half // 2, 3 * q - half // 2), (3 * q - half // 2, 3 * q - half // 2)]
        size = half
    else:
        squares = [((side_px - tissue_px) // 2, (side_px - tissue_px) // 2)]
        size = tissue_px

    def tiles(x, y, w, h):
        out = None
        for sx, sy in squares:
            x0, y0 = max(x, sx), max(y, sy)
            x1, y1 = min(x + w, sx + size), min(y + h, sy + size)
            if x0 >= x1 or y0 >= y1:
                continue
            if out is None:
                out = np.full((h, w, 3), 255, np.uint8)
            v = bench_util.texture_at(textures, x, y)
            out[y0 - y : y1 - y, x0 - x : x1 - x] = v[y0 - y : y1 - y, x0 - x : x1 - x]
        return out

    write_pyramid_tiff(path, (side_px, side_px), tiles, tiff_tile_px=bench_util.HE_TILE_PX, compression="jpeg")


def _detector(alpha: int, roi_px: int):
    from pfascannet.inference.detectors import KerasDetector  # noqa: PLC0415  (imports Keras)
    from pfascannet.model.detector import build_detector  # noqa: PLC0415  (imports Keras)

    model = build_detector(get_config(FLAGS.config), alpha=alpha)
    return KerasDetector(model, alpha, roi_px)


def _child() -> None:
    """Scans one slide in this (fresh) process; reports times and peak RSS."""
    slide = FLAGS._child
    grid = geometry.ScanGeometry(FLAGS.alpha, FLAGS.roi)
    det = _detector(FLAGS.alpha, FLAGS.roi)
    warm = np.full((FLAGS.batch, FLAGS.roi, FLAGS.roi, 3), 200, np.uint8)
    det.predict(warm)  # tracing/compilation is not part of a scan's steady state
    del warm
    run = model_run.ModelRun(det, grid, name=f"random-{FLAGS.config}")
    out = os.path.join(FLAGS.workdir, "scan_" + os.path.splitext(os.path.basename(slide))[0])
    options = scan_settings.ScanSettings(batch=FLAGS.batch, workers=FLAGS.workers, checkpoint_every_s=60.0)
    t0 = time.perf_counter()
    summary = engine.scan_slides(slide, [run], out + f"_{time.time_ns()}", options)
    whole_s = time.perf_counter() - t0
    if not summary.ok:
        raise SystemExit(summary.text())
    stats = summary.results[0].stats[0]
    result = {
        "slide": os.path.basename(slide),
        "n_rois": stats.n_rois,
        "whole_scan_s": whole_s,
        "scan_map_wall_s": stats.wall_s,
        "model_in_scan_s": stats.model_s,
        "read_wait_s": stats.wait_s,
        "peak_rss_gb": bench_util.peak_rss_mib() / 1024,
    }
    if FLAGS._child_model_only:
        with SlideReader(slide) as reader:
            plan = make_plan(reader.dimensions, grid, tissue_mask(reader, 32), 32)
            rois = [reader.read_region(plan.roi_xy(k), 0, (FLAGS.roi, FLAGS.roi)) for k in range(len(plan))]
        t0 = time.perf_counter()
        for s in range(0, len(rois), FLAGS.batch):
            det.predict(np.stack(rois[s : s + FLAGS.batch]))
        result["model_only_s"] = time.perf_counter() - t0
        del rois
        result.update(_dense_vs_patch(slide, plan))
    bench_util.report(result)


def _dense_vs_patch(slide: str, big_plan) -> dict:
    grid = geometry.ScanGeometry(FLAGS.alpha, FLAGS.compare_roi)
    with SlideReader(slide) as reader:
        plan = make_plan(reader.dimensions, grid, tissue_mask(reader, 32), 32)
    plan = dataclasses.replace(plan, rois_rowcol=plan.rois_rowcol[: FLAGS.compare_rois])
    dense = model_run.ModelRun(_detector(FLAGS.alpha, FLAGS.compare_roi), grid, name="dense")
    patch = model_run.ModelRun(_detector(1, geometry.PATCH_PX), grid, mode="patch", name="patch")
    dense.detector.predict(np.full((1, FLAGS.compare_roi, FLAGS.compare_roi, 3), 200, np.uint8))
    patch.detector.predict(np.full((FLAGS.patch_batch, 692, 692, 3), 200, np.uint8))
    options = scan_settings.ScanSettings(batch=1, workers=FLAGS.workers, progress=False, patch_batch=FLAGS.patch_batch)
    _, ds = engine.scan_map(slide, dense, plan, options)
    _, ps = engine.scan_map(slide, patch, plan, options)
    map_px = len(plan) * grid.tile_px**2
    return {
        "compare_roi": FLAGS.compare_roi,
        "compare_map_px": map_px,
        "dense_wall_s": ds.wall_s,
        "patch_wall_s": ps.wall_s,
        "patch_over_dense": ps.wall_s / ds.wall_s,
        "patch_s_per_2708_roi_extrapolated": ps.wall_s / map_px * 64 * 64,
    }


def main(argv) -> None:
    del argv
    if FLAGS._child:
        _child()
        return
    os.makedirs(FLAGS.workdir, exist_ok=True)
    results = {"config": FLAGS.config, "alpha": FLAGS.alpha, "roi": FLAGS.roi, "batch": FLAGS.batch,
               "workers": FLAGS.workers, "backend": os.environ.get("KERAS_BACKEND", "tensorflow"), "slides": []}
    for n, side in enumerate(int(s) for s in FLAGS.sizes):
        path = os.path.join(FLAGS.workdir, f"bench_{side}.tif")
        if not os.path.exists(path):
            t0 = time.perf_counter()
            write_bench_slide(path, side, FLAGS.tissue_px)
            print(f"wrote {path} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        cmd = bench_util.child_command(__file__, f"--_child={path}", f"--_child_model_only={n == 0}")
        cmd += [f"--{k}={getattr(FLAGS, k)}" for k in ("workdir", "config", "alpha", "roi", "batch", "workers",
                                                      "compare_roi", "compare_rois", "patch_batch")]
        # The child's stderr (the scan's progress) comes through.
        results["slides"].append(dict(bench_util.run_child(cmd, capture_stderr=False), side_px=side))
    first = results["slides"][0]
    lines = [
        f"config={FLAGS.config} alpha={FLAGS.alpha} roi={FLAGS.roi} batch={FLAGS.batch} "
        f"workers={FLAGS.workers} backend={results['backend']} (synthetic slides, random weights)",
        "| slide | ROIs | whole scan s | ROIs/s | model in scan s | read wait s | peak RSS GB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["slides"]:
        lines.append(
            f"| {r['side_px']}^2 | {r['n_rois']} | {r['whole_scan_s']:.1f} | {r['n_rois'] / r['whole_scan_s']:.3f} | "
            f"{r['model_in_scan_s']:.1f} | {r['read_wait_s']:.2f} | {r['peak_rss_gb']:.2f} |"
        )
    if "model_only_s" in first:
        lines.append(
            f"whole scan / model-only on the same {first['n_rois']} ROIs: "
            f"{first['whole_scan_s'] / first['model_only_s']:.3f} (goal <= 1.1); "
            f"ROI loop / model-only: {first['scan_map_wall_s'] / first['model_only_s']:.3f}"
        )
        lines.append(
            f"dense vs patch on {first['compare_map_px']} map px (ROI {first['compare_roi']}): dense "
            f"{first['dense_wall_s']:.2f} s, patch {first['patch_wall_s']:.2f} s, patch/dense "
            f"{first['patch_over_dense']:.1f}x; patch-wise per 2708 ROI (extrapolated) "
            f"{first['patch_s_per_2708_roi_extrapolated']:.1f} s"
        )
    results["table"] = lines

    write_json(os.path.join(FLAGS.workdir, "bench_inference.json"), results)
    print("\n".join(lines))


if __name__ == "__main__":
    run_main(main)
