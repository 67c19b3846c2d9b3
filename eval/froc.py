"""Scores Camelyon16 lesion CSVs with the organisers' FROC (three scores, named).

``pfascannet froc`` as an absl script: the flags and ``main`` are in
``pfascannet/stages/froc.py`` (``--help`` lists them).
"""

from pfascannet.cliutil import run_main
from pfascannet.stages.froc import main

if __name__ == "__main__":
    run_main(main)
