"""The README's demo at its smallest size: every stage runs and the report shows this run's numbers."""

import json
import os
import re
import subprocess
import sys

import pytest

from pfascannet import workflow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    if workflow.shipped_weights("demo") is None:
        pytest.fail("pfascannet/weights/demo.weights.h5 (+ demo.json) must ship with the package")
    out = tmp_path_factory.mktemp("demo") / "out"
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-m", "pfascannet.cli", "demo", "--fast", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stderr


@pytest.mark.slow  # the whole demo
def test_demo_writes_report_with_every_artefact(demo_run):
    out, log = demo_run
    page = (out / "report" / "index.html").read_text()
    md = (out / "report" / "index.md").read_text()
    assert "Synthetic cohort" in page and "Synthetic cohort" in md
    for png in re.findall(r"<img src='([^']+)'", page):
        assert (out / "report" / png).resolve().is_file(), png
    # heatmaps of every test slide, the FROC and ROC plots
    with open(out / "cohort" / "slides.csv") as f:
        test_slides = [line.split(",")[0] for line in f if ",test," in line]
    assert test_slides and all(f"heatmaps/{s}.png" in page for s in test_slides)
    assert "froc.png" in page and "roc.png" in page
    # every stage reported progress with an ETA
    assert "ETA" in log and "[6/6] report" in log


@pytest.mark.slow  # the whole demo
def test_demo_numbers_are_this_runs(demo_run):
    out, _ = demo_run
    auc = json.loads((out / "eval" / "auc" / "auc.json").read_text())["auc"]
    froc = json.loads((out / "eval" / "froc" / "froc.json").read_text())
    md = (out / "report" / "index.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| PFA-ScanNet"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == f"{100 * auc:.1f}%"
    # the second slide score: the random forest trained on the training slides' maps
    clf_path = out / "eval" / "slide_classifier" / "slide_classifier.json"
    assert clf_path.is_file(), "the demo's training split has both classes, so the classifier must be reported"
    assert cells[3] == f"{100 * json.loads(clf_path.read_text())['auc']:.1f}%"
    assert cells[4] == f"{100 * froc['froc_interpolated']:.1f}%"
    assert cells[5] == f"{100 * froc['froc_nearest_point']:.1f}%"
    assert cells[6] == f"{100 * froc['froc_organisers']:.1f}%"     # the test split has normal slides
    assert "FROC (organisers' grading)" in md and "do not say which rule" in md
    # the scan really happened: one map per slide, timings recorded
    n_slides = len((out / "cohort" / "slides.csv").read_text().strip().splitlines()) - 1
    assert len(list((out / "scan" / "maps").glob("*.npy"))) == n_slides
    assert workflow.scan_timing(str(out / "scan"))["rois"] > 0


@pytest.mark.slow  # the whole demo
def test_demo_rerun_resumes_without_redoing_work(demo_run):
    out, _ = demo_run
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-m", "pfascannet.cli", "demo", "--fast", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cohort already in" in proc.stderr and "export already in" in proc.stderr
    assert "10 already done" in proc.stderr


def test_demo_bad_output_path_is_one_line_error(tmp_path):
    afile = tmp_path / "file"
    afile.write_text("x")
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-m", "pfascannet.cli", "demo", "--fast", "--out", str(afile)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr


@pytest.mark.slow  # the whole demo
def test_demo_ends_with_the_viewer_command_and_the_viewer_shows_its_scan(demo_run):
    # issue 20: the demo says how to look at its scan, its report links to the viewer, and the viewer
    # shows every slide of the demo with its map, lesions and truth.
    from pfascannet.viewer import slide_url  # noqa: PLC0415
    from tests.viewer_support import Viewer  # noqa: PLC0415

    out, log = demo_run
    scan = out / "scan"
    assert f"pfascannet view {scan}" in log.strip().splitlines()[-1]
    page = (out / "report" / "index.html").read_text()
    with open(out / "cohort" / "slides.csv") as f:
        rows = [line.strip().split(",") for line in f][1:]
    assert f"pfascannet view {scan}" in page
    assert all(slide_url(r[0]) in page for r in rows if r[3] == "test")
    viewer = Viewer(scan)
    try:
        listed = {r["slide"]: r for r in viewer.json("/api/slides")["slides"]}
        assert sorted(listed) == sorted(r[0] for r in rows)
        assert all(r["score"] is not None and r["label"] and not r["problem"] for r in listed.values())
        tumour = next(r[0] for r in rows if r[3] == "test" and r[4] in ("micro", "macro"))
        info = viewer.json(f"/api/slide/{tumour}")
        assert info["has_overlay"] and info["lesions"] and info["truth"]["tumour"], info["slide"]
        assert viewer.request(f"/overlay/{tumour}/t50_files/0/0_0.png")[0] == 200
    finally:
        viewer.close()
