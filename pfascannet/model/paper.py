"""The paper's training numbers (Zhao et al., MICCAI 2019, Implementation Details), without Keras.

One place for them: ``model.losses`` (eqs. (2)-(3)) and the defaults of
``training.settings`` (``pfascannet train --help``) both read them.
"""

PAPER_GAMMA = 0.04
"""Truncation point of eq. (2)."""
PAPER_LAMBDA = 0.5
"""lambda of eq. (3): ``L = Lcla + lambda * Lseg``."""
PAPER_LEARNING_RATE = 1e-4
"""SGD learning rate (fine-tuning from ImageNet)."""
PAPER_MOMENTUM = 0.9
"""SGD momentum."""
