"""Quadratic weighted kappa of a Camelyon17 submission against a reference CSV.

``pfascannet kappa`` as an absl script: the flags and ``main`` are in
``pfascannet/stages/kappa.py`` (``--help`` lists them).
"""

from pfascannet.cliutil import run_main
from pfascannet.stages.kappa import main

if __name__ == "__main__":
    run_main(main)
