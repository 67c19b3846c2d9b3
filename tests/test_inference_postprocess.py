"""Post-processing as a stage of its own: maps -> lesions, contours, heatmaps, slide scores (issue 13).

- a scan rerun with only another contour threshold never calls the model and
  rewrites the contours (the acceptance test of issue 13);
- the stage run alone on a scan folder gives the files a scan with those
  settings gives, skips what already matches, and redoes a missing file;
- its absl main: exit 0 on success, one ``error:`` line and exit 2 on bad input.
"""

from __future__ import annotations

import csv
import filecmp
import json
import os
import subprocess
import sys

import pytest

from pfascannet import geometry
from pfascannet.inference import engine, model_run, outputs, postprocess, scan_settings
from tests.scan_support import LM, OracleDetector, write_slide

SID = "patient_000_node_0"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The oracle's map of the test slide: ~0.5 over the noise, 1.0 over its glass corner.
LOW, HIGH = 0.45, 0.9
QUIET = dict(progress=False, heatmap=False, tissue="all", checkpoint_every_s=0.0, workers=2, batch=3)


class CountingDetector(OracleDetector):
    """The oracle, counting its calls; ``forbid`` makes any call fail the test."""

    def __init__(self, alpha: int, roi_px: int, forbid: bool = False):
        super().__init__(alpha, roi_px)
        self.forbid = forbid

    def predict(self, rois):
        if self.forbid:
            raise AssertionError("the model was called")
        return super().predict(rois)

    def predict_patches(self, patches):
        if self.forbid:
            raise AssertionError("the model was called (candidate views)")
        return super().predict_patches(patches)


def _run(forbid: bool = False) -> model_run.ModelRun:
    lr = geometry.roi_px(LM, 16)
    return model_run.ModelRun(CountingDetector(16, lr, forbid), geometry.ScanGeometry(16, lr), name="oracle",
                              digest="oracle")


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("post_slides") / f"{SID}.tif")
    write_slide(path)
    return path


def _scan(slide_path, out, run=None, **options):
    summary = engine.scan_slides(slide_path, [run or _run()], str(out),
                                 scan_settings.ScanSettings(**dict(QUIET, **options)))
    assert summary.ok, summary.text()
    return summary.results[0]


def _read(path) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def test_new_threshold_reruns_only_postprocessing_and_rewrites_the_contours(slide_path, tmp_path):
    out = tmp_path / "S"
    first = _scan(slide_path, out, threshold=LOW)
    paths = outputs.map_paths(str(out), SID)
    fingerprint = first.meta["fingerprint"]
    geojson_before, xml_before = _read(paths["geojson"]), _read(paths["xml"])
    assert "threshold" not in json.dumps(fingerprint)  # what the map depends on, and only that
    map_mtime = os.stat(paths["npy"]).st_mtime_ns

    never = _run(forbid=True)
    again = _scan(slide_path, out, run=never, threshold=HIGH)
    assert again.status == "done" and never.detector.calls == 0
    assert os.stat(paths["npy"]).st_mtime_ns == map_mtime  # the map was not rewritten
    assert again.meta["fingerprint"] == fingerprint and again.meta["post"]["threshold"] == HIGH
    # The contours are the HIGH threshold's: fewer, smaller regions than at LOW, written anew.
    assert _read(paths["geojson"]) != geojson_before and _read(paths["xml"]) != xml_before
    high = json.loads(_read(paths["geojson"]))["features"]
    low = json.loads(geojson_before)["features"]
    area = lambda fs: sum(f["properties"]["measurements"]["area_px"] for f in fs)  # noqa: E731
    assert 0 < area(high) < area(low)
    assert all(f["properties"]["measurements"]["max_probability"] >= HIGH for f in high)
    # Lesion candidates do not depend on the threshold.
    fresh = tmp_path / "fresh"
    _scan(slide_path, fresh, threshold=HIGH)
    for kind in ("lesions", "geojson", "xml"):
        assert filecmp.cmp(paths[kind], outputs.map_paths(str(fresh), SID)[kind], shallow=False), kind
    # The same settings once more: nothing to do.
    assert _scan(slide_path, out, run=never, threshold=HIGH).status == "skipped"


def test_postprocess_stage_alone_matches_a_scan_and_resumes(slide_path, tmp_path):
    out, direct = tmp_path / "S", tmp_path / "direct"
    _scan(slide_path, out, threshold=LOW)
    _scan(slide_path, direct, threshold=HIGH, heatmap=True)
    assert not os.path.exists(outputs.map_paths(str(out), SID)["heatmap"])
    os.remove(out / "slide_scores.csv")

    settings = postprocess.PostSettings(threshold=HIGH, heatmap=True)
    results = postprocess.postprocess_scan(str(out), settings)
    assert [(r.slide, r.status) for r in results] == [(SID, "done")]
    mine, theirs = outputs.map_paths(str(out), SID), outputs.map_paths(str(direct), SID)
    for kind in ("lesions", "geojson", "xml"):
        assert filecmp.cmp(mine[kind], theirs[kind], shallow=False), kind
    assert os.path.getsize(mine["heatmap"]) > 1000  # the slide was found where the scan recorded it
    assert filecmp.cmp(out / "slide_scores.csv", direct / "slide_scores.csv", shallow=False)
    sidecar = outputs.read_sidecar(str(out), SID)
    assert sidecar["post"] == settings.record() and sidecar["fingerprint"] == outputs.read_sidecar(
        str(direct), SID)["fingerprint"]

    # Resumable: matching slides are skipped; a lost file is redone.
    assert [r.status for r in postprocess.postprocess_scan(str(out), settings)] == ["skipped"]
    os.remove(mine["xml"])
    assert [r.status for r in postprocess.postprocess_scan(str(out), settings)] == ["done"]
    assert filecmp.cmp(mine["xml"], theirs["xml"], shallow=False)


def test_postprocess_refuses_a_folder_without_maps_and_names_a_missing_slide(slide_path, tmp_path):
    with pytest.raises(postprocess.PostprocessError, match="not a scan folder"):
        postprocess.postprocess_scan(str(tmp_path))
    out = tmp_path / "S"
    _scan(slide_path, out)
    with pytest.raises(postprocess.PostprocessError, match="patient_009_node_9: no finished map"):
        postprocess.postprocess_scan(str(out), slides=["patient_009_node_9"])
    with pytest.raises(postprocess.PostprocessError, match="threshold"):
        postprocess.PostSettings(threshold=1.5)


def _stage(*args):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "pfascannet.cli", "lesions", *args], capture_output=True,
                          text=True, env=env, timeout=300, cwd=ROOT)


def test_lesions_stage_main(slide_path, tmp_path):
    out = tmp_path / "S"
    _scan(slide_path, out, threshold=LOW)
    proc = _stage(f"--scan_dir={out}", f"--threshold={HIGH}", "--noheatmap")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert outputs.read_sidecar(str(out), SID)["post"]["threshold"] == HIGH
    with open(out / "slide_scores.csv") as f:
        assert [row[0] for row in csv.reader(f)] == ["name", SID]
    assert "1 done" in proc.stderr
    for bad in ([f"--scan_dir={tmp_path / 'nowhere'}"], [f"--scan_dir={out}", "--threshold=2"], []):
        proc = _stage(*bad)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
