"""The ``pfascannet`` command: every stage of the pipeline, installed by pip.

  pfascannet demo [--out demo_out] [--fast] [--train]
  pfascannet <stage> [flags]          (pfascannet <stage> --help lists its flags)

A stage is an absl main in ``pfascannet/stages/`` (the same mains run as
scripts from ``experiments/``, ``eval/`` and ``data_prep/``).  absl flags
are global, so only the chosen stage's module is imported: the listing below
imports none of them.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import NoReturn, Optional, Sequence

from pfascannet import __version__
from pfascannet.cliutil import fail, guarded, run_main

# name on the command line -> (module of pfascannet.stages, one line for the listing).
STAGES = {
    "cohort": ("cohort", "write a synthetic Camelyon-like cohort (slides, annotations, masks, CSVs)"),
    "tfrecords": ("tfrecords", "write a cohort's training patches into TFRecord shards"),
    "train": ("train", "train PFA-ScanNet (detector + decoder, synergistic learning); resumes"),
    "export": ("export", "export the trained detector at an alpha as SavedModel / .keras"),
    "check-equivalence": ("check_equivalence", "check that an export's dense output equals its patch classifier"),
    "scan": ("scan", "scan whole slides densely: probability maps, lesions, heatmaps, contours"),
    "lesions": ("lesions", "rerun the post-processing alone: maps -> lesions, contours, scores, heatmaps"),
    "froc": ("froc", "Camelyon16 FROC (three named scores) of lesion CSVs"),
    "auc": ("auc", "slide-level Camelyon16 AUC with a bootstrap CI and the ROC plot"),
    "pn-stage": ("pn_stage", "Camelyon17 pN-stage per patient from probability maps"),
    "kappa": ("kappa", "quadratic weighted kappa of a Camelyon17 submission"),
    "table1": ("table1", "the paper's Table 1 on a synthetic cohort, end to end"),
    "eval-heldout": ("eval_heldout", "held-out slide-level evaluation of weights on fresh synthetic cohorts"),
    # issue 20: the slide viewer
    "view": ("view", "look at a scan in the browser: slides, map, lesions and truth (local server)"),
}
BUILTINS = {
    "demo": "the whole pipeline on a synthetic cohort, with a report",
    "version": "print the version",
}


def usage() -> str:
    """The listing ``pfascannet --help`` prints: every stage with one line."""
    width = max(len(n) for n in [*STAGES, *BUILTINS])
    lines = ["usage: pfascannet <stage> [flags]   (pfascannet <stage> --help: its flags)", "",
             "PFA-ScanNet (Zhao et al., MICCAI 2019), stage by stage.", "", "stages:"]
    lines += [f"  {n:<{width}}  {line}" for n, line in BUILTINS.items()]
    lines += [f"  {n:<{width}}  {line}" for n, (_, line) in STAGES.items()]
    lines += ["", "Exit status: 0 done, 1 some items failed, 2 bad input or flags, 130 interrupted."]
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line and status 2, as the absl stages report a bad flag.
        fail(f"{self.prog}: {message}")


def _demo_parser() -> argparse.ArgumentParser:
    from pfascannet import demo, settings  # noqa: PLC0415  (no TensorFlow: demo imports it lazily)

    d = _Parser(prog="pfascannet demo", description=BUILTINS["demo"])
    settings.add_arguments(d, demo.DemoSettings)  # one declaration per option: DemoSettings' fields
    return d


@guarded
def _demo(args: argparse.Namespace) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from pfascannet import demo, progress, quiet  # noqa: PLC0415  (keeps `pfascannet --help` light)

    if not quiet.verbose_requested():
        # Plain lines, once: a library's logging.info() during the export gives the root logger a
        # handler (logging.basicConfig), which would print every progress line a second time.
        progress.use_plain_output()

    from pfascannet import settings as settings_lib  # noqa: PLC0415

    demo.run_demo(settings_lib.from_arguments(demo.DemoSettings, args))
    return 0


def _version(argv: Sequence[str]) -> int:
    _Parser(prog="pfascannet version", description=BUILTINS["version"]).parse_args(argv)
    print(__version__)
    return 0


def _run_stage(name: str, argv: Sequence[str]) -> NoReturn:
    """Imports the one stage module and runs its absl main; exits with its status."""
    path = f"pfascannet.stages.{STAGES[name][0]}"
    try:
        module = importlib.import_module(path)
    except ModuleNotFoundError as exc:
        if exc.name != path:
            raise
        fail(f"stage {name!r} is not installed here ({path} is missing); reinstall pfascannet")
    sys.argv = [f"pfascannet {name}", *argv]
    run_main(module.main)
    sys.exit(0)  # absl's app.run exits itself; not reached


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(usage(), file=sys.stderr)
        return 2
    name, rest = argv[0], argv[1:]
    if name in ("-h", "--help", "help"):
        print(usage())
        return 0
    if name in STAGES:
        _run_stage(name, rest)
    if name == "demo":
        return _demo(_demo_parser().parse_args(rest))
    if name == "version":
        return _version(rest)
    fail(f"unknown stage {name!r}; `pfascannet --help` lists the stages")


if __name__ == "__main__":
    sys.exit(main())
