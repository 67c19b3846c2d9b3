"""Numeric precision of the detector: float32, or bfloat16 / float16 mixed precision.

Keras mixed precision (``mixed_bfloat16``, ``mixed_float16``) keeps the
weights in float32 and computes every layer in the lower type, except the
layers built with ``dtype="float32"``: the input normalisation (0..255 minus
the ImageNet means is exact in float32 but not in bfloat16's 8 significant
bits) and the final softmax (probabilities near 0 and 1, which the lesion
candidates and the FROC sweep down to 0.05, need float32).  Weights are the
same float32 arrays at every precision, so one ``.weights.h5`` or export
serves all three and ``transfer_weights`` copies between them.

The global dtype policy is process state in Keras; ``dtype_policy`` sets it
only while a model is being built and restores it afterwards, so a library
call never leaves the caller's policy changed.
"""

from __future__ import annotations

import contextlib

from pfascannet.errors import PfaError

PRECISIONS = ("float32", "bfloat16", "float16")
"""The ``--precision`` values: float32, or mixed precision computing in bfloat16 / float16."""

POLICY = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
"""Keras dtype policy of each precision."""

EQUIVALENCE_TOLERANCE = {"float32": 1e-4, "bfloat16": 1e-2, "float16": 2e-3}
"""Largest |dense - patch| tumour probability the equivalence tests accept at each precision.

The dense ROI and the 692 patch compute the very same sums for an output
pixel (valid convolutions, DESIGN.md §1); only the order of the float32
accumulation inside a convolution may differ between an ROI and a patch
(kernels tile large and small inputs differently).  In float32 that is
reassociation noise (``equivalence.DEFAULT_TOLERANCE``).  In mixed precision
every layer then rounds its output to the compute type, and a reordered sum
can round to the neighbouring value: one unit in the last place is 2^-8
(0.4 %) in bfloat16 and 2^-11 (0.05 %) in float16, and such flips compound
through the 16 layers.  The bounds allow a few of them in the logits (the
softmax passes at most 1/4 of a logit error on); both stay 5x below the
control of patches shifted by half an output stride (0.10 on the test ROI),
so a misplaced window still fails.  Measured on this project's 2-core CPU (oneDNN): 0.0 at all three
precisions, i.e. the same accumulation order for ROI and patch.  The bounds
are for ROI and patch run by the same runtime; two kernel families (XLA's
and oneDNN's) differ by up to 0.05 in bfloat16 on the tests' ROI, whose
classifier is set to amplify small feature differences (tests/test_model_precision.py).
"""


class PrecisionError(PfaError, ValueError):
    """A precision name that is not one of ``PRECISIONS``."""


def check_precision(precision: str) -> str:
    """Returns ``precision`` if it is one of ``PRECISIONS``, else raises with the accepted values."""
    if precision not in PRECISIONS:
        raise PrecisionError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def policy_name(precision: str) -> str:
    """The Keras dtype policy name of ``precision`` (``mixed_bfloat16`` for ``bfloat16``)."""
    return POLICY[check_precision(precision)]


def precision_of_policy(name: str) -> str:
    """The precision whose policy is ``name`` (``float32`` for anything computing in float32)."""
    for precision, policy in POLICY.items():
        if policy == name:
            return precision
    return "float32"


def model_precision(model) -> str:
    """The precision a Keras model computes in, read from its first convolution's dtype policy."""
    for layer in model.layers:
        if type(layer).__name__ == "Conv2D":
            return precision_of_policy(layer.dtype_policy.name)
    return "float32"


@contextlib.contextmanager
def dtype_policy(precision: str):
    """Sets Keras' global dtype policy to ``precision``'s while the block runs (models built in it keep it)."""
    import keras  # noqa: PLC0415

    name = policy_name(precision)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield name
    finally:
        keras.config.set_dtype_policy(previous)
