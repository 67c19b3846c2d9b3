"""Synergistic training of detector and decoder under tf.distribute (Sec. 2.3, eq. (3)).

Zhao et al. (MICCAI 2019), Implementation Details: 692 x 692 training
patches with 512 x 512 masks; eq. (2) with gamma = 0.04, eq. (3) with
lambda = 0.5; SGD with momentum 0.9 and learning rate 1e-4; four GPUs.

``train(settings)`` runs the whole job:

1. samples the cohort's training slides (``data.sampling``: random,
   boundary, ITC patches) once, and writes them to ``workdir/samples.csv``;
2. streams them through ``data.pipeline`` (or TFRecord shards);
3. trains the ``build_training_model`` under ``MirroredStrategy`` over every
   visible GPU (every logical CPU device when there is no GPU), or
   ``MultiWorkerMirroredStrategy`` across machines (``TF_CONFIG``, see below);
4. optionally, at step ``hard_negative_at``, scans normal tissue with the
   current model and adds its false positives to the samples
   (``workdir/hard_negatives.csv``);
5. checkpoints every ``checkpoint_every`` steps (``workdir/checkpoints``),
   logs TensorBoard scalars (``workdir/tensorboard``), and writes
   ``workdir/final.weights.h5`` (what ``experiments/export.py`` reads).

Resume: rerunning the same settings on the same workdir restores the latest
checkpoint (weights, SGD momentum, step) and restarts the input stream at
element ``step * batch_size``; since the stream is a pure function of
(samples, seed) (``pipeline.py``), the resumed run ends with the weights an
uninterrupted run would have, up to floating-point reduction order.

Several machines (``strategy="multiworker"``): every worker runs the same
``train`` with its own ``TF_CONFIG``.  Each reads the same global stream and
``experimental_distribute_dataset`` splits every global batch between the
workers (rebatch into one slice per replica, then ``AutoShardPolicy.DATA``),
so a step sees exactly the ``batch_size`` patches a one-worker run sees, and
the gradient is their mean (per-replica means over the local slice, divided
by the replica count, summed by the all-reduce).  Worker 0 is the chief: it
alone writes ``samples.csv``, ``config.json``, checkpoints, TensorBoard
events and the final weights into ``workdir``.  The others must still call
every save (a save may run collectives), so, as TensorFlow's multi-worker
guide prescribes, they write into a scratch folder
``workdir/.worker-<index>.tmp`` that is deleted when they finish (and, if a
killed run left it, when they start).  Every worker restores the chief's
checkpoint on a rerun.  A worker that dies makes the others' next collective
fail (the coordination service misses its heartbeats, or the optional
``collective_timeout_s`` expires): they stop with a ``TrainingError`` that
names the last checkpoint, and restarting every worker resumes from it.

Learning rate: the paper's 1e-4 fine-tunes an ImageNet-initialised VGG16
for days on four GPUs.  The from-scratch ``tiny`` runs on a 2-core CPU
(tests, ``experiments/bench_training.py``) use a larger stated rate; every
run writes the rate it used into ``workdir/config.json``.

This module is the loop (data, state, step, checkpoints, resume).  Beside it:
``training.recipe`` (optimiser, warm-up + cosine schedule, ``scratch_recipe``,
He initialisation), ``training.distribute`` (strategies, the writing task, a
lost worker) and ``training.mining`` (hard-negative rounds and their files).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import tempfile
import time
from typing import Callable, Optional

import keras
import numpy as np
import tensorflow as tf

from pfascannet import io_utils
from pfascannet.data import pipeline, sampling
from pfascannet.layout import RunFolder
from pfascannet.model.config import get_config
from pfascannet.model.decoder import decoder_targets
from pfascannet.model.detector import TRAINING_MPP, build_training_model
from pfascannet.model.imagenet import ImagenetInitError, load_imagenet_trunk
from pfascannet.model.losses import SynergisticLoss
from pfascannet.model.precision import dtype_policy
from pfascannet.progress import Progress
from pfascannet.training import distribute, mining
from pfascannet.training.recipe import he_initialise, make_optimizer
from pfascannet.training.settings import (
    COLLECTIVES,
    HARD_NEGATIVE_SOURCES,
    KERNEL_INITS,
    LR_SCHEDULES,
    OPTIMIZERS,
    PAPER_DEFAULTS,
    STRATEGIES,
    TrainingError,
    TrainSettings,
    workdir_mismatch,
)

# Settings live in training/settings.py; re-exported for callers of ``trainer``.
__all__ = [
    "COLLECTIVES", "HARD_NEGATIVE_SOURCES", "KERNEL_INITS", "LR_SCHEDULES", "OPTIMIZERS", "STRATEGIES",
    "TrainProgress", "TrainResult", "TrainSettings", "TrainingError", "progress_printer", "train",
]


@dataclasses.dataclass(frozen=True)
class TrainProgress:
    """What a progress callback sees after each logged step.

    Attributes:
      step, steps: the step reached and the run's total.
      losses: {total, classification, segmentation, accuracy} of the step.
      elapsed_s: wall time of this process so far.
      patches_per_s: training throughput of this process.
      first_step: the step this process started at (after a resume).
      max_seconds: the run's time limit, if any.
    """

    step: int
    steps: int
    losses: dict
    elapsed_s: float
    patches_per_s: float
    first_step: int = 0
    max_seconds: Optional[float] = None

    @property
    def eta_s(self) -> float:
        """Seconds left at the current rate (or to the time limit, if sooner)."""
        done = max(self.step - self.first_step, 1)
        eta = (self.steps - self.step) * self.elapsed_s / done
        if self.max_seconds is not None:
            eta = min(eta, max(self.max_seconds - self.elapsed_s, 0.0))
        return eta


@dataclasses.dataclass
class TrainResult:
    """Outcome of ``train``.

    Attributes:
      step: the step reached.
      final_weights: ``workdir/final.weights.h5``.
      checkpoint: the latest checkpoint prefix.
      history: [(step, {loss name: value})] of this process's steps.
      trainer_patches_per_s: training throughput of this process.
      stopped_early: True when ``max_seconds`` ended the run.
      resumed_from: the step the run started at (0: fresh).
      samples: number of training samples (with hard negatives).
    """

    step: int
    final_weights: str
    checkpoint: Optional[str]
    history: list
    trainer_patches_per_s: float
    stopped_early: bool
    resumed_from: int
    samples: int


def _save_weights(model, path: str) -> None:
    """``model.save_weights`` to ``path``, atomically.

    HDF5 takes its own ``flock`` on the file it creates, so the ``.h5`` is
    written inside a private scratch folder (nothing else opens it) and
    renamed onto ``path``; a killed save leaves only that hidden folder.
    """
    folder = os.path.dirname(os.path.abspath(path))
    scratch = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=folder)
    try:
        tmp = os.path.join(scratch, os.path.basename(path))
        model.save_weights(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def progress_printer(stream=None) -> Callable[[TrainProgress], None]:
    """The default ``on_progress``: a ``pfascannet.progress.Progress`` line of step, losses, patches/s and ETA.

    One line per call (``log_every`` steps apart); on a terminal the line is
    redrawn in place.  ``stream``: write plain lines there instead.
    """
    reporter = Progress(label="train", unit="step", stream=stream, interval_s=0.0)

    def report(p: TrainProgress) -> None:
        if reporter.done == 0 and p.first_step:
            reporter.done = p.first_step  # resumed: earlier steps count, not in the rate
        losses = " ".join(f"{k}={v:.4f}" for k, v in p.losses.items())
        reporter.update(p.step, p.steps, extra=f"{losses} {p.patches_per_s:.1f} patches/s")

    return report


def write_scalars(writer, step: int, scalars: dict) -> None:
    """TensorBoard scalar events, without needing the tensorboard package installed.

    ``tf.summary.scalar`` lives in tensorboard; the event it writes is
    ``tf.summary.write`` with the ``scalars`` plugin's metadata, done here.
    """
    from tensorflow.core.framework import summary_pb2  # noqa: PLC0415

    metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
        data_class=summary_pb2.DATA_CLASS_SCALAR,
    )
    with writer.as_default(step=step):
        for tag, value in scalars.items():
            tf.summary.write(tag, tf.constant(float(value), tf.float32), metadata=metadata)
    writer.flush()


def _check_workdir_config(path: str, resolved: dict) -> None:
    """Refuses a workdir whose run (``config.json``'s flat ``settings``, old or new) computed something else."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        old = json.load(f).get("settings", {})
    diff = workdir_mismatch(old, resolved["settings"])
    if diff:
        raise TrainingError(
            f"{os.path.dirname(path)} holds a run with other settings {diff} (old, new); "
            "use a fresh --workdir or the same settings to resume"
        )


_PRINT = object()


def train(
    settings: TrainSettings,
    on_progress: Optional[Callable[[TrainProgress], None]] = _PRINT,
    strategy: Optional[tf.distribute.Strategy] = None,
) -> TrainResult:
    """Trains (or resumes) one run; see the module docstring.

    Args:
      settings: the run.
      on_progress: called after every ``log_every`` steps and the last
        (default: ``progress_printer()``; None: silent).
      strategy: overrides ``distribute.make_strategy(settings.strategy)``.

    Returns:
      A ``TrainResult``; the weights are in ``result.final_weights``.
    """

    s = settings
    if on_progress is _PRINT:
        on_progress = progress_printer()
    model_config = get_config(s.model.config)
    strategy = strategy or distribute.make_strategy(s.strategy, s.collective, s.collective_timeout_s)
    replicas = strategy.num_replicas_in_sync
    if s.batch_size % replicas:
        raise TrainingError(f"batch_size {s.batch_size} is not a multiple of the {replicas} replicas")
    chief = distribute.is_chief(strategy)
    workdir = os.path.abspath(s.workdir)
    os.makedirs(workdir, exist_ok=True)
    # Non-chief workers of a multi-worker run save into a scratch folder that
    # is deleted at the end (module docstring); a killed run's is cleared first.
    writedir = workdir if chief else distribute.scratch_dir(workdir, strategy)
    if not chief:
        shutil.rmtree(writedir, ignore_errors=True)
        os.makedirs(writedir)
    run = _Run(s, strategy, model_config, replicas, chief, workdir, writedir)
    try:
        return _train(run, on_progress)
    finally:
        if not chief:
            shutil.rmtree(writedir, ignore_errors=True)


@dataclasses.dataclass
class _Run:
    """Where and how one process trains: settings, strategy, and the folders it reads and writes."""

    s: TrainSettings
    strategy: tf.distribute.Strategy
    model_config: object
    replicas: int
    chief: bool
    workdir: str
    writedir: str


def _resolved_config(run: _Run) -> dict:
    """What ``config.json`` records: the settings (flat, and nested), the model, the machine."""
    return {
        "settings": run.s.flat(),
        "nested_settings": run.s.to_dict(),
        "model": run.model_config.to_dict(),
        "replicas": run.replicas,
        "devices": list(getattr(run.strategy.extended, "worker_devices", [])),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "python": platform.python_version(),
        "paper_defaults": dict(PAPER_DEFAULTS),
    }


@dataclasses.dataclass
class _Data:
    """The run's patch samples and the readers that stream them."""

    sampler: Optional[sampling.PatchSampler]
    reader: Optional[pipeline.PatchReader]
    samples: list


def _prepare_data(run: _Run) -> _Data:
    """Samples the training slides once (``samples.csv``; read back on a resume) and opens a reader."""
    s = run.s
    if s.tfrecords is not None:
        if s.mining.at:
            raise TrainingError("hard-negative mining reads slides; it cannot be combined with --tfrecords")
        return _Data(None, None, [])
    # Patches are read at the pixel size the model is built for, from every slide whatever its own.
    sampler = sampling.PatchSampler(sampling.load_cohort(s.data, s.split), s.sampler, target_mpp=TRAINING_MPP)
    samples_path = RunFolder(run.workdir).samples_csv
    if os.path.exists(samples_path):
        samples = sampling.load_samples(samples_path)
    else:
        samples = sampler.sample(s.seed)
        if run.chief:
            sampling.save_samples(samples_path, samples)
    return _Data(sampler, pipeline.PatchReader(sampler), samples)


def _make_dataset(run: _Run, data: _Data, start_step: int, extra: list):
    """The distributed input stream from element ``start_step * batch_size`` on, with ``extra`` negatives."""
    s = run.s
    start = start_step * s.batch_size
    parallel = tf.data.AUTOTUNE if s.num_parallel_calls < 0 else s.num_parallel_calls
    if s.tfrecords is not None:
        ds = pipeline.tfrecord_dataset(
            s.tfrecords, batch_size=s.batch_size, seed=s.seed, augment_config=s.augmentation,
            start_index=start, num_parallel_calls=parallel,
        )
    else:
        stream = (pipeline.SampleStream(data.sampler, s.seed, extra=extra, first=data.samples)
                  if s.stream else data.samples + extra)
        ds = pipeline.slide_dataset(
            stream, data.reader, batch_size=s.batch_size, seed=s.seed, augment_config=s.augmentation,
            start_index=start, num_parallel_calls=parallel,
        )
    # ``ds`` yields global batches; under several workers the strategy
    # rebatches each into one slice per replica and DATA sharding hands
    # each worker its slices, so the global batch is the one-worker one.
    # (Every worker reads the whole stream and keeps its part: simple and
    # exact; reading only one's own elements would need an index-level split.)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return run.strategy.experimental_distribute_dataset(ds.with_options(options))


@dataclasses.dataclass
class _State:
    """Model, optimiser and step counter, with the checkpoint that saves and restores them."""

    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    step_var: tf.Variable
    checkpoint: tf.train.Checkpoint
    manager: tf.train.CheckpointManager
    start_step: int


def _build_state(run: _Run) -> _State:
    """Builds model and optimiser under the strategy, restores the latest checkpoint, or initialises a fresh run."""

    s = run.s
    keras.utils.set_random_seed(s.seed)
    with run.strategy.scope():
        with dtype_policy(s.model.precision):
            model = build_training_model(run.model_config)
        optimizer = make_optimizer(s)
        if s.model.precision == "float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)  # float16 gradients underflow otherwise
        # Built here, not lazily inside tf.function: slot variables must be
        # created under the strategy's scope, outside the replica context.
        optimizer.build(model.trainable_variables)
        step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step_var)
    manager = tf.train.CheckpointManager(checkpoint, RunFolder(run.writedir).checkpoints,
                                         max_to_keep=s.keep_checkpoints)
    # Every worker restores the chief's checkpoint.
    latest = tf.train.latest_checkpoint(RunFolder(run.workdir).checkpoints)
    if latest:
        checkpoint.restore(latest).assert_existing_objects_matched()
    start_step = int(step_var.numpy())
    if start_step == 0 and s.model.kernel_init in ("he_normal", "imagenet"):
        he_initialise(model, s.seed)
    if start_step == 0 and s.model.kernel_init == "imagenet":

        try:
            load_imagenet_trunk(model, s.model.imagenet_weights)
        except ImagenetInitError as e:
            raise TrainingError(str(e)) from None
    return _State(model, optimizer, step_var, checkpoint, manager, start_step)


def _make_train_step(run: _Run, state: _State):
    """One synchronous step over every replica: eq. (3)'s loss, its gradient, the update; returns mean losses."""

    s, strategy, model, optimizer = run.s, run.strategy, state.model, state.optimizer
    precision = s.model.precision
    loss_fn = SynergisticLoss(gamma=s.loss.gamma, lam=s.loss.lambda_seg, synergistic=s.loss.synergistic)
    variables = model.trainable_variables

    def replica_step(image, targets):
        with tf.GradientTape() as tape:
            outputs = model(image, training=True)
            if precision != "float32":  # the losses' logs and means in float32
                outputs = {k: tf.cast(v, tf.float32) for k, v in outputs.items()}
            seg = decoder_targets(targets["mask"]) if s.loss.synergistic else None
            losses = loss_fn(targets["label"], seg, outputs)
            # Losses are per-replica means; the optimiser sums gradients over
            # replicas, so divide to get the gradient of the global mean.
            scaled = losses["total"] / run.replicas
            if precision == "float16":
                scaled = optimizer.scale_loss(scaled)  # apply_gradients unscales
        grads = tape.gradient(scaled, variables)
        # Without synergistic learning the decoder gets no gradient at all.
        optimizer.apply_gradients([(g, v) for g, v in zip(grads, variables) if g is not None])
        predicted = tf.cast(tf.argmax(outputs["classifier"], -1), tf.int32)
        losses = dict(losses)
        losses["accuracy"] = tf.reduce_mean(tf.cast(tf.equal(predicted, targets["label"]), tf.float32))
        return losses

    @tf.function
    def train_step(batch):
        image, targets = batch
        per_replica = strategy.run(replica_step, args=(image, targets))
        state.step_var.assign_add(1)
        return {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None) for k, v in per_replica.items()}

    return train_step


def _train(run: _Run, on_progress) -> TrainResult:
    """Config check, data, state, then the loop: steps, hard-negative rounds, logs, checkpoints."""
    s, workdir = run.s, run.workdir
    resolved = _resolved_config(run)
    config_path = RunFolder(workdir).config_json
    _check_workdir_config(config_path, resolved)
    data = _prepare_data(run)
    if run.chief:
        io_utils.write_json(config_path, resolved)
    state = _build_state(run)
    start_step = state.start_step

    # Rounds already run when this process starts are read back, not mined again.
    mining_steps = s.mining_steps()
    hard: list = []
    for round_step in mining_steps:
        if round_step < start_step:
            hard = mining.join_rounds(hard, mining.load_round(workdir, s, round_step))

    train_step = _make_train_step(run, state)
    writer = tf.summary.create_file_writer(RunFolder(run.writedir).tensorboard)
    history: list = []
    t0 = time.perf_counter()
    step = start_step
    stopped_early = False
    train_time = 0.0
    iterator = iter(_make_dataset(run, data, step, hard)) if step < s.steps else None
    multiworker = isinstance(run.strategy, tf.distribute.MultiWorkerMirroredStrategy)

    def save(step: int) -> None:
        try:
            state.manager.save(checkpoint_number=step)
        except distribute.PEER_ERRORS as exc:
            if not multiworker:
                raise
            distribute.peer_lost(exc, run.strategy, step, workdir)

    while step < s.steps:
        if step in mining_steps:
            found = mining.load_round(workdir, s, step)
            if found is None:
                found = mining.run_round(s, data.sampler, data.reader, state.model, run.model_config, run.chief, workdir, step)
            hard = mining.join_rounds(hard, found)
            iterator = iter(_make_dataset(run, data, step, hard))
        batch = next(iterator)
        ts = time.perf_counter()
        try:
            losses = {k: float(v) for k, v in train_step(batch).items()}
        except distribute.PEER_ERRORS as exc:
            if not multiworker:
                raise
            distribute.peer_lost(exc, run.strategy, step, workdir)
        train_time += time.perf_counter() - ts
        step += 1
        history.append((step, losses))
        if not np.isfinite(losses["total"]):
            raise TrainingError(f"loss became {losses['total']} at step {step}; lower --learning_rate")
        last = step == s.steps
        over_time = s.max_seconds is not None and time.perf_counter() - t0 > s.max_seconds
        if step % s.log_every == 0 or last or over_time:
            rate = (step - start_step) * s.batch_size / max(train_time, 1e-9)
            scalars = {f"train/{k}": v for k, v in losses.items()}
            scalars.update({"train/learning_rate": float(np.asarray(state.optimizer.learning_rate)),
                            "train/patches_per_s": rate})
            write_scalars(writer, step, scalars)
            if on_progress is not None:
                elapsed = time.perf_counter() - t0
                on_progress(TrainProgress(step, s.steps, losses, elapsed, rate, start_step, s.max_seconds))
        if step % s.checkpoint_every == 0 or last or over_time:
            save(step)
        if over_time and not last:
            stopped_early = True
            break

    final = RunFolder(workdir).final_weights
    if run.chief:
        _save_weights(state.model, final)
    # Drop the input pipeline first: its prefetch threads may still be reading
    # (close() also waits for reads in flight, and refuses later ones).
    iterator = None  # noqa: F841
    if data.reader is not None:
        data.reader.close()
    return TrainResult(
        step=step,
        final_weights=final,
        checkpoint=tf.train.latest_checkpoint(RunFolder(workdir).checkpoints),
        history=history,
        trainer_patches_per_s=(step - start_step) * s.batch_size / max(train_time, 1e-9),
        stopped_early=stopped_early,
        resumed_from=start_step,
        samples=len(data.samples) + len(hard),
    )


