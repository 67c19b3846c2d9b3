"""Training benchmark: the from-scratch recipe on a synthetic cohort, judged on held-out whole slides.

The acceptance benchmark of the trainer (Zhao et al., MICCAI 2019, Sec. 2.3):
train ``--config`` (default ``small``: the paper's geometry, 1/8 of its
widths) with ``training.recipe.scratch_recipe`` (Adam, warm-up, cosine decay,
hard-negative rounds from whole-slide maps) for at most ``--minutes`` on this
machine, then measure

* on whole held-out slides (``pfascannet.heldout``, cohorts made with
  ``--heldout_seeds``, which no training run used): slide AUC, the three
  named Camelyon16 FROC scores, sensitivity per lesion class, and the map's
  calibration (percentiles over normal tissue and inside tumour, slide maxima);
* patch-level AUC on the training cohort's ``test`` split (random
  tumour/normal patches; then with boundary and ITC patches added);
* input-pipeline patches/s (slide reads + augmentation, tf.data, alone)
  beside trainer patches/s (optimisation steps alone), so one sees whether
  the pipeline keeps the trainer fed.

The trained weights are written to ``--out_weights`` with a JSON beside them
(same stem, ``.json``) recording the command, seeds, settings and results.
Results on synthetic slides measure the pipeline, not clinical accuracy.

Example (about 35 minutes on 2 cores)::

    python experiments/bench_training.py --workdir=/tmp/bench_train --steps=450 --minutes=30
"""

from __future__ import annotations

import os
import shutil
import sys
import time

import numpy as np
from absl import flags
from sklearn.metrics import roc_auc_score

from pfascannet import heldout, io_utils, workflow
from pfascannet.cliutil import run_main
from pfascannet.data import sampling
from pfascannet.evaluation import froc
from pfascannet.synthetic.cohort import make_cohort

FLAGS = flags.FLAGS
flags.DEFINE_string("data", None, "Cohort folder; default: generate one in <workdir>/cohort.")
flags.DEFINE_string("workdir", None, "Run folder (training in <workdir>/train, held-out scans in <workdir>/heldout).")
flags.DEFINE_string("config", "small", "Model config (tiny, small, paper).")
flags.DEFINE_float("minutes", 30.0, "Training time limit (minutes).")
flags.DEFINE_integer("steps", 450, "Steps of the recipe (its schedule and hard-negative rounds are placed on them).")
flags.DEFINE_integer("hard_negative_rounds", 2, "Hard-negative rounds from whole-slide maps (training.recipe.scratch_recipe).")
flags.DEFINE_integer("batch_size", 8, "Global batch size.")
flags.DEFINE_enum("precision", "float32", ["float32", "bfloat16", "float16"],
                  "Training precision (Keras mixed precision; weights float32). bfloat16: 1.9-2.0x the steps/s of "
                  "float32 on an AVX512-BF16 CPU (BENCHMARKS.md, issue 24).")
flags.DEFINE_integer("seed", 0, "Training seed (sampling, init, augmentation).")
flags.DEFINE_integer("cohort_seed", 0, "Seed of the generated cohort.")
flags.DEFINE_list("heldout_seeds", ["11"], "Seeds of the held-out cohorts scanned after training (empty: none).")
flags.DEFINE_integer("eval_per_class", 100, "Held-out random patches per class for the patch AUC.")
flags.DEFINE_integer("eval_boundary", 20, "Held-out boundary patches (second patch AUC).")
flags.DEFINE_integer("eval_itc", 20, "Held-out ITC patches (second patch AUC).")
flags.DEFINE_integer("pipeline_batches", 8, "Batches timed for the input-pipeline throughput.")
flags.DEFINE_string("out_weights", None, "Where to copy the final weights (default <workdir>/bench.weights.h5).")

# Every patient has tumour and normal nodes, so the held-out patient does too.
COHORT = dict(
    patients=4, nodes_per_patient=3, slide_size=4096, mpp=0.243, test_fraction=0.25,
    node_labels=[["macro", "itc", "negative"], ["micro", "negative", "itc"],
                 ["macro", "micro", "negative"], ["micro", "itc", "negative"]],
)


def pipeline_throughput(sampler, samples, batch_size: int, batches: int, seed: int) -> float:
    """Patches/s of the augmented slide stream alone (first batch excluded: warm-up)."""
    from pfascannet.data import pipeline  # noqa: PLC0415  (imports TensorFlow)

    reader = pipeline.PatchReader(sampler)
    it = iter(pipeline.slide_dataset(samples, reader, batch_size=batch_size, seed=seed))
    next(it)
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    rate = batches * batch_size / (time.perf_counter() - t)
    reader.close()
    return rate


def patch_auc(weights: str, config: str, data: str, seed: int, per_class: int, boundary: int, itc: int) -> dict:
    """Patch-level AUC of the classifier on the test split (random; random + boundary + ITC)."""
    import tensorflow as tf  # noqa: PLC0415

    from pfascannet.data import pipeline  # noqa: PLC0415  (imports TensorFlow)
    from pfascannet.inference.model_io import load_training_model  # noqa: PLC0415  (imports Keras)

    slides = sampling.load_cohort(data, "test")
    sampler = sampling.PatchSampler(slides, sampling.SamplerSettings(random_per_class=per_class, boundary=boundary, itc=itc))
    samples = sampler.sample(seed + 7919)  # never the training draw
    model = load_training_model(weights, config)
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
    from pfascannet.training import recipe, trainer  # noqa: PLC0415  (imports TensorFlow and Keras)

    if not FLAGS.workdir:
        raise trainer.TrainingError("--workdir is required")
    try:
        heldout_seeds = [int(v) for v in FLAGS.heldout_seeds]
    except ValueError:
        raise trainer.TrainingError(f"--heldout_seeds must be integers, got {FLAGS.heldout_seeds}") from None
    log = workflow.Log(total_steps=len(heldout_seeds))
    t_start = time.perf_counter()
    data = FLAGS.data
    if data is None:
        data = os.path.join(FLAGS.workdir, "cohort")
        if not os.path.exists(os.path.join(data, "cohort.json")):
            print(f"generating the synthetic cohort in {data} ...", flush=True)
            make_cohort(data, seed=FLAGS.cohort_seed, **COHORT)
    flat_recipe = recipe.scratch_recipe(FLAGS.steps, FLAGS.hard_negative_rounds)
    settings = trainer.TrainSettings.from_flat(
        data=data, workdir=os.path.join(FLAGS.workdir, "train"), config=FLAGS.config, batch_size=FLAGS.batch_size,
        seed=FLAGS.seed, max_seconds=FLAGS.minutes * 60, checkpoint_every=50, log_every=10, precision=FLAGS.precision,
        **flat_recipe,
    )

    sampler = sampling.PatchSampler(sampling.load_cohort(data, "train"), sampling.SamplerSettings(
        random_per_class=settings.sampler.random_per_class, boundary=settings.sampler.boundary,
        itc=settings.sampler.itc))
    samples = sampler.sample(FLAGS.seed)
    pipe_rate = pipeline_throughput(sampler, samples, FLAGS.batch_size, FLAGS.pipeline_batches, FLAGS.seed)
    print(f"input pipeline: {pipe_rate:.1f} patches/s", flush=True)

    t_train = time.perf_counter()
    result = trainer.train(settings)
    train_wall = time.perf_counter() - t_train
    print(f"trainer: {result.trainer_patches_per_s:.1f} patches/s over {result.step - result.resumed_from} steps",
          flush=True)

    auc = patch_auc(result.final_weights, FLAGS.config, data, FLAGS.seed, FLAGS.eval_per_class, FLAGS.eval_boundary, FLAGS.eval_itc)
    print(f"held-out patch AUC (random patches): {auc['auc_random']:.4f}  (goal >= 0.95)"
          + (f"; with boundary + ITC patches: {auc['auc_all_kinds']:.4f}" if "auc_all_kinds" in auc else ""))

    slide_level = []
    for seed in heldout_seeds:
        r = heldout.evaluate_seed(result.final_weights, FLAGS.config, seed, os.path.join(FLAGS.workdir, "heldout"), log)
        slide_level.append(r)
        print(f"held-out cohort seed {seed}: slide AUC {r['auc']:.3f}, FROC " + ", ".join(
            f"{k} {r[k]:.3f}" if r[k] is not None else f"{k} n/a" for k in froc.SCORE_KEYS)
            + f"; normal tissue >= 0.5: {100 * r['calibration']['normal_tissue']['share_at_or_above_0.5']:.1f} %",
            flush=True)

    out_weights = FLAGS.out_weights or os.path.join(FLAGS.workdir, "bench.weights.h5")
    if not out_weights.endswith(".weights.h5"):
        raise trainer.TrainingError(f"--out_weights must end in .weights.h5, got {out_weights!r}")
    with io_utils.atomic_path(out_weights, suffix=".weights.h5") as tmp:
        shutil.copyfile(result.final_weights, tmp)
    record = {
        "what": f"{FLAGS.config} PFA-ScanNet trained from scratch (training.recipe.scratch_recipe) on a synthetic cohort "
                "by experiments/bench_training.py",
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "config": FLAGS.config,
        "seed": FLAGS.seed,
        "cohort": {"path": os.path.abspath(data), "generated": FLAGS.data is None, "seed": FLAGS.cohort_seed,
                   **({"settings": COHORT} if FLAGS.data is None else {})},
        "training": {**settings.flat(), "steps_done": result.step, "stopped_at_time_limit": result.stopped_early,
                     "wall_s": round(train_wall, 1), "samples": result.samples,
                     "paper_recipe": "SGD 1e-4, momentum 0.9, from ImageNet VGG16"},
        "throughput_patches_per_s": {"input_pipeline": round(pipe_rate, 2),
                                     "trainer": round(result.trainer_patches_per_s, 2)},
        "held_out_patch_auc": auc,
        "held_out_slides": slide_level,
        "total_wall_s": round(time.perf_counter() - t_start, 1),
        "note": "synthetic slides: results measure the pipeline, not clinical accuracy",
    }
    json_path = out_weights[: -len(".weights.h5")] + ".json"
    io_utils.write_json(json_path, record)
    print(f"weights: {out_weights}\nrecord: {json_path}")


if __name__ == "__main__":
    run_main(main)
