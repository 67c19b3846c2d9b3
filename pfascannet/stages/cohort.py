"""Writes a Camelyon-like synthetic cohort (``shared/DESIGN.md`` section 4).

  pfascannet cohort --out C --patients 4 --seed 0

Layout of ``C`` (ARCHITECTURE.md, "Files between stages"): ``images/``,
``annotations/``, ``masks/``, ``tissue/``, ``stages.csv``, ``slides.csv``,
``lesions.csv``, ``cohort.json``.  Patient ``p`` gets pN-stage
``pN1, pN0(i+), pN1mi, pN2, pN0`` in turn, so 5 patients cover every stage
(4 already hold every node class).  Deterministic from ``--seed``.
Results on synthetic slides measure the pipeline, not clinical accuracy.

Killed part way, rerun the same command: it rewrites every file (each appears
whole or not at all) and first removes the hidden temporaries
(``.<name>.tmp-*``: partial TIFFs, scratch pyramid levels) the killed run left.
Exit status (README): 0 written, 2 bad flags (one ``error:`` line).
"""

from __future__ import annotations

from absl import flags

from pfascannet.errors import PfaError

FLAGS = flags.FLAGS
flags.DEFINE_string("out", None, "Output cohort folder (created).")
flags.DEFINE_integer("seed", 0, "Seed; the cohort is a deterministic function of it and the other flags.")
flags.DEFINE_integer("patients", 4, "Patients (5 lymph-node slides each).")
flags.DEFINE_integer("nodes_per_patient", 5, "Slides per patient (Camelyon17: 5).")
flags.DEFINE_integer("slide_size", 4096, "Approximate side (px) of negative/ITC/micro slides; macro slides fit their lesion.")
flags.DEFINE_float("mpp", 0.243, "Microns per level-0 pixel (Camelyon: 0.243); lesion sizes are physical.")
flags.DEFINE_float("test_fraction", 0.25, "Share of patients in the test split (the rest: train).")
flags.DEFINE_integer("centres", 5, "Staining centres (stain, focus and noise vary between them).")
flags.DEFINE_integer("tile_px", 512, "TIFF tile side (multiple of 16).")
flags.DEFINE_integer("quality", 90, "JPEG quality of slide tiles.")
flags.DEFINE_integer("workers", 0, "Threads rendering tiles (0: CPU count, at most 4).")
flags.mark_flags_as_required(["out"])


def main(argv):
    if len(argv) > 1:
        raise PfaError(f"unexpected arguments {argv[1:]}; all inputs are flags")
    from pfascannet.synthetic.cohort import make_cohort  # noqa: PLC0415

    info = make_cohort(
        FLAGS.out,
        seed=FLAGS.seed,
        patients=FLAGS.patients,
        nodes_per_patient=FLAGS.nodes_per_patient,
        slide_size=FLAGS.slide_size,
        mpp=FLAGS.mpp,
        test_fraction=FLAGS.test_fraction,
        centres=FLAGS.centres,
        tile_px=FLAGS.tile_px,
        quality=FLAGS.quality,
        workers=None if FLAGS.workers == 0 else FLAGS.workers,
        progress=lambda msg: print(msg, flush=True),
    )
    counts = {}
    for row in info.slides:
        counts[row["label"]] = counts.get(row["label"], 0) + 1
    stages = sorted(set(info.stages.values()))
    print(
        f"wrote {len(info.slides)} slides ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}), "
        f"{len(info.lesions)} lesions, stages {', '.join(stages)} to {FLAGS.out} in {info.seconds:.1f} s"
    )
