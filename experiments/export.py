"""Export a trained detector at a chosen alpha: SavedModel + .keras + export.json.

``pfascannet export`` as an absl script: the flags and ``main`` are in
``pfascannet/stages/export.py`` (``--help`` lists them).
"""

from pfascannet.cliutil import run_main
from pfascannet.stages.export import main

if __name__ == "__main__":
    run_main(main)
