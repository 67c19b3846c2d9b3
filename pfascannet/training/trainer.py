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
from pfascannet.data.augment import AugmentConfig
from pfascannet.errors import PfaError

STRATEGIES = ("mirrored", "multiworker")
COLLECTIVES = ("auto", "ring", "nccl")
"""Multi-worker all-reduce: ``ring`` (gRPC, CPUs), ``nccl`` (GPUs), ``auto`` (NCCL where every device is a GPU)."""
KERNEL_INITS = ("he_normal", "model", "imagenet")
OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("constant", "cosine")
HARD_NEGATIVE_SOURCES = ("slides", "patches")

# Settings that change what a run computes: a resumed run must match them.
_RUN_DEFINING = (
    "data", "config", "batch_size", "learning_rate", "momentum", "lambda_seg", "gamma", "synergistic",
    "seed", "split", "random_per_class", "boundary", "itc", "augment", "tfrecords", "hard_negative_at", "kernel_init",
    "optimizer", "warmup_steps", "stream", "imagenet_weights", "precision", "hard_negative_every",
    "hard_negative_source", "hard_negative_threshold", "hard_negative_max", "hard_negative_candidates", "lr_schedule",
)


# What runs written before a setting existed did, so that they still resume.
_LEGACY_DEFAULTS = {"optimizer": "sgd", "warmup_steps": 0, "stream": False, "imagenet_weights": "imagenet",
                    "precision": "float32", "hard_negative_every": 0, "hard_negative_source": "patches",
                    "lr_schedule": "constant"}


class TrainingError(PfaError, ValueError):
    """A training setting or work directory that cannot be used."""


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """Everything one training run depends on (validated on construction).

    Attributes:
      data: cohort folder (``images/``, ``annotations/``, ``slides.csv``).
      workdir: checkpoints, logs, resolved config and final weights.
      config: model config name (``tiny`` or ``paper``).
      steps: total optimisation steps (a resumed run continues to this).
      batch_size: global batch (split over the replicas; a multiple of them).
      learning_rate, momentum: SGD (paper: 1e-4, 0.9).
      lambda_seg: lambda of eq. (3) (paper: 0.5).
      gamma: truncation point of eq. (2) (paper: 0.04).
      synergistic: False is the paper's "w/o SL" ablation (Lcla only).
      seed: sampling, initialisation, shuffling and augmentation.
      split: slides of ``slides.csv`` to train on.
      random_per_class, boundary, itc: sampler counts (``SamplerConfig``).
      augment: Sec. 2.4 augmentation on (False: raw patches).
      tfrecords: glob of TFRecord shards to read instead of the slides.
      checkpoint_every: steps between checkpoints.
      keep_checkpoints: checkpoints kept.
      log_every: steps between log lines / TensorBoard points.
      hard_negative_at: step of the first hard-negative round (0: never).
      hard_negative_every: steps between later rounds (0: one round); rounds
        run at ``hard_negative_at + k * hard_negative_every`` below ``steps``,
        and each round's negatives join the earlier rounds'.
      hard_negative_source: ``slides`` (``training.mining``: the current
        weights scan every training slide densely, and the map's maxima at or
        above ``hard_negative_threshold`` in normal tissue become negatives)
        or ``patches`` (``sampling.HardNegativeMiner``: the classifier scores
        ``hard_negative_candidates`` random normal patches).
      hard_negative_candidates, hard_negative_threshold, hard_negative_max:
        candidates scored (``patches`` only), the false-positive probability,
        and the most negatives one round adds.
      max_seconds: stop early (checkpoint + final weights) after this long.
      strategy: ``mirrored`` (one machine) or ``multiworker`` (TF_CONFIG).
      collective: multi-worker all-reduce implementation (``COLLECTIVES``).
      collective_timeout_s: multi-worker only: a collective that waits longer
        for a peer raises (None: rely on the coordination service's
        heartbeats alone).  TensorFlow spends a thread per collective on it,
        so leave it None unless a hang must be bounded (tests do).
      num_parallel_calls: parallel slide reads (-1: tf.data AUTOTUNE).
      kernel_init: ``he_normal`` redraws every convolution kernel with He
        initialisation before the first step; ``model`` keeps the model's own
        (Glorot) initialisation; ``imagenet`` starts the trunk from Keras'
        ImageNet VGG16 (``imagenet_weights``) as the paper does, which needs
        ``config="paper_imagenet"`` (the paper's widths with the caffe input
        convention those weights expect) -- the decoder and head stay He.
        From scratch, 13 ReLU convolutions without normalisation lose half
        their signal variance per layer under Glorot, and the patch output
        barely moves from 0.5 (He et al., ICCV 2015).
      imagenet_weights: ``"imagenet"`` (Keras downloads the file on first
        use) or a path to a VGG16-without-top weights file.
      optimizer: ``sgd`` (the paper's, with ``momentum``; meant for
        fine-tuning from ImageNet at 1e-4) or ``adam`` (our choice for
        from-scratch runs, where the paper is silent: measured here, SGD at
        the 2e-3 a from-scratch run needs takes steps large enough in its
        first few iterations to switch off most ReLUs of the narrow first
        blocks -- block1_conv2 of ``tiny`` went from 29 % to 3 % active in 20
        steps and the output became constant -- while Adam's steps are bounded
        by the learning rate per weight; 1e-3 is the usual rate).
      warmup_steps: the learning rate rises linearly from lr/warmup_steps
        to lr over this many steps (0: none); protects the same first steps.
      lr_schedule: after the warm-up, ``constant`` (the paper is silent) or
        ``cosine`` (half a cosine from the rate to 0 at ``steps``; our choice
        for from-scratch Adam runs: at a constant 1e-3 the demo recipe's loss
        rose again after its hard-negative round, 0.13 to 0.61 in 125 steps).
      stream: fresh seeded patch positions every epoch
        (``pipeline.SampleStream``) rather than one draw replayed; epoch 0 is
        ``samples.csv``.
      precision: ``float32``, or ``bfloat16`` / ``float16`` Keras mixed
        precision (``model.precision``; weights stay float32, the losses are
        computed on float32 outputs); ``float16`` scales the loss
        dynamically (``keras.optimizers.LossScaleOptimizer``).
    """

    data: str
    workdir: str
    config: str = "tiny"
    steps: int = 1000
    batch_size: int = 8
    learning_rate: float = 1e-4
    momentum: float = 0.9
    lambda_seg: float = 0.5
    gamma: float = 0.04
    synergistic: bool = True
    seed: int = 0
    split: str = "train"
    random_per_class: int = 64
    boundary: int = 32
    itc: int = 16
    augment: bool = True
    tfrecords: Optional[str] = None
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    log_every: int = 10
    hard_negative_at: int = 0
    hard_negative_candidates: int = 256
    hard_negative_threshold: float = 0.5
    hard_negative_max: int = 64
    hard_negative_every: int = 0
    hard_negative_source: str = "slides"
    max_seconds: Optional[float] = None
    strategy: str = "mirrored"
    collective: str = "auto"
    collective_timeout_s: Optional[float] = None
    num_parallel_calls: int = -1
    kernel_init: str = "he_normal"
    imagenet_weights: str = "imagenet"
    optimizer: str = "sgd"
    warmup_steps: int = 0
    lr_schedule: str = "constant"
    stream: bool = True
    precision: str = "float32"

    def __post_init__(self):
        def pos_int(name, minimum=1):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise TrainingError(f"{name} must be an integer >= {minimum}, got {v!r}")

        for name in ("steps", "batch_size", "checkpoint_every", "keep_checkpoints", "log_every"):
            pos_int(name)
        for name in ("random_per_class", "boundary", "itc", "hard_negative_at", "hard_negative_candidates",
                     "hard_negative_max", "warmup_steps", "hard_negative_every"):
            pos_int(name, 0)
        if not self.learning_rate > 0:
            raise TrainingError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if not 0 <= self.momentum < 1:
            raise TrainingError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.kernel_init not in KERNEL_INITS:
            raise TrainingError(f"kernel_init must be one of {KERNEL_INITS}, got {self.kernel_init!r}")
        if self.optimizer not in OPTIMIZERS:
            raise TrainingError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise TrainingError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.hard_negative_source not in HARD_NEGATIVE_SOURCES:
            raise TrainingError(
                f"hard_negative_source must be one of {HARD_NEGATIVE_SOURCES}, got {self.hard_negative_source!r}"
            )
        if not 0.0 <= self.hard_negative_threshold <= 1.0:
            raise TrainingError(f"hard_negative_threshold must be in [0, 1], got {self.hard_negative_threshold!r}")
        from pfascannet.model.precision import PRECISIONS  # noqa: PLC0415

        if self.precision not in PRECISIONS:
            raise TrainingError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.kernel_init == "imagenet":
            if self.config != "paper_imagenet":
                raise TrainingError(
                    f"kernel_init 'imagenet' needs config 'paper_imagenet' (the paper's widths with the input "
                    f"convention ImageNet VGG16 expects), got config {self.config!r}"
                )
            if self.imagenet_weights != "imagenet" and not os.path.isfile(self.imagenet_weights):
                raise TrainingError(f"imagenet_weights {self.imagenet_weights!r}: no such file (or 'imagenet')")
        if self.strategy not in STRATEGIES:
            raise TrainingError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.collective not in COLLECTIVES:
            raise TrainingError(f"collective must be one of {COLLECTIVES}, got {self.collective!r}")
        if self.collective_timeout_s is not None and not self.collective_timeout_s > 0:
            raise TrainingError(f"collective_timeout_s must be > 0, got {self.collective_timeout_s!r}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise TrainingError(f"max_seconds must be > 0, got {self.max_seconds!r}")
        if self.tfrecords is None and not os.path.isdir(self.data):
            raise TrainingError(f"--data {self.data!r} is not a cohort folder")
        # Loss settings are validated by the loss itself (eq. (2) range of gamma).
        from pfascannet.model.losses import SynergisticLoss  # noqa: PLC0415

        SynergisticLoss(gamma=self.gamma, lam=self.lambda_seg, synergistic=self.synergistic)

    def mining_steps(self) -> list[int]:
        """Steps at which a hard-negative round runs (before that step's batch)."""
        if not self.hard_negative_at:
            return []
        if not self.hard_negative_every:
            return [self.hard_negative_at] if self.hard_negative_at < self.steps else []
        return list(range(self.hard_negative_at, self.steps, self.hard_negative_every))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


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


def _is_chief(strategy: tf.distribute.Strategy) -> bool:
    """The task that writes: a ``chief`` task if the cluster has one, else worker 0 (TF's convention)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    if resolver.task_type is None:
        return True
    if "chief" in resolver.cluster_spec().as_dict():
        return resolver.task_type == "chief"
    return resolver.task_type == "worker" and resolver.task_id == 0


def _task_name(strategy: tf.distribute.Strategy) -> str:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return "this worker"
    return f"{resolver.task_type} {resolver.task_id}"


def _scratch_dir(workdir: str, strategy: tf.distribute.Strategy) -> str:
    """A non-chief worker's write-only folder (TF's multi-worker guide: write, then delete)."""
    resolver = strategy.cluster_resolver
    return os.path.join(workdir, f".{resolver.task_type}-{resolver.task_id}.tmp")


# A peer that died or became unreachable surfaces as one of these from the
# next collective (all-reduce, broadcast, or the coordination service).
_PEER_ERRORS = (
    tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError,
    tf.errors.AbortedError, tf.errors.InternalError,
)


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


def print_progress(p: TrainProgress) -> None:
    """Default progress line: step, losses, throughput, ETA."""
    parts = " ".join(f"{k}={v:.4f}" for k, v in p.losses.items())
    print(f"step {p.step}/{p.steps} {parts} {p.patches_per_s:.1f} patches/s eta {p.eta_s / 60:.1f} min", flush=True)


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
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        old = json.load(f).get("settings", {})
    new = resolved["settings"]
    # Without mining on either side, how mining would have run does not matter.
    no_mining = not old.get("hard_negative_at") and not new.get("hard_negative_at")
    diff = {}
    for k in _RUN_DEFINING:
        if no_mining and k.startswith("hard_negative_"):
            continue
        before = old.get(k, _LEGACY_DEFAULTS.get(k))
        if before != new[k]:
            diff[k] = (before, new[k])
    if diff:
        raise TrainingError(
            f"{os.path.dirname(path)} holds a run with other settings {diff} (old, new); "
            "use a fresh --workdir or the same settings to resume"
        )


def train(
    settings: TrainSettings,
    on_progress: Optional[Callable[[TrainProgress], None]] = print_progress,
    strategy: Optional[tf.distribute.Strategy] = None,
) -> TrainResult:
    """Trains (or resumes) one run; see the module docstring.

    Args:
      settings: the run.
      on_progress: called after every ``log_every`` steps and the last (None: silent).
      strategy: overrides ``make_strategy(settings.strategy)``.

    Returns:
      A ``TrainResult``; the weights are in ``result.final_weights``.
    """
    from pfascannet.model.config import get_config  # noqa: PLC0415

    s = settings
    model_config = get_config(s.config)
    strategy = strategy or make_strategy(s.strategy, s.collective, s.collective_timeout_s)
    replicas = strategy.num_replicas_in_sync
    if s.batch_size % replicas:
        raise TrainingError(f"batch_size {s.batch_size} is not a multiple of the {replicas} replicas")
    chief = _is_chief(strategy)
    workdir = os.path.abspath(s.workdir)
    os.makedirs(workdir, exist_ok=True)
    # Non-chief workers of a multi-worker run save into a scratch folder that
    # is deleted at the end (module docstring); a killed run's is cleared first.
    writedir = workdir if chief else _scratch_dir(workdir, strategy)
    if not chief:
        shutil.rmtree(writedir, ignore_errors=True)
        os.makedirs(writedir)
    try:
        return _train(s, on_progress, strategy, model_config, replicas, chief, workdir, writedir)
    finally:
        if not chief:
            shutil.rmtree(writedir, ignore_errors=True)


def _train(s, on_progress, strategy, model_config, replicas, chief, workdir, writedir) -> TrainResult:
    import keras  # noqa: PLC0415

    from pfascannet.model.decoder import decoder_targets  # noqa: PLC0415
    from pfascannet.model.detector import build_training_model  # noqa: PLC0415
    from pfascannet.model.losses import SynergisticLoss  # noqa: PLC0415
    from pfascannet.model.precision import dtype_policy  # noqa: PLC0415

    resolved = {
        "settings": s.to_dict(),
        "model": model_config.to_dict(),
        "replicas": replicas,
        "devices": list(getattr(strategy.extended, "worker_devices", [])),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "python": platform.python_version(),
        "paper_defaults": {"learning_rate": 1e-4, "momentum": 0.9, "lambda_seg": 0.5, "gamma": 0.04},
    }
    config_path = os.path.join(workdir, "config.json")
    _check_workdir_config(config_path, resolved)

    # -- data ---------------------------------------------------------------
    sampler = reader = None
    samples: list[sampling.PatchSample] = []
    if s.tfrecords is None:
        slides = sampling.load_cohort(s.data, s.split)
        sampler = sampling.PatchSampler(
            slides, sampling.SamplerConfig(random_per_class=s.random_per_class, boundary=s.boundary, itc=s.itc)
        )
        samples_path = os.path.join(workdir, "samples.csv")
        if os.path.exists(samples_path):
            samples = sampling.load_samples(samples_path)
        else:
            samples = sampler.sample(s.seed)
            if chief:
                sampling.save_samples(samples_path, samples)
        reader = pipeline.PatchReader(sampler)
    elif s.hard_negative_at:
        raise TrainingError("hard-negative mining reads slides; it cannot be combined with --tfrecords")
    if chief:
        io_utils.write_json(config_path, resolved)

    augment_config = AugmentConfig() if s.augment else None
    parallel = tf.data.AUTOTUNE if s.num_parallel_calls < 0 else s.num_parallel_calls

    def make_dataset(start_step: int, extra: list) -> tf.data.Dataset:
        start = start_step * s.batch_size
        if s.tfrecords is not None:
            ds = pipeline.tfrecord_dataset(
                s.tfrecords, batch_size=s.batch_size, seed=s.seed, augment_config=augment_config,
                start_index=start, num_parallel_calls=parallel,
            )
        else:
            stream = pipeline.SampleStream(sampler, s.seed, extra=extra, first=samples) if s.stream else samples + extra
            ds = pipeline.slide_dataset(
                stream, reader, batch_size=s.batch_size, seed=s.seed, augment_config=augment_config,
                start_index=start, num_parallel_calls=parallel,
            )
        # ``ds`` yields global batches; under several workers the strategy
        # rebatches each into one slice per replica and DATA sharding hands
        # each worker its slices, so the global batch is the one-worker one.
        # (Every worker reads the whole stream and keeps its part: simple and
        # exact; reading only one's own elements would need an index-level split.)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        return strategy.experimental_distribute_dataset(ds.with_options(options))

    # -- model, optimiser, checkpoint ----------------------------------------
    keras.utils.set_random_seed(s.seed)
    with strategy.scope():
        with dtype_policy(s.precision):
            model = build_training_model(model_config)
        optimizer = make_optimizer(s)
        if s.precision == "float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)  # float16 gradients underflow otherwise
        # Built here, not lazily inside tf.function: slot variables must be
        # created under the strategy's scope, outside the replica context.
        optimizer.build(model.trainable_variables)
        step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step_var)
    manager = tf.train.CheckpointManager(checkpoint, os.path.join(writedir, "checkpoints"), max_to_keep=s.keep_checkpoints)
    # Every worker restores the chief's checkpoint.
    latest = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
    if latest:
        checkpoint.restore(latest).assert_existing_objects_matched()
    start_step = int(step_var.numpy())
    if start_step == 0 and s.kernel_init in ("he_normal", "imagenet"):
        he_initialise(model, s.seed)
    if start_step == 0 and s.kernel_init == "imagenet":
        from pfascannet.model.imagenet import ImagenetInitError, load_imagenet_trunk  # noqa: PLC0415

        try:
            load_imagenet_trunk(model, s.imagenet_weights)
        except ImagenetInitError as e:
            raise TrainingError(str(e)) from None

    # Rounds already run when this process starts are read back, not mined again.
    hard: list = []
    for round_step in s.mining_steps():
        if round_step < start_step:
            hard = _join(hard, _load_round(workdir, s, round_step))

    loss_fn = SynergisticLoss(gamma=s.gamma, lam=s.lambda_seg, synergistic=s.synergistic)
    variables = model.trainable_variables

    def replica_step(image, targets):
        with tf.GradientTape() as tape:
            outputs = model(image, training=True)
            if s.precision != "float32":  # the losses' logs and means in float32
                outputs = {k: tf.cast(v, tf.float32) for k, v in outputs.items()}
            seg = decoder_targets(targets["mask"]) if s.synergistic else None
            losses = loss_fn(targets["label"], seg, outputs)
            # Losses are per-replica means; the optimiser sums gradients over
            # replicas, so divide to get the gradient of the global mean.
            scaled = losses["total"] / replicas
            if s.precision == "float16":
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
        step_var.assign_add(1)
        return {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None) for k, v in per_replica.items()}

    writer = tf.summary.create_file_writer(os.path.join(writedir, "tensorboard"))
    history: list = []
    t0 = time.perf_counter()
    step = start_step
    stopped_early = False
    train_time = 0.0
    iterator = iter(make_dataset(step, hard)) if step < s.steps else None

    multiworker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)

    while step < s.steps:
        if step in s.mining_steps():
            found = _load_round(workdir, s, step)
            if found is None:
                found = _mine(s, sampler, reader, model, model_config, chief, workdir, step)
            hard = _join(hard, found)
            iterator = iter(make_dataset(step, hard))
        batch = next(iterator)
        ts = time.perf_counter()
        try:
            losses = {k: float(v) for k, v in train_step(batch).items()}
        except _PEER_ERRORS as exc:
            if not multiworker:
                raise
            _peer_lost(exc, strategy, step, workdir)
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
            scalars.update({"train/learning_rate": float(np.asarray(optimizer.learning_rate)), "train/patches_per_s": rate})
            write_scalars(writer, step, scalars)
            if on_progress is not None:
                elapsed = time.perf_counter() - t0
                on_progress(TrainProgress(step, s.steps, losses, elapsed, rate, start_step, s.max_seconds))
        if step % s.checkpoint_every == 0 or last or over_time:
            try:
                manager.save(checkpoint_number=step)
            except _PEER_ERRORS as exc:
                if not multiworker:
                    raise
                _peer_lost(exc, strategy, step, workdir)
        if over_time and not last:
            stopped_early = True
            break

    final = os.path.join(workdir, "final.weights.h5")
    if chief:
        _save_weights(model, final)
    if reader is not None:
        reader.close()
    return TrainResult(
        step=step,
        final_weights=final,
        checkpoint=tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints")),
        history=history,
        trainer_patches_per_s=(step - start_step) * s.batch_size / max(train_time, 1e-9),
        stopped_early=stopped_early,
        resumed_from=start_step,
        samples=len(samples) + len(hard),
    )


def _peer_lost(exc: Exception, strategy, step: int, workdir: str):
    """Turns a failed collective into one clear error that says how to resume."""
    latest = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
    where = f"the last checkpoint is {os.path.basename(latest)}" if latest else "no checkpoint was written yet"
    detail = _cause(str(getattr(exc, "message", exc)))
    raise TrainingError(
        f"{_task_name(strategy)}: lost another worker during step {step + 1} "
        f"({type(exc).__name__}: {detail}); {where}: restart every worker with the same command to resume"
    ) from exc


def _cause(message: str) -> str:
    """The line of a TensorFlow error that says what happened (not its graph traceback)."""
    skip = ("Graph execution error", "Detected at node", "File ", "The error could be", "[[", ":UNKNOWN:")
    for line in message.splitlines():
        line = line.strip()
        if line and not line.startswith(skip) and not line.startswith("defined at"):
            return line[:240]
    return " ".join(message.split())[:240]


def _round_path(workdir: str, s: TrainSettings, step: int) -> str:
    # The first round keeps the name runs made before rounds existed gave it.
    name = "hard_negatives.csv" if step == s.hard_negative_at else f"hard_negatives_step{step}.csv"
    return os.path.join(workdir, name)


def _load_round(workdir: str, s: TrainSettings, step: int) -> Optional[list]:
    """The negatives a finished round found (None: the round has not run)."""
    path = _round_path(workdir, s, step)
    return sampling.load_samples(path) if os.path.exists(path) else None


def _join(hard: list, found: Optional[list]) -> list:
    """Earlier rounds' negatives plus a round's new ones (a place found twice counts once)."""
    seen = {(h.slide_id, h.x, h.y) for h in hard}
    return hard + [h for h in found or [] if (h.slide_id, h.x, h.y) not in seen]


def _mine(s: TrainSettings, sampler, reader, model, model_config, chief: bool, workdir: str, step: int) -> list:
    """One hard-negative round with the current weights (Sec. 1; ``hard_negative_source``)."""
    t0 = time.perf_counter()
    if s.hard_negative_source == "slides":
        from pfascannet.training.mining import mine_from_slides  # noqa: PLC0415

        found = mine_from_slides(model, model_config, sampler, os.path.join(workdir, "mining", f"step_{step}"),
                                 threshold=s.hard_negative_threshold, max_keep=s.hard_negative_max)
        what = f"{len(sampler.slides)} training slides scanned"
    else:
        miner = sampling.HardNegativeMiner(
            candidates=s.hard_negative_candidates, threshold=s.hard_negative_threshold, max_keep=s.hard_negative_max,
            batch_size=max(1, min(8, s.batch_size)),
        )
        seed = s.seed + 1 + s.mining_steps().index(step)
        found = miner(sampler, sampling.classifier_predict_fn(model), reader.read_patch, seed=seed)
        what = f"{s.hard_negative_candidates} normal patches scored"
    if chief:
        sampling.save_samples(_round_path(workdir, s, step), found)
    print(f"hard-negative round at step {step}: {len(found)} false positives >= {s.hard_negative_threshold:g} "
          f"({what}, {time.perf_counter() - t0:.0f} s)", flush=True)
    return found


class WarmUp(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up, then constant or half a cosine down to 0.

    ``learning_rate * min(1, (i + 1) / warmup_steps)`` for iteration ``i``
    (no ramp when ``warmup_steps`` is 0); with ``decay_steps`` > 0 that is
    multiplied by ``(1 + cos(pi * t)) / 2``, ``t = (i - warmup_steps) /
    (decay_steps - warmup_steps)`` clipped to [0, 1], so the rate reaches 0 at
    iteration ``decay_steps``.
    """

    def __init__(self, learning_rate: float, warmup_steps: int, decay_steps: int = 0):
        self.learning_rate = float(learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.decay_steps = int(decay_steps)

    def __call__(self, step):
        ops = keras.ops
        i = ops.cast(step, "float32")
        rate = ops.convert_to_tensor(self.learning_rate, "float32")
        if self.warmup_steps:
            rate = rate * ops.minimum(1.0, (i + 1.0) / float(self.warmup_steps))
        if self.decay_steps:
            span = float(max(self.decay_steps - self.warmup_steps, 1))
            t = ops.clip((i - float(self.warmup_steps)) / span, 0.0, 1.0)
            rate = rate * 0.5 * (1.0 + ops.cos(np.pi * t))
        return rate

    def get_config(self) -> dict:
        return {"learning_rate": self.learning_rate, "warmup_steps": self.warmup_steps,
                "decay_steps": self.decay_steps}


def scratch_recipe(steps: int, hard_negative_rounds: int = 2) -> dict:
    """TrainSettings fields of the from-scratch recipe, for a run of ``steps`` steps.

    Where the paper is silent (it fine-tunes ImageNet VGG16 with SGD 1e-4) this
    is our choice, measured in BENCHMARKS.md "A detector that detects": Adam at
    1e-3 after a 20-step warm-up (a tenth of the run if shorter), cosine decay
    to 0 at ``steps``, and ``hard_negative_rounds`` hard-negative rounds from
    whole-slide maps of the training slides, evenly spaced (two rounds: at 1/3
    and 2/3 of the run), each adding at most 64 negatives at probability >= 0.5.
    Sampler counts are the demo weights' (256 random per class, 128 boundary,
    64 ITC per epoch, fresh positions every epoch).  The demo's ``--train``,
    ``experiments/table1.py`` and ``experiments/bench_training.py`` use it;
    ``experiments/train.py`` takes the same values as flags (README).
    """
    if steps < 1 or hard_negative_rounds < 0:
        raise TrainingError(f"scratch_recipe needs steps >= 1 and rounds >= 0, got {steps}, {hard_negative_rounds}")
    spacing = steps // (hard_negative_rounds + 1)
    return dict(steps=steps, optimizer="adam", learning_rate=1e-3, warmup_steps=max(1, min(20, steps // 10)),
                lr_schedule="cosine", random_per_class=256, boundary=128, itc=64,
                hard_negative_at=spacing if hard_negative_rounds else 0,
                hard_negative_every=spacing if hard_negative_rounds > 1 else 0,
                hard_negative_source="slides", hard_negative_threshold=0.5, hard_negative_max=64)


def make_optimizer(s: TrainSettings):
    """The run's optimiser: SGD with momentum (paper) or Adam, with optional warm-up and cosine decay.

    The warm-up reads the optimiser's own iteration count, which the
    checkpoint restores, so a resumed run continues on the same schedule.
    """

    lr = s.learning_rate
    if s.warmup_steps or s.lr_schedule == "cosine":
        lr = WarmUp(s.learning_rate, s.warmup_steps, s.steps if s.lr_schedule == "cosine" else 0)
    if s.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=lr)
    return keras.optimizers.SGD(learning_rate=lr, momentum=s.momentum)


def he_initialise(model, seed: int) -> int:
    """Redraws every Conv2D/Conv2DTranspose kernel with He-normal (seeded); returns how many."""
    import keras  # noqa: PLC0415

    n = 0
    for i, layer in enumerate(model.layers):
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose)):
            init = keras.initializers.HeNormal(seed=seed * 1000 + i)
            layer.kernel.assign(init(tuple(layer.kernel.shape)))
            n += 1
    return n
