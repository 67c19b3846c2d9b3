"""Scans whose outputs can be trusted (issue 12), with the oracle detector of test_inference_scan.

- a map is kept, resumed or redone according to what determines it: the
  model's content (not its path), the slide file and the map settings; the
  lesion threshold and the heatmap only redo what is derived from the map;
- a checkpoint that cannot be read is discarded with one warning;
- temporary files are hidden, never listed, and removed by the next run;
- one slide is scanned by one process at a time;
- no silent pixel size, no silent empty slide, no out-of-range threshold.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from pfascannet import geometry, io_utils
from pfascannet.inference import engine, model_run, outputs, scan_settings, slide_list
from pfascannet.slide.reader import SlideReader
from tests.scan_support import LM, OracleDetector, slide_without_mpp, write_slide

SID = "patient_000_node_0"
QUIET = dict(progress=False, heatmap=False, tissue="all", checkpoint_every_s=0.0, workers=2, batch=3)
N_ROIS = 48  # 1000 x 700 slide, LM = 4 at alpha 16


class ScaledOracle(OracleDetector):
    """The oracle times a factor: another model with the same geometry."""

    def __init__(self, alpha: int, roi_px: int, factor: float, digest: str):
        super().__init__(alpha, roi_px)
        self.factor, self.digest = factor, digest

    def predict(self, rois):
        return super().predict(rois) * np.float32(self.factor)


class NoCalls(OracleDetector):
    """A model that must not be called."""

    def predict(self, rois):
        raise AssertionError("the model was called")


def _run(det=None, name: str = "/models/M") -> model_run.ModelRun:
    lr = geometry.roi_px(LM, 16)
    det = det if det is not None else OracleDetector(16, lr)
    return model_run.ModelRun(det, geometry.ScanGeometry(16, lr), name=name)


def _model(factor: float, digest: str) -> model_run.ModelRun:
    # Same name (path) for both models: only their content tells them apart.
    return _run(ScaledOracle(16, geometry.roi_px(LM, 16), factor, digest))


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("trust_slides") / f"{SID}.tif")
    write_slide(path)
    return path


def _map(out) -> np.ndarray:
    return np.load(os.path.join(out, "maps", f"{SID}.npy"))


class Killed(Exception):
    pass


def _kill_after(n: int):
    def hook(done):
        if done >= n:
            raise Killed

    return hook


# --------------------------------------------------------------------------- 1. stale and mixed maps


def test_replaced_model_behind_the_same_path_rescans(slide_path, tmp_path):
    opts = scan_settings.ScanSettings(**QUIET)
    out = str(tmp_path / "S")
    assert engine.scan_slides(slide_path, [_model(1.0, "A")], out, opts).ok
    map_a = _map(out)
    b = _model(0.5, "B")
    summary = engine.scan_slides(slide_path, [b], out, opts)
    assert summary.results[0].status == "done" and b.detector.rois_seen == N_ROIS
    np.testing.assert_allclose(_map(out), map_a * 0.5, atol=1e-6)
    # The same model again: nothing to do.
    again = _model(0.5, "B")
    assert engine.scan_slides(slide_path, [again], out, opts).results[0].status == "skipped"
    assert again.detector.rois_seen == 0


def test_partial_checkpoint_of_another_model_is_discarded(slide_path, tmp_path):
    opts = scan_settings.ScanSettings(**QUIET)
    out = str(tmp_path / "S")
    err = io.StringIO()
    summary = engine.scan_slides(slide_path, [_model(1.0, "A")], out, opts, on_batch=_kill_after(12))
    assert summary.results[0].status == "failed"
    assert os.path.exists(os.path.join(out, "partial", f"{SID}.m0.npz"))
    b = _model(0.5, "B")
    summary = engine.scan_slides(slide_path, [b], out, scan_settings.ScanSettings(**dict(QUIET, progress_stream=err)))
    assert summary.ok and summary.results[0].stats[0].n_resumed == 0
    assert b.detector.rois_seen == N_ROIS  # nothing of A's map was kept
    full_b = str(tmp_path / "B")
    engine.scan_slides(slide_path, [_model(0.5, "B")], full_b, opts)
    assert np.array_equal(_map(out), _map(full_b))
    assert err.getvalue().count("warning:") == 1 and "another model" in err.getvalue()


def test_replaced_slide_file_rescans(tmp_path):
    path = str(tmp_path / f"{SID}.tif")
    write_slide(path, seed=1)
    opts = scan_settings.ScanSettings(**QUIET)
    out = str(tmp_path / "S")
    assert engine.scan_slides(path, [_run()], out, opts).ok
    write_slide(path, seed=2)  # new pixels under the same name
    run = _run()
    assert engine.scan_slides(path, [run], out, opts).results[0].status == "done"
    assert run.detector.rois_seen == N_ROIS


def test_threshold_and_heatmap_redo_only_the_post_processing(slide_path, tmp_path):
    out = str(tmp_path / "S")
    assert engine.scan_slides(slide_path, [_run()], out, scan_settings.ScanSettings(**dict(QUIET, threshold=0.5))).ok
    saved = _map(out)
    lesions = os.path.join(out, "lesions", f"{SID}.csv")
    before = os.stat(lesions).st_ino
    heatmap = os.path.join(out, "heatmaps", f"{SID}.png")
    assert not os.path.exists(heatmap)

    never = _run(NoCalls(16, geometry.roi_px(LM, 16)))
    opts = scan_settings.ScanSettings(**dict(QUIET, threshold=0.95, heatmap=True))
    summary = engine.scan_slides(slide_path, [never], out, opts)
    assert summary.ok, summary.text()
    assert summary.results[0].status == "done" and never.detector.calls == 0
    assert os.stat(lesions).st_ino != before  # rewritten (atomically: a new file)
    assert summary.results[0].meta["threshold"] == 0.95
    assert os.path.getsize(heatmap) > 1000
    assert np.array_equal(_map(out), saved)
    # Same settings again: skipped; heatmap off never forces anything either.
    assert engine.scan_slides(slide_path, [never], out, opts).results[0].status == "skipped"
    off = scan_settings.ScanSettings(**dict(QUIET, threshold=0.95, heatmap=False))
    assert engine.scan_slides(slide_path, [never], out, off).results[0].status == "skipped"


# --------------------------------------------------------------------------- 2. corrupt checkpoints


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_unreadable_checkpoint_is_discarded_with_one_warning(slide_path, tmp_path, damage):
    opts = scan_settings.ScanSettings(**QUIET)
    out = str(tmp_path / "S")
    engine.scan_slides(slide_path, [_run()], out, opts, on_batch=_kill_after(12))
    ckpt = os.path.join(out, "partial", f"{SID}.m0.npz")
    size = os.path.getsize(ckpt)
    with open(ckpt, "r+b") as f:
        if damage == "truncated":
            f.truncate(size // 2)
        elif damage == "empty":
            f.truncate(0)
        else:
            f.write(b"this is no zip file" * 10)
    err = io.StringIO()
    run = _run()
    summary = engine.scan_slides(slide_path, [run], out, scan_settings.ScanSettings(**dict(QUIET, progress_stream=err)))
    assert summary.ok, summary.text()
    assert run.detector.rois_seen == N_ROIS
    warnings = [line for line in err.getvalue().splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and ckpt in warnings[0] and "discarded" in warnings[0]
    full = str(tmp_path / "full")
    engine.scan_slides(slide_path, [_run()], full, opts)
    assert np.array_equal(_map(out), _map(full))
    assert not os.path.exists(ckpt)


def test_kill_resume_still_resumes_the_same_model(slide_path, tmp_path):
    opts = scan_settings.ScanSettings(**QUIET)
    out = str(tmp_path / "S")
    engine.scan_slides(slide_path, [_model(1.0, "A")], out, opts, on_batch=_kill_after(12))
    a = _model(1.0, "A")
    summary = engine.scan_slides(slide_path, [a], out, opts)
    assert summary.results[0].stats[0].n_resumed == 12 and a.detector.rois_seen == N_ROIS - 12


# --------------------------------------------------------------------------- 3. leftovers


_KILLED_WRITER = """
import os, signal, sys
from pfascannet.io_utils import atomic_path
with atomic_path(sys.argv[1], suffix=".npy") as tmp:
    open(tmp, "wb").write(b"half a map")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_killed_writer_leaves_a_hidden_temp_the_next_run_removes(slide_path, tmp_path):
    out = tmp_path / "S"
    target = out / "maps" / f"{SID}.npy"
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(target)], cwd=os.getcwd())
    assert proc.returncode == -signal.SIGKILL
    left = os.listdir(out / "maps")
    assert len(left) == 1 and left[0].startswith(f".{SID}.npy.tmp-") and io_utils.is_temp_name(left[0])
    import glob

    assert glob.glob(str(out / "maps" / "*.npy")) == []  # no output glob matches it
    assert engine.scan_slides(slide_path, [_run()], str(out), scan_settings.ScanSettings(**QUIET)).ok
    assert sorted(os.listdir(out / "maps")) == [f"{SID}.json", f"{SID}.npy", f"{SID}_map.tif", f"{SID}_scanned.png"]


def test_a_live_writers_temp_is_left_alone(tmp_path):
    target = tmp_path / "x.json"
    with io_utils.atomic_path(target) as tmp:
        assert os.path.basename(os.path.dirname(tmp)).startswith(".x.json.tmp-")
        assert io_utils.remove_stale_temps(tmp_path) == []
        assert os.path.isdir(os.path.dirname(tmp))
        with open(tmp, "w") as f:
            f.write("{}")
    assert os.listdir(tmp_path) == ["x.json"]


def test_atomic_write_of_a_file_its_writer_locks_itself(tmp_path):
    # HDF5 flocks the file it writes; a lock of ours on the same file made
    # every .weights.h5 write fail with "Resource temporarily unavailable".
    import keras  # noqa: PLC0415

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    target = tmp_path / "final.weights.h5"
    with io_utils.atomic_path(target, suffix=".weights.h5") as tmp:
        model.save_weights(tmp)
    assert os.listdir(tmp_path) == ["final.weights.h5"]
    again = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    again.load_weights(str(target))
    np.testing.assert_array_equal(again.get_weights()[0], model.get_weights()[0])


def test_slide_lister_skips_temps_and_dot_files(slide_path, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    os.symlink(slide_path, folder / f"{SID}.tif")
    # What a killed cohort generator left, in today's and in older versions' names.
    (folder / f".{SID}.tif.tmp-abcd1234.tif").write_bytes(b"II*\x00partial")
    (folder / "patient_000_node_1.tif.tmp-k2j4h5g6.tif").write_bytes(b"II*\x00partial")
    (folder / "._patient_000_node_2.tif").write_bytes(b"\x00\x05\x16\x07")  # macOS resource fork
    (folder / ".pyramid-zx81qw0e").mkdir()
    assert slide_list.list_slides(str(tmp_path)) == [str(folder / f"{SID}.tif")]
    io_utils.remove_stale_temps(folder)
    assert sorted(os.listdir(folder)) == ["._patient_000_node_2.tif", f"{SID}.tif"]


_KILLED_TIFF = """
import os, signal, sys
import numpy as np
from pfascannet.slide.tiff_writer import write_pyramid_tiff
def tiles(x, y, w, h):
    if y >= 512:  # part of level 0 is out, its half-size band is in the scratch file
        os.kill(os.getpid(), signal.SIGKILL)
    return np.full((h, w, 3), 128, np.uint8)
write_pyramid_tiff(sys.argv[1], (1024, 1024), tiles, tiff_tile_px=256, workers=1, min_side_px=256)
"""


def test_killed_pyramid_writer_leaves_only_hidden_temps_the_cohort_rerun_removes(tmp_path):
    images = tmp_path / "C" / "images"
    images.mkdir(parents=True)
    proc = subprocess.run([sys.executable, "-c", _KILLED_TIFF, str(images / "patient_000_node_0.tif")])
    assert proc.returncode == -signal.SIGKILL
    left = sorted(os.listdir(images))
    assert left and all(name.startswith(".") and io_utils.is_temp_name(name) for name in left)
    assert any(os.path.isdir(images / name) for name in left)  # the scratch pyramid levels
    with pytest.raises(scan_settings.ScanError, match="no slides"):
        slide_list.list_slides(str(tmp_path / "C"))
    from pfascannet.synthetic.cohort import make_cohort

    make_cohort(tmp_path / "C", patients=1, nodes_per_patient=1, slide_size=1024, node_labels=[["negative"]],
                workers=1)
    assert os.listdir(images) == ["patient_000_node_0.tif"]


# --------------------------------------------------------------------------- 4. one slide, one process


_LOCK_HOLDER = """
import fcntl, sys, time
f = open(sys.argv[1], "a+")
fcntl.flock(f, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_a_slide_locked_by_another_process_is_left_to_it(slide_path, tmp_path):
    out = str(tmp_path / "S")
    lock = outputs.slide_lock(out, SID).path
    os.makedirs(os.path.dirname(lock))
    holder = subprocess.Popen([sys.executable, "-c", _LOCK_HOLDER, lock, "60"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        run = _run()
        result = engine.scan_slide(slide_path, [run], out, scan_settings.ScanSettings(**QUIET))
        assert result.status == "locked" and run.detector.rois_seen == 0
    finally:
        holder.kill()
        holder.wait()
    # The holder died (as a SIGKILLed scan would): its lock went with it.
    assert engine.scan_slide(slide_path, [run], out, scan_settings.ScanSettings(**QUIET)).status == "done"


_SCANNER = """
import json, sys, time
import numpy as np
from pfascannet import geometry
from pfascannet.inference import engine, model_run, scan_settings
from tests.scan_support import LM, OracleDetector

class Slow(OracleDetector):
    def predict(self, rois):
        time.sleep(0.02)
        return super().predict(rois)

lr = geometry.roi_px(LM, 16)
run = model_run.ModelRun(Slow(16, lr), geometry.ScanGeometry(16, lr), name="/models/M")
options = scan_settings.ScanSettings(progress=False, heatmap=False, tissue="all", checkpoint_every_s=0.0, workers=2,
                                   batch=3)
import os
open(os.path.join(sys.argv[3], str(os.getpid())), "w").close()
while len(os.listdir(sys.argv[3])) < 2:  # both processes start scanning at the same moment
    time.sleep(0.005)
summary = engine.scan_slides(sys.argv[1], [run], sys.argv[2], options)
print(json.dumps({"rois_seen": run.detector.rois_seen, "ok": summary.ok,
                  "statuses": [r.status for r in summary.results]}))
"""


@pytest.mark.slow  # several scanning processes: the full suite runs it, the quick subset does not
def test_concurrent_scans_into_one_out_split_the_slides(slide_path, tmp_path):
    # Real processes, as users start them (two shells, two nodes): each has its own locks and pid.
    import json

    folder = tmp_path / "slides"
    folder.mkdir()
    for k in range(4):
        os.symlink(slide_path, folder / f"patient_000_node_{k}.tif")
    out = str(tmp_path / "S")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    start = tmp_path / "ready"  # a barrier past both processes' imports
    start.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", _SCANNER, str(folder), out, str(start)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=root, env=dict(os.environ, PYTHONPATH=root))
             for _ in range(2)]
    reports = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr[-2000:]
        reports.append(json.loads(stdout.strip().splitlines()[-1]))
    # Every slide computed exactly once between the two processes, and both report all four finished.
    assert sum(r["rois_seen"] for r in reports) == 4 * N_ROIS
    assert all(r["rois_seen"] > 0 for r in reports)
    for r in reports:
        assert r["ok"] and len(r["statuses"]) == 4 and set(r["statuses"]) <= {"done", "skipped"}
    assert sum(s == "done" for r in reports for s in r["statuses"]) == 4


# --------------------------------------------------------------------------- 5. no silent defaults


def test_slide_without_pixel_size_is_refused_unless_mpp_is_given(tmp_path):
    path = str(tmp_path / f"{SID}.tif")
    slide_without_mpp(path)
    with SlideReader(path) as reader:
        assert reader.mpp is None
    assert "--mpp" in slide_list.check_slide(path)
    assert slide_list.check_slide(path, mpp=0.25) is None
    summary = engine.scan_slides(path, [_run()], str(tmp_path / "S"), scan_settings.ScanSettings(**QUIET))
    assert summary.results[0].status == "failed" and "--mpp" in summary.results[0].message
    summary = engine.scan_slides(path, [_run()], str(tmp_path / "S"), scan_settings.ScanSettings(**dict(QUIET, mpp=0.25)))
    assert summary.ok and summary.results[0].meta["mpp"] == 0.25


def test_aperio_mpp_in_the_description_is_read(tmp_path):
    path = str(tmp_path / "aperio.tif")
    slide_without_mpp(path, "Aperio Image Library v12.0.15\r\n400x300 [0,0 400x300] (256x256) JPEG/RGB Q=70"
                             "|AppMag = 40|StripeWidth = 2032|ScanScope ID = SS1234|MPP = 0.2430|Left = 25.1")
    with SlideReader(path) as reader:
        assert reader.mpp == pytest.approx(0.243)
    assert slide_list.check_slide(path) is None


@pytest.mark.parametrize("threshold", [float("nan"), 2.0, -0.1, float("inf")])
def test_threshold_outside_0_1_is_refused(threshold):
    with pytest.raises(scan_settings.ScanError, match="threshold"):
        scan_settings.ScanSettings(threshold=threshold)


def test_slide_without_tissue_is_done_with_a_warning(tmp_path):
    from pfascannet.slide.tiff_writer import write_pyramid_tiff

    path = str(tmp_path / f"{SID}.tif")
    write_pyramid_tiff(path, (1000, 700), lambda x, y, w, h: None, tiff_tile_px=256, compression="deflate",
                       num_levels=2, workers=1)
    err = io.StringIO()
    opts = scan_settings.ScanSettings(**dict(QUIET, tissue="otsu", progress_stream=err))
    summary = engine.scan_slides(path, [_run()], str(tmp_path / "S"), opts)
    result = summary.results[0]
    assert summary.ok and result.status == "done" and result.warnings
    assert "no tissue" in result.meta["warnings"][0]
    assert "warning:" in err.getvalue() and "no tissue" in err.getvalue()
    assert "WARNING" in summary.text() and "no tissue" in summary.text()
