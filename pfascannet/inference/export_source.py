"""What an export is made from (a training run folder, a ``.weights.h5`` or a checkpoint), checked without Keras.

``pfascannet export`` checks every flag and input before TensorFlow / Keras
are imported (6-11 s) and before any weights load: ``check_request`` (the
output folder, formats, alpha and ROI side of eq. (1)), ``resolve_source``
(exactly one source; a run folder's ``config.json``; the model config; a
weights file that is HDF5 with the config's widths, ``check_weights_file``, or
an existing checkpoint).  ``load_source_model`` then loads the training model,
turning whatever a bad file raises into one ``ExportError`` naming it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional, Sequence

from pfascannet import geometry
from pfascannet.inference.export_meta import FORMATS, ExportError
from pfascannet.layout import RunFolder
from pfascannet.model.config import ModelConfig, get_config


@dataclasses.dataclass(frozen=True)
class ExportSource:
    """The training model an export is made from.

    Attributes:
      config_name: its ``ModelConfig`` name (the flag, else the run's config.json).
      config: that config.
      weights: a ``.weights.h5`` (a run folder's ``final.weights.h5``), or None.
      checkpoint: a ``tf.train.Checkpoint`` prefix, or None.
      workdir: the training run folder, if the source is one.
      run_config: the run's ``config.json`` ({} without a run folder).
    """

    config_name: str
    config: ModelConfig
    weights: Optional[str]
    checkpoint: Optional[str]
    workdir: Optional[str] = None
    run_config: dict = dataclasses.field(default_factory=dict)

    @property
    def path(self) -> str:
        return self.weights or self.checkpoint

    def provenance(self) -> dict:
        """``export.json``'s ``extra``: the training run, its flat settings, the file loaded."""
        return {"training_run": os.path.abspath(self.workdir) if self.workdir else None,
                "training_settings": self.run_config.get("settings"), "source": os.path.abspath(self.path)}


def check_export(
    out: Optional[str],
    formats: Sequence[str],
    alpha: int,
    roi_px: int,
    *,
    workdir: Optional[str] = None,
    weights: Optional[str] = None,
    checkpoint: Optional[str] = None,
    config: Optional[str] = None,
) -> ExportSource:
    """Checks an export request, without Keras and without loading weights; returns its source.

    Args:
      out: the export folder (need not exist; must not be a file).
      formats: any of ``savedmodel``, ``keras``.
      alpha, roi_px: the export's grid (eq. (1)).
      workdir, weights, checkpoint: exactly one: a training run folder (its
        ``config.json`` and ``final.weights.h5``), a ``.weights.h5``, or a
        checkpoint prefix.
      config: the model config name; None: the run's ``config.json``'s.

    Raises:
      ExportError, GeometryError: what is wrong, naming the flag or file.
    """
    if not out:
        raise ExportError("--out is required")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ExportError(f"--out {out} exists and is not a folder")
    sources = [name for name, value in (("workdir", workdir), ("weights", weights), ("checkpoint", checkpoint))
               if value]
    if len(sources) != 1:
        raise ExportError(f"give exactly one of --workdir, --weights, --checkpoint (got {sources or 'none'})")
    geometry.ScanGeometry(alpha=alpha, roi_px=roi_px)
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ExportError(f"--formats must be a non-empty list of savedmodel, keras; got {formats}")
    run_config = _read_run_config(workdir) if workdir else {}
    config_name = config or (run_config.get("settings") or {}).get("config")
    if not config_name:
        raise ExportError("--config is required with --weights/--checkpoint")
    model_config = get_config(config_name)
    weights = RunFolder(workdir).final_weights if workdir else weights
    if weights is not None:
        check_weights_file(weights, model_config)
    elif not os.path.isfile(checkpoint + ".index"):
        raise ExportError(f"{checkpoint}: no such checkpoint (expected {checkpoint}.index)")
    return ExportSource(config_name, model_config, weights, None if weights else checkpoint, workdir, run_config)


def _read_run_config(workdir: str) -> dict:
    path = RunFolder(workdir).config_json
    if not os.path.exists(path):
        raise ExportError(f"{workdir}: no config.json; is it a training run folder?")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except ValueError as exc:
        raise ExportError(f"{path}: not valid JSON ({exc})") from None


def load_source_model(source: ExportSource):
    """The training model of ``source`` with its weights; a file that does not load is one ``ExportError``."""
    from pfascannet.inference import model_io  # noqa: PLC0415  (imports Keras)

    try:
        return (model_io.load_training_model(source.weights, source.config_name) if source.weights
                else model_io.load_checkpoint_model(source.checkpoint, source.config_name))
    except Exception as exc:  # noqa: BLE001  (h5py, Keras and tf.train raise anything for a bad file)
        text = " ".join(str(exc).split())[:300]
        raise ExportError(
            f"{source.path}: cannot be loaded into the {source.config_name!r} model ({type(exc).__name__}: {text}); "
            "a truncated file, or weights of another config?"
        ) from exc


_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def check_weights_file(path: str, config: ModelConfig, error: type[Exception] = ExportError) -> None:
    """A ``.weights.h5`` that exists, is HDF5, and whose conv kernels have ``config``'s widths."""
    if not os.path.isfile(path):
        raise error(f"{path}: no such weights file")
    with open(path, "rb") as f:
        head = f.read(8)
    if head != _HDF5_MAGIC:
        raise error(f"{path}: not a Keras .weights.h5 file (not HDF5: it starts with {head[:8]!r})")
    try:
        import h5py  # noqa: PLC0415  (comes with Keras; only this check needs it)
    except ImportError:  # pragma: no cover - h5py comes with Keras
        return
    try:
        with h5py.File(path, "r") as h5:
            kernels = []

            def visit(name, obj):
                # Keras 3 keeps a layer's kernel at layers/<name>/vars/0; the
                # trunk's first conv is the only 3x3 kernel on 3 (RGB) channels.
                if isinstance(obj, h5py.Dataset) and name.endswith("/vars/0") and obj.shape[:3] == (3, 3, 3):
                    kernels.append(int(obj.shape[3]))

            h5.visititems(visit)
    except Exception as exc:  # noqa: BLE001  (a truncated HDF5 file raises OSError, KeyError, ...)
        raise error(f"{path}: cannot be read as HDF5 ({type(exc).__name__}: {exc}); truncated or corrupt?") from None
    if kernels and config.widths[0] not in kernels:
        raise error(
            f"{path}: its first convolution has {kernels[0]} filters but config {config.name!r} has "
            f"{config.widths[0]}: weights of another config? (pass the matching --config)"
        )
