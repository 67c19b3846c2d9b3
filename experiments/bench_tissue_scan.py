"""Tissue throughput of a whole-slide scan at the paper's widths: precision, ROI size and edge ROIs.

Issue 14 / DESIGN.md §5: the anchors (TIAToolbox, MONAI) reach 0.03 Mpx of
tissue per second for a 32-px map on the 2-core CPU; the float32 / 2708 scan
0.20 Mpx/s.  This writes an ``--side_px`` square slide (default 8192) that is
half tissue in smooth blobs (H&E-like texture, white glass around, JPEG
tiles, 0.243 um/px), then scans it once per ``--variants`` entry, each in a
fresh process (peak RSS is per variant), in the order given:
``PRECISION:ROI:whole|edges|stream``.  The first is the baseline of the same run.
``stream`` is the streaming scan (``--stream``, ``inference.stream``) over the
edge-ROI plan: the same map with no ROI border computed twice; its time
includes compiling each layer for the strip's shapes (an ROI variant's
warm-up is not timed).  Each row also gives seconds per ROI of output (the
2048 x 2048 px a 2708 ROI's 64 x 64 map covers: whole ROIs + edge ROIs / 4)
and the minutes of a 400-ROI WSI at that rate (Table 1's runtime), with the
CPU's model and its bf16 features.

Paper widths, random weights (speed does not depend on them), alpha 16,
batch 1, 2 reader threads, tissue = Otsu (the scanner's default).  Every
ROI size the scan uses is run once before the timed scan (tracing and
allocation are not part of a scan's steady state).  Tissue Mpx/s = Otsu
tissue area / whole-scan wall time (mask, plan, reads, model, outputs).

    python experiments/bench_tissue_scan.py --workdir /tmp/bench_tissue \\
        --variants float32:2708:whole,bfloat16:2708:whole,bfloat16:2708:edges,bfloat16:4052:edges
"""

from __future__ import annotations

import json
import os
import time

import cv2
import numpy as np
from absl import flags

from pfascannet import geometry
from pfascannet.cliutil import run_main
from pfascannet.inference import engine, model_run, scan_settings
from pfascannet.model.config import get_config
from pfascannet.slide.reader import SlideReader
from pfascannet.slide.tiff_writer import write_pyramid_tiff
from pfascannet.slide.tissue import tissue_mask

import bench_util  # experiments/bench_util.py, beside this script

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "/tmp/pfascannet_bench_tissue", "Slide and scans go here.")
flags.DEFINE_enum("config", "paper", ["paper", "tiny"], "Model widths.")
flags.DEFINE_integer("side_px", 8192, "Slide side (level-0 px).")
flags.DEFINE_list("variants", ["float32:2708:whole", "bfloat16:2708:edges"],
                  "PRECISION:ROI:whole|edges|stream, in order.")
flags.DEFINE_string("_child", None, "Internal: run this variant and print JSON.")


def write_blob_slide(path: str, side_px: int, seed: int = 0) -> float:
    """Half tissue in smooth blobs (H&E-like), white glass elsewhere; returns the tissue fraction drawn."""
    rng = np.random.default_rng(seed)
    low = max(side_px // 32, 8)  # the blob field at 32 px per cell, smoothed and upsampled per tile
    field = np.zeros((low, low), np.float32)
    yy, xx = np.mgrid[0:low, 0:low].astype(np.float32)
    for _ in range(14):
        cy, cx = rng.uniform(0, low, 2)
        r = rng.uniform(low / 14, low / 5)
        field += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    level = float(np.median(field))  # exactly half of the cells above it
    textures = bench_util.he_textures(rng)
    big = cv2.resize(field, (side_px, side_px), interpolation=cv2.INTER_LINEAR) if side_px <= 16384 else None

    def tiles(x, y, w, h):
        mask = big[y : y + h, x : x + w] > level
        if not mask.any():
            return None
        out = np.full((h, w, 3), 255, np.uint8)
        v = bench_util.texture_at(textures, x, y)
        out[mask] = v[:h, :w][mask]
        return out

    if big is None:
        raise bench_util.BenchError("--side_px above 16384 is not supported by this writer")
    write_pyramid_tiff(path, (side_px, side_px), tiles, tiff_tile_px=bench_util.HE_TILE_PX, compression="jpeg")
    return float((big > level).mean())


def _parse(text: str) -> tuple[str, int, str]:
    try:
        precision, roi, mode = text.split(":")
        if mode not in ("whole", "edges", "stream"):
            raise ValueError
        return precision, int(roi), mode
    except ValueError:
        raise bench_util.BenchError(f"a variant is PRECISION:ROI:whole|edges|stream, got {text!r}") from None


def _child(text: str, slide: str) -> None:
    from pfascannet.inference.detectors import KerasDetector  # noqa: PLC0415  (imports Keras)
    from pfascannet.model.detector import build_detector  # noqa: PLC0415  (imports Keras)

    precision, roi, mode = _parse(text)
    edges = mode != "whole"
    grid = geometry.ScanGeometry(16, roi)
    det = KerasDetector(build_detector(get_config(FLAGS.config), alpha=16, precision=precision), 16, roi, digest="random")
    run = model_run.ModelRun(det, grid, name=f"random-{FLAGS.config}", digest="random")
    options = scan_settings.ScanSettings(batch=1, workers=2, edge_rois=edges, progress=False, heatmap=True,
                                       stream=mode == "stream")
    sides = [roi] + ([geometry.roi_px(grid.tile_px // 2, 16)] if model_run.plan_split(run, options) > 1 else [])
    t0 = time.perf_counter()
    for side in sides if mode != "stream" else ():
        model_run.edge_detector(run, side).predict(np.full((1, side, side, 3), 200, np.uint8))
    warm_s = time.perf_counter() - t0
    out = os.path.join(FLAGS.workdir, f"scan_{text.replace(':', '_')}_{time.time_ns()}")
    t0 = time.perf_counter()
    summary = engine.scan_slides(slide, [run], out, options)
    wall = time.perf_counter() - t0
    if not summary.ok:
        raise SystemExit(summary.text())
    res = summary.results[0]
    member = res.meta["members"][0]
    bench_util.report({
        "variant": text, "whole_scan_s": wall, "model_s": res.stats[0].model_s, "read_wait_s": res.stats[0].wait_s,
        "rois": member["n_rois"], "edge_rois": member.get("n_edge_rois", 0), "warmup_s": warm_s,
        "input_mpx": res.stats[0].input_px / 1e6,
        "peak_rss_gb": bench_util.peak_rss_mib() / 1024, "out": out,
    })


def main(argv) -> None:
    del argv
    os.makedirs(FLAGS.workdir, exist_ok=True)
    slide = os.path.join(FLAGS.workdir, f"blobs_{FLAGS.side_px}.tif")
    if FLAGS._child:
        _child(FLAGS._child, slide)
        return
    for v in FLAGS.variants:
        _parse(v)
    info_path = slide + ".json"
    if not os.path.exists(slide):
        t0 = time.perf_counter()
        fraction = write_blob_slide(slide, FLAGS.side_px)
        with open(info_path, "w", encoding="utf-8") as f:
            json.dump({"drawn_tissue_fraction": fraction, "write_s": time.perf_counter() - t0}, f)

    with SlideReader(slide) as reader:
        mask = tissue_mask(reader, downsample=32)
    tissue_mpx = float(mask.sum()) * 32 * 32 / 1e6
    print(f"cpu: {bench_util.cpu_features()}", flush=True)
    print(f"slide {slide}: {FLAGS.side_px}^2, Otsu tissue {tissue_mpx:.1f} Mpx "
          f"({100 * tissue_mpx * 1e6 / FLAGS.side_px ** 2:.0f} %)", flush=True)
    rows = []
    for v in FLAGS.variants:
        try:
            row = bench_util.run_child(bench_util.child_command(
                __file__, f"--_child={v}", f"--workdir={FLAGS.workdir}", f"--config={FLAGS.config}",
                f"--side_px={FLAGS.side_px}"))
        except bench_util.ChildFailed as exc:
            rows.append({"variant": v, "error": exc.last_line})
            print(f"{v}: FAILED {rows[-1]['error']}", flush=True)
            continue
        row["tissue_mpx_per_s"] = tissue_mpx / row["whole_scan_s"]
        output_rois = row["rois"] - row["edge_rois"] + row["edge_rois"] / 4
        row["s_per_roi_of_output"] = row["model_s"] / output_rois
        row["min_per_400_roi_wsi"] = row["s_per_roi_of_output"] * 400 / 60
        row["load_average"] = os.getloadavg()
        rows.append(row)
        base = rows[0].get("tissue_mpx_per_s")
        ratio = f" = {row['tissue_mpx_per_s'] / base:.2f}x the first" if base else ""
        print(f"{v}: {row['whole_scan_s']:.1f} s whole scan, model {row['model_s']:.1f} s, {row['rois']} ROIs "
              f"({row['edge_rois']} edge), {row['tissue_mpx_per_s']:.3f} Mpx tissue/s"
              f"{ratio}, {row['input_mpx']:.1f} Mpx input, {row['s_per_roi_of_output']:.2f} s per ROI of output "
              f"({row['min_per_400_roi_wsi']:.1f} min per 400-ROI WSI), "
              f"peak RSS {row['peak_rss_gb']:.2f} GB", flush=True)
    with open(os.path.join(FLAGS.workdir, "bench_tissue_scan.json"), "w", encoding="utf-8") as f:
        json.dump({"slide": slide, "side_px": FLAGS.side_px, "tissue_mpx": tissue_mpx, "config": FLAGS.config,
                   **bench_util.cpu_features(),
                   "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    run_main(main)
