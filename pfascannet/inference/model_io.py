"""Trained weights in, detector export out: the bridge from a training run to inference.

Training writes a ``.weights.h5`` (``workdir/final.weights.h5``, the shipped
``pfascannet/weights/*.weights.h5``) and ``tf.train.Checkpoint`` prefixes
(``workdir/checkpoints``); both hold the training model of a named config
(``model.detector.PfaScanNetTrainingModel``).  These functions load them and
export the detector they contain (``export.export_detector``); the training
loop itself (``training.trainer``) does not need them.
"""

from __future__ import annotations

import os
from typing import Callable, Optional

from pfascannet.inference.export import export_detector
from pfascannet.inference.export_meta import ExportError
from pfascannet.model.config import get_config
from pfascannet.model.detector import TRAINING_MPP, PfaScanNetTrainingModel, build_training_model


def load_training_model(weights: str, config_name: str, training_mpp: float = TRAINING_MPP) -> PfaScanNetTrainingModel:
    """The training model of ``config_name`` with ``weights`` (a ``.weights.h5``) loaded.

    Args:
      weights: path of a ``.weights.h5`` written by the trainer.
      config_name: the ``ModelConfig`` it was trained with (``model.config.get_config``).
      training_mpp: um/px of the slides it was trained on (recorded in exports).
    """
    if not os.path.exists(weights):
        raise ExportError(f"{weights}: no such weights file")
    model = build_training_model(get_config(config_name), training_mpp=training_mpp)
    model.load_weights(weights)
    return model


def load_checkpoint_model(
    checkpoint: str, config_name: str, training_mpp: float = TRAINING_MPP
) -> PfaScanNetTrainingModel:
    """The training model of ``config_name`` restored from a ``tf.train.Checkpoint`` prefix."""
    import tensorflow as tf  # noqa: PLC0415  (checkpoints are TensorFlow's format)

    if not tf.io.gfile.exists(checkpoint + ".index"):
        raise ExportError(f"{checkpoint}: no such checkpoint (expected {checkpoint}.index)")
    model = build_training_model(get_config(config_name), training_mpp=training_mpp)
    tf.train.Checkpoint(model=model).restore(checkpoint).expect_partial().assert_existing_objects_matched()
    return model


def export_trained(
    out_dir: str,
    config_name: str,
    alpha: int,
    roi_px: int,
    formats: tuple = ("savedmodel", "keras"),
    weights: Optional[str] = None,
    checkpoint: Optional[str] = None,
    export_fn: Optional[Callable] = None,
    extra: Optional[dict] = None,
) -> dict:
    """Detector export of trained weights (a ``.weights.h5`` or a checkpoint) at ``alpha``.

    Only the detector is exported (Sec. 2.2: the decoder serves training);
    ``export_fn`` defaults to ``export.export_detector``.  Returns its
    export.json contents.
    """
    if (weights is None) == (checkpoint is None):
        raise ExportError("give exactly one of weights or checkpoint")
    export_fn = export_fn or export_detector
    model = load_training_model(weights, config_name) if weights else load_checkpoint_model(checkpoint, config_name)
    return export_fn(model, model.model_config, out_dir, alpha=alpha, roi_px=roi_px, formats=formats, extra=extra)
