"""Evaluation reports: one JSON for machines and one Markdown for people, written atomically.

Every FROC number is printed next to the name of the score it is
(``froc.SCORE_NAMES``), because the interpolated, nearest-point and
organisers' scores of the same submission differ, and next to the statement
that the paper does not say which rule its numbers use.
"""

from __future__ import annotations

import os
from typing import Mapping, Optional

from pfascannet import io_utils
from pfascannet.evaluation import froc
from pfascannet.layout import CohortFolder

SYNTHETIC_NOTE = ("Synthetic cohort: these numbers measure the pipeline on generated slides, "
                  "not clinical accuracy.")


def synthetic_note_for(path: Optional[str]) -> Optional[str]:
    """The synthetic-cohort note when the generator's ``cohort.json`` is in ``path`` (a dataset root),
    beside it, or one folder up (``ROOT/testing/reference.csv`` of ``pfascannet cohort --layout camelyon16``)."""
    if not path:
        return None
    path = os.path.abspath(path)
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    candidates = [folder]
    if not os.path.isdir(path) and os.path.basename(folder).lower() in ("training", "testing"):
        candidates.append(os.path.dirname(folder))
    if any(os.path.isfile(CohortFolder(f).cohort_json) for f in candidates):
        return SYNTHETIC_NOTE
    return None


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _ci(v) -> str:
    return "" if not v else f" (95% CI {v[0]:.4f}-{v[1]:.4f})"


def froc_markdown(rep: Mapping, note: Optional[str] = None) -> str:
    """Markdown of ``froc.evaluate``'s report (plus ``run.froc_report``'s exclusions)."""
    lines = ["# Camelyon16 lesion-level FROC", ""]
    if note:
        lines += [f"> {note}", ""]
    lines += ["Which FROC score is which:", ""]
    for key in froc.SCORE_KEYS:
        value = rep.get(key)
        why = "" if value is not None else " (no normal slide among the scored slides)"
        lines.append(f"- **{key}** = {_fmt(value)}{_ci(rep.get(key + '_ci'))}{why}: {froc.SCORE_NAMES[key]}")
    lines += ["", f"Comparing with the paper: {froc.PAPER_COMPARABILITY}", ""]
    excluded, asked = rep.get("excluded_slides"), rep.get("exclusion_asked")
    if asked:
        lines += [f"Excluded from the FROC as the Camelyon16 organisers did: "
                  f"{', '.join(excluded) if excluded else 'none of them is in the reference'} "
                  f"(asked: {', '.join(asked)}).", ""]
    lines += [f"Slides {rep['n_slides']} ({rep.get('n_normal_slides', 0)} normal), lesions (ITC excluded) "
              f"{rep['n_lesions']}, false positives {rep['n_false_positives']} "
              f"({rep.get('n_false_positives_normal_slides', 0)} on normal slides), ignored hits (ITC or repeated) "
              f"{rep['n_ignored_hits']}.", ""]
    if rep.get("slides_size_unknown"):
        names = rep["slides_size_unknown"]
        lines += [f"Detections on {len(names)} normal slide(s) were checked for negative coordinates only: "
                  f"their level-0 size is unknown (give the images folder or a reference with width,height), "
                  f"e.g. {', '.join(names[:5])}.", ""]
    lines += ["| FPs per slide | " + " | ".join(f"{r:g}" for r in rep["fp_rates"]) + " |",
              "|---|" + "---|" * len(rep["fp_rates"])]
    for key in froc.SCORE_KEYS:
        at = rep.get(f"sensitivity_at_rates_{key[len('froc_'):]}")
        if at is not None:
            lines.append(f"| sensitivity, {froc.SCORE_SHORT[key]} | " + " | ".join(f"{v:.4f}" for v in at) + " |")
    lines += ["", "(organisers' grading: the rates are FPs per normal slide, counting normal slides' FPs only.)",
              "", f"Sensitivity per lesion size class at probability >= {rep['class_threshold']:g}:", "",
              "| class | lesions | detected | sensitivity |", "|---|---|---|---|"]
    for cls, v in rep["sensitivity_by_class"].items():
        lines.append(f"| {cls} | {v['n_lesions']} | {v['n_detected']} | {v['sensitivity']:.4f} |")
    if rep.get("bootstrap"):
        b = rep["bootstrap"]
        lines += ["", f"CIs: percentile bootstrap over slides, {b['n']} resamples, seed {b['seed']}."]
    return "\n".join(lines) + "\n"


def auc_markdown(rep: Mapping, note: Optional[str] = None) -> str:
    """Markdown of ``slide_metrics.auc_with_ci``'s report."""
    lines = ["# Camelyon16 slide-level AUC", ""]
    if note:
        lines += [f"> {note}", ""]
    if rep.get("slide_score_name"):
        lines += [f"Slide score: {rep['slide_score_name']}.", ""]
    lines += [f"- **AUC** = {_fmt(rep['auc'])}{_ci(rep.get('auc_ci'))} (sklearn roc_auc_score)",
              f"- slides {rep['n_slides']}: {rep['n_tumour']} tumour, {rep['n_normal']} normal"]
    if rep.get("bootstrap"):
        b = rep["bootstrap"]
        lines.append(f"- CI: percentile bootstrap over slides, {b['n']} resamples, seed {b['seed']}")
    c = rep.get("classifier")
    if c:
        lines += ["", f"Random forest ({c['n_estimators']} trees, seed {c['seed']}, balanced classes) trained on the "
                      f"{c['n_train_slides']} `{c['train_split']}` slides' maps ({c['n_train_tumour']} tumour). "
                      "Feature importances:", "", "| feature | importance |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in sorted(c["importances"].items(), key=lambda kv: -kv[1])]
    return "\n".join(lines) + "\n"


def kappa_markdown(rep: Mapping, note: Optional[str] = None) -> str:
    """Markdown of ``pn_stage.score_submission``'s report."""
    lines = ["# Camelyon17 pN-stage", ""]
    if note:
        lines += [f"> {note}", ""]
    lines += [f"- **quadratic weighted kappa** = {_fmt(rep['kappa_quadratic'])} "
              f"(sklearn cohen_kappa_score, weights=quadratic, stages in clinical order "
              f"{' < '.join(rep['stages'])})",
              f"- patients {rep['n_patients']}, exact stage accuracy {_fmt(rep['accuracy'])}", "",
              "Confusion (rows reference, columns submission):", "",
              "| | " + " | ".join(rep["stages"]) + " |", "|---|" + "---|" * len(rep["stages"])]
    for stage, row in zip(rep["stages"], rep["confusion_rows_reference_cols_submission"]):
        lines.append(f"| {stage} | " + " | ".join(str(v) for v in row) + " |")
    if rep.get("node_accuracy") is not None:
        lines += ["", f"Node classification accuracy: {_fmt(rep['node_accuracy'])} over {rep['n_nodes']} nodes."]
    return "\n".join(lines) + "\n"


def write_report(out_dir: str | os.PathLike, name: str, rep: Mapping, markdown: str) -> tuple[str, str]:
    """Writes ``<out_dir>/<name>.json`` and ``<name>.md`` atomically; returns their paths."""
    json_path = os.path.join(out_dir, f"{name}.json")
    md_path = os.path.join(out_dir, f"{name}.md")
    io_utils.write_json(json_path, rep)
    io_utils.write_text(md_path, markdown)
    return json_path, md_path
