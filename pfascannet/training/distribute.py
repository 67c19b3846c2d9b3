"""The tf.distribute side of training: the strategy, who writes, and a lost worker.

``make_strategy`` builds ``MirroredStrategy`` over every visible GPU (every
logical CPU device when there is none) or ``MultiWorkerMirroredStrategy``
across machines (``TF_CONFIG``; the trainer's docstring says how a global
batch is split).  Worker 0 (or a ``chief`` task) writes ``workdir``; the
others save into ``scratch_dir`` (TensorFlow's multi-worker guide: every
worker calls every save, the non-chief ones into a folder deleted after).
A peer that dies makes the next collective fail with one of ``PEER_ERRORS``;
``peer_lost`` turns that into a ``WorkerLostError`` that names the last
checkpoint.  A process that got one exits as soon as its message is out
(``exit_at_once``): TensorFlow's teardown at interpreter exit can wait on
the dead peer.
"""

from __future__ import annotations

import os
from typing import NoReturn, Optional

import tensorflow as tf

from pfascannet.layout import RunFolder
from pfascannet.training.settings import TrainingError


class WorkerLostError(TrainingError):
    """Another worker of a multi-worker run died or became unreachable; restart every worker to resume.

    ``exit_at_once``: the command line exits right after printing it
    (``cliutil``), without the interpreter's teardown.  That teardown can
    wait on the dead peer: measured (two workers on loopback, one killed),
    worker 0 printed this error 0.6-1 s after the kill, then spent 7 s and
    more in the final garbage collection, in native code (TensorFlow's
    context, gRPC server and collectives going down), with no Python frame
    left (how the flaky test sometimes missed its 60 s bound).  Every output is safe by
    then: checkpoints are written by ``CheckpointManager`` before a later
    step's collective (a save that failed is not named in ``checkpoint``),
    the TensorBoard events are flushed at every write, and only the chief writes.
    """

    exit_at_once = True


def make_strategy(
    kind: str = "mirrored", collective: str = "auto", collective_timeout_s: Optional[float] = None
) -> tf.distribute.Strategy:
    """MirroredStrategy over every GPU (else every logical CPU), or multi-worker.

    Args:
      kind: ``mirrored`` or ``multiworker`` (reads ``TF_CONFIG``; must be
        created before any other TensorFlow op of the process).
      collective: multi-worker all-reduce: ``ring`` (gRPC; the one that works
        on CPUs), ``nccl`` (GPUs only), ``auto`` (TensorFlow picks NCCL when
        every device is a GPU, else ring).
      collective_timeout_s: multi-worker: a collective that waits longer
        raises ``DeadlineExceededError`` (None: no timeout).
    """
    if kind == "multiworker":
        impl = tf.distribute.experimental.CommunicationImplementation
        options = tf.distribute.experimental.CommunicationOptions(
            implementation={"auto": impl.AUTO, "ring": impl.RING, "nccl": impl.NCCL}[collective],
            timeout_seconds=collective_timeout_s,
        )
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    gpus = tf.config.list_logical_devices("GPU")
    devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
    return tf.distribute.MirroredStrategy(devices=devices)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """The task that writes: a ``chief`` task if the cluster has one, else worker 0 (TF's convention)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    if resolver.task_type is None:
        return True
    if "chief" in resolver.cluster_spec().as_dict():
        return resolver.task_type == "chief"
    return resolver.task_type == "worker" and resolver.task_id == 0


def task_name(strategy: tf.distribute.Strategy) -> str:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return "this worker"
    return f"{resolver.task_type} {resolver.task_id}"


def scratch_dir(workdir: str, strategy: tf.distribute.Strategy) -> str:
    """A non-chief worker's write-only folder (TF's multi-worker guide: write, then delete)."""
    resolver = strategy.cluster_resolver
    return os.path.join(workdir, f".{resolver.task_type}-{resolver.task_id}.tmp")


# A peer that died or became unreachable surfaces as one of these from the
# next collective (all-reduce, broadcast, or the coordination service).
PEER_ERRORS = (
    tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError,
    tf.errors.AbortedError, tf.errors.InternalError,
)


def peer_lost(exc: Exception, strategy, step: int, workdir: str) -> NoReturn:
    """Turns a failed collective into one clear error that says how to resume."""
    latest = tf.train.latest_checkpoint(RunFolder(workdir).checkpoints)
    where = f"the last checkpoint is {os.path.basename(latest)}" if latest else "no checkpoint was written yet"
    detail = cause(str(getattr(exc, "message", exc)))
    raise WorkerLostError(
        f"{task_name(strategy)}: lost another worker during step {step + 1} "
        f"({type(exc).__name__}: {detail}); {where}: restart every worker with the same command to resume"
    ) from exc


def cause(message: str) -> str:
    """The line of a TensorFlow error that says what happened (not its graph traceback)."""
    skip = ("Graph execution error", "Detected at node", "File ", "The error could be", "[[", ":UNKNOWN:")
    for line in message.splitlines():
        line = line.strip()
        if line and not line.startswith(skip) and not line.startswith("defined at"):
            return line[:240]
    return " ".join(message.split())[:240]
