"""Writes a Camelyon-like synthetic cohort (``shared/DESIGN.md`` section 4).

  pfascannet cohort --out C --patients 4 --seed 0

Layout of ``C`` (ARCHITECTURE.md, "Files between stages"): ``images/``,
``annotations/``, ``masks/``, ``tissue/``, ``stages.csv``, ``slides.csv``,
``lesions.csv``, ``cohort.json``.  Patient ``p`` gets pN-stage
``pN1, pN0(i+), pN1mi, pN2, pN0`` in turn, so 5 patients cover every stage
(4 already hold every node class).  Deterministic from ``--seed``.
``--node_labels 'itc,negative,...;...'`` sets every patient's node labels
instead (e.g. a training cohort with more ITC-only nodes than the cycle gives).

``--layout camelyon16`` / ``camelyon17`` writes the same slides in the official
download's layout instead (``pfascannet/synthetic/layouts.py``):

  pfascannet cohort --out CAMELYON16 --layout camelyon16 --patients 4
Results on synthetic slides measure the pipeline, not clinical accuracy.

Killed part way, rerun the same command: it rewrites every file (each appears
whole or not at all) and first removes the hidden temporaries
(``.<name>.tmp-*``: partial TIFFs, scratch pyramid levels) the killed run left.
Exit status (README): 0 written, 2 bad flags (one ``error:`` line).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional

from absl import flags

from pfascannet import settings as settings_lib
from pfascannet.settings import setting
from pfascannet.synthetic.cohort import CohortSettings, make_cohort
from pfascannet.synthetic.layouts import LAYOUT_CHOICES, make_layout_cohort

@dataclasses.dataclass(frozen=True)
class CohortCommand:
    """The flags of ``pfascannet cohort`` that are not ``CohortSettings`` (--seed, --patients, ..., --test_fraction)."""

    out: Optional[str] = setting(None, required=True, help="Output cohort folder (created).")
    workers: int = setting(0, help="Threads rendering tiles (0: CPU count, at most 4).")
    layout: str = setting("cohort", choices=LAYOUT_CHOICES,
                          help="Folder layout: the project's own (cohort), or CAMELYON16 / CAMELYON17 as downloaded "
                               "(official names, zipped ASAP XML, reference.csv / stage_labels.csv).")


FLAGS = flags.FLAGS
SETTINGS = (CohortCommand, CohortSettings)
"""Every flag of the stage, generated from these dataclasses' fields (``pfascannet.settings``)."""
settings_lib.define_stage_flags(SETTINGS)


def main(argv):
    make = make_cohort if FLAGS.layout == "cohort" else functools.partial(make_layout_cohort, layout=FLAGS.layout)
    info = make(
        FLAGS.out,
        settings_lib.from_flags(CohortSettings, FLAGS),
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
        + ("" if FLAGS.layout == "cohort" else f" ({FLAGS.layout} layout)")
    )
