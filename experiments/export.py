"""Export a trained detector at a chosen alpha: SavedModel + .keras + export.json.

Zhao et al., MICCAI 2019, Sec. 2.2: only the detector is used for inference
(the decoder serves training); it takes ROIs of eq. (1) and, at dense
coefficient alpha, outputs a map at stride 512/alpha.  The weights of the
training model serve every alpha (layers matched by name).

Examples::

    python experiments/export.py --workdir=runs/tiny --out=runs/tiny/export_a16
    python experiments/export.py --weights=w.weights.h5 --config=paper --alpha=32 --roi_px=2708 --out=exp
"""

from __future__ import annotations

import json
import os
import sys

from absl import flags

if __package__ in (None, ""):  # run as a script from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pfascannet.cliutil import run_main  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A training run folder (uses its final.weights.h5 and config.json).")
flags.DEFINE_string("weights", None, "A .weights.h5 of the training model (instead of --workdir).")
flags.DEFINE_string("checkpoint", None, "A checkpoint prefix (e.g. runs/x/checkpoints/ckpt-200) instead.")
flags.DEFINE_string("config", None, "Model config (tiny/paper); default: the run's config.json.")
flags.DEFINE_integer("alpha", 16, "Dense coefficient: 1, 2, 4, 8, 16 or 32 (paper: 16).")
flags.DEFINE_integer("roi_px", 2708, "ROI side LR of the SavedModel signature (eq. (1); paper: 2708).")
flags.DEFINE_list("formats", ["savedmodel", "keras"], "Any of savedmodel, keras.")
flags.DEFINE_string("out", None, "Export folder.")


def main(argv):
    from pfascannet.inference.export import export_detector  # noqa: PLC0415
    from pfascannet.training import trainer  # noqa: PLC0415

    if len(argv) > 1:
        raise trainer.TrainingError(f"unexpected arguments {argv[1:]}")
    if not FLAGS.out:
        raise trainer.TrainingError("--out is required")
    sources = [f for f in ("workdir", "weights", "checkpoint") if getattr(FLAGS, f)]
    if len(sources) != 1:
        raise trainer.TrainingError(f"give exactly one of --workdir, --weights, --checkpoint (got {sources or 'none'})")
    run_config = {}
    if FLAGS.workdir:
        path = os.path.join(FLAGS.workdir, "config.json")
        if not os.path.exists(path):
            raise trainer.TrainingError(f"{FLAGS.workdir}: no config.json; is it a training run folder?")
        with open(path, encoding="utf-8") as f:
            run_config = json.load(f)
    config_name = FLAGS.config or run_config.get("settings", {}).get("config")
    if not config_name:
        raise trainer.TrainingError("--config is required with --weights/--checkpoint")
    result = trainer.export_trained(
        out_dir=FLAGS.out, config_name=config_name, alpha=FLAGS.alpha, roi_px=FLAGS.roi_px,
        formats=tuple(FLAGS.formats), weights=os.path.join(FLAGS.workdir, "final.weights.h5") if FLAGS.workdir
        else FLAGS.weights, checkpoint=FLAGS.checkpoint, export_fn=export_detector,
        extra={"training_run": os.path.abspath(FLAGS.workdir) if FLAGS.workdir else None,
               "training_settings": run_config.get("settings")},
    )
    print(f"exported alpha={result['alpha']} roi={result['roi_px']} to {FLAGS.out}: {sorted(result['formats'])}")


if __name__ == "__main__":
    run_main(main)
