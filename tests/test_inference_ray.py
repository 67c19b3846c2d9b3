"""Cohort scans on a local Ray with two workers: same bytes as a plain scan, retried workers, a bad slide alone.

A small cohort (three 1000 x 700 slides of the scanner tests, 12 ROIs of
916 px each with the tiny random-weight detector, plus one file that is not
a slide) is scanned once plainly, in this process, and then through Ray:
every per-slide output must be byte-equal (the sidecar JSON up to its
timings).  A Ray worker killed by its pid in the middle of a slide is
rerun by Ray and resumes from the slide's checkpoint.
"""

from __future__ import annotations

import filecmp
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from pfascannet.inference import engine, ray_scan, runs, scan_settings
from tests.scan_support import write_slide

pytestmark = pytest.mark.slow  # a local Ray cluster and scans through it

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BAD = "patient_003_node_0"
GOOD = ["patient_000_node_0", "patient_001_node_0", "patient_002_node_0"]
OPTIONS = dict(progress=True, heatmap=True, tissue="all", checkpoint_every_s=0.0, workers=2, batch=1)
PER_SLIDE = ("maps", "lesions", "heatmaps", "contours")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from pfascannet.inference.export import export_detector
    from pfascannet.model.config import ModelConfig
    from pfascannet.model.detector import build_detector
    from tests.model_support import randomise_weights

    model = build_detector(ModelConfig.tiny(), alpha=16)
    randomise_weights(model)
    out = str(tmp_path_factory.mktemp("ray_model") / "export")
    export_detector(model, ModelConfig.tiny(), out, alpha=16, roi_px=916, formats=("keras",))
    return out


@pytest.fixture(scope="module")
def slide_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ray_slides")
    for seed, sid in enumerate(GOOD):
        write_slide(str(folder / f"{sid}.tif"), seed=seed)
    (folder / f"{BAD}.tif").write_bytes(b"II*\x00 not a slide" * 20)
    return folder


@pytest.fixture(scope="module")
def specs(model_dir):
    return runs.resolve_runs(model_dir)


@pytest.fixture(scope="module")
def plain_scan(specs, slide_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("plain") / "scan")
    options = scan_settings.ScanSettings(**dict(OPTIONS, progress=False))
    summary = engine.scan_slides(str(slide_dir), [runs.load_spec(s) for s in specs], out, options)
    assert {r.slide: r.status for r in summary.results} == {**{s: "done" for s in GOOD}, BAD: "failed"}
    return out


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray with two CPU workers for the module (workers import this checkout)."""
    ray = ray_scan.import_ray()
    # Workers start from this environment: the checkout on their path (the
    # test hook below lives in tests/), TensorFlow's start-up chatter off.
    old = {k: os.environ.get(k) for k in ("PYTHONPATH", "TF_CPP_MIN_LOG_LEVEL")}
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, old["PYTHONPATH"]) if p)
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    assert ray_scan._start(ray, ray_scan.RaySettings(num_workers=2))
    try:
        yield ray
    finally:
        ray.shutdown()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _assert_same_outputs(a: str, b: str, slides=GOOD) -> None:
    for sub in PER_SLIDE:
        names_a = sorted(n for n in os.listdir(os.path.join(a, sub)) if not n.startswith("."))
        names_b = sorted(n for n in os.listdir(os.path.join(b, sub)) if not n.startswith("."))
        assert names_a == names_b and names_a, sub
        for name in names_a:
            fa, fb = os.path.join(a, sub, name), os.path.join(b, sub, name)
            if name.endswith(".json"):
                ja, jb = json.load(open(fa)), json.load(open(fb))
                ja.pop("timing"), jb.pop("timing")  # wall times differ; everything else may not
                assert ja == jb, name
            else:
                assert filecmp.cmp(fa, fb, shallow=False), f"{sub}/{name} differs"
    assert sorted(os.path.splitext(n)[0] for n in os.listdir(os.path.join(b, "maps")) if n.endswith(".npy")) == slides
    assert filecmp.cmp(os.path.join(a, "slide_scores.csv"), os.path.join(b, "slide_scores.csv"), shallow=False)
    assert not os.listdir(os.path.join(b, "partial"))


def test_scan_py_ray_equals_plain_scan_and_a_bad_slide_fails_alone(model_dir, slide_dir, plain_scan, tmp_path):
    # The command line end to end: a bare --ray starts (and stops) a local Ray of 2 workers.
    out = str(tmp_path / "ray")
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    cmd = [sys.executable, os.path.join(ROOT, "experiments", "scan.py"), f"--model={model_dir}",
           f"--slides={slide_dir}", f"--out={out}", "--tissue=all", "--batch=1", "--checkpoint_s=0", "--ray"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    err = proc.stderr
    assert proc.returncode == 1, err[-3000:]  # 1: some slide failed (README's exit statuses)
    # The bad slide is reported once, with the message a plain scan gives, and not retried.
    assert err.count(f"error: {BAD}:") == 1 and f"{BAD}.tif" in err
    assert "will be retried" not in err  # (what Ray says when it reruns a task)
    assert "[ray] 4/4 slides: 3 done, 0 already done, 1 failed, 0 running" in err
    assert "scanned 4 slide(s)" in err and "3 done, 0 already done, 1 failed" in err
    _assert_same_outputs(plain_scan, out)
    config = json.load(open(os.path.join(out, "scan_config.json")))
    assert config["ray"]["num_workers"] == 2 and config["ray"]["task_resources"] == {"num_cpus": 1}


def test_rerun_through_ray_skips_what_is_done(local_ray, specs, slide_dir, plain_scan, tmp_path):
    import shutil

    out = str(tmp_path / "copy")
    shutil.copytree(plain_scan, out)
    stream = io.StringIO()
    options = scan_settings.ScanSettings(**dict(OPTIONS, progress_stream=stream))
    summary = ray_scan.scan_slides_ray(str(slide_dir), specs, out, options)
    assert sorted(r.status for r in summary.results) == ["failed", "skipped", "skipped", "skipped"]
    assert "[ray] 4/4 slides: 0 done, 3 already done, 1 failed" in stream.getvalue()
    _assert_same_outputs(plain_scan, out)


_KILLED_WRITER = """
import os, signal, sys
from pfascannet.io_utils import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    open(tmp, "w").write("name,probability\\n")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_ray_run_removes_a_killed_runs_temporaries_at_the_folder_level(local_ray, specs, slide_dir, plain_scan,
                                                                        tmp_path):
    # A scan killed while writing slide_scores.csv left its hidden temporary; the plain scan removes it.
    import shutil

    out = str(tmp_path / "copy")
    shutil.copytree(plain_scan, out)
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, os.path.join(out, "slide_scores.csv")],
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == -signal.SIGKILL
    assert [n for n in os.listdir(out) if n.startswith(".slide_scores.csv.tmp-")]
    options = scan_settings.ScanSettings(**dict(OPTIONS, progress=False))
    ray_scan.scan_slides_ray(str(slide_dir), specs, out, options)
    assert not [n for n in os.listdir(out) if n.startswith(".")]


class PauseOnce:
    """``on_batch`` hook run in the workers: the first task to finish its 3rd ROI writes its pid and waits.

    The checkpoint of those 3 ROIs is on disk by then (``checkpoint_every_s=0``),
    so the test can kill the worker by that pid in the middle of the slide.
    """

    def __init__(self, marker: str):
        self.marker = marker

    def __call__(self, n_done: int) -> None:
        if n_done != 3:
            return
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return  # the rerun of the killed task, or another slide: go on
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        time.sleep(300)  # killed here


def test_worker_killed_mid_slide_is_retried_and_outputs_still_equal(local_ray, specs, slide_dir, plain_scan,
                                                                     tmp_path):
    out = str(tmp_path / "ray_killed")
    marker = str(tmp_path / "paused.pid")
    killed = {}

    def kill_when_paused():
        deadline = time.monotonic() + 240
        while not os.path.exists(marker) or not open(marker).read():
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
        pid = int(open(marker).read())
        partial = sorted(os.listdir(os.path.join(out, "partial")))
        killed.update(pid=pid, partial=partial)
        os.kill(pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_when_paused, daemon=True)
    killer.start()
    options = scan_settings.ScanSettings(**dict(OPTIONS, progress=False))
    summary = ray_scan.scan_slides_ray(str(slide_dir), specs, out, options,
                                       ray_options=ray_scan.RaySettings(max_retries=2), on_batch=PauseOnce(marker))
    killer.join(timeout=10)
    assert killed, "no task reached its 3rd ROI"
    status = {r.slide: r.status for r in summary.results}
    assert status == {**{s: "done" for s in GOOD}, BAD: "failed"}
    # The killed slide was rerun by Ray and resumed from its checkpoint of 3 ROIs.
    resumed = [r.slide for r in summary.results if r.stats and r.stats[0].n_resumed]
    assert len(resumed) == 1 and [f"{resumed[0]}.m0.npz"] == [p for p in killed["partial"] if p.startswith(resumed[0])]
    assert summary.results[GOOD.index(resumed[0])].stats[0].n_resumed == 3
    _assert_same_outputs(plain_scan, out)


def test_scan_py_ray_without_ray_installed_is_one_clear_error(model_dir, slide_dir, tmp_path):
    # A `ray` that cannot be imported, ahead of the real one on the path.
    fake = tmp_path / "no_ray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(fake.parent), ROOT]), TF_CPP_MIN_LOG_LEVEL="3")
    cmd = [sys.executable, os.path.join(ROOT, "experiments", "scan.py"), f"--model={model_dir}",
           f"--slides={slide_dir}", f"--out={tmp_path / 'out'}", "--ray"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [f"error: {ray_scan.RAY_MISSING}"]
