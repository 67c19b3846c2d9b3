"""Shared by the model/export tests and their JAX subprocess: deterministic weights and cases.

Weights come from NumPy, not the backend's initialisers, so the TensorFlow
and JAX runs of the same case use identical weights.
"""

from __future__ import annotations

import keras
import numpy as np

from pfascannet import geometry
from pfascannet.model.detector import build_detector, transfer_weights

CALIBRATION_PX = 1204  # a 17 x 17 tile at alpha 16: cheap, yet many positions


def randomise_weights(model, seed: int = 0) -> None:
    """He-normal kernels and small biases from NumPy, layer by layer in name order."""
    rng = np.random.default_rng(seed)
    for layer in sorted(model.layers, key=lambda l: l.name):
        values = []
        for w in layer.get_weights():
            if w.ndim > 1:
                v = rng.normal(0, np.sqrt(2.0 / int(np.prod(w.shape[:-1]))), w.shape)
            else:
                v = rng.normal(0, 0.05, w.shape)
            values.append(v.astype(np.float32))
        if values:
            layer.set_weights(values)


def spread_classifier(model, config, roi: np.ndarray, logit_spread: float = 3.0) -> None:
    """Sets ``classifier_conv`` so the tumour logit varies by about +-``logit_spread`` over ``roi``.

    Random weights make the pyramid sum M vary by ~15 % across positions but
    its mean puts the softmax far into saturation; centring and scaling the
    last 1x1 convolution along M's main direction of variation spreads the
    tumour probability over most of (0, 1) (and far from saturation, where
    an equivalence test would pass trivially).
    """
    probe = build_detector(config, alpha=16, input_px=CALIBRATION_PX)
    transfer_weights(model, probe)
    feats = keras.Model(probe.input, probe.get_layer("pyramid_sum").output)
    m = np.asarray(feats.predict_on_batch(roi[None, :CALIBRATION_PX, :CALIBRATION_PX]), np.float64)
    m = m.reshape(-1, m.shape[-1])
    mean = m.mean(0)
    _, _, vt = np.linalg.svd(m - mean, full_matrices=False)
    direction = vt[0]
    scale = logit_spread / max(float(np.std((m - mean) @ direction)), 1e-12)
    w = scale * direction / 2
    kernel = np.stack([-w, w], axis=-1)[None, None].astype(np.float32)  # [1, 1, C, 2]
    bias = np.array([w @ mean, -(w @ mean)], np.float32)
    model.get_layer("classifier_conv").set_weights([kernel, bias])


def equivalence_case(config, seed: int = 0, roi_px: int = geometry.PAPER_ROI_PX):
    """A patch classifier with deterministic, spread-out weights and a structured ROI."""
    from pfascannet.model.detector import build_patch_classifier
    from pfascannet.model.equivalence import structured_roi

    roi = structured_roi(roi_px, seed)
    patch_model = build_patch_classifier(config)
    randomise_weights(patch_model, seed)
    spread_classifier(patch_model, config, roi)
    return patch_model, roi
