"""Train PFA-ScanNet (detector + decoder, synergistic learning) on a cohort.

Zhao et al., MICCAI 2019, Sec. 2.3 and Implementation Details: 692 patches
with 512 masks, eq. (3) with lambda 0.5 and eq. (2) with gamma 0.04, SGD
momentum 0.9, learning rate 1e-4 (the defaults here).  Runs under
``tf.distribute.MirroredStrategy`` on every visible GPU (every CPU device
without one); ``--strategy=multiworker`` spans machines via ``TF_CONFIG``
(BUILD.md).

Examples::

    pfascannet train --config=paper --data=/data/camelyon --workdir=runs/pfa --steps=200000
    pfascannet train --config=paper_imagenet --kernel_init=imagenet ...   # the paper's recipe
    pfascannet train --config=small --data=cohort --workdir=runs/small --steps=600 \\
        --optimizer=adam --learning_rate=1e-3 --warmup_steps=20   # from scratch on a CPU
    pfascannet train ... --no_synergistic    # the paper's "w/o SL" ablation

Kill it at any time and rerun the same command: it resumes from the latest
checkpoint and ends with the weights an uninterrupted run would have.
Writes ``<workdir>/config.json``, ``checkpoints/``, ``tensorboard/``,
``samples.csv`` and ``final.weights.h5`` (read by ``pfascannet export``).
"""

from __future__ import annotations

from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string("config", "tiny", "Model config: tiny, small, paper or paper_imagenet (with --kernel_init imagenet).")
flags.DEFINE_string("data", None, "Cohort folder (images/, annotations/, slides.csv).")
flags.DEFINE_string("workdir", None, "Run folder: checkpoints, logs, config.json, final.weights.h5.")
flags.DEFINE_integer("steps", 1000, "Total optimisation steps (a resumed run continues to this).")
flags.DEFINE_integer("batch_size", 8, "Global batch size (a multiple of the number of replicas).")
flags.DEFINE_float("learning_rate", 1e-4, "Learning rate (paper: SGD 1e-4 from ImageNet; from scratch: Adam 1e-3).")
flags.DEFINE_enum("optimizer", "sgd", ["sgd", "adam"],
                  "sgd (paper, with --momentum) or adam (from-scratch runs: SGD kills the ReLUs of narrow blocks).")
flags.DEFINE_integer("warmup_steps", 0, "Linear learning-rate warm-up over this many steps (0: none).")
flags.DEFINE_boolean("stream", True, "Fresh seeded patch positions every epoch (--nostream replays one draw).")
flags.DEFINE_enum("precision", "float32", ["float32", "bfloat16", "float16"],
                  "Mixed precision (weights float32; float16 scales the loss). bfloat16 on Ampere+ GPUs / AVX512-BF16 CPUs.")
flags.DEFINE_float("momentum", 0.9, "SGD momentum (paper: 0.9).")
flags.DEFINE_float("lambda_seg", 0.5, "lambda of eq. (3) (paper: 0.5).")
flags.DEFINE_float("gamma", 0.04, "Truncation point of eq. (2) (paper: 0.04; 0 = plain BCE).")
flags.DEFINE_boolean("synergistic", True, "Synergistic learning; --no_synergistic trains the detector alone.")
flags.DEFINE_integer("seed", 0, "Seed of sampling, initialisation, shuffling and augmentation.")
flags.DEFINE_string("split", "train", "Slides of slides.csv to train on.")
flags.DEFINE_integer("random_per_class", 64, "Random tumour patches and random normal patches (each).")
flags.DEFINE_integer("boundary", 32, "Boundary patches (centre on a lesion border).")
flags.DEFINE_integer("itc", 16, "ITC patches (centred on lesions < 275 um).")
flags.DEFINE_boolean("augment", True, "Flip/rotation/scaling/cropping + colour/HSV jitter (Sec. 2.4).")
flags.DEFINE_string("tfrecords", None, "Glob of TFRecord shards (pfascannet tfrecords) to read instead.")
flags.DEFINE_integer("checkpoint_every", 100, "Steps between checkpoints.")
flags.DEFINE_integer("log_every", 10, "Steps between progress lines / TensorBoard points.")
flags.DEFINE_integer("hard_negative_at", 0, "Step of the first hard-negative round (0: never).")
flags.DEFINE_integer("hard_negative_every", 0, "Steps between later hard-negative rounds (0: one round).")
flags.DEFINE_enum("hard_negative_source", "slides", ["slides", "patches"],
                  "slides: scan the training slides and take the map's maxima in normal tissue; "
                  "patches: score --hard_negative_candidates random normal patches.")
flags.DEFINE_integer("hard_negative_candidates", 256, "Normal patches scored per round (--hard_negative_source patches).")
flags.DEFINE_float("hard_negative_threshold", 0.5, "Tumour probability from which a normal place is a false positive.")
flags.DEFINE_integer("hard_negative_max", 64, "Most hard negatives one round adds.")
flags.DEFINE_enum("lr_schedule", "constant", ["constant", "cosine"],
                  "After the warm-up: constant, or cosine decay to 0 at --steps (from scratch: cosine).")
flags.DEFINE_float("max_minutes", None, "Stop early (checkpoint + final weights) after this many minutes.")
flags.DEFINE_enum("strategy", "mirrored", ["mirrored", "multiworker"], "tf.distribute strategy.")
flags.DEFINE_enum("collective", "auto", ["auto", "ring", "nccl"],
                  "--strategy=multiworker all-reduce: ring (gRPC, CPUs), nccl (GPUs), auto (NCCL if all GPUs).")
flags.DEFINE_float("collective_timeout_s", None,
                   "--strategy=multiworker: a collective waiting longer for a peer fails (default: none; the "
                   "coordination service's heartbeats still detect a dead worker).")
flags.DEFINE_enum("kernel_init", "he_normal", ["he_normal", "model", "imagenet"],
                  "Initialisation of a fresh run; imagenet: the paper's ImageNet VGG16 trunk (--config paper_imagenet).")
flags.DEFINE_string("imagenet_weights", "imagenet",
                    "--kernel_init imagenet: 'imagenet' (Keras downloads VGG16 weights) or a VGG16-without-top weights file.")


def main(argv):
    from pfascannet.training import trainer  # noqa: PLC0415  (TensorFlow import after flag parsing)

    if len(argv) > 1:
        raise trainer.TrainingError(f"unexpected arguments {argv[1:]}")

    if not FLAGS.data and not FLAGS.tfrecords:
        raise trainer.TrainingError("--data (a cohort folder) or --tfrecords is required")
    if not FLAGS.workdir:
        raise trainer.TrainingError("--workdir is required")
    settings = trainer.TrainSettings(
        data=FLAGS.data or "", workdir=FLAGS.workdir, config=FLAGS.config, steps=FLAGS.steps,
        batch_size=FLAGS.batch_size, learning_rate=FLAGS.learning_rate, momentum=FLAGS.momentum,
        lambda_seg=FLAGS.lambda_seg, gamma=FLAGS.gamma, synergistic=FLAGS.synergistic, seed=FLAGS.seed,
        split=FLAGS.split, random_per_class=FLAGS.random_per_class, boundary=FLAGS.boundary, itc=FLAGS.itc,
        augment=FLAGS.augment, tfrecords=FLAGS.tfrecords, checkpoint_every=FLAGS.checkpoint_every,
        log_every=FLAGS.log_every, hard_negative_at=FLAGS.hard_negative_at,
        hard_negative_every=FLAGS.hard_negative_every, hard_negative_source=FLAGS.hard_negative_source,
        lr_schedule=FLAGS.lr_schedule, hard_negative_candidates=FLAGS.hard_negative_candidates,
        hard_negative_threshold=FLAGS.hard_negative_threshold, hard_negative_max=FLAGS.hard_negative_max,
        max_seconds=FLAGS.max_minutes * 60 if FLAGS.max_minutes else None, strategy=FLAGS.strategy,
        collective=FLAGS.collective, collective_timeout_s=FLAGS.collective_timeout_s,
        kernel_init=FLAGS.kernel_init, imagenet_weights=FLAGS.imagenet_weights, optimizer=FLAGS.optimizer,
        warmup_steps=FLAGS.warmup_steps, stream=FLAGS.stream, precision=FLAGS.precision,
    )
    result = trainer.train(settings)
    state = "stopped at --max_minutes" if result.stopped_early else "done"
    print(f"{state}: step {result.step}/{settings.steps}; weights {result.final_weights}")
