"""Train PFA-ScanNet (detector + decoder, synergistic learning) on a cohort.

``pfascannet train`` as an absl script: the flags and ``main`` are in
``pfascannet/stages/train.py`` (``--help`` lists them).
"""

from pfascannet.cliutil import run_main
from pfascannet.stages.train import main

if __name__ == "__main__":
    run_main(main)
