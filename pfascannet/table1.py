"""The Table 1 recipe (``pfascannet table1``), beside the demo's: cohort -> train -> export -> scan -> evaluate.

``run_table1`` trains four models on one synthetic cohort with one recipe and
budget (``training.recipe.scratch_recipe``): w/o SL and PFA-ScanNet with the
same seed (they differ in the loss alone, eq. (3)), and two more with other
seeds that are exported at alpha 16 and 32 and scanned as the paper's
ensemble (maps averaged on the 32 px grid).  ``--seeds N`` repeats the w/o SL
and PFA-ScanNet rows with N - 1 more seeds (each pair sharing its seed), so
the table shows the spread that training noise alone gives.  It adds the patch-wise scan of
the PFA-ScanNet weights as the runtime baseline, evaluates each scan (slide
AUC, the three named FROC scores, quadratic kappa) and writes ``table1.md``
and ``table1.json``.  The table's rows and columns are listed in the stage's
help (``stages/table1.py``).  Every step resumes through ``workflow``.
Results on synthetic slides measure the pipeline, not clinical accuracy.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from typing import Optional

from pfascannet import geometry, io_utils, results_page, workflow
from pfascannet.evaluation import reference, run
from pfascannet.layout import CohortFolder
from pfascannet.model.precision import PRECISIONS
from pfascannet.settings import at_least, setting

# The four models: (name, synergistic, seed offset, alpha it is exported and scanned at).
MODELS = (("wo_sl", False, 0, 16), ("sl", True, 0, 16), ("ens_a16", True, 1, 16), ("ens_a32", True, 2, 32))


def table_models(seeds: int) -> tuple:
    """``MODELS`` plus, for each further seed k = 1 .. seeds - 1, a w/o SL and an SL model at seed offset 2 + k."""
    extra = []
    for k in range(1, seeds):
        extra += [(f"wo_sl_s{k}", False, 2 + k, 16), (f"sl_s{k}", True, 2 + k, 16)]
    return MODELS + tuple(extra)


@dataclasses.dataclass(frozen=True)
class Table1Settings:
    """What ``pfascannet table1`` was asked for: each field is one of its flags (``pfascannet.settings``)."""

    out: Optional[str] = setting(None, required=True,
                                 help="Output folder (cohort, runs, exports, scans, reports, table1.md).")
    quick: bool = setting(False, help="Size for a 2-core CPU: 6 patients, four short training runs, < 1 h.")
    patients: Optional[int] = setting(None, help="Patients of 5 nodes (default 6 with --quick, else 10).")
    seed: int = setting(0, help="Cohort seed, and the training seed of the w/o-SL and SL models.")
    train_steps: Optional[int] = setting(None, help="Steps per trained model (default 120 with --quick, else 3000).")
    train_minutes: Optional[float] = setting(
        None, help="Time limit per trained model (default 10 with --quick, else none).")
    hard_negative_rounds: Optional[int] = setting(
        None, help="Hard-negative rounds per model (default 1 with --quick, else 2).")
    seeds: int = setting(1, check=at_least(1),
                         help="Seeds of the w/o SL and PFA-ScanNet rows (2: each row again with another seed, to show "
                              "the spread).")
    batch_size: int = setting(8, help="Training batch.")
    precision: str = setting("float32", choices=PRECISIONS,
                             help="Training precision of every model (bfloat16: ~1.9x the steps on an AVX512-BF16 "
                                  "CPU); scans stay float32.")
    config: str = setting("small", help="Model config (the from-scratch recipe, training.recipe.scratch_recipe).")
    n_bootstrap: int = setting(500, help="Bootstrap resamples for the CIs.")


def run_table1(s: Table1Settings, log: Optional[workflow.Log] = None) -> dict:
    """Runs (or resumes) the whole Table 1; writes ``table1.md`` and ``table1.json`` into ``s.out``.

    Returns:
      {text (the Markdown table and its notes), rows, patch_timing, notes, evaluations}.
    """
    from pfascannet.training.recipe import scratch_recipe  # noqa: PLC0415  (imports TensorFlow and Keras)
    from pfascannet.training.settings import TrainSettings  # noqa: PLC0415

    out = os.path.abspath(s.out)
    patients = s.patients or (6 if s.quick else 10)
    steps = s.train_steps or (120 if s.quick else 3000)
    minutes = s.train_minutes if s.train_minutes is not None else (10.0 if s.quick else None)
    rounds = s.hard_negative_rounds if s.hard_negative_rounds is not None else (1 if s.quick else 2)
    log = log or workflow.Log(total_steps=5)
    cohort_dir = os.path.join(out, "cohort")
    t_start = time.perf_counter()

    log.begin(f"synthetic cohort of {patients} patients")
    workflow.ensure_cohort(cohort_dir, workflow.CohortSettings(seed=s.seed, patients=patients,
                                                               test_fraction=0.5), log)
    log.end()

    # The paper's Table 1: w/o SL and SL differ only in the loss (same cohort, seed, budget);
    # "we trained another two models with dense coefficient alpha = 16, 32 for model ensembles".
    all_models = table_models(s.seeds)
    log.begin(f"train {len(all_models)} models: w/o SL, SL, two more (other seeds) for the ensemble"
              + (f", w/o SL and SL with {s.seeds - 1} more seed(s)" if s.seeds > 1 else ""))
    flat_recipe = scratch_recipe(steps, hard_negative_rounds=rounds)
    weights, notes = {}, []
    for name, synergistic, seed_offset, _ in all_models:
        settings = TrainSettings.from_flat(
            data=cohort_dir, workdir=os.path.join(out, f"train_{name}"), config=s.config,
            batch_size=s.batch_size, synergistic=synergistic, seed=s.seed + seed_offset, precision=s.precision,
            max_seconds=None if minutes is None else 60 * minutes, **flat_recipe)
        log(f"      {name}: {steps} steps" + (f" or {minutes:g} min" if minutes else ""))
        weights[name] = workflow.train_model(settings, log)
    notes.append(
        f"training: every model `{s.config}` from scratch on the cohort's training split, "
        f"training.recipe.scratch_recipe({steps}, {rounds}) (Adam 1e-3, warm-up, cosine decay, {rounds} "
        f"hard-negative round(s) from whole-slide maps), batch {s.batch_size}"
        + (f", at most {minutes:g} min each" if minutes else "") + f", {s.precision}"
        + f"; w/o SL and SL: seed {s.seed}, the ensemble's two models: seeds {s.seed + 1} and "
        f"{s.seed + 2}" + "".join(f"; w/o SL and SL again with seed {s.seed + 2 + k}" for k in range(1, s.seeds)))
    log.end()

    log.begin("export at alpha 16 (the ensemble's second model at alpha 32)")
    exports = {}
    for name, _, _, alpha in all_models:
        roi = geometry.PAPER_ROI_PX if alpha == 16 else geometry.roi_px(128, 32)
        exports[name] = workflow.export_model(weights[name], s.config, os.path.join(out, f"model_{name}_a{alpha}"),
                                              alpha, roi, log)
    log.end()

    slides = workflow.cohort_slides(cohort_dir)
    scans = {"wo_sl": [exports["wo_sl"]], "sl": [exports["sl"]]}
    for k in range(1, s.seeds):
        scans |= {f"wo_sl_s{k}": [exports[f"wo_sl_s{k}"]], f"sl_s{k}": [exports[f"sl_s{k}"]]}
    scans["ensemble"] = [exports["ens_a16"], exports["ens_a32"]]
    log.begin(f"dense scans of {len(slides)} slides: {', '.join(scans)}")
    for name, models in scans.items():
        log(f"      scan {name}")
        workflow.scan(models, slides, os.path.join(out, f"scan_{name}"))
    patch = workflow.time_patch_mode(exports["sl"], cohort_dir)
    log.end()

    test_refs = reference.select_split(reference.read_reference(CohortFolder(cohort_dir).slides_csv), "test")
    log.begin("evaluate")
    labels = {"wo_sl": "PFA-ScanNet w/o SL" + (f" (seed {s.seed})" if s.seeds > 1 else ""),
              "sl": "PFA-ScanNet" + (f" (seed {s.seed})" if s.seeds > 1 else ""),
              "ensemble": "PFA-ScanNet* (two more models, alpha 16 + 32, maps averaged)"}
    for k in range(1, s.seeds):
        labels |= {f"wo_sl_s{k}": f"PFA-ScanNet w/o SL (seed {s.seed + 2 + k})",
                   f"sl_s{k}": f"PFA-ScanNet (seed {s.seed + 2 + k})"}
    rows, reports = [], {}
    for name in scans:
        ev = run.evaluate_scan(os.path.join(out, f"scan_{name}"), cohort_dir, os.path.join(out, f"eval_{name}"),
                               n_bootstrap=s.n_bootstrap, warn=log)
        reports[name] = ev
        timing = workflow.scan_timing(os.path.join(out, f"scan_{name}"))
        rows.append(results_page.results_row(labels[name], ev, timing))
    rows.append({"method": "PFA-ScanNet, patch-wise scan (same weights)", "s_per_roi": patch["s_per_roi"],
                 "min_per_wsi": workflow.minutes_per_wsi(patch["s_per_roi"])})
    log.end()

    table = results_page.table1_markdown(rows, title=f"Table 1 on the synthetic cohort ({s.config} widths)")
    dense = rows[list(scans).index("sl")]["s_per_roi"]
    notes += [
        f"cohort: {patients} synthetic patients x 5 nodes, seed {s.seed}, half for training "
        f"({len({r.patient for r in test_refs.values()})} test patients, {len(test_refs)} test slides); "
        f"whole command {(time.perf_counter() - t_start) / 60:.1f} min wall (this run; resumed parts not counted)",
        f"runtime: model time per 2708 ROI (alpha 16) on {platform.machine()}, {os.cpu_count()} CPU(s); "
        f"the ensemble row counts both members; patch-wise timed on {patch['n_timed']} patches x "
        f"{patch['patches_per_roi']} per ROI: {patch['s_per_roi'] / dense:.0f}x the dense time",
        "ensemble: two more models trained like PFA-ScanNet (other seeds), scanned at alpha 16 and 32, maps "
        "averaged on the 32 px grid (the paper: 'we trained another two models with dense coefficient "
        "alpha = 16, 32 for model ensembles'; whether its ensemble also holds the first model it does not say)",
        "Synthetic cohort: these numbers measure the pipeline on generated slides, not clinical accuracy.",
    ]
    text = table + "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    io_utils.write_text(os.path.join(out, "table1.md"), text)
    io_utils.write_json(os.path.join(out, "table1.json"), {"rows": rows, "patch_timing": patch, "notes": notes})
    return {"text": text, "rows": rows, "patch_timing": patch, "notes": notes, "evaluations": reports}
