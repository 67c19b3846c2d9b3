"""The optimiser and its schedule, the from-scratch recipe, and He initialisation.

``make_optimizer`` builds the paper's SGD with momentum (Sec. 2.3: 1e-4,
momentum 0.9) or Adam, with ``WarmUp``'s linear warm-up and cosine decay when
asked; ``scratch_recipe`` is the from-scratch recipe of the demo, Table 1 and
``experiments/bench_training.py``; ``he_initialise`` draws a fresh run's
kernels (``kernel_init`` he_normal and imagenet; the latter then loads the trunk).
"""

from __future__ import annotations

import keras
import numpy as np

from pfascannet.training.settings import TrainingError, TrainSettings


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
    """Flat settings of the from-scratch recipe (``TrainSettings.from_flat(..., **recipe)``), for ``steps`` steps.

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
    o = s.optimiser
    lr = o.learning_rate
    if o.warmup_steps or o.lr_schedule == "cosine":
        lr = WarmUp(o.learning_rate, o.warmup_steps, s.steps if o.lr_schedule == "cosine" else 0)
    if o.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=lr)
    return keras.optimizers.SGD(learning_rate=lr, momentum=o.momentum)


def he_initialise(model, seed: int) -> int:
    """Redraws every Conv2D/Conv2DTranspose kernel with He-normal (seeded); returns how many."""
    n = 0
    for i, layer in enumerate(model.layers):
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose)):
            init = keras.initializers.HeNormal(seed=seed * 1000 + i)
            layer.kernel.assign(init(tuple(layer.kernel.shape)))
            n += 1
    return n
