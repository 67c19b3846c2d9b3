"""Benchmark: seconds and peak RSS to generate one synthetic slide of a given size.

Issue 2's goals: a 16k x 16k slide in <= 60 s on 2 cores, a 32k x 32k slide in
<= 2 GB peak RSS.  Each size runs in a fresh child process, so its peak RSS
(``ru_maxrss``) is its own.  The slide is a macro-metastasis node whose
section fills the slide (the worst case: nearly every tile holds tissue), and
the timing covers everything ``make_cohort`` writes for a slide: the JPEG
pyramid, the tissue truth, the ASAP XML and the mask pyramid.

  python experiments/bench_synthetic.py --sizes=16384,32768 --workers=2 --out=/tmp/bench_synth

Writes ``bench_synthetic.json`` (and the slides, unless ``--keep=false``) to
``--out``; prints one line per size.
"""

from __future__ import annotations

import os
import platform
import shutil
import time

import numpy as np
from absl import flags

from pfascannet import io_utils
from pfascannet.cliutil import run_main
from pfascannet.synthetic.cohort import plan_slide, write_slide

import bench_util  # experiments/bench_util.py, beside this script

FLAGS = flags.FLAGS
flags.DEFINE_string("sizes", "16384,32768", "Comma-separated slide sides (px) to generate, one child process each.")
flags.DEFINE_integer("workers", 2, "Tile threads (the goal is stated for 2 cores).")
flags.DEFINE_integer("seed", 0, "Generator seed.")
flags.DEFINE_float("mpp", 0.243, "Microns per level-0 pixel.")
flags.DEFINE_string("out", None, "Folder for the slides and bench_synthetic.json.")
flags.DEFINE_bool("keep", False, "Keep the generated slides (they are large).")
flags.DEFINE_integer("child_size", 0, "Internal: generate one slide of this side in this process.")
flags.mark_flags_as_required(["out"])


def _child(size: int) -> dict:
    """Generates one size x size slide here and reports seconds and peak RSS."""
    import openslide  # noqa: PLC0415

    out = os.path.join(FLAGS.out, f"slide_{size}")
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    # A macro lesion (> 2 mm) needs a slide of >= ~12.5k px at 0.243 um/px; smaller smoke-test sizes get a micro.
    label = "macro" if 0.85 * 0.92 * size * FLAGS.mpp > 2200 else "micro"
    plan = plan_slide(
        np.random.default_rng([FLAGS.seed, size]), f"bench_{size}", label, seed=FLAGS.seed + size,
        centre=1, slide_size=size, mpp=FLAGS.mpp, stain_seed=FLAGS.seed, size_xy=(size, size),
    )
    written = write_slide(plan, out, mpp=FLAGS.mpp, workers=FLAGS.workers)
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    peak_rss_mb = bench_util.peak_rss_mib()
    image = os.path.join(out, "images", f"{plan.slide_id}.tif")
    with openslide.OpenSlide(image) as s:  # the output must be a readable slide, not just bytes
        ok = s.dimensions == (size, size) and s.level_count == len(written["levels"])
    return {
        "size_px": size, "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2),
        "peak_rss_mb": round(peak_rss_mb, 1), "levels": len(written["levels"]),
        "image_mb": round(os.path.getsize(image) / 2**20, 1), "opens_in_openslide": ok,
        "label": label, "lesions": len(plan.lesions), "mimics": len(plan.mimics), "workers": FLAGS.workers,
    }


def main(argv):
    if FLAGS.child_size:
        bench_util.report(_child(FLAGS.child_size))
        return
    try:
        sizes = [int(s) for s in FLAGS.sizes.split(",") if s.strip()]
    except ValueError as exc:
        raise bench_util.BenchError(f"--sizes must be comma-separated integers, got {FLAGS.sizes!r}") from exc
    if not sizes or min(sizes) < 1024:
        raise bench_util.BenchError(f"--sizes must list slide sides of at least 1024 px, got {FLAGS.sizes!r}")
    results = []
    for size in sizes:
        cmd = bench_util.child_command(__file__, f"--child_size={size}", f"--out={FLAGS.out}",
                                       f"--workers={FLAGS.workers}", f"--seed={FLAGS.seed}", f"--mpp={FLAGS.mpp}")
        try:
            result = bench_util.run_child(cmd)
        except bench_util.ChildFailed as exc:
            raise bench_util.BenchError(f"generating a {size} px slide failed (exit {exc.returncode}): "
                                        f"{exc.last_line}") from None
        results.append(result)
        print(f"{size} x {size}: {result['seconds']:.1f} s wall, {result['cpu_seconds']:.1f} s CPU, "
              f"peak RSS {result['peak_rss_mb']:.0f} MB, {result['levels']} levels, "
              f"{result['image_mb']:.0f} MB JPEG TIFF, workers={FLAGS.workers}", flush=True)
        if not FLAGS.keep:
            shutil.rmtree(os.path.join(FLAGS.out, f"slide_{size}"), ignore_errors=True)
    io_utils.write_json(os.path.join(FLAGS.out, "bench_synthetic.json"), {
        "results": results, "cpu_count": os.cpu_count(), "machine": platform.platform(),
        "python": platform.python_version(),
        "goals": {"16384_seconds": 60, "32768_peak_rss_mb": 2048},
    })


if __name__ == "__main__":
    run_main(main)
