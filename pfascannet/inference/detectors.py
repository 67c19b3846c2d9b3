"""Detectors behind the scanner's ``Detector`` protocol, and loading any export as one.

``load_detector(path)`` returns a ``model_run.Detector``: ``alpha``, ``roi_px``,
``tile_px``, ``stride_px``, ``training_mpp`` and ``predict(uint8 [N, LR, LR, 3]) -> float32
[N, Lm, Lm]`` tumour probability, plus ``predict_patches(uint8 [N, 692, 692,
3]) -> float32 [N]``, for an export directory (``export.export_detector``), a
``.keras`` file or a SavedModel directory.  ``KerasDetector(model, alpha,
roi_px)`` wraps a live model in the same protocol, so the scanner takes any of
them; ``SavedModelDetector`` serves a SavedModel through ``tf.saved_model.load``
(plain TensorFlow, whatever the Keras backend); the ``.keras`` file loads under
any Keras backend.

Exports written before the model carried its config (a plain functional
``.keras``) still load: their widths are read from the trunk's layers
(``config_from_model``), their alpha from the DensePooling layers
(``detector_alpha``) and their training pixel size is taken to be 0.243 um/px
(``model_training_mpp``).

Precision (``model.precision``): ``load_detector(..., precision=...)`` rebuilds
a ``.keras`` model at another precision (the same weights); a SavedModel
computes at the precision it was exported with.  XLA: ``inference.xla``.
"""

from __future__ import annotations

import copy
import hashlib
import os
import zipfile

import keras
import numpy as np

from pfascannet import geometry
from pfascannet.inference.export_meta import (
    EXPORT_JSON,
    FORMATS,
    ExportError,
    files_digest,
    read_export_json,
)
from pfascannet.inference.xla import check_xla, resolve_xla, static_graphs
from pfascannet.model.config import ModelConfig
from pfascannet.model.dense_pooling import DensePooling
from pfascannet.model.detector import (
    TRAINING_MPP,
    TUMOUR_CHANNEL,
    PfaScanNetDetector,
    PfaScanNetTrainingModel,
    build_detector,
    check_training_mpp,
    transfer_weights,
)
from pfascannet.model.imagenet import CaffeNormalisation
from pfascannet.model.precision import check_precision, model_precision


class _GeometryMixin:
    alpha: int
    roi_px: int

    @property
    def tile_px(self) -> int:
        """Lm: output pixels per ROI side (eq. (1))."""
        return geometry.tile_px(self.roi_px, self.alpha)

    @property
    def stride_px(self) -> int:
        """Input pixels per output pixel (512 / alpha)."""
        return geometry.output_stride_px(self.alpha)

    @property
    def map_origin_px(self) -> int:
        """Offset from an ROI's top-left to its first output cell's top-left (``geometry.map_origin_px``)."""
        return geometry.map_origin_px(self.alpha)

    def _check_batch(self, x: np.ndarray, side: int, what: str) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 4 or x.shape[1:] != (side, side, 3):
            raise ExportError(f"{what} must be uint8 RGB [N, {side}, {side}, 3], got shape {x.shape}")
        if x.dtype != np.uint8:
            raise ExportError(f"{what} must be uint8 RGB (normalisation is inside the model), got {x.dtype}")
        return x


class KerasDetector(_GeometryMixin):
    """A live Keras detector (``build_detector`` output) behind the ``Detector`` protocol.

    Args:
      model: RGB [N, H, W, 3] -> softmax [N, Lm, Lm, 2], built at ``alpha``.
      alpha: the dense coefficient the model was built with.
      roi_px: LR; must fit eq. (1) at ``alpha``.
      digest: the model's content id (``load_detector`` gives the file's);
        None: a hash of the weights, computed when first asked for.
      xla: "auto", "on" or "off" (``resolve_xla``); under JAX the forward
        pass is always compiled.
      training_mpp: um/px of the training slides; None: the model's
        (``model_training_mpp``).

    Attributes:
      precision: what the model computes in (read from its layers' dtype policy).
      training_mpp: um/px of the slides the model was trained on.
    """

    def __init__(
        self, model: keras.Model, alpha: int, roi_px: int, digest: str | None = None, xla: str = "auto",
        training_mpp: float | None = None,
    ):
        geometry.ScanGeometry(alpha=alpha, roi_px=roi_px)
        built = detector_alpha(model)
        if built is not None and built != alpha:
            raise ExportError(f"model {model.name!r} was built for alpha={built}, not alpha={alpha}")
        side = model.input_shape[1]
        if side is not None and side != roi_px:
            raise ExportError(f"model {model.name!r} takes {side} px inputs, not roi_px={roi_px}")
        self.model = model
        self.alpha = alpha
        self.roi_px = roi_px
        self._patch_model = None
        self._graphs = None
        self._digest = digest
        self.precision = model_precision(model)
        self.training_mpp = model_training_mpp(model) if training_mpp is None else check_training_mpp(training_mpp)
        self.xla = resolve_xla(xla)
        self.backend = keras.backend.backend()  # the kernels that compute the map (model_run.numeric_settings)
        _set_jit(model, self.xla)

    @property
    def digest(self) -> str:
        """The model's content id: its file's digest, else a hash of its weights (names, shapes, values)."""
        if self._digest is None:
            self._digest = weights_digest(self.model)
        return self._digest

    def predict(self, rois: np.ndarray) -> np.ndarray:
        """uint8 [N, LR, LR, 3] -> tumour probability float32 [N, Lm, Lm]."""
        rois = self._check_batch(rois, self.roi_px, "ROIs")
        if self.backend == "tensorflow":
            # One graph per ROI side with its shape fixed (``xla.static_graphs``): an edge ROI then
            # gives the very numbers of the whole ROI's pixels, in bfloat16 too.
            if self._graphs is None:
                model = self.model
                self._graphs = static_graphs(lambda x: model(x, training=False), jit=self.xla)
            probs = keras.ops.convert_to_numpy(self._graphs(tf_constant(rois)))
        else:  # predict_on_batch compiles once per shape (eager JAX would run op by op)
            probs = np.asarray(self.model.predict_on_batch(rois.astype(np.float32)))
        return np.ascontiguousarray(probs[..., TUMOUR_CHANNEL], dtype=np.float32)

    def at_roi_px(self, side_px: int) -> "KerasDetector | None":
        """The same model serving ROIs of ``side_px`` (edge ROIs), or None if its input side is fixed."""
        if self.model.input_shape[1] is not None:
            return None
        return KerasDetector(self.model, self.alpha, side_px, digest=self.digest, xla="on" if self.xla else "off",
                             training_mpp=self.training_mpp)

    def predict_patches(self, patches: np.ndarray) -> np.ndarray:
        """The patch classifier (same weights, alpha = 1): uint8 [N, 692, 692, 3] -> tumour probability [N]."""
        patches = self._check_batch(patches, geometry.PATCH_PX, "patches")
        if self._patch_model is None:
            self._patch_model = patch_model_for(self.model)
            _set_jit(self._patch_model, self.xla)
        probs = np.asarray(self._patch_model.predict_on_batch(patches.astype(np.float32)))
        return probs.reshape(len(patches), -1)[:, TUMOUR_CHANNEL].astype(np.float32)


def tf_constant(rois: np.ndarray):
    """A float32 TensorFlow tensor of a uint8 batch (the model normalises inside)."""
    import tensorflow as tf  # noqa: PLC0415  (only under the TensorFlow backend)

    return tf.convert_to_tensor(np.asarray(rois, np.float32))


class SavedModelDetector(_GeometryMixin):
    """A SavedModel written by ``export_detector``, loaded with ``tf.saved_model.load``.

    ``precision`` and ``training_mpp`` are the export's (export.json); with
    ``xla`` resolved on, the serving function is called inside a
    ``tf.function(jit_compile=True)``.
    """

    def __init__(
        self, path: str, alpha: int, roi_px: int, digest: str | None = None,
        precision: str = "float32", xla: str = "auto", training_mpp: float = TRAINING_MPP,
    ):
        import tensorflow as tf  # noqa: PLC0415  (SavedModel is TensorFlow's format)

        geometry.ScanGeometry(alpha=alpha, roi_px=roi_px)
        self.path = path
        self.alpha = alpha
        self.roi_px = roi_px
        self.precision = check_precision(precision)
        self.training_mpp = check_training_mpp(training_mpp)
        self.xla = resolve_xla(xla)
        self.digest = digest or files_digest(path)
        try:
            self._loaded = tf.saved_model.load(path)
        except Exception as exc:  # noqa: BLE001  (DataLossError, IndexError, NotFoundError...: all a broken export)
            raise ExportError(_broken_saved_model(path, exc)) from exc
        try:
            self._serve = self._loaded.signatures["serving_default"]
        except KeyError:
            raise ExportError(f"{path} has no serving_default signature; was it written by export_detector?") from None
        self._patch = getattr(self._loaded, "patch_classifier", None)
        if self.xla:
            serve = self._serve
            self._serve = tf.function(lambda rgb: serve(rgb=rgb), jit_compile=True)

    def predict(self, rois: np.ndarray) -> np.ndarray:
        """uint8 [N, LR, LR, 3] -> tumour probability float32 [N, Lm, Lm]."""
        rois = self._check_batch(rois, self.roi_px, "ROIs")
        return np.asarray(self._serve(rgb=rois)["tumour_probability"], dtype=np.float32)

    def at_roi_px(self, side_px: int) -> "SavedModelDetector | None":
        """This SavedModel serving ROIs of ``side_px`` through its ``serve_any_side`` endpoint (None if it has none)."""
        import tensorflow as tf  # noqa: PLC0415

        endpoint = getattr(self._loaded, "serve_any_side", None)
        if endpoint is None:
            return None  # exports made before edge ROIs
        geometry.ScanGeometry(alpha=self.alpha, roi_px=side_px)
        other = copy.copy(self)
        other.roi_px = side_px
        other._serve = tf.function(lambda rgb: endpoint(rgb), jit_compile=True) if self.xla else (
            lambda rgb: endpoint(rgb))
        return other

    def predict_patches(self, patches: np.ndarray) -> np.ndarray:
        """The exported patch-classifier endpoint: uint8 [N, 692, 692, 3] -> [N]."""
        if self._patch is None:
            raise ExportError(f"{self.path} has no patch_classifier endpoint")
        patches = self._check_batch(patches, geometry.PATCH_PX, "patches")
        return np.asarray(self._patch(patches)["tumour_probability"], dtype=np.float32)


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def _broken_saved_model(path: str, exc: BaseException) -> str:
    files = []
    for sub in ("saved_model.pb", "variables"):
        full = os.path.join(path, sub)
        if os.path.isdir(full):
            files += [f"variables/{n}" for n in sorted(os.listdir(full))]
        elif os.path.exists(full):
            files.append(sub)
    return (
        f"{path}: the SavedModel cannot be loaded ({_short(exc)}); one of its files "
        f"({', '.join(files) or 'none found'}) is truncated or corrupt: export the model again"
    )


def _set_jit(model: keras.Model, xla: bool) -> None:
    if keras.backend.backend() != "tensorflow":
        return  # JAX: predict is always jit-compiled here (eager JAX runs op by op); torch: no XLA
    if getattr(model, "_jit_compile", None) is xla:
        return  # already so (an edge-ROI view of the same model): keep the traced function
    model.jit_compile = xla
    model.predict_function = None  # Keras keeps the traced predict function: a new setting needs a new one


def at_precision(model: keras.Model, precision: str) -> keras.Model:
    """``model`` (a detector) rebuilt at ``precision`` with the same weights; ``model`` itself if already so."""
    if model_precision(model) == check_precision(precision):
        return model
    return rebuild_detector(model, alpha=detector_alpha(model) or 1, input_px=model.input_shape[1], precision=precision)


def rebuild_detector(
    model: keras.Model, alpha: int, input_px: int | None = None, precision: str | None = None
) -> PfaScanNetDetector:
    """A detector with ``model``'s config, training pixel size and weights at another alpha, side or precision.

    Args:
      model: a detector or training model (its layers are matched by name).
      alpha: dense coefficient of the new detector.
      input_px: its fixed input side, or None for any side on the grid.
      precision: "float32", "bfloat16", "float16"; None: ``model``'s.
    """
    rebuilt = build_detector(
        config_from_model(model), alpha=alpha, input_px=input_px,
        precision=precision or model_precision(model), training_mpp=model_training_mpp(model),
    )
    transfer_weights(model, rebuilt)
    return rebuilt


def weights_digest(model: keras.Model) -> str:
    """SHA-256 (hex, 16 chars) of a model's weights in order: paths, shapes, dtypes and values."""
    h = hashlib.sha256()
    for w in model.weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(w))
        h.update(f"{w.path}\0{value.shape}\0{value.dtype}\0".encode())
        h.update(value.tobytes())
    return h.hexdigest()[:16]


def load_keras_model(path: str) -> keras.Model:
    """``keras.saving.load_model`` with a one-line error naming the file when it is not a whole .keras archive."""
    if not zipfile.is_zipfile(path):
        size = os.path.getsize(path)
        raise ExportError(
            f"{path}: not a valid .keras file ({size} bytes, not a complete zip archive): "
            "truncated or corrupt; export the model again"
        )
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:  # noqa: BLE001  (Keras raises ValueError, KeyError, OSError... for broken archives)
        raise ExportError(
            f"{path}: cannot be loaded as a Keras model ({_short(exc)}); truncated, corrupt or not a "
            "PFA-ScanNet detector: export the model again"
        ) from exc


def carries_config(model) -> bool:
    return isinstance(model, (PfaScanNetDetector, PfaScanNetTrainingModel))


def detector_alpha(model: keras.Model) -> int | None:
    """The alpha a detector was built for (None for a model without DensePooling layers).

    Read from the model's config; a detector saved before the model carried
    it (a plain functional ``.keras``) is read from its DensePooling layers.
    """
    if isinstance(model, PfaScanNetDetector):
        return model.alpha
    alphas = {layer.alpha for layer in model.layers if isinstance(layer, DensePooling)}
    if len(alphas) > 1:
        raise ExportError(f"model {model.name!r} mixes DensePooling alphas {sorted(alphas)}")
    return alphas.pop() if alphas else None


def config_from_model(model: keras.Model, name: str = "inferred") -> ModelConfig:
    """``model``'s ModelConfig: the one it carries, else (older exports) the trunk widths of ``block{b}_conv1``.

    A model that does not carry its config loses ``bm_channels`` and its
    name (``name`` stands in) and is assumed to take the "unit" input
    convention unless it normalises with ``CaffeNormalisation``.
    """
    if carries_config(model):
        return model.model_config
    try:
        widths = tuple(int(model.get_layer(f"block{b}_conv1").filters) for b in range(1, 6))
    except ValueError as exc:
        raise ExportError(f"model {model.name!r} is not a PFA-ScanNet detector: {exc}") from None
    caffe = any(isinstance(layer, CaffeNormalisation) for layer in model.layers)
    return ModelConfig(name=name, widths=widths, input_convention="caffe" if caffe else "unit")


def model_training_mpp(model: keras.Model) -> float:
    """um/px of the slides ``model`` was trained on: its config's, or 0.243 (Camelyon level 0) for older models.

    Models saved before the model carried its config were all trained on
    Camelyon-like slides at level 0, 0.243 um/px (``TRAINING_MPP``).
    """
    return model.training_mpp if carries_config(model) else TRAINING_MPP


def patch_model_for(model: keras.Model) -> keras.Model:
    """The patch classifier with ``model``'s weights: the detector rebuilt at alpha = 1 on 692 inputs.

    (A detector with free input sides would give the same numbers on a 692
    patch, since every DensePooling then sees one window whatever its stride;
    rebuilding at alpha = 1 makes the comparison literally the paper's patch
    classifier.)
    """
    return rebuild_detector(model, alpha=1, input_px=geometry.PATCH_PX)


def load_detector(
    path: str | os.PathLike,
    format: str = "auto",  # noqa: A002  (the user-facing word)
    roi_px: int | None = None,
    precision: str | None = None,
    xla: str = "auto",
) -> _GeometryMixin:
    """Loads a detector from an export directory, a ``.keras`` file or a SavedModel directory.

    Args:
      path: export directory (with export.json), ``*.keras`` file, or
        SavedModel directory.
      format: "auto" (SavedModel under the TensorFlow backend when present,
        else ``.keras``), "savedmodel" or "keras".
      roi_px: LR; defaults to the export's.  A SavedModel serves only its
        exported LR; a ``.keras`` model any LR on the grid of its alpha.
      precision: None (the export's) or "float32", "bfloat16", "float16": a
        ``.keras`` model is rebuilt at it (same weights); a SavedModel serves
        only the precision it was exported with.
      xla: "auto", "on" or "off" (``resolve_xla``).

    Returns:
      A ``KerasDetector`` or ``SavedModelDetector``.  Its ``training_mpp``
      is the model's (a ``.keras`` detector carries it) or export.json's;
      exports written before it was recorded say neither and are taken to
      be trained at 0.243 um/px (Camelyon level 0, ``TRAINING_MPP``), as
      every model of this project then was.
    """
    path = os.fspath(path)
    if format not in ("auto", *FORMATS):
        raise ExportError(f"format must be auto, savedmodel or keras, got {format!r}")
    if precision is not None:
        check_precision(precision)
    check_xla(xla)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no detector at {path}")

    meta, keras_path, sm_path = None, None, None
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "saved_model.pb")):
        sm_path = path
        parent = os.path.dirname(os.path.abspath(path))
        if os.path.isfile(os.path.join(parent, EXPORT_JSON)):
            meta = read_export_json(parent)
    elif os.path.isdir(path):
        meta = read_export_json(path)
        formats = meta.get("formats", {})
        if "keras" in formats:
            keras_path = os.path.join(path, formats["keras"])
        if "savedmodel" in formats:
            sm_path = os.path.join(path, formats["savedmodel"])
    elif path.endswith(".keras"):
        keras_path = path
        parent = os.path.dirname(os.path.abspath(path))
        if os.path.isfile(os.path.join(parent, EXPORT_JSON)):
            meta = read_export_json(parent)
    else:
        raise ExportError(f"{path} is neither an export directory, a .keras file nor a SavedModel directory")

    backend = keras.backend.backend()
    if format == "auto":
        format = "savedmodel" if sm_path and (backend == "tensorflow" or not keras_path) else "keras"
    if format == "savedmodel":
        if not sm_path:
            raise ExportError(f"{path} holds no SavedModel (formats there: {sorted((meta or {}).get('formats', {}))})")
        if meta is None:
            raise ExportError(f"{sm_path} has no {EXPORT_JSON} beside it, so its alpha and ROI size are unknown")
        lr = roi_px or int(meta["roi_px"])
        if lr != int(meta["roi_px"]):
            raise ExportError(f"the SavedModel at {sm_path} serves roi_px={meta['roi_px']} only, not {lr}; use the .keras export")
        exported = meta.get("precision", "float32")
        if precision not in (None, exported):
            raise ExportError(
                f"the SavedModel at {sm_path} computes in {exported} only, not {precision}; use the .keras export"
            )
        try:
            return SavedModelDetector(
                sm_path, int(meta["alpha"]), lr, digest=files_digest(sm_path), precision=exported, xla=xla,
                training_mpp=meta.get("training_mpp", TRAINING_MPP),
            )
        except ImportError:
            raise ExportError(
                f"loading a SavedModel needs TensorFlow, which is not importable under backend {backend!r}; "
                "under the JAX or PyTorch backend only the .keras export works (format='keras')"
            ) from None

    if not keras_path:
        raise ExportError(
            f"{path} holds no .keras model; under the {backend!r} backend only the .keras export works "
            "(a SavedModel is served with format='savedmodel' and TensorFlow)"
        )
    if not os.path.isfile(keras_path):
        raise ExportError(f"{keras_path}: no such file; export.json lists it, so the export is incomplete")
    digest = files_digest(keras_path)
    model = load_keras_model(keras_path)
    alpha = detector_alpha(model)
    if alpha is None:
        raise ExportError(f"{keras_path} is not a PFA-ScanNet detector (no DensePooling layer)")
    if meta is not None and int(meta["alpha"]) != alpha:
        raise ExportError(f"{keras_path} was built for alpha={alpha} but export.json says {meta['alpha']}")
    lr = roi_px or (int(meta["roi_px"]) if meta else model.input_shape[1])
    if lr is None:
        raise ExportError(f"{keras_path} has free input sides and no {EXPORT_JSON}: pass roi_px")
    training_mpp = model_training_mpp(model) if carries_config(model) else (meta or {}).get("training_mpp")
    if precision is not None:
        model = at_precision(model, precision)
    return KerasDetector(model, alpha, int(lr), digest=digest, xla=xla, training_mpp=training_mpp)
