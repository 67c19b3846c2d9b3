"""Held-out slide-level evaluation of trained weights, on synthetic cohorts no training run used.

``pfascannet eval-heldout`` as an absl script: the flags and ``main`` are in
``pfascannet/stages/eval_heldout.py`` (``--help`` lists them).
"""

from pfascannet.cliutil import run_main
from pfascannet.stages.eval_heldout import main

if __name__ == "__main__":
    run_main(main)
