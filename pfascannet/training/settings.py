"""Settings of one training run, each declared once (``pfascannet.settings``).

``TrainSettings`` nests one dataclass per part of the method: the model
(``ModelSettings``), the patch sampler (``data.sampling.SamplerSettings``, Sec. 2.4 Fig. 1),
the augmentation (``data.augment_settings.AugmentSettings``, Sec. 2.4; None: off), the
loss (``LossSettings``, eqs. (2)-(3)), the optimiser (``OptimiserSettings``)
and hard-negative mining (``MiningSettings``); the run's own fields (data,
workdir, steps, batch, seed, checkpoints, distribution) sit at the top.

Each field holds its default, type, help text and flat flag name
(``--learning_rate``, ``--hard_negative_at``, ``--augment`` /
``--noaugment``, ``--augment_scale_range=0.9,1.1`` ...), whether a resumed
run must match it, and the value runs written before it existed used.
``stages/train.py`` generates its flags from them; ``flat()`` /
``from_flat(**names)`` convert to and from those flat names (the key set of
``config.json``'s ``settings``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional

from pfascannet import settings as settings_lib
from pfascannet.data import sampling
from pfascannet.data.augment_settings import AugmentSettings
from pfascannet.errors import PfaError
from pfascannet.model import paper
from pfascannet.model.precision import PRECISIONS
from pfascannet.settings import LEGACY_IS_DEFAULT, group, setting

STRATEGIES = ("mirrored", "multiworker")
COLLECTIVES = ("auto", "ring", "nccl")
"""Multi-worker all-reduce: ``ring`` (gRPC, CPUs), ``nccl`` (GPUs), ``auto`` (NCCL where every device is a GPU)."""
KERNEL_INITS = ("he_normal", "model", "imagenet")
OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("constant", "cosine")
HARD_NEGATIVE_SOURCES = ("slides", "patches")
PAPER_DEFAULTS = {"learning_rate": paper.PAPER_LEARNING_RATE, "momentum": paper.PAPER_MOMENTUM,
                  "lambda_seg": paper.PAPER_LAMBDA, "gamma": paper.PAPER_GAMMA}
"""Zhao et al., Implementation Details (``model.paper``; also the defaults below); written into config.json."""


class TrainingError(PfaError, ValueError):
    """A training setting or work directory that cannot be used."""


def _check_ints(obj, names, minimum: int) -> None:
    for name in names:
        v = getattr(obj, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise TrainingError(f"{_flag(obj, name)} must be an integer >= {minimum}, got {v!r}")


def _flag(obj, name: str) -> str:
    """The flat (flag) name of ``obj``'s field ``name``, for messages."""
    meta = {f.name: f.metadata for f in dataclasses.fields(obj)}[name]
    flag = meta.get("flag")
    return flag if isinstance(flag, str) else getattr(obj, "_PREFIX", "") + name


def _check_choice(obj, name: str, choices) -> None:
    v = getattr(obj, name)
    if v not in choices:
        raise TrainingError(f"{_flag(obj, name)} must be one of {tuple(choices)}, got {v!r}")


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """The network and how it starts (``model.config``, ``model.precision``).

    ``kernel_init``: ``he_normal`` redraws every convolution kernel with He
    initialisation before the first step; ``model`` keeps the model's own
    (Glorot) initialisation; ``imagenet`` starts the trunk from Keras'
    ImageNet VGG16 (``imagenet_weights``) as the paper does, which needs
    ``config="paper_imagenet"`` (the paper's widths with the caffe input
    convention those weights expect) -- the decoder and head stay He.  From
    scratch, 13 ReLU convolutions without normalisation lose half their
    signal variance per layer under Glorot, and the patch output barely moves
    from 0.5 (He et al., ICCV 2015).  ``precision``: Keras mixed precision
    (weights stay float32, the losses are computed on float32 outputs;
    ``float16`` scales the loss dynamically).
    """

    config: str = setting("tiny", must_match=True,
                          help="Model config: tiny, small, paper or paper_imagenet (with --kernel_init imagenet).")
    kernel_init: str = setting(
        "he_normal", choices=KERNEL_INITS, must_match=True,
        help="Initialisation of a fresh run; imagenet: the paper's ImageNet VGG16 trunk (--config paper_imagenet).")
    imagenet_weights: str = setting(
        "imagenet", must_match=True, legacy="imagenet",
        help="--kernel_init imagenet: 'imagenet' (Keras downloads VGG16 weights) or a VGG16-without-top weights file.")
    precision: str = setting(
        "float32", choices=PRECISIONS, must_match=True, legacy="float32",
        help="Mixed precision (weights float32; float16 scales the loss). bfloat16 on Ampere+ GPUs / AVX512-BF16 CPUs.")

    def __post_init__(self):
        _check_choice(self, "kernel_init", KERNEL_INITS)
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


@dataclasses.dataclass(frozen=True)
class LossSettings:
    """Eq. (3) ``L = Lcla + lambda * Lseg`` with eq. (2)'s truncated loss (``model.losses``)."""

    lambda_seg: float = setting(PAPER_DEFAULTS["lambda_seg"], must_match=True, help="lambda of eq. (3) (paper: 0.5).")
    gamma: float = setting(PAPER_DEFAULTS["gamma"], must_match=True,
                           help="Truncation point of eq. (2) (paper: 0.04; 0 = plain BCE).")
    synergistic: bool = setting(True, must_match=True,
                                help="Synergistic learning; --nosynergistic trains the detector alone (w/o SL).")

    def __post_init__(self):
        # The loss validates its own settings (eq. (2) range of gamma).
        from pfascannet.model.losses import SynergisticLoss  # noqa: PLC0415  (Keras)

        SynergisticLoss(gamma=self.gamma, lam=self.lambda_seg, synergistic=self.synergistic)


@dataclasses.dataclass(frozen=True)
class OptimiserSettings:
    """SGD with momentum (the paper's, to fine-tune from ImageNet at 1e-4) or Adam; warm-up and schedule.

    Adam is our choice for from-scratch runs, where the paper is silent:
    measured here, SGD at the 2e-3 a from-scratch run needs takes steps large
    enough in its first few iterations to switch off most ReLUs of the narrow
    first blocks (block1_conv2 of ``tiny`` went from 29 % to 3 % active in 20
    steps and the output became constant), while Adam's steps are bounded by
    the learning rate per weight; 1e-3 is the usual rate.  ``warmup_steps``
    protects the same first steps.  ``lr_schedule`` ``cosine``: half a cosine
    from the rate to 0 at ``steps`` (at a constant 1e-3 the demo recipe's loss
    rose again after its hard-negative round, 0.13 to 0.61 in 125 steps).
    """

    optimizer: str = setting(
        "sgd", choices=OPTIMIZERS, must_match=True, legacy="sgd",
        help="sgd (paper, with --momentum) or adam (from-scratch runs: SGD kills the ReLUs of narrow blocks).")
    learning_rate: float = setting(
        PAPER_DEFAULTS["learning_rate"], must_match=True,
        help="Learning rate (paper: SGD 1e-4 from ImageNet; from scratch: Adam 1e-3).")
    momentum: float = setting(PAPER_DEFAULTS["momentum"], must_match=True, help="SGD momentum (paper: 0.9).")
    warmup_steps: int = setting(0, must_match=True, legacy=0,
                                help="Linear learning-rate warm-up over this many steps (0: none).")
    lr_schedule: str = setting(
        "constant", choices=LR_SCHEDULES, must_match=True, legacy="constant",
        help="After the warm-up: constant, or cosine decay to 0 at --steps (from scratch: cosine).")

    def __post_init__(self):
        if not self.learning_rate > 0:
            raise TrainingError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if not 0 <= self.momentum < 1:
            raise TrainingError(f"momentum must be in [0, 1), got {self.momentum!r}")
        _check_choice(self, "optimizer", OPTIMIZERS)
        _check_choice(self, "lr_schedule", LR_SCHEDULES)
        _check_ints(self, ("warmup_steps",), 0)


@dataclasses.dataclass(frozen=True)
class MiningSettings:
    """Hard-negative rounds (Sec. 1): false positives of the current weights join the samples.

    Rounds run at ``at + k * every`` below ``steps`` (``every`` 0: one round;
    ``at`` 0: never), and each round's negatives join the earlier rounds'.
    ``source`` ``slides`` (``training.mining``): the current weights scan
    every training slide densely, and the map's maxima at or above
    ``threshold`` in normal tissue become negatives; ``patches``
    (``sampling.HardNegativeMiner``): the classifier scores ``candidates``
    random normal patches.  ``max_keep``: the most negatives one round adds.
    """

    _PREFIX = "hard_negative_"

    at: int = setting(0, help="Step of the first hard-negative round (0: never).")
    every: int = setting(0, legacy=0, help="Steps between later hard-negative rounds (0: one round).")
    source: str = setting(
        "slides", choices=HARD_NEGATIVE_SOURCES, legacy="patches",
        help="slides: scan the training slides and take the map's maxima in normal tissue; "
             "patches: score --hard_negative_candidates random normal patches.")
    candidates: int = setting(256, help="Normal patches scored per round (--hard_negative_source patches).")
    threshold: float = setting(0.5, help="Tumour probability from which a normal place is a false positive.")
    max_keep: int = setting(64, flag="hard_negative_max", help="Most hard negatives one round adds.")

    def __post_init__(self):
        _check_ints(self, ("at", "candidates", "max_keep", "every"), 0)
        _check_choice(self, "source", HARD_NEGATIVE_SOURCES)
        if not 0.0 <= self.threshold <= 1.0:
            raise TrainingError(f"hard_negative_threshold must be in [0, 1], got {self.threshold!r}")


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """Everything one training run depends on (validated on construction; module docstring).

    The nested groups are described in their classes; the run's own fields in
    their help texts (``pfascannet train --help``).  Build from flat names
    with ``TrainSettings.from_flat(data=..., learning_rate=...)``; change
    any setting by its flat name with ``settings.replace(...)``.
    """

    data: str = setting(must_match=True, help="Dataset root: a cohort folder (images/, annotations/, slides.csv) "
                      "or CAMELYON16/17 as downloaded (training/, testing/).")
    workdir: str = setting(help="Run folder: checkpoints, logs, config.json, final.weights.h5.")
    model: ModelSettings = group(ModelSettings)
    steps: int = setting(1000, help="Total optimisation steps (a resumed run continues to this).")
    batch_size: int = setting(8, must_match=True, help="Global batch size (a multiple of the number of replicas).")
    seed: int = setting(0, must_match=True, help="Seed of sampling, initialisation, shuffling and augmentation.")
    split: str = setting("train", must_match=True, help="Split to train on (slides.csv's split column; CAMELYON: train = training/).")
    sampler: sampling.SamplerSettings = group(sampling.SamplerSettings, must_match=True)
    stream: bool = setting(True, must_match=True, legacy=False,
                           help="Fresh seeded patch positions every epoch (pipeline.SampleStream; epoch 0 is "
                                "samples.csv); --nostream replays one draw.")
    augmentation: Optional[AugmentSettings] = group(
        AugmentSettings, switch="augment", prefix="augment_", must_match=True, legacy=LEGACY_IS_DEFAULT,
        help="Flip/rotation/scaling/cropping + colour/HSV jitter (Sec. 2.4); ranges: --augment_*.")
    loss: LossSettings = group(LossSettings)
    optimiser: OptimiserSettings = group(OptimiserSettings)
    mining: MiningSettings = group(MiningSettings, prefix=MiningSettings._PREFIX, active="hard_negative_at",
                                   must_match=True)
    tfrecords: Optional[str] = setting(None, must_match=True,
                                       help="Glob of TFRecord shards (pfascannet tfrecords) to read instead.")
    checkpoint_every: int = setting(100, help="Steps between checkpoints.")
    keep_checkpoints: int = setting(3, help="Checkpoints kept.")
    log_every: int = setting(10, help="Steps between progress lines / TensorBoard points.")
    max_seconds: Optional[float] = setting(
        None, flag=False, help="Stop early (checkpoint + final weights) after this long (flag: --max_minutes).")
    strategy: str = setting("mirrored", choices=STRATEGIES, help="tf.distribute strategy.")
    collective: str = setting(
        "auto", choices=COLLECTIVES,
        help="--strategy=multiworker all-reduce: ring (gRPC, CPUs), nccl (GPUs), auto (NCCL if all GPUs).")
    collective_timeout_s: Optional[float] = setting(
        None, help="--strategy=multiworker: a collective waiting longer for a peer fails (default: none; the "
                   "coordination service's heartbeats still detect a dead worker; TensorFlow spends a thread "
                   "per collective on it).")
    num_parallel_calls: int = setting(-1, help="Parallel slide reads (-1: tf.data AUTOTUNE).")

    def __post_init__(self):
        _check_ints(self, ("steps", "batch_size", "checkpoint_every", "keep_checkpoints", "log_every"), 1)
        _check_choice(self, "strategy", STRATEGIES)
        _check_choice(self, "collective", COLLECTIVES)
        if self.collective_timeout_s is not None and not self.collective_timeout_s > 0:
            raise TrainingError(f"collective_timeout_s must be > 0, got {self.collective_timeout_s!r}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise TrainingError(f"max_seconds must be > 0, got {self.max_seconds!r}")
        if self.tfrecords is None:
            from pfascannet import datasets  # noqa: PLC0415  (light: no slide is opened)

            try:
                datasets.detect_layout(self.data)
            except datasets.DatasetError as exc:
                raise TrainingError(f"--data: {exc}") from None

    # -- flat names ------------------------------------------------------------

    @classmethod
    def from_flat(cls, **flat) -> "TrainSettings":
        """Settings from flat names (``data=..., learning_rate=..., hard_negative_at=...``); the rest default."""
        return settings_lib.unflatten(cls, flat)

    def flat(self) -> dict:
        """``{flat name: value}``: the flag names, and the keys of ``config.json``'s ``settings``."""
        return settings_lib.flatten(self)

    def replace(self, **flat) -> "TrainSettings":
        """A copy with the settings named by their flat names changed."""
        return settings_lib.unflatten(type(self), {**self.flat(), **flat})

    def to_dict(self) -> dict:
        """The nested settings as plain data (``augmentation`` None when off)."""
        return dataclasses.asdict(self)

    def mining_steps(self) -> list[int]:
        """Steps at which a hard-negative round runs (before that step's batch)."""
        m = self.mining
        if not m.at:
            return []
        if not m.every:
            return [m.at] if m.at < self.steps else []
        return list(range(m.at, self.steps, m.every))


def workdir_mismatch(old_flat: dict, new_flat: dict) -> dict:
    """``{flat name: (old, new)}`` of settings a resumed run must match but does not.

    ``old_flat`` is ``config.json``'s ``settings`` of the run in the workdir,
    written by this code or by older code: a setting it lacks takes its
    legacy value.  A group that is off on both sides (no mining, no
    augmentation) ignores its other settings.
    """
    def plain(value):  # tuples as the lists config.json holds
        return json.loads(json.dumps(value))

    old_flat, new_flat = plain(old_flat), plain(new_flat)
    all_leaves = settings_lib.leaves(TrainSettings)
    legacy = {leaf.name: plain(leaf.legacy_value) for leaf in all_leaves}
    diff = {}
    for leaf in all_leaves:
        if not leaf.must_match:
            continue
        if leaf.active and leaf.name != leaf.active:
            if not old_flat.get(leaf.active, legacy[leaf.active]) and not new_flat.get(leaf.active):
                continue
        before = old_flat.get(leaf.name, legacy[leaf.name])
        if before != new_flat.get(leaf.name):
            diff[leaf.name] = (before, new_flat.get(leaf.name))
    return diff
