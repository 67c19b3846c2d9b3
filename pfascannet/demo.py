"""``pfascannet demo``: the whole pipeline on a laptop CPU, in minutes, with pictures.

1. a synthetic Camelyon-like cohort (``synthetic``): patients of five nodes, half for training;
2. a narrow PFA-ScanNet: the weights shipped in ``pfascannet/weights`` (made by the
   command recorded beside them), or trained right here with ``--train``;
3. the detector exported at alpha 16 (SavedModel + .keras);
4. every slide scanned densely (2708 ROIs, 32 px map), training slides too (the
   pN-stage random forest learns from their maps);
5. Camelyon16 FROC (three named scores) and AUC on the test slides, pN-stage and quadratic kappa on the
   test patients;
6. a report folder: ``report/index.html`` and ``index.md``.

Every step resumes: rerun the same command after an interruption.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import shlex
from typing import Optional

from pfascannet import geometry, results_page, viewer, workflow
from pfascannet.errors import PfaError
from pfascannet.evaluation import froc, reference, run
from pfascannet.layout import CohortFolder, ReportFolder, ScanFolder
from pfascannet.settings import at_least, check_fields, positive, setting

SIZES = {
    # patients (half train, half test), slide side of non-macro slides
    "fast": workflow.CohortSettings(seed=0, patients=2, slide_size=3072, test_fraction=0.5),
    "default": workflow.CohortSettings(seed=0, patients=6, slide_size=4096, test_fraction=0.5),
}
SHIPPED = "demo"
"""``pfascannet/weights/<SHIPPED>.weights.h5`` and ``.json`` (command, cohort, ``config``: the widths)."""
TRAIN_CONFIG = "tiny"
"""Widths of a model trained by ``--train`` (a few CPU minutes)."""


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """What ``pfascannet demo`` was asked for: its command-line options (``settings.add_arguments``)."""

    out: str = setting("demo_out", help="output folder (rerun to resume)")
    fast: bool = setting(False, help="smallest size: 2 patients, smaller slides")
    train: bool = setting(False, help="train the tiny model here instead of the shipped weights")
    train_steps: int = setting(300, check=at_least(1), help="with --train: steps")
    train_minutes: float = setting(4.0, check=positive, help="with --train: time limit")
    seed: int = setting(0, help="cohort (and training) seed")

    def __post_init__(self):
        check_fields(self, PfaError)

    @property
    def size(self) -> str:
        """The cohort size, a key of ``SIZES``."""
        return "fast" if self.fast else "default"


def obtain_model(s: DemoSettings, cohort_dir: str, log: workflow.Log) -> tuple[str, str, str]:
    """``(weights path, model config name, provenance sentence)``: shipped weights, or a run trained here."""
    shipped = None if s.train else workflow.shipped_weights(SHIPPED)
    if shipped is not None:
        path, meta = shipped
        config = meta.get("config", TRAIN_CONFIG)
        log(f"      using the shipped `{config}` weights {path}")
        return path, config, (f"model: shipped `{config}` weights ({os.path.basename(path)}), made by "
                              f"`{meta.get('command', '?')}` ({meta.get('note', '')})")
    if not s.train:
        log("      no shipped weights found: training here instead")
    from pfascannet.training.recipe import scratch_recipe  # noqa: PLC0415  (imports TensorFlow and Keras)
    from pfascannet.training.settings import TrainSettings  # noqa: PLC0415

    # The from-scratch recipe, one hard-negative round (a few minutes in all).
    settings = TrainSettings.from_flat(data=cohort_dir, workdir=os.path.join(s.out, "train"), config=TRAIN_CONFIG,
                                       batch_size=8, seed=s.seed, max_seconds=60 * s.train_minutes, log_every=10,
                                       checkpoint_every=50, **scratch_recipe(s.train_steps, hard_negative_rounds=1))
    weights = workflow.train_model(settings, log)
    return weights, TRAIN_CONFIG, (
        f"model: `{TRAIN_CONFIG}` trained here for up to {s.train_steps} steps / {s.train_minutes:g} min "
        f"(training.recipe.scratch_recipe: Adam, lr {settings.optimiser.learning_rate}, cosine decay, "
        f"a hard-negative round at step {settings.mining.at}; batch {settings.batch_size}, seed {s.seed})")


def _froc_value(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def run_demo(s: DemoSettings, log: Optional[workflow.Log] = None) -> dict:
    """Runs the demo; returns paths of the report and the headline numbers."""
    log = log or workflow.Log(total_steps=6)
    out = os.path.abspath(s.out)
    cohort_dir, export_dir = os.path.join(out, "cohort"), os.path.join(out, "model_a16")
    scan_dir, eval_dir, report_dir = (os.path.join(out, d) for d in ("scan", "eval", "report"))
    cohort_settings = dataclasses.replace(SIZES[s.size], seed=s.seed)

    log.begin(f"synthetic cohort: {cohort_settings.patients} patients x 5 nodes -> {cohort_dir}")
    workflow.ensure_cohort(cohort_dir, cohort_settings, log)
    log.end()

    log.begin("model")
    weights, config_name, provenance = obtain_model(s, cohort_dir, log)
    log.end()

    log.begin(f"export the detector at alpha {geometry.PAPER_ALPHA}, ROI {geometry.PAPER_ROI_PX}")
    workflow.export_model(weights, config_name, export_dir, geometry.PAPER_ALPHA, geometry.PAPER_ROI_PX, log)
    log.end()

    slides = workflow.cohort_slides(cohort_dir)
    log.begin(f"dense scan of {len(slides)} slides -> {scan_dir}")
    workflow.scan([export_dir], slides, scan_dir)
    log.end()

    log.begin("evaluate: FROC, AUC, pN-stage, kappa (test split)")
    ev = run.evaluate_scan(scan_dir, cohort_dir, eval_dir, n_bootstrap=200, warn=log)
    timing = workflow.scan_timing(scan_dir)
    log.end()

    log.begin("report")
    row = results_page.results_row(f"PFA-ScanNet ({config_name}, this run)", ev, timing)
    table = results_page.table1_markdown([row], title="Table 1-shaped results (synthetic cohort, this machine)")
    scan, report = ScanFolder(scan_dir), ReportFolder(eval_dir)
    refs = reference.select_split(reference.read_reference(CohortFolder(cohort_dir).slides_csv), "test")
    heatmaps = [(f"{sid} ({r.node_label})", scan.heatmap_png(sid))
                for sid, r in sorted(refs.items())]
    view_command = f"pfascannet view {shlex.quote(scan_dir)}"  # issue 20: the slide viewer
    view_urls = {f"{sid} ({r.node_label})": viewer.slide_url(sid) for sid, r in refs.items()}
    facts = [
        f"cohort: {cohort_settings.patients} synthetic patients x 5 nodes (seed {s.seed}), "
        f"test split {len(refs)} slides",
        provenance,
        f"scan: alpha {geometry.PAPER_ALPHA}, ROI {geometry.PAPER_ROI_PX} px, map stride "
        f"{geometry.output_stride_px(geometry.PAPER_ALPHA)} px; {timing.get('rois', 0)} ROIs scanned in "
        f"{timing.get('wall_s', 0):.0f} s on {platform.machine()} with {os.cpu_count()} CPU(s)",
        "FROC: " + ", ".join(_froc_value(ev["froc"].get(k)) + f" {froc.SCORE_SHORT[k]}" for k in froc.SCORE_KEYS)
        + f" (each rule named under the table; the paper does not say which one its FROC uses); "
        f"slide AUC {ev['auc']['auc']:.3f} (map maximum), " + (
            f"{ev['slide_classifier']['auc']:.3f} (slide classifier: a random forest on the training slides' maps)"
            if ev.get("slide_classifier") else "no slide classifier (the training slides are of one class)"),
    ]
    artefacts = [
        ("slides, annotations, masks, stage CSV", cohort_dir),
        ("trained weights", weights),
        ("exported detector (SavedModel, .keras, export.json)", export_dir),
        ("probability maps (.npy, .json, pyramidal TIFF)", scan.maps),
        ("lesion candidates (Camelyon16 CSV)", scan.lesions),
        ("slide scores", scan.slide_scores_csv),
        ("contours (GeoJSON, ASAP XML)", scan.contours),
        ("FROC report", report.report_md("froc")),
        ("AUC report (map maximum)", report.report_md("auc")),
        ("AUC report (slide classifier)", report.report_md("slide_classifier")),
        ("pN-stage submission (Camelyon17 CSV)", report.pn_submission_csv),
    ]
    md, page = results_page.write_demo_report(
        report_dir, table=table, pn_markdown=results_page.pn_table_markdown(ev["pn_stage"]), heatmaps=heatmaps,
        froc_png=report.froc_png, roc_png=report.roc_png,
        artefacts=artefacts, facts=facts, view_command=view_command, view_urls=view_urls)
    log.end()
    log(f"report: {page}")
    log(table)
    log(f"look at the slides with their maps, lesions and truth: {view_command}")
    return {"report_html": page, "report_md": md, "row": row, "evaluation": ev, "timing": timing,
            "view_command": view_command}
