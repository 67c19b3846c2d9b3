"""Camelyon17 pN-staging from scan probability maps (Zhao et al. 2019, section 2.4).

Per-slide morphological features of ``<maps_dir>/<slide>.npy`` (+ ``.json``),
a random forest trained on the training slides' node labels
(negative/itc/micro/macro), node labels for the test slides, pN-stage per test
patient by the Camelyon17 rules, the Camelyon17 submission CSV, and the
quadratic kappa when the test patients' truth is known.

  python eval/pn_stage.py --maps_dir S/maps --reference C/slides.csv \
      --stages C/stages.csv --out R/pn_stage

Writes ``features.csv``, ``submission.csv`` (Camelyon17 format) and, with
truth, ``pn_stage.json``/``pn_stage.md`` to ``--out``.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a file from a checkout: make the package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from pfascannet.cliutil import run_main  # noqa: E402
from pfascannet.errors import PfaError  # noqa: E402
from pfascannet.evaluation import features, pn_stage, reference, report  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("maps_dir", None, "Folder of <slide>.npy probability maps with their .json.")
flags.DEFINE_string("reference", None, "Cohort slides.csv (slide,patient,node,split,label,...).")
flags.DEFINE_string("stages", None, "Camelyon17 stage CSV: node labels for training, patient truth for kappa.")
flags.DEFINE_string("train_split", "train", "Split whose slides train the random forest.")
flags.DEFINE_string("test_split", "test", "Split whose patients are staged.")
flags.DEFINE_integer("seed", 0, "Random forest seed.")
flags.DEFINE_integer("n_estimators", 300, "Trees in the random forest.")
flags.DEFINE_string("note", None, "A line for the report (default: synthetic-cohort note when detected).")
flags.DEFINE_string("out", None, "Output folder.")
flags.mark_flags_as_required(["maps_dir", "reference", "out"])


def main(argv):
    if len(argv) > 1:
        raise PfaError(f"unexpected arguments {argv[1:]}; all inputs are flags")
    if not os.path.isdir(FLAGS.maps_dir):
        raise PfaError(f"--maps_dir {FLAGS.maps_dir}: not a folder")
    refs = reference.read_reference(FLAGS.reference)
    table = pn_stage.read_camelyon17_csv(FLAGS.stages) if FLAGS.stages else None
    train = reference.select_split(refs, FLAGS.train_split)
    test = reference.select_split(refs, FLAGS.test_split)

    def node_label(slide: str):
        label = refs[slide].node_label
        if label is None and table is not None:
            label = table.nodes.get(slide)
        return label

    train_labels = {s: node_label(s) for s in train}
    unlabeled = [s for s, v in train_labels.items() if v is None]
    if unlabeled:
        raise PfaError(f"{len(unlabeled)} training slide(s) lack a node label (negative/itc/micro/macro), "
                       f"e.g. {unlabeled[:3]}; give --stages with node rows")
    counts = {c: sum(v == c for v in train_labels.values()) for c in pn_stage.NODE_LABELS}
    absent = [c for c, n in counts.items() if not n]
    if absent:
        print(f"warning: no training slide of class {', '.join(absent)}: the forest cannot predict it")
    feats = {}
    for slide in sorted(set(train) | set(test)):
        path = os.path.join(FLAGS.maps_dir, f"{slide}.npy")
        if not os.path.isfile(path):
            raise PfaError(f"no probability map for slide {slide}: {path}")
        feats[slide] = features.features_from_map_file(path)
    features.write_features_csv(os.path.join(FLAGS.out, "features.csv"), feats)

    predicted, stages = pn_stage.stage_cohort(feats, train_labels, sorted(test),
                                              seed=FLAGS.seed, n_estimators=FLAGS.n_estimators)
    sub_path = os.path.join(FLAGS.out, "submission.csv")
    pn_stage.write_camelyon17_csv(sub_path, stages, predicted)
    print(f"submission: {sub_path} ({len(stages)} patients, {len(predicted)} nodes)")

    # Truth: the stage CSV's patient rows, else the Camelyon17 rules on the reference node labels.
    truth_nodes = {s: node_label(s) for s in test}
    truth = pn_stage.Camelyon17Table()
    if table is not None and all(p in table.stages for p in stages):
        truth.stages = {p: table.stages[p] for p in stages}
    elif all(v is not None for v in truth_nodes.values()):
        truth.stages = pn_stage.stages_from_node_table(truth_nodes)
    if not truth.stages:
        print("no truth for the test patients: kappa not computed")
        return
    truth.nodes = {s: v for s, v in truth_nodes.items() if v is not None}
    rep = pn_stage.score_submission(truth, pn_stage.Camelyon17Table(stages, predicted))
    rep["inputs"] = {k: getattr(FLAGS, k) for k in ("maps_dir", "reference", "stages", "train_split",
                                                    "test_split", "seed", "n_estimators")}
    rep["n_train_slides"] = len(train_labels)
    rep["train_class_counts"] = counts
    note = FLAGS.note or report.synthetic_note_for(FLAGS.reference)
    rep["note"] = note
    _, md = report.write_report(FLAGS.out, "pn_stage", rep, report.kappa_markdown(rep, note))
    print(f"kappa_quadratic = {rep['kappa_quadratic']:.4f} over {rep['n_patients']} test patients; report: {md}")


if __name__ == "__main__":
    run_main(main)
