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
from typing import Optional

from absl import flags

from pfascannet import geometry
from pfascannet import settings as settings_lib
from pfascannet.inference import export_source
from pfascannet.model.precision import CHOICES as PRECISION_CHOICES
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
        "float32", choices=PRECISION_CHOICES,
        help="Compute precision of the export (Keras mixed precision; weights and softmax stay float32); "
             "auto: bfloat16 where this CPU has amx_bf16 or avx512_bf16, else float32.")
    out: Optional[str] = setting(None, help="Export folder.")


FLAGS = flags.FLAGS
SETTINGS = (ExportCommand,)
"""Every flag of the stage, generated from these dataclasses' fields (``pfascannet.settings``)."""
settings_lib.define_stage_flags(SETTINGS)


def main(argv):
    # Every flag and input is checked before TensorFlow / Keras are imported
    # (6-11 s) and before any weights load.
    source = export_source.check_export(FLAGS.out, FLAGS.formats, FLAGS.alpha, FLAGS.roi_px, workdir=FLAGS.workdir,
                                        weights=FLAGS.weights, checkpoint=FLAGS.checkpoint, config=FLAGS.config)

    from pfascannet.inference.export import export_detector  # noqa: PLC0415  (imports Keras)

    model = export_source.load_source_model(source)
    result = export_detector(
        model, source.config, FLAGS.out, alpha=FLAGS.alpha, roi_px=FLAGS.roi_px, formats=tuple(FLAGS.formats),
        precision=FLAGS.precision, extra=source.provenance(),
    )
    print(f"exported alpha={result['alpha']} roi={result['roi_px']} precision={result['precision']} "
          f"to {FLAGS.out}: {sorted(result['formats'])}")
