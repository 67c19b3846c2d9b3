"""Second-order trust faults of the scanner (issue 23), each with the test that found it.

- every setting that changes a map's numbers (precision, XLA, backend) is in its fingerprint;
- a detector with no digest of its own is still identified by its content (or its name);
- locks and temporaries on a file system where ``flock`` on a read-only fd fails (NFS: EBADF);
- ``--ray`` runs remove the output folder's stale temporaries, as the plain scan does;
- several scanning *processes* (not threads) on one folder split the slides;
- Ctrl-C (SIGINT) stops a scan with exit status 130 and the rerun resumes.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from pfascannet import geometry, io_utils
from pfascannet.inference import engine, model_run, outputs, scan_settings
from tests.scan_support import LM, OracleDetector, write_slide

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SID = "patient_000_node_0"
QUIET = dict(progress=False, heatmap=False, tissue="all", checkpoint_every_s=0.0, workers=2, batch=3)
N_ROIS = 48
LR = geometry.roi_px(LM, 16)


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("load_slides") / f"{SID}.tif")
    write_slide(path)
    return path


def _run(det, name="/models/M") -> model_run.ModelRun:
    return model_run.ModelRun(det, geometry.ScanGeometry(16, LR), name=name)


class NumericsOracle(OracleDetector):
    """The oracle with a digest and the runtime settings a real detector reports."""

    def __init__(self, digest="A", precision="float32", xla=False, backend=None):
        super().__init__(16, LR)
        self.digest, self.precision, self.xla = digest, precision, xla
        if backend is not None:
            self.backend = backend


# --------------------------------------------------------------------------- fingerprint


def test_xla_is_in_the_map_fingerprint_so_a_resume_under_xla_rescans(slide_path, tmp_path):
    # A scan begun on a CPU node (XLA off) and resumed on a GPU node (XLA on):
    # bf16 maps of the two differ (model/precision.py), so the map is redone.
    opts = scan_settings.ScanSettings(**QUIET)
    off = _run(NumericsOracle(precision="bfloat16", xla=False))
    on = _run(NumericsOracle(precision="bfloat16", xla=True))
    assert engine.map_fingerprint(slide_path, [off], opts) != engine.map_fingerprint(slide_path, [on], opts)
    out = str(tmp_path / "S")
    assert engine.scan_slides(slide_path, [off], out, opts).ok
    summary = engine.scan_slides(slide_path, [on], out, opts)
    assert summary.results[0].status == "done" and on.detector.rois_seen == N_ROIS
    again = _run(NumericsOracle(precision="bfloat16", xla=True))
    assert engine.scan_slides(slide_path, [again], out, opts).results[0].status == "skipped"


def test_every_numeric_setting_is_in_the_fingerprint_and_defaults_keep_old_maps(slide_path):
    opts = scan_settings.ScanSettings(**QUIET)
    base = engine.map_fingerprint(slide_path, [_run(NumericsOracle())], opts)
    # float32, no XLA, TensorFlow: what maps made before these settings existed were made with.
    assert base["runs"][0] == {"name": "/models/M", "mode": "dense", "alpha": 16, "roi_px": LR, "digest": "A"}
    variants = [dict(precision="bfloat16"), dict(precision="float16"), dict(xla=True), dict(backend="jax"),
                dict(backend="torch")]
    prints = [engine.map_fingerprint(slide_path, [_run(NumericsOracle(**v))], opts) for v in variants]
    assert all(p != base for p in prints)
    assert len({repr(p) for p in prints}) == len(variants)
    assert model_run.numeric_settings(NumericsOracle(xla=True, backend="jax")) == {"xla": True, "backend": "jax"}


# --------------------------------------------------------------------------- digest


class KerasLike:
    """An API user's own detector around a Keras model, with no ``digest`` of its own."""

    def __init__(self, scale: float):
        import keras

        inp = keras.Input((LR, LR, 3))
        x = keras.layers.Conv2D(1, 1, name="w")(inp)
        self.model = keras.Model(inp, x)
        self.model.get_layer("w").set_weights([np.full((1, 1, 3, 1), scale, np.float32), np.zeros(1, np.float32)])
        self.oracle = OracleDetector(16, LR)
        self.alpha, self.roi_px, self.tile_px, self.stride_px = 16, LR, LM, self.oracle.stride_px
        self.scale = scale
        self.rois_seen = 0

    def predict(self, rois):
        self.rois_seen += len(rois)
        return self.oracle.predict(rois) * np.float32(self.scale)


def test_a_detector_without_a_patch_classifier_is_told_to_turn_the_candidate_views_off(slide_path, tmp_path):
    out = str(tmp_path / "S")
    summary = engine.scan_slides(slide_path, [_run(KerasLike(1.0))], out, scan_settings.ScanSettings(**QUIET))
    [result] = summary.results
    assert result.status == "failed"
    assert "predict_patches" in result.message and "--candidate_views=1" in result.message
    assert "\n" not in result.message
    opts = scan_settings.ScanSettings(**QUIET, candidate_views=1)
    assert engine.scan_slides(slide_path, [_run(KerasLike(1.0))], out, opts).ok


def test_a_custom_keras_detector_swapped_behind_the_same_name_rescans(slide_path, tmp_path):
    opts = scan_settings.ScanSettings(**QUIET, candidate_views=1)  # KerasLike has no patch classifier
    out = str(tmp_path / "S")
    first = _run(KerasLike(1.0))
    assert first.digest is not None and first.digest != first.name
    assert engine.scan_slides(slide_path, [first], out, opts).ok
    swapped = _run(KerasLike(0.5))
    assert engine.scan_slides(slide_path, [swapped], out, opts).results[0].status == "done"
    assert swapped.detector.rois_seen == N_ROIS
    assert _run(KerasLike(0.5)).digest == swapped.digest  # the same content: the same id


def test_a_detector_with_no_readable_content_falls_back_to_its_name():
    run = _run(OracleDetector(16, LR), name="/models/custom")
    assert run.digest == "/models/custom"
    assert run.describe()["digest"] == "/models/custom"


# --------------------------------------------------------------------------- NFS locks


def _nfs_flock(monkeypatch, always: int | None = None):
    """``fcntl.flock`` as on NFS: an exclusive lock of an fd opened read-only fails with EBADF.

    (NFS clients emulate ``flock`` with byte-range locks, which need write
    access.)  ``always``: every call fails with that errno (no locks at all).
    """
    real = fcntl.flock

    def flock(fd, op):
        if always is not None:
            raise OSError(always, os.strerror(always))
        if op & fcntl.LOCK_EX and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        return real(fd, op)

    monkeypatch.setattr(io_utils.fcntl, "flock", flock)


_LIVE_WRITER = """
import sys, time
from pfascannet.io_utils import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    open(tmp, "w").write("name,probability\\n")
    print("writing", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _writer(target, seconds=60):
    proc = subprocess.Popen([sys.executable, "-c", _LIVE_WRITER, str(target), str(seconds)], stdout=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.stdout.readline().strip() == "writing"
    return proc


def test_on_nfs_a_live_writers_temp_of_slide_scores_is_not_removed(tmp_path, monkeypatch):
    # Another process is writing slide_scores.csv; this one cleans the folder (as every scan does at its start).
    proc = _writer(tmp_path / "slide_scores.csv")
    try:
        _nfs_flock(monkeypatch)
        temps = [n for n in os.listdir(tmp_path) if io_utils.is_temp_name(n)]
        assert len(temps) == 1
        assert io_utils.remove_stale_temps(tmp_path) == []
        assert os.listdir(tmp_path) == temps
        # This process's own writes take a lock that holds on NFS too.
        with io_utils.atomic_path(tmp_path / "x.json") as tmp:
            open(tmp, "w").write("{}")
            assert io_utils.remove_stale_temps(tmp_path, prefix=".x.json") == []
    finally:
        proc.kill()
        proc.wait()
    # The writer was killed: on NFS its temporary is now found stale and removed.
    assert len(io_utils.remove_stale_temps(tmp_path)) == 1
    assert sorted(os.listdir(tmp_path)) == ["x.json"]


def test_where_no_lock_can_be_tested_only_a_dead_owners_temp_is_removed(tmp_path, monkeypatch):
    live = _writer(tmp_path / "a.csv")
    dead = _writer(tmp_path / "b.csv")
    dead.kill()
    dead.wait()
    try:
        _nfs_flock(monkeypatch, always=errno.ENOLCK)
        removed = io_utils.remove_stale_temps(tmp_path)
        assert len(removed) == 1 and os.path.basename(removed[0]).startswith(".b.csv.tmp-")
        left = os.listdir(tmp_path)
        assert len(left) == 1 and left[0].startswith(".a.csv.tmp-")  # its owner lives: kept
    finally:
        live.kill()
        live.wait()


def test_slide_lock_works_where_flock_needs_write_access(tmp_path, monkeypatch):
    _nfs_flock(monkeypatch)
    a, b = io_utils.FileLock(tmp_path / "s.lock"), io_utils.FileLock(tmp_path / "s.lock")
    assert a.acquire() and not b.acquire()
    a.release()
    assert b.acquire()
    b.release()


# --------------------------------------------------------------------------- Ctrl-C


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    from pfascannet.inference.export import export_detector
    from pfascannet.model.config import ModelConfig
    from pfascannet.model.detector import build_detector
    from tests.model_support import randomise_weights

    model = build_detector(ModelConfig.tiny(), alpha=16)
    randomise_weights(model)
    out = str(tmp_path_factory.mktemp("tiny_model") / "M")
    export_detector(model, ModelConfig.tiny(), out, alpha=16, roi_px=916, formats=("keras",))
    return out


@pytest.mark.slow  # three scan processes with the tiny model; ~40 s under load
def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_sigint_stops_a_scan_with_status_130_and_the_rerun_resumes(tiny_export, tmp_path):
    import json

    slide = str(tmp_path / f"{SID}.tif")
    write_slide(slide, wh=(2600, 1800))
    out = tmp_path / "S"
    cmd = [sys.executable, "-m", "pfascannet.cli", "scan", f"--model={tiny_export}", f"--slides={slide}",
           f"--out={out}", "--tissue=all", "--batch=1", "--checkpoint_s=0", "--noprogress"]
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    # A terminal's Ctrl-C reaches a process that handles SIGINT; one started in the background of a
    # non-interactive shell (nohup ... &) inherits SIGINT ignored, so give the child the default back.
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env,
                            preexec_fn=_default_sigint)
    ckpt = out / "partial" / f"{SID}.m0.npz"
    deadline = time.monotonic() + 240
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ckpt.exists() and proc.poll() is None, "the scan never got under way"
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: interrupted; rerun the same command to resume"]
    assert ckpt.exists() and not (out / "maps" / f"{SID}.npy").exists()
    assert not [n for n in os.listdir(out / "partial") if n.startswith(".")]  # no temporary left
    rerun = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    meta = json.load(open(out / "maps" / f"{SID}.json"))
    assert meta["timing"][0]["n_resumed"] > 0 and not ckpt.exists()


# --------------------------------------------------------------------------- checkpoints of another model


class _Killed(Exception):
    pass


def _kill_after(n):
    def hook(done):
        if done >= n:
            raise _Killed

    return hook


def test_a_checkpoint_of_another_model_goes_when_the_slide_is_found_done(slide_path, tmp_path):
    # Found by the soak: a process still holding the old model started the slide
    # again and was killed; the next process found the map done with the current
    # model and skipped it, and the other model's checkpoint stayed for good.
    opts = scan_settings.ScanSettings(**QUIET)
    out = str(tmp_path / "S")
    assert engine.scan_slides(slide_path, [_run(NumericsOracle(digest="A"))], out, opts).ok
    summary = engine.scan_slides(slide_path, [_run(NumericsOracle(digest="B"))], out, opts, on_batch=_kill_after(6))
    assert summary.results[0].status == "failed"
    assert os.listdir(os.path.join(out, "partial")) == [f"{SID}.m0.npz"]
    again = _run(NumericsOracle(digest="A"))
    assert engine.scan_slides(slide_path, [again], out, opts).results[0].status == "skipped"
    assert again.detector.rois_seen == 0
    assert os.listdir(os.path.join(out, "partial")) == []
