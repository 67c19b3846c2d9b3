"""Checks the central invariant on a saved detector: dense output == patch classifier.

``pfascannet check-equivalence`` as an absl script: the flags and ``main`` are in
``pfascannet/stages/check_equivalence.py`` (``--help`` lists them).
"""

from pfascannet.cliutil import run_main
from pfascannet.stages.check_equivalence import main

if __name__ == "__main__":
    run_main(main)
