"""Table 1 of the paper on the synthetic cohort: cohort -> train -> export -> scan -> evaluate.

``pfascannet table1`` as an absl script: the flags and ``main`` are in
``pfascannet/stages/table1.py`` (``--help`` lists them).
"""

from pfascannet.cliutil import run_main
from pfascannet.stages.table1 import main

if __name__ == "__main__":
    run_main(main)
