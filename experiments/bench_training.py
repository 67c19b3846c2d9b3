"""Training benchmark: the `tiny` config on a synthetic cohort, patch AUC on held-out slides.

The acceptance benchmark of the trainer (Zhao et al., MICCAI 2019, Sec. 2.3):
train the ``tiny`` config (the paper's geometry, narrow widths) for at most
``--minutes`` on this machine, then measure

* patch-level AUC on the held-out (``test`` split) synthetic slides: random
  tumour/normal patches (the goal is >= 0.95), and separately with boundary
  and ITC patches added (harder);
* input-pipeline patches/s (slide reads + augmentation, tf.data, alone)
  beside trainer patches/s (optimisation steps alone), so one sees whether
  the pipeline keeps the trainer fed.

The trained weights are written to ``--out_weights`` with a JSON beside them
(same stem, ``.json``) recording the command, seeds, settings and results;
``pfascannet demo`` ships ``pfascannet/weights/tiny_demo.weights.h5`` made
this way.  Results on synthetic slides measure the pipeline, not clinical
accuracy.

The paper's learning rate (1e-4) fine-tunes an ImageNet VGG16 for days; this
from-scratch run uses ``--learning_rate=0.002`` by default (stated in the
JSON).

Example (the full benchmark, about 25 minutes on 2 cores)::

    python experiments/bench_training.py --workdir=/tmp/bench_train --minutes=20 \\
        --out_weights=pfascannet/weights/tiny_demo.weights.h5
"""

from __future__ import annotations

import os
import shutil
import sys
import time

from absl import flags

from pfascannet.cliutil import run_main

FLAGS = flags.FLAGS
flags.DEFINE_string("data", None, "Cohort folder; default: generate one in <workdir>/cohort.")
flags.DEFINE_string("workdir", None, "Run folder (training run in <workdir>/train).")
flags.DEFINE_float("minutes", 20.0, "Training time limit (minutes).")
flags.DEFINE_integer("steps", 100000, "Step limit (the time limit usually ends the run first).")
flags.DEFINE_integer("batch_size", 8, "Global batch size.")
flags.DEFINE_float("learning_rate", 0.002, "SGD learning rate (paper: 1e-4 from ImageNet weights).")
flags.DEFINE_integer("seed", 0, "Training seed (sampling, init, augmentation).")
flags.DEFINE_integer("cohort_seed", 0, "Seed of the generated cohort.")
flags.DEFINE_integer("random_per_class", 256, "Training random patches per class.")
flags.DEFINE_integer("boundary", 128, "Training boundary patches.")
flags.DEFINE_integer("itc", 64, "Training ITC patches.")
flags.DEFINE_integer("eval_per_class", 100, "Held-out random patches per class for the AUC.")
flags.DEFINE_integer("eval_boundary", 20, "Held-out boundary patches (second AUC).")
flags.DEFINE_integer("eval_itc", 20, "Held-out ITC patches (second AUC).")
flags.DEFINE_integer("pipeline_batches", 8, "Batches timed for the input-pipeline throughput.")
flags.DEFINE_string("out_weights", None, "Where to copy the final weights (default <workdir>/tiny_bench.weights.h5).")

# Every patient has tumour and normal nodes, so the held-out patient does too.
COHORT = dict(
    patients=4, nodes_per_patient=3, slide_size=4096, mpp=0.243, test_fraction=0.25,
    node_labels=[["macro", "itc", "negative"], ["micro", "negative", "itc"],
                 ["macro", "micro", "negative"], ["micro", "itc", "negative"]],
)


def pipeline_throughput(sampler, samples, batch_size: int, batches: int, seed: int) -> float:
    """Patches/s of the augmented slide stream alone (first batch excluded: warm-up)."""
    from pfascannet.data import pipeline  # noqa: PLC0415

    reader = pipeline.PatchReader(sampler)
    it = iter(pipeline.slide_dataset(samples, reader, batch_size=batch_size, seed=seed))
    next(it)
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    rate = batches * batch_size / (time.perf_counter() - t)
    reader.close()
    return rate


def patch_auc(weights: str, data: str, seed: int, per_class: int, boundary: int, itc: int) -> dict:
    """Patch-level AUC of the classifier on the test split (random; random + boundary + ITC)."""
    import numpy as np  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415
    from sklearn.metrics import roc_auc_score  # noqa: PLC0415

    from pfascannet.data import pipeline, sampling  # noqa: PLC0415
    from pfascannet.inference.model_io import load_training_model  # noqa: PLC0415

    slides = sampling.load_cohort(data, "test")
    sampler = sampling.PatchSampler(slides, sampling.SamplerConfig(random_per_class=per_class, boundary=boundary, itc=itc))
    samples = sampler.sample(seed + 7919)  # never the training draw
    model = load_training_model(weights, "tiny")
    predict = tf.function(lambda x: model(x, training=False)["classifier"][:, 1])
    reader = pipeline.PatchReader(sampler)
    ds = pipeline.slide_dataset(samples, reader, batch_size=8, augment_config=None, shuffle=False, repeat=False,
                                drop_remainder=False)
    probs, labels = [], []
    for image, targets in ds:
        probs.append(predict(image).numpy())
        labels.append(targets["label"].numpy())
    reader.close()
    probs, labels = np.concatenate(probs), np.concatenate(labels)
    kinds = np.array([s.kind for s in samples])
    rand = np.isin(kinds, ["tumour", "normal"])
    out = {"kinds": sampling.counts_by_kind(samples), "auc_random": float(roc_auc_score(labels[rand], probs[rand])),
           "accuracy_random_at_0.5": float(((probs[rand] >= 0.5) == labels[rand]).mean())}
    if len(set(labels.tolist())) == 2 and not rand.all():
        out["auc_all_kinds"] = float(roc_auc_score(labels, probs))
    return out


def main(argv):
    from pfascannet import io_utils  # noqa: PLC0415
    from pfascannet.data import sampling  # noqa: PLC0415
    from pfascannet.training import trainer  # noqa: PLC0415

    if len(argv) > 1:
        raise trainer.TrainingError(f"unexpected arguments {argv[1:]}")
    if not FLAGS.workdir:
        raise trainer.TrainingError("--workdir is required")
    t_start = time.perf_counter()
    data = FLAGS.data
    if data is None:
        from pfascannet.synthetic.cohort import make_cohort  # noqa: PLC0415

        data = os.path.join(FLAGS.workdir, "cohort")
        if not os.path.exists(os.path.join(data, "cohort.json")):
            print(f"generating the synthetic cohort in {data} ...", flush=True)
            make_cohort(data, seed=FLAGS.cohort_seed, **COHORT)
    settings = trainer.TrainSettings.from_flat(
        data=data, workdir=os.path.join(FLAGS.workdir, "train"), config="tiny", steps=FLAGS.steps,
        batch_size=FLAGS.batch_size, learning_rate=FLAGS.learning_rate, seed=FLAGS.seed,
        random_per_class=FLAGS.random_per_class, boundary=FLAGS.boundary, itc=FLAGS.itc,
        max_seconds=FLAGS.minutes * 60, checkpoint_every=50, log_every=10,
    )

    sampler = sampling.PatchSampler(sampling.load_cohort(data, "train"), sampling.SamplerConfig(
        random_per_class=FLAGS.random_per_class, boundary=FLAGS.boundary, itc=FLAGS.itc))
    samples = sampler.sample(FLAGS.seed)
    pipe_rate = pipeline_throughput(sampler, samples, FLAGS.batch_size, FLAGS.pipeline_batches, FLAGS.seed)
    print(f"input pipeline: {pipe_rate:.1f} patches/s", flush=True)

    t_train = time.perf_counter()
    result = trainer.train(settings)
    train_wall = time.perf_counter() - t_train
    print(f"trainer: {result.trainer_patches_per_s:.1f} patches/s over {result.step - result.resumed_from} steps",
          flush=True)

    auc = patch_auc(result.final_weights, data, FLAGS.seed, FLAGS.eval_per_class, FLAGS.eval_boundary, FLAGS.eval_itc)
    print(f"held-out patch AUC (random patches): {auc['auc_random']:.4f}  (goal >= 0.95)"
          + (f"; with boundary + ITC patches: {auc['auc_all_kinds']:.4f}" if "auc_all_kinds" in auc else ""))

    out_weights = FLAGS.out_weights or os.path.join(FLAGS.workdir, "tiny_bench.weights.h5")
    if not out_weights.endswith(".weights.h5"):
        raise trainer.TrainingError(f"--out_weights must end in .weights.h5, got {out_weights!r}")
    with io_utils.atomic_path(out_weights, suffix=".weights.h5") as tmp:
        shutil.copyfile(result.final_weights, tmp)
    record = {
        "what": "tiny PFA-ScanNet trained from scratch on a synthetic cohort by experiments/bench_training.py",
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "config": "tiny",
        "seed": FLAGS.seed,
        "cohort": {"path": os.path.abspath(data), "generated": FLAGS.data is None, "seed": FLAGS.cohort_seed,
                   **({"settings": COHORT} if FLAGS.data is None else {})},
        "training": {**settings.to_dict(), "steps_done": result.step, "stopped_at_time_limit": result.stopped_early,
                     "wall_s": round(train_wall, 1), "samples": result.samples,
                     "paper_learning_rate": 1e-4},
        "throughput_patches_per_s": {"input_pipeline": round(pipe_rate, 2),
                                     "trainer": round(result.trainer_patches_per_s, 2)},
        "held_out_patch_auc": auc,
        "total_wall_s": round(time.perf_counter() - t_start, 1),
        "note": "synthetic slides: results measure the pipeline, not clinical accuracy",
    }
    json_path = out_weights[: -len(".weights.h5")] + ".json"
    io_utils.write_json(json_path, record)
    print(f"weights: {out_weights}\nrecord: {json_path}")


if __name__ == "__main__":
    run_main(main)
