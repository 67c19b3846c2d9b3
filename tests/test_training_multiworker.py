"""Multi-worker training over loopback: two ``TF_CONFIG`` workers under MultiWorkerMirroredStrategy.

Two ``experiments/train.py --strategy=multiworker`` processes (one replica
each, ring all-reduce over gRPC) train the tiny model on the session cohort,
and the tests show what BUILD.md promises:

- the chief (worker 0) alone writes ``workdir``; worker 1's saves go to a
  scratch folder that is gone when it finishes;
- after N steps the weights equal a one-worker run over the same global
  batch (``ATOL``, below);
- SIGKILL of worker 1 makes the chief stop, within a bound, with one clear
  error line; rerunning both workers resumes from the chief's last
  checkpoint and ends with the same weights.

Loopback only: TensorFlow's gRPC server listens on the wildcard address
(``0.0.0.0``/``[::]``, no option changes it), so the workers run inside a
network namespace of their own (``unshare --net``) whose only interface is
``lo``: they can reach 127.0.0.1 and nothing else, and nothing else can
reach them (and every port is free there: fixed ports cannot collide with
anything on the machine).  Every process is killed at the end, whatever happens.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from pfascannet.inference import model_io  # only to read the weights back
from pfascannet.training import recipe

pytestmark = pytest.mark.slow  # several training processes per test

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 5
KILL_AT_CHECKPOINT = 2  # worker 1 dies once the chief has written ckpt-2 (3 steps still to go)
PHASE_TIMEOUT_S = 240  # each multi-worker run (start, TF import, steps) ends within this or is killed
DETECT_TIMEOUT_S = 60  # the chief must report the dead peer within this after the kill
COLLECTIVE_TIMEOUT_S = 30  # backstop for a hung (not dead) peer; a dead one is seen at once on loopback
# Float tolerance of "equal weights": the two runs compute the same gradient
# but sum it in another order (two per-replica means of 1 patch, halved and
# summed by the ring all-reduce, against one mean of 2 patches), so they differ
# by float32 rounding: ~3e-8 after 5 steps when one draw of patches is
# replayed, 1.7e-6 with the default sample stream (its second epoch's fresh
# patches give larger gradients, which carry the rounding further).  1e-5 is
# above that and two orders below what one step moves a weight (asserted:
# > 1e-3), so a wrong global batch (other patches, or each worker using the
# whole batch) fails.
ATOL = 1e-5
# The same small run every process makes (batch 2 = one patch per worker).
RUN_FLAGS = dict(config="tiny", steps=STEPS, batch_size=2, learning_rate=0.002, random_per_class=2, boundary=1,
                 itc=1, checkpoint_every=1, log_every=1)


def _weights(path):
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
    return out


def _assert_same_weights(a_path, b_path):
    a, b = _weights(a_path), _weights(b_path)
    assert sorted(a) == sorted(b) and a
    worst = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
    assert worst <= ATOL, f"max |difference| {worst:.3g} > {ATOL}"


@pytest.fixture(scope="module")
def loopback_netns():
    """A process holding a fresh network namespace with only ``lo`` up; yields its pid."""
    if not shutil.which("unshare") or not shutil.which("nsenter"):
        pytest.fail("unshare/nsenter (util-linux) are needed to keep the workers on loopback")
    flags = ["--net"] if os.geteuid() == 0 else ["--net", "--map-root-user"]
    holder = subprocess.Popen(
        ["unshare", *flags, "sh", "-c", "ip link set lo up && echo up && exec sleep 900"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = holder.stdout.readline().strip()
        if line != "up":
            holder.kill()
            pytest.fail(f"could not make a loopback-only network namespace: {holder.stderr.read()[-500:]}")
        yield holder.pid
    finally:
        holder.kill()
        holder.wait(timeout=10)


def _start_workers(netns_pid, cohort, workdir, ports, log_dir):
    """Both workers of ``experiments/train.py --strategy=multiworker`` inside the namespace."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(2):
        env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
                   TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        nsenter = ["nsenter", f"--net=/proc/{netns_pid}/ns/net"]
        if os.geteuid() != 0:
            nsenter.insert(1, f"--user=/proc/{netns_pid}/ns/user")
        cmd = nsenter + [
            sys.executable, os.path.join(ROOT, "experiments", "train.py"), f"--data={cohort}",
            f"--workdir={workdir}", "--strategy=multiworker", "--collective=ring",
            f"--collective_timeout_s={COLLECTIVE_TIMEOUT_S}", *[f"--{k}={v}" for k, v in RUN_FLAGS.items()],
        ]
        out = open(os.path.join(log_dir, f"worker{index}.out"), "w")
        err = open(os.path.join(log_dir, f"worker{index}.err"), "w")
        # nsenter execs the trainer, so each Popen's pid is the worker's own.
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err))
        out.close()
        err.close()
    return procs


def _wait(procs, deadline):
    for p in procs:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker pid {p.pid} still running after its time bound")


def _kill_all(procs):
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=30)


def _log(log_dir, index, kind):
    with open(os.path.join(log_dir, f"worker{index}.{kind}")) as f:
        return f.read()


def _steps_logged(text):
    # The trainer's progress lines (pfascannet.progress, through absl logging on stderr).
    return [int(m) for m in re.findall(r"\btrain: (\d+)/\d+ ", text)]


@pytest.fixture(scope="module")
def one_worker_weights(cohort, tmp_path_factory):
    """The reference: the same command on one worker (MirroredStrategy, one CPU device), global batch 2.

    Run as a fresh process like the workers, so no state of earlier tests in
    this pytest process (Keras globals, TF config) can reach it.
    """
    workdir = tmp_path_factory.mktemp("one_worker")
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    cmd = [sys.executable, os.path.join(ROOT, "experiments", "train.py"), f"--data={cohort}", f"--workdir={workdir}",
           *[f"--{k}={v}" for k, v in RUN_FLAGS.items()]]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=PHASE_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _steps_logged(proc.stderr) == list(range(1, STEPS + 1))
    return str(workdir / "final.weights.h5")


def test_two_workers_equal_one_worker_and_only_the_chief_writes(cohort, loopback_netns, one_worker_weights,
                                                                tmp_path):
    workdir, logs = tmp_path / "run", tmp_path / "logs"
    logs.mkdir()
    procs = _start_workers(loopback_netns, cohort, workdir, (23001, 23002), logs)
    try:
        _wait(procs, time.monotonic() + PHASE_TIMEOUT_S)
    finally:
        _kill_all(procs)
    for i, p in enumerate(procs):
        assert p.returncode == 0, _log(logs, i, "err")[-3000:]
        assert _steps_logged(_log(logs, i, "err")) == list(range(1, STEPS + 1))
    cfg = json.loads((workdir / "config.json").read_text())
    assert cfg["replicas"] == 2 and cfg["settings"]["strategy"] == "multiworker"

    # The chief's files and nothing else: worker 1's scratch folder is gone.
    assert sorted(os.listdir(workdir)) == ["checkpoints", "config.json", "final.weights.h5", "samples.csv",
                                           "tensorboard"]
    assert os.path.exists(workdir / "checkpoints" / f"ckpt-{STEPS}.index")

    _assert_same_weights(one_worker_weights, workdir / "final.weights.h5")
    # The tolerance means something: training moved the weights far more than it.
    model = model_io.load_training_model(str(workdir / "final.weights.h5"), "tiny")
    start = model_io.load_training_model(str(workdir / "final.weights.h5"), "tiny")
    recipe.he_initialise(start, 0)
    kernel = model.get_layer("block1_conv1").get_weights()[0]
    assert np.max(np.abs(kernel - start.get_layer("block1_conv1").get_weights()[0])) > 1e-3


def test_killed_worker_stops_the_job_and_both_resume_from_the_checkpoint(cohort, loopback_netns,
                                                                           one_worker_weights, tmp_path):
    workdir, logs1, logs2 = tmp_path / "run", tmp_path / "logs1", tmp_path / "logs2"
    logs1.mkdir()
    logs2.mkdir()
    ckpt = workdir / "checkpoints" / f"ckpt-{KILL_AT_CHECKPOINT}.index"
    procs = _start_workers(loopback_netns, cohort, workdir, (23011, 23012), logs1)
    try:
        deadline = time.monotonic() + PHASE_TIMEOUT_S
        while not ckpt.exists():
            assert all(p.poll() is None for p in procs), "a worker ended before the kill"
            assert time.monotonic() < deadline, "no checkpoint within the time bound"
            time.sleep(0.05)
        procs[1].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        _wait(procs[:1], killed_at + DETECT_TIMEOUT_S)
        detected_s = time.monotonic() - killed_at
    finally:
        _kill_all(procs)
    assert procs[1].returncode == -signal.SIGKILL
    err = _log(logs1, 0, "err").strip().splitlines()
    assert procs[0].returncode == 2, "\n".join(err[-40:])
    assert err[-1].startswith("error: worker 0: lost another worker during step "), err[-1]
    assert "restart every worker with the same command to resume" in err[-1]
    assert detected_s < DETECT_TIMEOUT_S
    assert not (workdir / "final.weights.h5").exists()
    last = int(re.search(r"the last checkpoint is ckpt-(\d+)", err[-1]).group(1))
    assert KILL_AT_CHECKPOINT <= last < STEPS

    # Both rerun with the same command: every worker restores the chief's last checkpoint.
    procs = _start_workers(loopback_netns, cohort, workdir, (23021, 23022), logs2)
    try:
        _wait(procs, time.monotonic() + PHASE_TIMEOUT_S)
    finally:
        _kill_all(procs)
    for i, p in enumerate(procs):
        assert p.returncode == 0, _log(logs2, i, "err")[-3000:]
        assert _steps_logged(_log(logs2, i, "err")) == list(range(last + 1, STEPS + 1))
    assert not (workdir / ".worker-1.tmp").exists()  # the killed worker's scratch, cleared by the rerun
    _assert_same_weights(one_worker_weights, workdir / "final.weights.h5")
