"""The ``pfascannet`` command.

  pfascannet demo [--out demo_out] [--fast] [--train]

The stage-by-stage tools are the absl scripts in ``experiments/``,
``data_prep/`` and ``eval/`` (see README.md).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from pfascannet.cliutil import guarded


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pfascannet", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="the whole pipeline on a synthetic cohort, with a report")
    d.add_argument("--out", default="demo_out", help="output folder (rerun to resume)")
    d.add_argument("--fast", action="store_true", help="smallest size: 2 patients, smaller slides")
    d.add_argument("--train", action="store_true", help="train the tiny model here instead of the shipped weights")
    d.add_argument("--train_steps", type=int, default=300, help="with --train: steps")
    d.add_argument("--train_minutes", type=float, default=4.0, help="with --train: time limit")
    d.add_argument("--seed", type=int, default=0, help="cohort (and training) seed")
    sub.add_parser("version", help="print the version")
    return p


@guarded
def _run(args: argparse.Namespace) -> int:
    if args.command == "version":
        from pfascannet import __version__  # noqa: PLC0415

        print(__version__)
        return 0
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from pfascannet import demo  # noqa: PLC0415

    settings = demo.DemoSettings(out=args.out, size="fast" if args.fast else "default", train=args.train,
                                 train_steps=args.train_steps, train_minutes=args.train_minutes, seed=args.seed)
    demo.run_demo(settings)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
