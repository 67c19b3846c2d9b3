"""Tile latency of ``pfascannet view``: slide tiles and map-overlay tiles as a browser asks for them.

Starts the real command (``pfascannet view S --port 0``) in a child process and, for each slide of
the scan, replays what OpenSeadragon fetches when a user opens the slide and zooms straight in on
its most probable lesion: at every Deep Zoom level from the one that fits the viewport up to full
resolution, the tiles that a ``--viewport_px`` viewer centred on the lesion shows, each slide tile
with its overlay tile, ``--clients`` requests in flight at once (a browser keeps about 6 per host).
Every tile is asked for once, so each is a cold request: the slide tile is read and encoded from
the slide, and the first overlay tile of a level also makes that level's raster of the map (made
once per slide and level, then reused).  Latency = request sent to last byte read, on loopback.

    python experiments/bench_viewer.py --scan_dir demo_out/scan --out bench_viewer.json

Prints p50 / p95 / max per kind; run it on a quiet machine (timings are wall-clock).
"""

from __future__ import annotations

import http.client
import json
import math
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from absl import flags

from pfascannet import cliutil
from pfascannet.io_utils import write_json

import bench_util  # experiments/bench_util.py, beside this script

FLAGS = flags.FLAGS
flags.DEFINE_string("scan_dir", None, "The scan folder to view.")
flags.DEFINE_integer("clients", 6, "Requests in flight at once.")
flags.DEFINE_list("viewport_px", ["1280", "800"], "Viewer width, height in CSS px.")
flags.DEFINE_integer("threshold_pct", 50, "The overlay's threshold, in %.")
flags.DEFINE_integer("max_slides", 0, "Only the first N slides (0: all).")
flags.DEFINE_string("out", None, "Write the results as JSON here.")

TILE_PX = 254


def _start(scan_dir: str):
    proc = subprocess.Popen([sys.executable, "-m", "pfascannet.cli", "view", scan_dir, "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        line = proc.stdout.readline()
        if "http://" in line:
            return proc, int(line[line.index("http://"):].split()[0].rstrip("/").rsplit(":", 1)[1])
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise bench_util.BenchError(f"the viewer did not start: {proc.stderr.read()[-2000:]}")


def _get(port: int, path: str) -> tuple[float, int, bytes]:
    """``(seconds, status, body)`` of one GET on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    t0 = time.perf_counter()
    conn.request("GET", path)
    resp = conn.getresponse()
    body = resp.read()
    dt = time.perf_counter() - t0
    conn.close()
    return dt, resp.status, body


def _zoom_in_tiles(dims_xy, centre_xy, viewport_px) -> list[tuple[int, int, int]]:
    """(level, col, row) a viewer centred on ``centre_xy`` shows at each level from 'whole slide' to full size."""
    w0, h0 = dims_xy
    max_level = math.ceil(math.log2(max(w0, h0)))
    vw, vh = viewport_px
    tiles = []
    for level in range(max_level + 1):
        ds = 2 ** (max_level - level)
        lw, lh = math.ceil(w0 / ds), math.ceil(h0 / ds)
        if lw > vw or lh > vh or not tiles:
            cx, cy = centre_xy[0] / ds, centre_xy[1] / ds
            x0, x1 = max(0, cx - vw / 2), min(lw, cx + vw / 2)
            y0, y1 = max(0, cy - vh / 2), min(lh, cy + vh / 2)
            if lw <= vw and lh <= vh:  # the whole slide fits: the "home" view
                x0, x1, y0, y1 = 0, lw, 0, lh
            tiles += [(level, c, r) for c in range(int(x0 // TILE_PX), int(math.ceil(x1 / TILE_PX)))
                      for r in range(int(y0 // TILE_PX), int(math.ceil(y1 / TILE_PX)))]
    return tiles


def _stats(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1000.0
    return {"n": int(ms.size), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p95_ms": round(float(np.percentile(ms, 95)), 1), "max_ms": round(float(ms.max()), 1)}


def main(argv):
    del argv
    if not FLAGS.scan_dir or not os.path.isdir(FLAGS.scan_dir):
        raise bench_util.BenchError("--scan_dir must be a scan folder")
    viewport = tuple(int(v) for v in FLAGS.viewport_px)
    proc, port = _start(FLAGS.scan_dir)
    try:
        slides = [r["slide"] for r in json.loads(_get(port, "/api/slides")[2])["slides"]]
        if FLAGS.max_slides:
            slides = slides[: FLAGS.max_slides]
        times = {"page_data": [], "slide": [], "overlay": []}
        failures = 0
        with ThreadPoolExecutor(FLAGS.clients) as pool:
            for sid in slides:
                dt, _, body = _get(port, f"/api/slide/{sid}")
                info = json.loads(body)
                times["page_data"].append(dt)
                if info["slide_error"] or not info["has_overlay"]:
                    failures += 1
                    continue
                centre = ((info["lesions"][0]["x"], info["lesions"][0]["y"]) if info["lesions"]
                          else (info["dimensions"][0] / 2, info["dimensions"][1] / 2))
                paths = []
                for level, col, row in _zoom_in_tiles(info["dimensions"], centre, viewport):
                    paths.append(("slide", f"/dzi/{sid}_files/{level}/{col}_{row}.jpeg"))
                    paths.append(("overlay", f"/overlay/{sid}/t{FLAGS.threshold_pct:02d}_files/{level}/{col}_{row}.png"))
                for (kind, _), (dt, status, _) in zip(paths, pool.map(lambda p: _get(port, p[1]), paths)):
                    if status != 200:
                        failures += 1
                    times[kind].append(dt)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    result = {k: _stats(v) for k, v in times.items() if v}
    result.update(slides=len(slides), failed_requests=failures, clients=FLAGS.clients, viewport_px=list(viewport),
                  scan_dir=os.path.abspath(FLAGS.scan_dir), machine=platform.processor() or platform.machine(),
                  cpus=os.cpu_count(), date=time.strftime("%Y-%m-%d"))
    for kind in ("slide", "overlay", "page_data"):
        if kind in result:
            s = result[kind]
            print(f"{kind:9s} n={s['n']:5d}  p50 {s['p50_ms']:7.1f} ms  p95 {s['p95_ms']:7.1f} ms  max {s['max_ms']:7.1f} ms")
    print(f"slides {len(slides)}, failed requests {failures}")
    if FLAGS.out:
        write_json(FLAGS.out, result)


if __name__ == "__main__":
    cliutil.run_main(main)
