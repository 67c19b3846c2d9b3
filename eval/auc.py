"""Slide-level Camelyon16 AUC with a bootstrap CI and the ROC plot.

``pfascannet auc`` as an absl script: the flags and ``main`` are in
``pfascannet/stages/auc.py`` (``--help`` lists them).
"""

from pfascannet.cliutil import run_main
from pfascannet.stages.auc import main

if __name__ == "__main__":
    run_main(main)
