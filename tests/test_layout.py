"""The folder layouts (``pfascannet/layout.py``): their names, and that no other module spells them (issue 22)."""

from __future__ import annotations

import ast
import dataclasses
import io
import os
import re
import tokenize

import pytest

from pfascannet import layout
from pfascannet.layout import CohortFolder, ExportFolder, ReportFolder, RunFolder, ScanFolder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "pfascannet")

# Every folder and file name of C/, W/, M/, S/ (ARCHITECTURE.md "Files between stages").
FOLDER_NAMES = ("images", "annotations", "masks", "tissue", "checkpoints", "mining", "tensorboard",
                "saved_model", "maps", "lesions", "heatmaps", "contours", "partial", "locks")
FILE_NAMES = (r"slides\.csv", r"stages\.csv", r"lesions\.csv", r"cohort\.json", r"config\.json", r"samples\.csv",
              r"hard_negatives[\w{}.]*", r"final\.weights\.h5", r"detector\.keras", r"export\.json",
              r"slide_scores\.csv", r"scan_config[\w{}.*\[\]]*", r"step_")
NAME = "(?:" + "|".join(list(FOLDER_NAMES) + list(FILE_NAMES)) + ")"
HAND_JOINS = [
    # os.path.join(..., "maps", ...) / os.path.join(d, 'slides.csv')
    ("os.path.join with a layout name", re.compile(r"os\.path\.join\([^)]*[\"']" + NAME + r"(?:[\"'/])")),
    # f"maps/{sid}.npy", f"{d}/slides.csv" (prose such as "no maps/ folder" is not a join)
    ("a layout name joined with '/' in an f-string", re.compile(r"\b" + NAME + r"/\{|\}/" + NAME + r"\b")),
    # "maps/" + name, d + "/lesions", out_dir + os.sep + "lesions", root / "checkpoints"
    ("a layout name added to a path", re.compile(
        r"[\"']" + NAME + r"/[\"']\s*\+|\+\s*[\"']/" + NAME + r"|(?:\+\s*os\.sep\s*\+\s*|/\s*)[\"']" + NAME
        + r"[\"']")),
]

NAME_RE = re.compile(NAME + r"(?:/.*)?$")


def _ast_joins(source: str):
    """(line, what) of every ``os.path.join(...)`` call, on one line or several, given a layout name as a literal."""
    for node in ast.walk(ast.parse(source)):
        func = node.func if isinstance(node, ast.Call) else None
        if not (isinstance(func, ast.Attribute) and func.attr == "join" and isinstance(func.value, ast.Attribute)
                and func.value.attr == "path" and isinstance(func.value.value, ast.Name)
                and func.value.value.id == "os"):
            continue
        for arg in node.args:
            for c in ast.walk(arg):
                if isinstance(c, ast.Constant) and isinstance(c.value, str) and NAME_RE.match(c.value):
                    yield node.lineno, f"os.path.join with {c.value!r}"


ALLOWED = {
    # CAMELYON16's own test folder (the official layout datasets.py reads), not the cohort's images/.
    ("synthetic/layouts.py", 'os.path.join("testing", "images")'),
}


def _code_lines(path: str):
    """(line number, line) of a module's code: docstrings and comments out (they may name the layout)."""
    with open(path, encoding="utf-8") as f:
        source = f.read()
    doc_lines: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        # docstrings: bare string statements (modules, classes, functions, attributes)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            doc_lines.update(range(node.lineno, node.end_lineno + 1))
    comments = {tok.start[0]: tok.start[1] for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                if tok.type == tokenize.COMMENT}
    for lineno, line in enumerate(source.splitlines(), 1):
        if lineno in doc_lines:
            continue
        yield lineno, line[: comments[lineno]] if lineno in comments else line


def _modules():
    for folder, _, files in os.walk(PACKAGE):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                if os.path.relpath(path, PACKAGE) != "layout.py":
                    yield path, os.path.relpath(path, PACKAGE)


def test_no_module_joins_layout_paths_by_hand():
    found = []
    for path, rel in _modules():
        for lineno, line in _code_lines(path):
            if any(rel == f and allowed in line for f, allowed in ALLOWED):
                continue
            for what, pattern in HAND_JOINS:
                if pattern.search(line):
                    found.append(f"{os.path.relpath(path, ROOT)}:{lineno}: {what}: {line.strip()}")
        with open(path, encoding="utf-8") as f:
            source = f.read()
        lines = source.splitlines()
        for lineno, what in _ast_joins(source):
            if not any(rel == f and allowed in lines[lineno - 1] for f, allowed in ALLOWED):
                found.append(f"{os.path.relpath(path, ROOT)}:{lineno}: {what}")
    assert not found, "use pfascannet.layout instead:\n" + "\n".join(found)


@pytest.mark.parametrize("line", [
    'p = os.path.join(out_dir, "maps", f"{slide}.npy")',
    "p = os.path.join(d, 'slides.csv')",
    'self.scan_file(f"lesions/{sid}.csv")',
    'p = f"{root}/cohort.json"',
    'p = out + "/partial"',
    'p = "maps/" + name',
    'p = out + os.sep + "partial"',
    'p = root / "checkpoints"',
    'p = os.path.join(w, "mining", f"step_{step}")',
    'p = os.path.join(s, "scan_config.json" if shard is None else "x")',
])
def test_the_grep_sees_hand_joins(line):
    assert any(p.search(line) for _, p in HAND_JOINS), line


def test_the_syntax_check_sees_joins_over_several_lines():
    source = 'p = os.path.join(\n    out_dir,\n    "partial",\n    name)\nq = os.path.join(d, "froc.png")\n'
    assert [lineno for lineno, _ in _ast_joins(source)] == [1]


@pytest.mark.parametrize("line", [
    'ScanFolder(out_dir).map_npy(slide)',
    'for kind in ("lesions", "geojson", "xml", "heatmap"):',
    'os.path.join(out_dir, "froc.png")',
    'progress = Progress(n, label="lesions")',
    'raise PostprocessError(f"{out_dir}: not a scan folder (no maps/ folder)")',
    'help="A scan folder (it holds maps/<slide>.npy and .json)."',
])
def test_the_grep_lets_other_code_be(line):
    assert not any(p.search(line) for _, p in HAND_JOINS), line


def test_scan_folder_names():
    s = ScanFolder("S")
    assert s.map_npy("a") == os.path.join("S", "maps", "a.npy")
    assert s.map_json("a") == os.path.join("S", "maps", "a.json")
    assert s.map_tif("a") == os.path.join("S", "maps", "a_map.tif")
    assert s.scanned_png("a") == os.path.join("S", "maps", "a_scanned.png")
    assert s.lesions_csv("a") == os.path.join("S", "lesions", "a.csv")
    assert s.heatmap_png("a") == os.path.join("S", "heatmaps", "a.png")
    assert s.geojson("a") == os.path.join("S", "contours", "a.geojson")
    assert s.asap_xml("a") == os.path.join("S", "contours", "a.xml")
    assert s.checkpoint("a.b", 2) == os.path.join("S", "partial", "a.b.m2.npz")
    assert ScanFolder.checkpoint_of("a.b.m2.npz") == ("a.b", 2)
    assert ScanFolder.checkpoint_of("a.b.mx.npz") is None and ScanFolder.checkpoint_of("a.npy") is None
    assert s.lock("a") == os.path.join("S", "locks", "a.lock")
    assert s.slide_scores_csv == os.path.join("S", "slide_scores.csv")
    assert s.scan_config_json() == os.path.join("S", "scan_config.json")
    assert s.scan_config_json((1, 4)) == os.path.join("S", "scan_config.shard1of4.json")
    assert layout.SCAN_REL.map_npy("a") == "maps/a.npy"
    assert set(s.slide_files("a")) == {"npy", "json", "tif", "scanned", "lesions", "heatmap", "geojson", "xml"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.root = "T"


def test_cohort_run_export_report_names():
    c = CohortFolder("C")
    assert (c.image("s"), c.annotation("s"), c.mask("s"), c.tissue_png("s")) == (
        os.path.join("C", "images", "s.tif"), os.path.join("C", "annotations", "s.xml"),
        os.path.join("C", "masks", "s_mask.tif"), os.path.join("C", "tissue", "s_tissue.png"))
    assert [c.slides_csv, c.stages_csv, c.lesions_csv, c.cohort_json] == [
        os.path.join("C", n) for n in ("slides.csv", "stages.csv", "lesions.csv", "cohort.json")]
    w = RunFolder("W")
    assert [w.checkpoints, w.config_json, w.samples_csv, w.tensorboard, w.final_weights] == [
        os.path.join("W", n) for n in ("checkpoints", "config.json", "samples.csv", "tensorboard", "final.weights.h5")]
    assert w.hard_negatives_csv(100, first=True) == os.path.join("W", "hard_negatives.csv")
    assert w.hard_negatives_csv(200, first=False) == os.path.join("W", "hard_negatives_step200.csv")
    assert w.mining_dir(7) == os.path.join("W", "mining", "step_7")
    m = ExportFolder("M")
    assert (m.saved_model, m.keras, m.export_json) == (
        os.path.join("M", "saved_model"), os.path.join("M", "detector.keras"), os.path.join("M", "export.json"))
    r = ReportFolder("R")
    assert (r.froc, r.auc, r.pn_stage, r.kappa, r.slide_classifier) == tuple(os.path.join("R", n) for n in layout.REPORT_METRICS)
    assert r.report_md("froc") == os.path.join("R", "froc", "froc.md")
    with pytest.raises(ValueError):
        r.metric("nope")


def test_export_names_agree_with_the_exporter():
    from pfascannet.inference import export, export_meta  # noqa: PLC0415  (imports Keras)

    assert (export.SAVED_MODEL_DIR, export.KERAS_FILE, export_meta.EXPORT_JSON) == (
        layout.SAVED_MODEL_DIR, layout.KERAS_FILE, layout.EXPORT_JSON)
