"""Camelyon17 pN-staging from scan probability maps (Zhao et al. 2019, section 2.4).

``pfascannet pn-stage`` as an absl script: the flags and ``main`` are in
``pfascannet/stages/pn_stage.py`` (``--help`` lists them).
"""

from pfascannet.cliutil import run_main
from pfascannet.stages.pn_stage import main

if __name__ == "__main__":
    run_main(main)
