"""Human-readable reports: a Table 1-shaped results table, and the demo's page (Markdown + HTML).

Every page built from synthetic slides says so at the top: those numbers
measure the pipeline, not clinical accuracy.
"""

from __future__ import annotations

import html
import os
from typing import Mapping, Optional, Sequence

from pfascannet import io_utils
from pfascannet.evaluation import froc
from pfascannet.evaluation.metric_reports import SYNTHETIC_NOTE
from pfascannet.evaluation.slide_classifier import SCORE_NAMES
from pfascannet.viewer import DEFAULT_PORT
from pfascannet.workflow import minutes_per_wsi

VIEW_NOTE = (f"the links below open its pages while it runs on its default port {DEFAULT_PORT} "
             "(with --port P, change the port in the address)")


def _pct(v: Optional[float]) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _num(v: Optional[float], fmt: str = "{:.3f}") -> str:
    return "-" if v is None else fmt.format(v)


def _runtime(row: Mapping) -> str:
    roi, wsi = row.get("s_per_roi"), row.get("min_per_wsi")
    if roi is None:
        return "-"
    return f"{roi / 60:.4f}/{wsi:.1f}"


def table1_markdown(rows: Sequence[Mapping], title: str = "Table 1 (synthetic cohort)") -> str:
    """A table shaped like the paper's Table 1, with the three FROC scores named.

    Each row: ``method``, ``s_per_roi`` (seconds per 2708 ROI), ``min_per_wsi``
    (minutes per 400-ROI WSI), ``auc`` (map maximum), ``auc_classifier`` (``slide_classifier``), ``froc_interpolated``,
    ``froc_nearest_point``, ``froc_organisers``, ``kappa`` (any may be None).
    Runtime is written as the paper does, ROI/WSI in minutes.  The notes under
    the table name each FROC score (``froc.SCORE_NAMES``) and say that the
    paper does not state which one its 89.1 % / 90.2 % are.
    """
    froc_cols = " | ".join(f"FROC ({froc.SCORE_SHORT[k]})" for k in froc.SCORE_KEYS)
    lines = [f"### {title}", "",
             f"| Method | Runtime (ROI/WSI, min) | AUC (map max) | AUC (classifier) | {froc_cols} | Kappa |",
             "|---|---|---|---|" + "---|" * len(froc.SCORE_KEYS) + "---|"]
    for r in rows:
        cells = " | ".join(_pct(r.get(k)) for k in froc.SCORE_KEYS)
        lines.append(f"| {r['method']} | {_runtime(r)} | {_pct(r.get('auc'))} | {_pct(r.get('auc_classifier'))} "
                     f"| {cells} | {_num(r.get('kappa'))} |")
    lines += [""] + [f"- AUC ({k.replace('map_max', 'map max')}): {v}." for k, v in SCORE_NAMES.items()]
    lines += [f"- {froc.SCORE_NAMES[k]}." for k in froc.SCORE_KEYS]
    lines += ["", f"Paper: {froc.PAPER_COMPARABILITY}", "",
              "Runtime per WSI uses the paper's 400 ROIs of 2708 x 2708 per WSI."]
    return "\n".join(lines) + "\n"


def results_row(method: str, evaluation: Mapping, timing: Optional[Mapping]) -> dict:
    """A Table 1 row from ``evaluation.run.evaluate_scan``'s dict and ``workflow.scan_timing``."""
    s_roi = timing.get("model_s_per_roi") if timing else None
    pn = evaluation.get("pn_stage")
    row = {
        "method": method,
        "s_per_roi": s_roi,
        "min_per_wsi": minutes_per_wsi(s_roi) if s_roi is not None else None,
        "auc": evaluation["auc"]["auc"],
        "auc_classifier": (evaluation.get("slide_classifier") or {}).get("auc"),
    }
    row.update({k: evaluation["froc"].get(k) for k in froc.SCORE_KEYS})
    row["kappa"] = pn["kappa_quadratic"] if pn else None
    return row


def pn_table_markdown(pn: Optional[Mapping]) -> str:
    """Predicted vs reference pN-stage per test patient, and the kappa."""
    if not pn:
        return "No pN-stage truth for the test patients: kappa not computed.\n"
    lines = ["| Patient | Reference pN | Predicted pN |", "|---|---|---|"]
    for patient, ref in sorted(pn["reference_stages"].items()):
        lines.append(f"| {patient} | {ref} | {pn['predicted_stages'].get(patient, '-')} |")
    lines += ["", f"Quadratic weighted kappa: **{pn['kappa_quadratic']:.3f}** over {pn['n_patients']} patients "
                  f"(labels in clinical order pN0 < pN0(i+) < pN1mi < pN1 < pN2); node accuracy "
                  f"{_pct(pn.get('node_accuracy'))} over {pn.get('n_nodes', 0)} nodes."]
    return "\n".join(lines) + "\n"


def write_demo_report(report_dir: str, *, table: str, pn_markdown: str, heatmaps: Sequence[tuple[str, str]],
                      froc_png: str, roc_png: str, artefacts: Sequence[tuple[str, str]],
                      facts: Sequence[str], view_command: str = "",
                      view_urls: Optional[Mapping[str, str]] = None) -> tuple[str, str]:
    """Writes ``index.md`` and ``index.html`` in ``report_dir``; image paths are made relative to it.

    Args:
      heatmaps: ``(slide id with its truth label, png path)``.
      artefacts: ``(what, path)`` for the "where everything lies" list.
      facts: short lines about the run (settings, model provenance, timing).
      view_command: the ``pfascannet view`` command for the scan (issue 20), said above the heatmaps.
      view_urls: heatmap label -> its slide's page on that viewer (at the default port).
    """
    view_urls = dict(view_urls or {})
    rel = lambda p: os.path.relpath(p, report_dir)  # noqa: E731
    md = ["# pfascannet demo report", "", f"> {SYNTHETIC_NOTE}", ""]
    md += [f"- {f}" for f in facts] + [""]
    md += ["## Results", "", table, "## pN-stage (Camelyon17 rules)", "", pn_markdown,
           "## FROC and ROC", "", f"![FROC]({rel(froc_png)}) ![ROC]({rel(roc_png)})", "",
           "## Heatmaps of the test slides (probability, blue low to red high)", ""]
    if view_command:
        md += [f"To zoom into any slide with its map, lesions and truth: run `{view_command}`; "
               f"{VIEW_NOTE}", ""]
    for label, png in heatmaps:
        link = f" ([open in the viewer]({view_urls[label]}))" if label in view_urls else ""
        md += [f"**{label}**{link}", "", f"![{label}]({rel(png)})", ""]
    md += ["## Where every artefact lies", ""] + [f"- {what}: `{path}`" for what, path in artefacts]
    md_text = "\n".join(md) + "\n"

    h = ["<!doctype html><html><head><meta charset='utf-8'><title>pfascannet demo report</title>",
         "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
         "table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:3px 8px}"
         ".note{background:#fff4d6;padding:.6em;border-left:4px solid #e0a800}"
         "figure{display:inline-block;margin:.5em;vertical-align:top}img{max-width:520px}</style></head><body>",
         "<h1>pfascannet demo report</h1>", f"<p class='note'>{html.escape(SYNTHETIC_NOTE)}</p>", "<ul>"]
    h += [f"<li>{html.escape(f)}</li>" for f in facts] + ["</ul>", "<h2>Results</h2>", _md_table_html(table),
                                                          "<h2>pN-stage (Camelyon17 rules)</h2>",
                                                          _md_table_html(pn_markdown),
          "<h2>FROC and ROC</h2>", f"<img src='{html.escape(rel(froc_png))}'> <img src='{html.escape(rel(roc_png))}'>",
          "<h2>Heatmaps of the test slides</h2>"]
    if view_command:
        h.append(f"<p>To zoom into any slide with its map, lesions and truth: run <code>{html.escape(view_command)}"
                 f"</code>; {html.escape(VIEW_NOTE)}</p>")
    for label, png in heatmaps:
        caption = html.escape(label)
        if label in view_urls:
            caption += f" (<a href='{html.escape(view_urls[label])}'>open in the viewer</a>)"
        h.append(f"<figure><img src='{html.escape(rel(png))}'><figcaption>{caption}</figcaption></figure>")
    h += ["<h2>Where every artefact lies</h2>", "<ul>"]
    h += [f"<li>{html.escape(what)}: <code>{html.escape(path)}</code></li>" for what, path in artefacts]
    h += ["</ul></body></html>"]
    md_path, html_path = os.path.join(report_dir, "index.md"), os.path.join(report_dir, "index.html")
    io_utils.write_text(md_path, md_text)
    io_utils.write_text(html_path, "\n".join(h) + "\n")
    return md_path, html_path


def _md_table_html(markdown: str) -> str:
    """The Markdown tables and paragraphs this module writes, as HTML."""
    out, rows = [], []

    def flush():
        if rows:
            out.append("<table>" + "".join(rows) + "</table>")
            rows.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if all(set(c) <= set("-: ") for c in cells):
                continue
            tag = "th" if not rows else "td"
            rows.append("<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>")
        else:
            flush()
            text = line.lstrip("#").strip()
            if text:
                out.append(f"<p>{html.escape(text).replace('**', '')}</p>")
    flush()
    return "\n".join(out)
