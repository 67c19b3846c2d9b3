"""Per-ROI speed of the detector by precision and XLA, interleaved; dense vs patch; peak RSS.

Zhao et al., MICCAI 2019, Table 1 (1.08 s per 2708 ROI on a TITAN Xp): the
network alone, random weights (speed does not depend on them), batch 1.
Every variant (precision x XLA x ROI side) is built once and warmed up once
(tracing, compilation); then the timed passes run interleaved, A B C A B C ...,
so that load from other processes falls on every variant alike, and the
median of each is reported.  Patch mode (alpha 1 on 692 patches) is timed per
precision on ``--patch_sample`` patches and extrapolated to the Lm^2 patches
that give the same map.  ``--rss`` runs each listed variant once in a fresh
child process, before the timing, and reports its peak RSS (the whole process: Python,
the framework, the model and one pass).

    python experiments/bench_precision.py --config paper --roi_px 2708 --precisions float32,bfloat16 \
        --xla off,on --repeats 3 --out /tmp/bench_precision.json
    python experiments/bench_precision.py --config tiny --roi_px 916 --repeats 1 --patch_sample 1   # smoke test

Under KERAS_BACKEND=jax XLA is always on (``--xla`` is ignored there).

``--train_steps N`` times the training step instead (issue 24): the trainer's
model (detector + decoder, ``build_training_model``) at each of
``--precisions``, eq. (3)'s synergistic loss, Adam, on ``--train_batch``
random 692 patches with random labels and 512 masks -- the same step as
``trainer._make_train_step`` without the distribution strategy and the input
pipeline.  Each precision is built and warmed up (one traced step), then N
steps per precision run interleaved, and the median step is reported::

    python experiments/bench_precision.py --config small --precisions float32,bfloat16 --train_steps 4 \
        --train_batch 8 --out /tmp/bench_train_precision.json
"""

from __future__ import annotations

import os
import platform
import statistics
import time

import numpy as np
from absl import flags

from pfascannet import cliutil, geometry
from pfascannet.io_utils import write_json
from pfascannet.model.config import get_config
from pfascannet.model.equivalence import structured_roi
from pfascannet.model.precision import check_precision

import bench_util  # experiments/bench_util.py, beside this script

FLAGS = flags.FLAGS
flags.DEFINE_string("config", "paper", "Model config: paper or tiny.")
flags.DEFINE_integer("alpha", geometry.PAPER_ALPHA, "Dense coefficient.")
flags.DEFINE_list("roi_px", ["2708"], "ROI sides LR to time (each on the grid of eq. (1) at alpha).")
flags.DEFINE_list("precisions", ["float32", "bfloat16"], "Precisions to time: float32, bfloat16, float16.")
flags.DEFINE_list("xla", ["off"], "XLA settings to time (TensorFlow backend): off, on.")
flags.DEFINE_integer("repeats", 2, "Timed interleaved rounds (after one warm-up pass per variant).")
flags.DEFINE_integer("patch_sample", 2, "Patches timed per precision in patch mode (0: skip patch mode).")
flags.DEFINE_list("rss", [], "Variants PRECISION:ROI:XLA to run once each in a fresh process for peak RSS.")
flags.DEFINE_string("out", None, "Write the results as JSON here.")
flags.DEFINE_string("_child", None, "Internal: PRECISION:ROI:XLA to run once, printing JSON.")
flags.DEFINE_integer("train_steps", 0, "If > 0: time this many training steps per precision instead of inference.")
flags.DEFINE_integer("batch", 1, "ROIs per model call in the dense timing (times are reported per ROI).")
flags.DEFINE_integer("train_batch", 8, "Patches per training step (--train_steps).")


def _build(config, precision: str, lr: int, xla: bool):
    import keras  # noqa: PLC0415

    from pfascannet.model.detector import build_detector  # noqa: PLC0415  (imports Keras)

    model = build_detector(config, alpha=FLAGS.alpha, input_px=lr, precision=precision)
    if keras.backend.backend() == "tensorflow":
        model.jit_compile = xla
    return model


def _parse_variant(text: str) -> tuple[str, int, bool]:
    try:
        precision, lr, xla = text.split(":")
        return precision, int(lr), xla == "on"
    except ValueError:
        raise bench_util.BenchError(f"a variant is PRECISION:ROI:XLA (e.g. bfloat16:2708:off), got {text!r}") from None


def _child(text: str) -> None:
    precision, lr, xla = _parse_variant(text)
    model = _build(get_config(FLAGS.config), precision, lr, xla)
    roi = structured_roi(lr)[None].astype(np.float32)
    t0 = time.perf_counter()
    model.predict_on_batch(roi)
    bench_util.report({"variant": text, "first_pass_s": time.perf_counter() - t0,
                       "peak_rss_gb": bench_util.peak_rss_mib() / 1024})


def _train_variant(config, precision: str, batch: int, seed: int):
    """A compiled training step of ``precision`` on a fixed random batch (the trainer's step, one replica)."""
    import keras  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    from pfascannet.model.decoder import decoder_targets  # noqa: PLC0415
    from pfascannet.model.detector import build_training_model  # noqa: PLC0415
    from pfascannet.model.losses import SynergisticLoss  # noqa: PLC0415
    from pfascannet.model.precision import dtype_policy  # noqa: PLC0415

    keras.utils.set_random_seed(seed)
    with dtype_policy(precision):
        model = build_training_model(config)
    optimizer = keras.optimizers.Adam(learning_rate=1e-4)
    if precision == "float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    optimizer.build(model.trainable_variables)
    loss_fn = SynergisticLoss(gamma=0.04, lam=0.5, synergistic=True)
    rng = np.random.default_rng(seed)
    image = tf.constant(np.stack([structured_roi(geometry.PATCH_PX, seed=i) for i in range(batch)]).astype(np.float32))
    labels = tf.constant(rng.integers(0, 2, batch).astype(np.int32))
    masks = tf.constant((rng.random((batch, 512, 512)) < 0.3).astype(np.float32))
    variables = model.trainable_variables

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            outputs = model(image, training=True)
            if precision != "float32":
                outputs = {k: tf.cast(v, tf.float32) for k, v in outputs.items()}
            losses = loss_fn(labels, decoder_targets(masks), outputs)
            scaled = optimizer.scale_loss(losses["total"]) if precision == "float16" else losses["total"]
        grads = tape.gradient(scaled, variables)
        optimizer.apply_gradients([(g, v) for g, v in zip(grads, variables) if g is not None])
        return losses["total"]

    return step


def _train_bench(config, precisions) -> list:
    variants = []
    for precision in precisions:
        step = _train_variant(config, precision, FLAGS.train_batch, 0)
        t0 = time.perf_counter()
        loss = float(step())  # warm-up: tracing, allocation
        warm = time.perf_counter() - t0
        variants.append({"precision": precision, "step": step, "warmup_s": warm, "first_loss": loss, "times": []})
        print(f"built training step {precision}: warm-up {warm:.1f} s, loss {loss:.4f}", flush=True)
    for r in range(FLAGS.train_steps):
        for v in variants:
            t0 = time.perf_counter()
            v["last_loss"] = float(v["step"]())
            v["times"].append(time.perf_counter() - t0)
        print(f"step {r + 1}: " + " | ".join(f"{v['precision']} {v['times'][-1]:.2f} s" for v in variants), flush=True)
    base = next((statistics.median(v["times"]) for v in variants if v["precision"] == "float32"), None)
    results = []
    for v in variants:
        med = statistics.median(v["times"])
        row = {k: v[k] for k in ("precision", "warmup_s", "first_loss", "last_loss", "times")}
        row.update(s_per_step=med, patches_per_s=FLAGS.train_batch / med,
                   speedup_vs_float32=(base / med) if base else None)
        results.append(row)
        print(f"train {v['precision']:8s}: {med:.2f} s/step (median of {len(v['times'])}, batch {FLAGS.train_batch}) "
              f"| {FLAGS.train_batch / med:.2f} patches/s" + (f" | {base / med:.2f}x float32" if base else ""),
              flush=True)
    return results


def main(argv):
    del argv
    if FLAGS._child:
        _child(FLAGS._child)
        return
    if FLAGS.train_steps:
        import keras  # noqa: PLC0415

        config = get_config(FLAGS.config)
        load_before = os.getloadavg()
        results = _train_bench(config, [check_precision(p) for p in FLAGS.precisions])
        if FLAGS.out:
            write_json(FLAGS.out, {
                "mode": "training", "config": config.to_dict(), "train_batch": FLAGS.train_batch,
                "train_steps": FLAGS.train_steps, "backend": keras.backend.backend(), "keras": keras.__version__,
                "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
                "load_average_before": load_before, "load_average_after": os.getloadavg(),
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "results": results,
            })
        return
    import keras  # noqa: PLC0415

    from pfascannet.model.detector import build_patch_classifier, detector_macs  # noqa: PLC0415  (imports Keras)

    sizes = bench_util.roi_sides(FLAGS.roi_px, FLAGS.alpha)
    precisions = [check_precision(p) for p in FLAGS.precisions]
    if any(x not in ("off", "on") for x in FLAGS.xla):
        raise bench_util.BenchError(f"--xla takes off and/or on, got {FLAGS.xla}")
    backend = keras.backend.backend()
    xlas = [x == "on" for x in FLAGS.xla] if backend == "tensorflow" else [True]
    if FLAGS.repeats < 1 or FLAGS.patch_sample < 0:
        raise bench_util.BenchError("--repeats must be >= 1 and --patch_sample >= 0")
    for v in FLAGS.rss:
        _parse_variant(v)
    config = get_config(FLAGS.config)

    # Peak RSS first, one fresh child per variant, while this process holds no
    # model: a parent holding the timed models' memory pool beside a large
    # child can exhaust the machine's RAM.
    rss = []
    for text in FLAGS.rss:
        try:
            rss.append(bench_util.run_child(bench_util.child_command(
                __file__, f"--_child={text}", f"--config={FLAGS.config}", f"--alpha={FLAGS.alpha}")))
        except bench_util.ChildFailed as exc:
            rss.append({"variant": text, "error": exc.last_line, "returncode": exc.returncode})
        print(f"peak RSS {text}: {rss[-1]}", flush=True)

    variants = []
    for lr in sizes:
        for precision in precisions:
            for xla in xlas:
                model = _build(config, precision, lr, xla)
                roi = np.repeat(structured_roi(lr)[None].astype(np.float32), FLAGS.batch, axis=0)
                t0 = time.perf_counter()
                model.predict_on_batch(roi)  # warm-up: tracing / compilation / allocation
                warm = time.perf_counter() - t0
                variants.append({"model": model, "roi": roi, "roi_px": lr, "precision": precision,
                                 "xla": xla, "warmup_s": warm, "times": []})
                print(f"built {precision} LR {lr} xla={'on' if xla else 'off'}: warm-up {warm:.1f} s", flush=True)
    for r in range(FLAGS.repeats):
        for v in variants:
            t0 = time.perf_counter()
            v["model"].predict_on_batch(v["roi"])
            v["times"].append((time.perf_counter() - t0) / FLAGS.batch)
        print(f"round {r + 1}: " + " | ".join(f"{v['precision']}/{v['roi_px']}/{'xla' if v['xla'] else 'noxla'} "
                                              f"{v['times'][-1]:.2f} s" for v in variants), flush=True)

    per_patch = {}
    if FLAGS.patch_sample:
        n = FLAGS.patch_sample
        patches = np.stack([structured_roi(geometry.PATCH_PX, seed=i) for i in range(n)]).astype(np.float32)
        for precision in precisions:
            model = build_patch_classifier(config, precision=precision)
            model.predict_on_batch(patches[:1])
            t0 = time.perf_counter()
            for i in range(n):
                model.predict_on_batch(patches[i:i + 1])
            per_patch[precision] = (time.perf_counter() - t0) / n
            print(f"patch classifier {precision}: {per_patch[precision]:.3f} s/patch", flush=True)

    results = []
    for v in variants:
        lm = geometry.tile_px(v["roi_px"], FLAGS.alpha)
        dense_s = statistics.median(v["times"])
        row = {k: v[k] for k in ("roi_px", "precision", "xla", "warmup_s", "times")}
        row.update(tile_px=lm, dense_s_per_roi=dense_s, gmac_per_roi=detector_macs(v["roi_px"], config, FLAGS.alpha) / 1e9,
                   map_mpx_per_s=lm * lm * geometry.output_stride_px(FLAGS.alpha) ** 2 / dense_s / 1e6)
        if v["precision"] in per_patch:
            row["patch_s_per_roi_extrapolated"] = per_patch[v["precision"]] * lm * lm
            row["dense_vs_patch"] = row["patch_s_per_roi_extrapolated"] / dense_s
        results.append(row)
    base = {(r["roi_px"], r["xla"]): r["dense_s_per_roi"] for r in results if r["precision"] == "float32"}
    for r in results:
        ref = base.get((r["roi_px"], r["xla"]))
        ratio = f" | {ref / r['dense_s_per_roi']:.2f}x float32" if ref else ""
        patch = f" | dense/patch {r['dense_vs_patch']:.0f}x" if "dense_vs_patch" in r else ""
        print(f"LR {r['roi_px']:5d} {r['precision']:8s} xla={'on ' if r['xla'] else 'off'}: "
              f"{r['dense_s_per_roi']:7.2f} s/ROI (median of {len(r['times'])}) | "
              f"{r['map_mpx_per_s']:.3f} Mpx of map/s{ratio}{patch}", flush=True)

    if FLAGS.out:
        write_json(FLAGS.out, {
            "config": config.to_dict(), "alpha": FLAGS.alpha, "repeats": FLAGS.repeats,
            "patch_sample": FLAGS.patch_sample, "patch_s_per_patch": per_patch, "batch": FLAGS.batch,
            "threads_env": {k: os.environ.get(k) for k in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS",
                                                           "OMP_NUM_THREADS", "ONEDNN_VERBOSE")},
            "backend": backend, "keras": keras.__version__, "cpu_count": os.cpu_count(),
            "machine": platform.processor() or platform.machine(),
            "load_average": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "results": results, "peak_rss": rss,
        })


if __name__ == "__main__":
    cliutil.run_main(main)
