"""Writes a Camelyon-like synthetic cohort (``shared/DESIGN.md`` section 4).

``pfascannet cohort`` as an absl script: the flags and ``main`` are in
``pfascannet/stages/cohort.py`` (``--help`` lists them).
"""

from pfascannet.cliutil import run_main
from pfascannet.stages.cohort import main

if __name__ == "__main__":
    run_main(main)
