"""Export the detector at a chosen alpha: a SavedModel, a ``.keras`` file and ``export.json``.

An export directory holds (``export_detector``):

    saved_model/     TensorFlow SavedModel; signature ``serving_default``
                     (alias of endpoint ``serve``): uint8 RGB [N, LR, LR, 3]
                     -> {"tumour_probability": float32 [N, Lm, Lm]};
                     endpoint ``patch_classifier``: uint8 [N, 692, 692, 3]
                     -> {"tumour_probability": float32 [N]} (the same weights on
                     single patches, for equivalence checks); endpoint
                     ``serve_any_side``: ``serve`` for any LR on the grid
                     (the scanner's edge ROIs).
    detector.keras   the Keras model (any input side on the grid, softmax [N, Lm, Lm, 2]).
    export.json      alpha, roi_px, tile_px, stride_px, map_origin_px, patch_px,
                     config, training_mpp, formats, versions.  Written last:
                     a directory without it is an interrupted export.

The model carries its own config (``model.detector.PfaScanNetDetector``):
the export reads the widths, config name, alpha and the pixel size the model
was trained at (``training_mpp``) from it, and ``detector.keras`` rebuilds
itself from them.

LR and Lm follow eq. (1) (Zhao et al., MICCAI 2019): LR = 692 + (512/alpha)(Lm - 1).
Normalisation is inside the model, so every consumer passes raw uint8 RGB.

Precision (``model.precision``): an export is written at ``float32``,
``bfloat16`` or ``float16`` (Keras mixed precision; weights stay float32, the
softmax computes in float32); the ``.keras`` file keeps each layer's dtype
policy and export.json records ``precision``.

The SavedModel is written with the TensorFlow backend only.  Reading an
export back: ``inference.detectors.load_detector``.
"""

from __future__ import annotations

import os

import keras

from pfascannet import geometry
from pfascannet.inference.detectors import carries_config, config_from_model, model_training_mpp
from pfascannet.inference.export_meta import EXPORT_JSON, FORMATS, KERAS_FILE, SAVED_MODEL_DIR, ExportError
from pfascannet.io_utils import atomic_dir, atomic_path, remove_stale_temps, write_json
from pfascannet.model.config import ModelConfig
from pfascannet.model.detector import TUMOUR_CHANNEL, build_detector, transfer_weights
from pfascannet.model.precision import check_precision, resolve_precision

EXPORT_VERSION = 1


def export_detector(
    weights: keras.Model,
    config: ModelConfig | None,
    out_dir: str | os.PathLike,
    alpha: int = geometry.PAPER_ALPHA,
    roi_px: int = geometry.PAPER_ROI_PX,
    formats: tuple[str, ...] = FORMATS,
    extra: dict | None = None,
    precision: str = "float32",
) -> dict:
    """Builds the detector at ``alpha``, copies ``weights`` into it by layer name and writes an export.

    Args:
      weights: any model holding the detector's layers (the training model,
        or a detector at any alpha); its config and ``training_mpp`` go into
        the export.
      config: None (read from ``weights``), or the config ``weights`` was
        built with: a model that carries another one is refused.
      out_dir: export directory (created; existing export files are replaced).
      alpha: dense coefficient of the export.
      roi_px: LR of the SavedModel signature; must fit eq. (1) at alpha.
      formats: any of "savedmodel", "keras".
      extra: more JSON-ready fields for export.json (e.g. the training run).
      precision: "float32", "bfloat16" or "float16" (``model.precision``),
        or "auto" (``precision.choose_precision``: by this CPU's features);
        the weights are float32 whatever the precision.

    Returns:
      The export.json contents.
    """
    scan = geometry.ScanGeometry(alpha=alpha, roi_px=roi_px)
    precision = check_precision(resolve_precision(precision))
    formats = tuple(formats)
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ExportError(f"formats must be a non-empty subset of {FORMATS}, got {formats}")
    if "savedmodel" in formats and keras.backend.backend() != "tensorflow":
        raise ExportError(
            f"writing a SavedModel needs KERAS_BACKEND=tensorflow (this is {keras.backend.backend()!r}); "
            "export with formats=('keras',) or switch backend"
        )
    carried = config_from_model(weights)
    if config is None:
        config = carried
    elif carries_config(weights) and carried != config:
        raise ExportError(f"model {weights.name!r} was built with {carried}, not the given {config}")
    training_mpp = model_training_mpp(weights)
    # Free spatial dims: one .keras model serves every ROI size on the grid and is
    # its own patch classifier on 692 inputs.
    detector = build_detector(config, alpha=alpha, input_px=None, precision=precision, training_mpp=training_mpp)
    transfer_weights(weights, detector)

    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    remove_stale_temps(out_dir)  # a killed export's .detector.keras.tmp-*, .saved_model.tmp-*
    json_path = os.path.join(out_dir, EXPORT_JSON)
    if os.path.exists(json_path):
        os.remove(json_path)  # the directory is incomplete until the new json lands
    written = {}
    if "keras" in formats:
        with atomic_path(os.path.join(out_dir, KERAS_FILE), suffix=".keras") as tmp:
            detector.save(tmp)
        written["keras"] = KERAS_FILE
    if "savedmodel" in formats:
        _write_saved_model(detector, os.path.join(out_dir, SAVED_MODEL_DIR), roi_px)
        written["savedmodel"] = SAVED_MODEL_DIR
    meta = {
        "export_version": EXPORT_VERSION,
        "alpha": alpha,
        "roi_px": roi_px,
        "tile_px": scan.tile_px,
        "stride_px": scan.stride_px,
        "roi_step_px": scan.roi_step_px,
        "map_origin_px": geometry.map_origin_px(alpha),
        "patch_px": geometry.PATCH_PX,
        "tumour_channel": TUMOUR_CHANNEL,
        "precision": precision,
        "config": config.to_dict(),
        "training_mpp": training_mpp,
        "formats": written,
        "signature": {
            "name": "serving_default",
            "input": {"name": "rgb", "dtype": "uint8", "shape": [None, roi_px, roi_px, 3]},
            "output": {"name": "tumour_probability", "dtype": "float32", "shape": [None, scan.tile_px, scan.tile_px]},
        },
        "keras_version": keras.__version__,
        "keras_backend": keras.backend.backend(),
    }
    if extra:
        meta["extra"] = extra
    write_json(json_path, meta)
    return meta


def _write_saved_model(detector: keras.Model, path: str, roi_px: int) -> None:
    import tensorflow as tf  # noqa: PLC0415  (SavedModel export is TensorFlow's job)

    def serve(rgb):
        probs = detector(tf.cast(rgb, tf.float32), training=False)
        return {"tumour_probability": probs[..., TUMOUR_CHANNEL]}

    def patch_classifier(rgb):
        probs = detector(tf.cast(rgb, tf.float32), training=False)
        return {"tumour_probability": tf.reshape(probs[..., TUMOUR_CHANNEL], [-1])}

    archive = keras.export.ExportArchive()
    archive.track(detector)
    # The first endpoint becomes "serving_default".
    archive.add_endpoint("serve", serve, input_signature=[tf.TensorSpec([None, roi_px, roi_px, 3], tf.uint8, name="rgb")])
    archive.add_endpoint(
        "patch_classifier",
        patch_classifier,
        input_signature=[tf.TensorSpec([None, geometry.PATCH_PX, geometry.PATCH_PX, 3], tf.uint8, name="rgb")],
    )
    # Any side on the grid: the scanner's smaller edge ROIs (inference/plan.py).
    archive.add_endpoint("serve_any_side", serve, input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="rgb")])
    # Written into a hidden, locked folder beside the target, which then replaces it.
    with atomic_dir(path) as tmp:
        archive.write_out(tmp, verbose=False)
