"""Scan whole slides with an exported detector: probability maps, lesions, heatmaps, contours.

``pfascannet scan`` as an absl script: the flags and ``main`` are in
``pfascannet/stages/scan.py`` (``--help`` lists them).
"""

from pfascannet.cliutil import run_main
from pfascannet.stages.scan import main

if __name__ == "__main__":
    run_main(main)
