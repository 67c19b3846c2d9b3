"""The demo cohort scanned at float32 and bfloat16, with and without edge ROIs: maps, FROC/AUC, model time.

Issue 14's checks on "a real synthetic slide": shipped weights (``--shipped``,
default the tiny ones the issue-14 figures used), the demo's default cohort (``pfascannet demo``: 6 patients x 5 nodes, seed 0),
exported at alpha 16 / ROI 2708, scanned three times into separate folders:

- ``f32_whole``: float32, whole ROIs only (the scan before issue 14);
- ``f32_edges``: float32 with edge ROIs (``ScanSettings.edge_rois``);
- ``bf16_edges``: bfloat16 (mixed precision) with edge ROIs.

Reported: model time, ROIs and input pixels of each scan (the saved fraction
of model time is edges vs whole at float32), the largest and 99.9th
percentile |bf16 - f32| map difference per slide (over the pixels both
computed), whether the edge scan's computed pixels equal the whole scan's,
and the FROC / AUC of each on the test split.  Synthetic slides: these
numbers measure the pipeline, not clinical accuracy.

    python experiments/bench_precision_demo.py --workdir /tmp/bench_demo
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
from absl import flags

from pfascannet import demo, geometry, workflow
from pfascannet.cliutil import run_main
from pfascannet.evaluation import froc, run as evaluation
from pfascannet.inference import engine, runs, scan_settings

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "/tmp/pfascannet_bench_demo", "Cohort, export and scans go here.")
flags.DEFINE_enum("size", "default", ["default", "fast"], "The demo's cohort size.")
flags.DEFINE_string("shipped", "tiny_demo", "Shipped weights (pfascannet/weights/<name>.weights.h5) to scan with.")
flags.DEFINE_string("config", "tiny", "Their model config.")
flags.DEFINE_list("variants", ["f32_whole", "f32_edges", "bf16_edges"], "Scans to run (names as above).")

VARIANTS = {"f32_whole": ("float32", False), "f32_edges": ("float32", True), "bf16_edges": ("bfloat16", True),
            "bf16_whole": ("bfloat16", False)}


def main(argv) -> None:
    del argv

    shipped = workflow.shipped_weights(FLAGS.shipped)
    if shipped is None:
        raise SystemExit(f"error: no shipped weights named {FLAGS.shipped!r} in pfascannet/weights")
    weights = shipped[0]
    log = workflow.Log()
    cohort = os.path.join(FLAGS.workdir, "cohort")
    workflow.ensure_cohort(cohort, demo.SIZES[FLAGS.size], log)
    export_dir = workflow.export_model(weights, FLAGS.config, os.path.join(FLAGS.workdir, "model_a16"),
                                       geometry.PAPER_ALPHA, geometry.PAPER_ROI_PX, log)
    slides = workflow.cohort_slides(cohort)
    results = {}
    for name in FLAGS.variants:
        precision, edges = VARIANTS[name]
        out = os.path.join(FLAGS.workdir, f"scan_{name}")
        run = runs.load_run(export_dir, precision=precision)
        options = scan_settings.ScanSettings(batch=1, workers=2, edge_rois=edges, progress=False)
        t0 = time.perf_counter()
        summary = engine.scan_slides(slides, [run], out, options)
        wall = time.perf_counter() - t0
        stats = [r.stats[0] for r in summary.results if r.stats]
        members = [r.meta["members"][0] for r in summary.results if r.meta]
        input_px = sum(m["n_rois"] * m["roi_px"] ** 2 if "n_edge_rois" not in m else
                       (m["n_rois"] - m["n_edge_rois"]) * m["roi_px"] ** 2 + m["n_edge_rois"] * m["edge_roi_px"] ** 2
                       for m in members)
        ev = evaluation.evaluate_scan(out, cohort, os.path.join(FLAGS.workdir, f"eval_{name}"), n_bootstrap=50,
                                      warn=lambda *_: None)
        results[name] = {
            "precision": precision, "edge_rois": edges, "format": run.detector.__class__.__name__,
            "slides": len(summary.results), "wall_s": wall, "model_s": sum(s.model_s for s in stats),
            "rois": sum(m["n_rois"] for m in members), "edge_rois_n": sum(m.get("n_edge_rois", 0) for m in members),
            "input_mpx": input_px / 1e6, "froc": {k: ev["froc"].get(k) for k in froc.SCORE_KEYS},
            "auc": ev["auc"]["auc"],
        }
        print(name, json.dumps({k: v for k, v in results[name].items() if k != "froc"}), flush=True)
        print("   froc", json.dumps(results[name]["froc"])[:300], flush=True)

    def maps(name):
        folder = os.path.join(FLAGS.workdir, f"scan_{name}", "maps")
        return {f[:-4]: np.load(os.path.join(folder, f)) for f in sorted(os.listdir(folder)) if f.endswith(".npy")}

    if "f32_edges" in results and "bf16_edges" in results:
        a, b = maps("f32_edges"), maps("bf16_edges")
        diffs = {s: np.abs(b[s] - a[s]) for s in a}
        allv = np.concatenate([d[(a[s] != 0) | (b[s] != 0)].ravel() for s, d in diffs.items()])
        results["bf16_vs_f32"] = {"max": float(allv.max()), "p999": float(np.quantile(allv, 0.999)),
                                  "mean": float(allv.mean()),
                                  "worst_slide": max(diffs, key=lambda s: float(diffs[s].max()))}
        print("bf16 vs f32 map:", json.dumps(results["bf16_vs_f32"]), flush=True)
    if "f32_edges" in results and "f32_whole" in results:
        e, w = maps("f32_edges"), maps("f32_whole")
        diff = max(float(np.abs(e[s][e[s] != 0] - w[s][e[s] != 0]).max(initial=0)) for s in e)
        zeroed = sum(int(((e[s] == 0) & (w[s] != 0)).sum()) for s in e)
        total = sum(int((w[s] != 0).sum()) for s in w)
        results["edges_vs_whole"] = {
            "max_diff_where_computed": diff, "map_px_left_at_0": zeroed, "map_px_whole": total,
            "model_time_saved": 1 - results["f32_edges"]["model_s"] / results["f32_whole"]["model_s"],
            "input_px_saved": 1 - results["f32_edges"]["input_mpx"] / results["f32_whole"]["input_mpx"],
        }
        print("edges vs whole:", json.dumps(results["edges_vs_whole"]), flush=True)
    results["load_average"] = os.getloadavg()
    results["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with open(os.path.join(FLAGS.workdir, "bench_precision_demo.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    run_main(main)
