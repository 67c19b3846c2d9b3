"""The resolution contract on the same tissue at three pixel sizes (issue: real slides at other scales).

Makes a synthetic cohort no training used (``--seed``, demo default size),
writes it again at 0.486 um/px (a 20x scan: every level halved) and at
0.226 um/px (CAMELYON16's Utrecht scanner) with ``synthetic.rescale``,
scans the test slides of all three with the same export of the shipped demo
weights, and compares each copy with the original: per-slide scores, slide
AUC, the three Camelyon16 FROC scores, and the scan's seconds per ROI (what
reading + resampling adds; the model's work per ROI is the same).
``--native`` also scans the 0.486 copy pixel for pixel (``--scan_level 0``,
the behaviour before the contract) for the "before" row.

Synthetic slides: the numbers measure the pipeline, not clinical accuracy.

    python experiments/bench_resolution.py --workdir /tmp/res --seed 21 --out /tmp/res/resolution.json
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
import time

from absl import flags

from pfascannet import demo, geometry, heldout, io_utils, workflow
from pfascannet.cliutil import run_main
from pfascannet.synthetic.rescale import rescale_cohort

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Folder for the cohorts, the export and the scans (reused on a rerun).")
flags.DEFINE_integer("seed", 21, "Seed of the held-out cohort (demo default size).")
flags.DEFINE_list("mpps", ["0.486", "0.226"], "Pixel sizes of the copies (um/px).")
flags.DEFINE_bool("native", True, "Also scan the first copy pixel for pixel (the behaviour before the contract).")
flags.DEFINE_string("out", None, "JSON report (default <workdir>/resolution.json).")
flags.DEFINE_bool("timing_only", False, "Only time the scans again (fresh folders, cohorts and export reused) and "
                  "report seconds per ROI: reading + resampling against the model's time.")


def _cpu() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return platform.processor()
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("Model name")), "?")
    return f"{model} ({'amx_bf16' if 'amx_bf16' in text else 'no amx_bf16'}, {os.cpu_count()} cores)"


def _per_roi(scan_dir: str) -> dict:
    rois, model_s, wall_s, wait_s = 0, 0.0, 0.0, 0.0
    for name in os.listdir(os.path.join(scan_dir, "maps")):
        if name.endswith(".json"):
            with open(os.path.join(scan_dir, "maps", name), encoding="utf-8") as f:
                meta = json.load(f)
            for t in meta.get("timing", []):
                rois += t["n_rois"] - t["n_resumed"]
                model_s += t["model_s"]
                wall_s += t["wall_s"]
                wait_s += t["wait_s"]
    return {"rois": rois, "wall_s_per_roi": wall_s / rois if rois else None,
            "model_s_per_roi": model_s / rois if rois else None,
            "read_wait_s_per_roi": wait_s / rois if rois else None}


def _time_scans(cohorts: dict, export_dir: str, wd: str) -> dict:
    """Scans every cohort's test slides again into fresh folders, one model load, and returns seconds per ROI."""
    import shutil  # noqa: PLC0415

    from pfascannet.inference import engine, runs, scan_settings  # noqa: PLC0415  (imports Keras)

    run = runs.load_run(export_dir, batch=1)
    options = scan_settings.ScanSettings(batch=1, workers=2, progress=False, heatmap=False)
    out = {}
    # A warm-up scan first (the model traces a graph per ROI side), then the original again at the
    # end: the two native runs bracket the resampled ones and show the machine's drift.
    order = ["warm-up"] + list(cohorts) + [f"{next(iter(cohorts))} again"]
    for name in order:
        cdir = cohorts[name.split()[0]] if name != "warm-up" else next(iter(cohorts.values()))
        scan_dir = os.path.join(wd, f"timing_{name.replace('.', 'p').replace(' ', '_')}")
        shutil.rmtree(scan_dir, ignore_errors=True)
        t0 = time.perf_counter()
        engine.scan_slides(workflow.cohort_slides(cdir, "test"), [run], scan_dir, options)
        if name != "warm-up":
            out[name] = dict(_per_roi(scan_dir), scan_wall_s=round(time.perf_counter() - t0, 1))
    return out


def _compare(base: dict, other: dict) -> dict:
    diffs = {s: other["slide_scores"][s] - v for s, v in base["slide_scores"].items() if s in other["slide_scores"]}
    worst = max(diffs, key=lambda s: abs(diffs[s]))
    return {
        "max_abs_score_diff": abs(diffs[worst]), "worst_slide": worst,
        "auc_diff": other["auc"] - base["auc"],
        **{f"{k}_diff": other[k] - base[k] for k in ("froc_interpolated", "froc_nearest_point", "froc_organisers")},
    }


def main(argv) -> None:
    del argv
    if not FLAGS.workdir:
        raise SystemExit("error: --workdir is required")
    wd = FLAGS.workdir
    log = workflow.Log(stream=sys.stdout)
    weights = workflow.shipped_weights(demo.SHIPPED)
    if weights is None:
        raise SystemExit("error: no shipped demo weights")
    path, meta = weights
    base_dir = os.path.join(wd, f"cohort_seed{FLAGS.seed}")
    workflow.ensure_cohort(base_dir, dataclasses.replace(demo.SIZES["default"], seed=FLAGS.seed), log)
    export_dir = os.path.join(wd, "model_a16")
    workflow.export_model(path, meta["config"], export_dir, geometry.PAPER_ALPHA, geometry.PAPER_ROI_PX, log)
    report = {"command": "python experiments/bench_resolution.py " + " ".join(
        f"--{k}={getattr(FLAGS, k)}" for k in ("workdir", "seed")), "cpu": _cpu(),
        "date": time.strftime("%Y-%m-%d"), "backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
        "note": "synthetic slides: the numbers measure the pipeline, not clinical accuracy", "cohorts": {}}
    cohorts = {"0.243": base_dir}
    for mpp in FLAGS.mpps:
        dst = os.path.join(wd, f"cohort_seed{FLAGS.seed}_mpp{mpp}")
        t0 = time.perf_counter()
        rescale_cohort(base_dir, dst, float(mpp), progress=log)
        log(f"copy at {mpp} um/px: {time.perf_counter() - t0:.0f} s")
        cohorts[mpp] = dst
    if FLAGS.timing_only:
        report["timing"] = _time_scans(cohorts, export_dir, wd)
        out = FLAGS.out or os.path.join(wd, "resolution_timing.json")
        io_utils.write_json(out, report)
        log(json.dumps(report["timing"], indent=1))
        return
    results = {}
    for mpp, cdir in cohorts.items():
        tag = mpp.replace(".", "p")
        results[mpp] = heldout.evaluate_cohort(export_dir, cdir, os.path.join(wd, f"scan_{tag}"),
                                               os.path.join(wd, f"eval_{tag}"))
        results[mpp]["timing"] = _per_roi(os.path.join(wd, f"scan_{tag}"))
        log(f"{mpp} um/px: AUC {results[mpp]['auc']:.3f} FROC {results[mpp]['froc_organisers']:.3f} "
            f"{results[mpp]['timing']}")
    if FLAGS.native and FLAGS.mpps:
        from pfascannet.inference import engine, runs, scan_settings  # noqa: PLC0415  (imports Keras)
        mpp = FLAGS.mpps[0]
        scan_dir = os.path.join(wd, f"scan_{mpp.replace('.', 'p')}_native")
        options = scan_settings.ScanSettings(batch=1, workers=2, scan_level=0)
        engine.scan_slides(workflow.cohort_slides(cohorts[mpp], "test"), [runs.load_run(export_dir, batch=1)],
                           scan_dir, options)
        from pfascannet.evaluation import run as eval_run  # noqa: PLC0415
        from pfascannet.evaluation import reference  # noqa: PLC0415
        refs_all = reference.read_reference(os.path.join(cohorts[mpp], "slides.csv"))
        refs = reference.select_split(refs_all, "test", source=os.path.join(cohorts[mpp], "slides.csv"))
        scores = eval_run.scores_from_lesions(os.path.join(scan_dir, "lesions"), refs, known_slides=refs_all)
        au = eval_run.auc_report(scores, refs, os.path.join(wd, "eval_native"), n_bootstrap=0, known_slides=refs_all)
        results[f"{mpp} native (before)"] = {"auc": au["auc"], "slide_scores": scores,
                                             "froc_interpolated": float("nan"), "froc_nearest_point": float("nan"),
                                             "froc_organisers": float("nan")}
    for mpp, res in results.items():
        entry = {k: v for k, v in res.items() if k != "calibration"}
        if mpp != "0.243":
            entry["vs_0.243"] = _compare(results["0.243"], res)
        report["cohorts"][mpp] = entry
    out = FLAGS.out or os.path.join(wd, "resolution.json")
    io_utils.write_json(out, report)
    log(json.dumps({m: {k: c.get(k) for k in ("auc", "froc_organisers", "vs_0.243", "timing")}
                    for m, c in report["cohorts"].items()}, indent=1, default=str))


if __name__ == "__main__":
    run_main(main)
