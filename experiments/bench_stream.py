"""The network alone: ROIs of eq. (1) against one streamed strip, for the same block of map (issue 24).

Both compute the map of an ``--tiles`` x ``--tiles`` block of ROI tiles (64 x 64
map pixels each at LR 2708, alpha 16): the ROI scan as ``tiles^2`` ROIs of
``--roi_px`` (each recomputing the 660-px border its neighbours compute too),
the stream (``inference.stream.DetectorStream``) as one strip pushed
``--stream_rows`` map rows at a time, every layer keeping its halo.  Random
weights at ``--config`` widths and ``--precision``, one synthetic H&E-like
image (``bench_util``), interleaved ROI / stream ``--repeats`` times after one
untimed warm-up of each; reported: median seconds, seconds per ROI of output
(the 2048 x 2048 px one 2708 ROI's map covers) and minutes per 400-ROI WSI at
that rate (Table 1's runtime), the input pixels each computes, the largest
|difference| of the two maps, and the CPU's model and bf16 features.

    python experiments/bench_stream.py --config paper --precision bfloat16 --tiles 2 --repeats 3

Writes ``<out>/bench_stream.json``.  Reading, tissue and stitching are not
in it: ``bench_tissue_scan.py`` times whole scans of a slide.
"""

from __future__ import annotations

import json
import os
import statistics
import time

import numpy as np
from absl import flags

import bench_util  # experiments/bench_util.py, beside this script
from pfascannet import geometry, io_utils
from pfascannet.cliutil import run_main
from pfascannet.model.config import get_config
from pfascannet.model.precision import PRECISIONS

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "/tmp/pfascannet_bench_stream", "Folder for bench_stream.json.")
flags.DEFINE_enum("config", "paper", ["paper", "small", "tiny"], "Model widths.")
flags.DEFINE_enum("precision", "bfloat16", list(PRECISIONS), "Compute precision.")
flags.DEFINE_integer("roi_px", geometry.PAPER_ROI_PX, "ROI side LR of the ROI scan (alpha 16).")
flags.DEFINE_integer("tiles", 2, "ROI tiles per side of the block of map computed.")
flags.DEFINE_integer("stream_rows", 16, "Map rows per streamed chunk.")
flags.DEFINE_integer("repeats", 3, "Timed ROI / stream pairs, interleaved.")


def main(argv) -> None:
    del argv
    from pfascannet.inference import stream  # noqa: PLC0415  (imports Keras)
    from pfascannet.inference.detectors import KerasDetector  # noqa: PLC0415
    from pfascannet.model.detector import build_detector  # noqa: PLC0415

    alpha, stride = 16, geometry.output_stride_px(16)
    grid = geometry.ScanGeometry(alpha, FLAGS.roi_px)
    lm, n = grid.tile_px, FLAGS.tiles
    if n < 1 or FLAGS.repeats < 1:
        raise bench_util.BenchError("--tiles and --repeats must be >= 1")
    side = geometry.roi_px(lm * n, alpha)  # the strip: the whole block's input
    rng = np.random.default_rng(0)
    textures = bench_util.he_textures(rng)
    image = np.empty((side, side, 3), np.uint8)
    for y in range(0, side, bench_util.HE_TILE_PX):
        for x in range(0, side, bench_util.HE_TILE_PX):
            tile = bench_util.texture_at(textures, x, y)
            h, w = min(bench_util.HE_TILE_PX, side - y), min(bench_util.HE_TILE_PX, side - x)
            image[y:y + h, x:x + w] = tile[:h, :w]
    model = build_detector(get_config(FLAGS.config), alpha=alpha, precision=FLAGS.precision)
    detector = KerasDetector(model, alpha, FLAGS.roi_px, digest="random")
    streamer = stream.DetectorStream(model, alpha)
    bounds = stream.chunk_bounds(lm * n, alpha, FLAGS.stream_rows)

    def by_rois() -> np.ndarray:
        out = np.empty((lm * n, lm * n), np.float32)
        for i in range(n):
            for j in range(n):
                y, x = i * lm * stride, j * lm * stride
                roi = image[y:y + FLAGS.roi_px, x:x + FLAGS.roi_px][None]
                out[i * lm:(i + 1) * lm, j * lm:(j + 1) * lm] = detector.predict(roi)[0]
        return out

    def by_stream() -> np.ndarray:
        streamer.reset()
        rows = [streamer.push(image[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        return np.concatenate([r for r in rows if r.shape[0]], axis=0)

    times: dict = {"rois": [], "stream": []}
    maps = {"rois": by_rois(), "stream": by_stream()}  # warm-up: tracing, oneDNN primitives
    for _ in range(FLAGS.repeats):
        for name, fn in (("rois", by_rois), ("stream", by_stream)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    outputs = n * n * (lm * stride / 2048) ** 2  # ROIs of output (2048 x 2048 px each)
    rows = {}
    for name, t in times.items():
        med = statistics.median(t)
        rows[name] = {"seconds": t, "median_s": med, "s_per_roi_of_output": med / outputs,
                      "min_per_400_roi_wsi": med / outputs * 400 / 60}
    rows["rois"]["input_mpx"] = n * n * FLAGS.roi_px ** 2 / 1e6
    rows["stream"]["input_mpx"] = side * side / 1e6
    result = {
        "command": "python experiments/bench_stream.py " + " ".join(
            f"--{k}={getattr(FLAGS, k)}" for k in ("config", "precision", "roi_px", "tiles", "stream_rows", "repeats")),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **bench_util.cpu_features(),
        "load_average": os.getloadavg(), "block_map_px": lm * n, "rois_of_output": outputs,
        "max_abs_diff": float(np.abs(maps["rois"] - maps["stream"]).max()), "rows": rows,
        "speedup_stream_over_rois": rows["rois"]["median_s"] / rows["stream"]["median_s"],
    }
    io_utils.write_json(os.path.join(FLAGS.out, "bench_stream.json"), result)
    for name, r in rows.items():
        print(f"{name:>6}: median {r['median_s']:.1f} s ({', '.join(f'{s:.1f}' for s in r['seconds'])}), "
              f"{r['input_mpx']:.1f} Mpx input, {r['s_per_roi_of_output']:.2f} s per ROI of output, "
              f"{r['min_per_400_roi_wsi']:.1f} min per 400-ROI WSI")
    print(f"stream {result['speedup_stream_over_rois']:.2f}x the ROIs; max |diff| {result['max_abs_diff']:.2g}; "
          f"{result['cpu']} amx_bf16={result['amx_bf16']} avx512_bf16={result['avx512_bf16']}; "
          f"load {result['load_average'][0]:.1f}", flush=True)
    print(json.dumps({"out": os.path.join(FLAGS.out, "bench_stream.json")}))


if __name__ == "__main__":
    run_main(main)
