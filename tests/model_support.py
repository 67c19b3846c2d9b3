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


def equivalence_case(seed: int = 0, roi_px: int = geometry.PAPER_ROI_PX):
    """(config, patch classifier with deterministic spread-out weights, structured uint8 ROI)."""
    from pfascannet.model.config import ModelConfig
    from pfascannet.model.detector import build_patch_classifier
    from pfascannet.model.equivalence import structured_roi

    config = ModelConfig.tiny()
    roi = structured_roi(roi_px, seed)
    patch_model = build_patch_classifier(config)
    randomise_weights(patch_model, seed)
    spread_classifier(patch_model, config, roi)
    return config, patch_model, roi


def run_case(alpha: int, roi_px: int, case=None, seed: int = 0, shift_px: int = 8) -> dict:
    """Dense vs patch at ``alpha`` on the top-left ``roi_px`` of the case's ROI, plus the shifted control.

    Returns JSON-ready numbers: max |dense - patch| at 16 positions (corners
    included), the spread of the dense tile and of the sampled patch outputs,
    the control's max |difference|.
    """
    from pfascannet.model.equivalence import compare_dense_to_patches, sample_positions

    config, patch_model, roi = case or equivalence_case(seed, roi_px)
    roi = roi[:roi_px, :roi_px]
    dense_model = build_detector(config, alpha=alpha, input_px=roi_px)
    transfer_weights(patch_model, dense_model)
    tile = np.asarray(dense_model.predict_on_batch(roi[None].astype(np.float32)))[0, ..., 1]

    def patch_fn(patches):
        return np.asarray(patch_model.predict_on_batch(patches.astype(np.float32)))[..., 1]

    positions = sample_positions(tile.shape[0], 16, seed)
    same = compare_dense_to_patches(None, patch_fn, roi, alpha, positions, dense_tile=tile)
    # A few positions suffice for the control: any patch 8 px off is a different patch.
    shifted = compare_dense_to_patches(None, patch_fn, roi, alpha, positions[:4], dense_tile=tile, shift_px=shift_px)
    return {
        "backend": keras.backend.backend(),
        "alpha": alpha,
        "roi_px": roi_px,
        "tile_px": int(tile.shape[0]),
        "positions": [list(p) for p in same.positions],
        "max_abs_diff": same.max_abs_diff,
        "spread": same.spread,
        "sampled_spread": float(same.patch.max() - same.patch.min()),
        "shifted_max_abs_diff": shifted.max_abs_diff,
    }


if __name__ == "__main__":
    # ``python -m tests.model_support ALPHA ROI_PX [ALPHA ROI_PX ...]``: the
    # equivalence cases as JSON lines, for running under another KERAS_BACKEND.
    import json
    import sys

    args = [int(a) for a in sys.argv[1:]]
    shared = equivalence_case(0, max(args[1::2]))
    for a, lr in zip(args[::2], args[1::2]):
        print("RESULT " + json.dumps(run_case(a, lr, shared)), flush=True)
