"""Multi-worker training step rate: one worker against two on this machine (issue 15, BENCHMARKS.md).

Runs the same short training (tiny config, global batch ``--batch_size``)
once on one worker (MirroredStrategy, one CPU device) and once on two
``MultiWorkerMirroredStrategy`` workers over loopback (ring all-reduce; the
two processes run in a network namespace with only ``lo``, as in
``tests/test_training_multiworker.py``), and prints the steady step rate
(steps 2..N: the first step traces the graph) of each as JSON.

On a 2-core machine both workers share the same two cores, so this measures
what multi-worker costs (collectives, each worker reading the whole global
batch), not a speed-up.

Example::

    python experiments/bench_multiworker.py --data /tmp/cohort --workdir /tmp/bench_mw --steps 12
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

from absl import flags

from pfascannet.cliutil import run_main

import bench_util  # experiments/bench_util.py, beside this script

FLAGS = flags.FLAGS
flags.DEFINE_string("data", None, "Cohort folder.")
flags.DEFINE_string("workdir", None, "Scratch folder (emptied).")
flags.DEFINE_integer("steps", 12, "Steps per run.")
flags.DEFINE_integer("batch_size", 2, "Global batch.")
flags.DEFINE_integer("worker_index", -1, "Internal: run as this multi-worker worker (TF_CONFIG set).")

PORTS = (23101, 23102)


def _train(workdir: str, strategy: str) -> dict:
    from pfascannet.training import trainer  # noqa: PLC0415  (imports TensorFlow and Keras)

    times = {}
    s = trainer.TrainSettings.from_flat(
        data=FLAGS.data, workdir=workdir, steps=FLAGS.steps, batch_size=FLAGS.batch_size, learning_rate=0.002,
        random_per_class=8, boundary=4, itc=2, checkpoint_every=FLAGS.steps, log_every=1, strategy=strategy,
        collective="ring" if strategy == "multiworker" else "auto",
    )
    t0 = time.perf_counter()
    trainer.train(s, on_progress=lambda p: times.__setitem__(p.step, time.perf_counter()))
    steady = (times[FLAGS.steps] - times[1]) / (FLAGS.steps - 1)
    return {"strategy": strategy, "steps": FLAGS.steps, "global_batch": FLAGS.batch_size,
            "s_per_step": round(steady, 3), "patches_per_s": round(FLAGS.batch_size / steady, 2),
            "wall_s_incl_start": round(time.perf_counter() - t0, 1)}


def main(argv) -> None:
    if FLAGS.worker_index >= 0:  # one of the two workers
        out = _train(FLAGS.workdir, "multiworker")
        if FLAGS.worker_index == 0:
            bench_util.report(out)
        return
    shutil.rmtree(FLAGS.workdir, ignore_errors=True)
    os.makedirs(FLAGS.workdir)
    results = {"one_worker": _train(os.path.join(FLAGS.workdir, "one"), "mirrored")}
    holder = subprocess.Popen(["unshare", "--net", "sh", "-c", "ip link set lo up && echo up && exec sleep 3600"],
                              stdout=subprocess.PIPE, text=True)
    procs = []
    try:
        assert holder.stdout.readline().strip() == "up", "no loopback-only network namespace"
        cluster = {"worker": [f"127.0.0.1:{p}" for p in PORTS]}
        t0 = time.perf_counter()
        for i in range(2):
            env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}))
            procs.append(subprocess.Popen(
                ["nsenter", f"--net=/proc/{holder.pid}/ns/net", sys.executable, os.path.abspath(__file__),
                 f"--data={FLAGS.data}", f"--workdir={os.path.join(FLAGS.workdir, 'two')}", f"--steps={FLAGS.steps}",
                 f"--batch_size={FLAGS.batch_size}", f"--worker_index={i}"],
                env=env, stdout=subprocess.PIPE, text=True))
        out = procs[0].communicate(timeout=1800)[0]
        procs[1].wait(timeout=60)
        two = bench_util.read_result(out)
        if two is None:
            raise bench_util.BenchError(f"worker 0 reported no result (exit {procs[0].returncode})")
        two["wall_s_incl_start"] = round(time.perf_counter() - t0, 1)
        results["two_workers"] = two
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        holder.kill()
    results["overhead_two_over_one"] = round(results["two_workers"]["s_per_step"] / results["one_worker"]["s_per_step"], 2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    run_main(main)
