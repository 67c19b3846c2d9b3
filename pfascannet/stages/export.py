"""Export a trained detector at a chosen alpha: SavedModel + .keras + export.json.

Zhao et al., MICCAI 2019, Sec. 2.2: only the detector is used for inference
(the decoder serves training); it takes ROIs of eq. (1) and, at dense
coefficient alpha, outputs a map at stride 512/alpha.  The weights of the
training model serve every alpha (layers matched by name).

Examples::

    pfascannet export --workdir=runs/tiny --out=runs/tiny/export_a16
    pfascannet export --weights=w.weights.h5 --config=paper --alpha=32 --roi_px=2708 --out=exp
    pfascannet export --workdir=runs/paper --precision=bfloat16 --out=runs/paper/export_bf16

Exit status (README): 0 exported, 2 bad flags or inputs (a missing, corrupt or
mismatched weights file: one ``error:`` line naming it).  A killed export
leaves hidden temporaries that the next export into the same folder removes.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional

from absl import flags

from pfascannet import geometry
from pfascannet import settings as settings_lib
from pfascannet.inference.export_meta import ExportError
from pfascannet.layout import RunFolder
from pfascannet.model.config import get_config
from pfascannet.model.precision import PRECISIONS
from pfascannet.settings import setting


@dataclasses.dataclass(frozen=True)
class ExportCommand:
    """The flags of ``pfascannet export``."""

    workdir: Optional[str] = setting(None, help="A training run folder (uses its final.weights.h5 and config.json).")
    weights: Optional[str] = setting(None, help="A .weights.h5 of the training model (instead of --workdir).")
    checkpoint: Optional[str] = setting(
        None, help="A checkpoint prefix (e.g. runs/x/checkpoints/ckpt-200) instead.")
    config: Optional[str] = setting(None, help="Model config (tiny/paper); default: the run's config.json.")
    alpha: int = setting(geometry.PAPER_ALPHA, help="Dense coefficient: 1, 2, 4, 8, 16 or 32 (paper: 16).")
    roi_px: int = setting(geometry.PAPER_ROI_PX,
                          help="ROI side LR of the SavedModel signature (eq. (1); paper: 2708).")
    formats: tuple[str, ...] = setting(("savedmodel", "keras"), help="Any of savedmodel, keras.")
    precision: str = setting(
        "float32", choices=PRECISIONS,
        help="Compute precision of the export (Keras mixed precision; weights and softmax stay float32).")
    out: Optional[str] = setting(None, help="Export folder.")


FLAGS = flags.FLAGS
SETTINGS = (ExportCommand,)
"""Every flag of the stage, generated from these dataclasses' fields (``pfascannet.settings``)."""
settings_lib.define_stage_flags(SETTINGS)


def main(argv):
    # Every flag and input is checked before TensorFlow / Keras are imported
    # (6-11 s) and before any weights load.
    if not FLAGS.out:
        raise ExportError("--out is required")
    if os.path.exists(FLAGS.out) and not os.path.isdir(FLAGS.out):
        raise ExportError(f"--out {FLAGS.out} exists and is not a folder")
    sources = [f for f in ("workdir", "weights", "checkpoint") if getattr(FLAGS, f)]
    if len(sources) != 1:
        raise ExportError(f"give exactly one of --workdir, --weights, --checkpoint (got {sources or 'none'})")
    geometry.ScanGeometry(alpha=FLAGS.alpha, roi_px=FLAGS.roi_px)
    bad = [f for f in FLAGS.formats if f not in ("savedmodel", "keras")]
    if bad or not FLAGS.formats:
        raise ExportError(f"--formats must be a non-empty list of savedmodel, keras; got {FLAGS.formats}")
    run_config = {}
    if FLAGS.workdir:
        path = RunFolder(FLAGS.workdir).config_json
        if not os.path.exists(path):
            raise ExportError(f"{FLAGS.workdir}: no config.json; is it a training run folder?")
        try:
            with open(path, encoding="utf-8") as f:
                run_config = json.load(f)
        except ValueError as exc:
            raise ExportError(f"{path}: not valid JSON ({exc})") from None
    config_name = FLAGS.config or (run_config.get("settings") or {}).get("config")
    if not config_name:
        raise ExportError("--config is required with --weights/--checkpoint")
    config = get_config(config_name)
    weights = RunFolder(FLAGS.workdir).final_weights if FLAGS.workdir else FLAGS.weights
    if weights is not None:
        _check_weights_file(weights, config, ExportError)
    elif not os.path.isfile(FLAGS.checkpoint + ".index"):
        raise ExportError(f"{FLAGS.checkpoint}: no such checkpoint (expected {FLAGS.checkpoint}.index)")

    from pfascannet.inference.export import export_detector  # noqa: PLC0415  (imports Keras)
    from pfascannet.inference import model_io  # noqa: PLC0415  (imports Keras)

    source = weights or FLAGS.checkpoint
    try:
        model = (model_io.load_training_model(weights, config_name) if weights
                 else model_io.load_checkpoint_model(FLAGS.checkpoint, config_name))
    except Exception as exc:  # noqa: BLE001  (h5py, Keras and tf.train raise anything for a bad file)
        text = " ".join(str(exc).split())[:300]
        raise ExportError(
            f"{source}: cannot be loaded into the {config_name!r} model ({type(exc).__name__}: {text}); "
            "a truncated file, or weights of another config?"
        ) from exc
    result = export_detector(
        model, config, FLAGS.out, alpha=FLAGS.alpha, roi_px=FLAGS.roi_px, formats=tuple(FLAGS.formats),
        precision=FLAGS.precision,
        extra={"training_run": os.path.abspath(FLAGS.workdir) if FLAGS.workdir else None,
               "training_settings": run_config.get("settings"), "source": os.path.abspath(source)},
    )
    print(f"exported alpha={result['alpha']} roi={result['roi_px']} precision={result['precision']} "
          f"to {FLAGS.out}: {sorted(result['formats'])}")


_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def _check_weights_file(path: str, config, error) -> None:
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
