"""Write training patches (692 patch + 692 mask + label) of a cohort into TFRecord shards.

``pfascannet tfrecords`` as an absl script: the flags and ``main`` are in
``pfascannet/stages/tfrecords.py`` (``--help`` lists them).
"""

from pfascannet.cliutil import run_main
from pfascannet.stages.tfrecords import main

if __name__ == "__main__":
    run_main(main)
