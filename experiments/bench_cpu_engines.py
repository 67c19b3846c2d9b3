"""TensorFlow's oneDNN path vs a dedicated CPU inference engine (OpenVINO), on the same SavedModel.

Issue 24.  One detector with random weights (seeded; speed does not depend on
them; ``--weights`` for trained ones) is exported with ``pfascannet export``'s library call
(``export.export_detector``) at float32 and at bfloat16, and each variant
reads the export's ``saved_model/``:

* ``tf:float32``, ``tf:bfloat16``: ``export.load_detector`` (TensorFlow, oneDNN),
  the float32 and the bfloat16 SavedModel respectively (a TensorFlow
  SavedModel computes at the precision it was exported with);
* ``openvino:f32``, ``openvino:bf16``: ``openvino.convert_model`` of the
  *float32* SavedModel, compiled for the CPU with ``INFERENCE_PRECISION_HINT``
  ``f32`` / ``bf16`` (OpenVINO lowers the precision itself; on a CPU
  without native bf16 it refuses or falls back, which the JSON records).

Every variant is loaded and warmed up once, then the timed passes run
interleaved (A B C D A B C D ...) so that load from other processes falls on
every variant alike; medians are reported.  Each variant's map is compared
with ``tf:float32``'s (max |difference| of the tumour probability) and with
the bound of its precision (``precision.EQUIVALENCE_TOLERANCE``).

    python experiments/bench_cpu_engines.py --config paper --roi_px 1204 --repeats 3 --out /tmp/engines.json
    python experiments/bench_cpu_engines.py --config tiny --roi_px 916 --repeats 1   # smoke test

The JSON records the CPU (``lscpu`` model name, whether amx_bf16 /
avx512_bf16 are present), the load average before and after, and the
versions of TensorFlow, Keras and OpenVINO.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import tempfile
import time

import numpy as np
from absl import flags

from pfascannet import cliutil, geometry
from pfascannet.errors import PfaError
from pfascannet.io_utils import write_json
from pfascannet.model import precision as precision_lib
from pfascannet.model.config import get_config
from pfascannet.model.equivalence import structured_roi

FLAGS = flags.FLAGS
flags.DEFINE_enum("config", "small", ["tiny", "small", "paper"], "Model config.")
flags.DEFINE_integer("alpha", geometry.PAPER_ALPHA, "Dense coefficient.")
flags.DEFINE_integer("roi_px", 1204, "ROI side LR (on the grid of eq. (1) at alpha; paper: 2708).")
flags.DEFINE_integer("repeats", 3, "Timed interleaved rounds (after one warm-up pass per variant).")
flags.DEFINE_list("variants", ["tf:float32", "tf:bfloat16", "openvino:f32", "openvino:bf16"],
                  "ENGINE:PRECISION to time (tf:float32|bfloat16, openvino:f32|bf16).")
flags.DEFINE_integer("ov_threads", 0, "OpenVINO INFERENCE_NUM_THREADS (0: its default, all cores).")
flags.DEFINE_string("weights", "random",
                    "random (seeded), or a .weights.h5 of --config (e.g. pfascannet/weights/demo.weights.h5 for "
                    "small): trained weights give a map with a real range, so the agreement check means more.")
flags.DEFINE_string("workdir", None, "Where to write the exports (default: a temporary folder).")
flags.DEFINE_integer("seed", 0, "Seed of the random weights and of the ROI.")
flags.DEFINE_string("out", None, "Write the results as JSON here.")


class BenchError(PfaError):
    """Bad benchmark settings."""


OV_PRECISION = {"f32": "float32", "bf16": "bfloat16"}


def cpu_description() -> dict:
    """``lscpu``'s model name, the bf16-relevant /proc/cpuinfo flags, core count and load."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("Model name")), None)
    except OSError:
        model = None
    found = precision_lib.read_cpu_flags() or frozenset()
    return {
        "lscpu_model": model or platform.processor() or platform.machine(),
        "flags": {f: f in found for f in ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2")},
        "cpu_count": os.cpu_count(),
        "auto_precision": precision_lib.choose_precision("auto").line(),
    }


def _export(config, precision: str, out_dir: str) -> str:
    import keras  # noqa: PLC0415

    from pfascannet.inference import export  # noqa: PLC0415  (imports Keras)
    from pfascannet.model.detector import build_patch_classifier  # noqa: PLC0415

    keras.utils.set_random_seed(FLAGS.seed)
    if FLAGS.weights == "random":
        model = build_patch_classifier(config)
    else:
        from pfascannet.inference.model_io import load_training_model  # noqa: PLC0415

        model = load_training_model(FLAGS.weights, FLAGS.config)
    export.export_detector(model, config, out_dir, alpha=FLAGS.alpha, roi_px=FLAGS.roi_px,
                           formats=("savedmodel",), precision=precision)
    return out_dir


def _tf_variant(export_dir: str):
    from pfascannet.inference import export  # noqa: PLC0415

    det = export.load_detector(export_dir, format="savedmodel", xla="off")
    return det.predict


def _ov_variant(saved_model_dir: str, hint: str):
    import openvino as ov  # noqa: PLC0415

    core = ov.Core()
    t0 = time.perf_counter()
    model = ov.convert_model(saved_model_dir)
    convert_s = time.perf_counter() - t0
    config = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
    if FLAGS.ov_threads:
        config["INFERENCE_NUM_THREADS"] = FLAGS.ov_threads
    compiled = core.compile_model(model, "CPU", config)
    out_port = next((o for o in compiled.outputs if "tumour_probability" in o.get_names()), compiled.outputs[0])
    request = compiled.create_infer_request()
    info = {"convert_s": convert_s,
            "inputs": [str(i.get_partial_shape()) + " " + str(i.get_element_type()) for i in compiled.inputs],
            "execution_precision": str(compiled.get_property("INFERENCE_PRECISION_HINT"))}

    def predict(rois: np.ndarray) -> np.ndarray:
        result = request.infer({0: rois})
        return np.asarray(result[out_port], dtype=np.float32)

    return predict, info


def main(argv):
    del argv
    geometry.ScanGeometry(alpha=FLAGS.alpha, roi_px=FLAGS.roi_px)
    if FLAGS.repeats < 1:
        raise BenchError("--repeats must be >= 1")
    variants = []
    for text in FLAGS.variants:
        engine_name, _, prec = text.partition(":")
        if (engine_name, prec) not in {("tf", "float32"), ("tf", "bfloat16"), ("openvino", "f32"), ("openvino", "bf16")}:
            raise BenchError(f"a variant is tf:float32, tf:bfloat16, openvino:f32 or openvino:bf16, got {text!r}")
        variants.append((engine_name, prec))
    import keras  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    from pfascannet.inference.export import SAVED_MODEL_DIR  # noqa: PLC0415

    config = get_config(FLAGS.config)
    load_before = os.getloadavg()
    workdir = FLAGS.workdir or tempfile.mkdtemp(prefix="bench_cpu_engines_")
    exports = {}
    for prec in sorted({"float32"} | {p for e, p in variants if e == "tf"}):
        t0 = time.perf_counter()
        exports[prec] = _export(config, prec, os.path.join(workdir, f"export_{prec}"))
        print(f"exported {prec} to {exports[prec]} in {time.perf_counter() - t0:.1f} s", flush=True)

    roi = structured_roi(FLAGS.roi_px, seed=FLAGS.seed)[None]  # uint8 [1, LR, LR, 3], as a scan feeds it
    roi = np.clip(roi, 0, 255).astype(np.uint8)
    rows, versions = [], {"tensorflow": tf.__version__, "keras": keras.__version__}
    for engine_name, prec in variants:
        row = {"engine": engine_name, "precision": prec, "times": []}
        try:
            if engine_name == "tf":
                fn = _tf_variant(exports[prec])
            else:
                import openvino  # noqa: PLC0415

                versions["openvino"] = openvino.__version__
                fn, info = _ov_variant(os.path.join(exports["float32"], SAVED_MODEL_DIR), prec)
                row.update(info)
            t0 = time.perf_counter()
            row["map"] = fn(roi)
            row["warmup_s"] = time.perf_counter() - t0
            row["fn"] = fn
        except Exception as exc:  # noqa: BLE001  (an engine that cannot read the export is a result too)
            row["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:400]}"
        print(f"{engine_name}:{prec}: " + (f"warm-up {row['warmup_s']:.1f} s" if "fn" in row else row["error"]),
              flush=True)
        rows.append(row)

    live = [r for r in rows if "fn" in r]
    for rnd in range(FLAGS.repeats):
        for r in live:
            t0 = time.perf_counter()
            r["fn"](roi)
            r["times"].append(time.perf_counter() - t0)
        print(f"round {rnd + 1}: " + " | ".join(f"{r['engine']}:{r['precision']} {r['times'][-1]:.2f} s"
                                               for r in live), flush=True)

    reference = next((r for r in live if (r["engine"], r["precision"]) == ("tf", "float32")), None)
    ref_s = statistics.median(reference["times"]) if reference else None
    for r in live:
        r["s_per_roi"] = statistics.median(r["times"])
        r["map_range"] = [float(r["map"].min()), float(r["map"].max())]  # a flat map would make the diffs moot
        if reference is not None:
            prec = OV_PRECISION.get(r["precision"], r["precision"])
            r["max_abs_diff_vs_tf_float32"] = float(np.abs(r["map"] - reference["map"]).max())
            r["bound"] = precision_lib.EQUIVALENCE_TOLERANCE[prec]
            r["within_bound"] = r["max_abs_diff_vs_tf_float32"] <= r["bound"]
            r["speedup_vs_tf_float32"] = ref_s / r["s_per_roi"]
        same_prec = next((o for o in live if o["engine"] == "tf"
                          and o["precision"] == OV_PRECISION.get(r["precision"], r["precision"])), None)
        if same_prec is not None and r["engine"] != "tf":
            r["speedup_vs_tf_same_precision"] = statistics.median(same_prec["times"]) / r["s_per_roi"]
            r["max_abs_diff_vs_tf_same_precision"] = float(np.abs(r["map"] - same_prec["map"]).max())
        print(f"{r['engine']:8s} {r['precision']:8s}: {r['s_per_roi']:7.2f} s/ROI (median of {len(r['times'])})"
              + (f" | {r['speedup_vs_tf_float32']:.2f}x tf:float32 | max|diff| vs tf:float32 "
                 f"{r['max_abs_diff_vs_tf_float32']:.2e} (bound {r['bound']:g})" if reference else "")
              + (f" | {r['speedup_vs_tf_same_precision']:.2f}x tf at its precision, max|diff| "
                 f"{r['max_abs_diff_vs_tf_same_precision']:.2e}" if "speedup_vs_tf_same_precision" in r else ""),
              flush=True)

    if FLAGS.out:
        from pfascannet.model.detector import detector_macs  # noqa: PLC0415

        write_json(FLAGS.out, {
            "config": FLAGS.config, "weights": FLAGS.weights, "alpha": FLAGS.alpha, "roi_px": FLAGS.roi_px, "repeats": FLAGS.repeats,
            "gmac_per_roi": detector_macs(FLAGS.roi_px, config, FLAGS.alpha) / 1e9,
            "cpu": cpu_description(), "load_average_before": load_before, "load_average_after": os.getloadavg(),
            "versions": versions, "backend": keras.backend.backend(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "results": [{k: v for k, v in r.items() if k not in ("fn", "map")} for r in rows],
        })
        print(json.dumps({"wrote": FLAGS.out}))


if __name__ == "__main__":
    cliutil.run_main(main)
