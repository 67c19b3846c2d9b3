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
import dataclasses
from typing import Callable, Optional

from pfascannet.errors import PfaError

PRECISIONS = ("float32", "bfloat16", "float16")
"""The precisions a model computes in: float32, or mixed precision computing in bfloat16 / float16."""

AUTO = "auto"
"""``--precision auto``: ``resolve_precision`` picks one of ``PRECISIONS`` from the CPU's features."""

CHOICES = PRECISIONS + (AUTO,)
"""The ``--precision`` values a stage accepts (``auto`` is resolved before any model is built or recorded)."""

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


CPUINFO = "/proc/cpuinfo"


def read_cpu_flags(path: str = CPUINFO) -> Optional[frozenset]:
    """The ``flags`` of the first processor in ``/proc/cpuinfo`` (x86 Linux); None where there is no such file or line."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() in ("flags", "Features"):  # "Features": Linux on Arm
                    return frozenset(value.split())
    except OSError:
        return None
    return None


@dataclasses.dataclass(frozen=True)
class PrecisionChoice:
    """What ``--precision`` resolved to, and why (``requested`` is what was asked: a precision or ``auto``)."""

    precision: str
    requested: str
    reason: str

    def line(self) -> str:
        """One line for a stage's output: ``precision auto -> bfloat16 (...)``."""
        return f"precision {self.requested} -> {self.precision} ({self.reason})"


def choose_precision(requested: str, cpu_flags: Optional[Callable[[], Optional[frozenset]]] = None) -> PrecisionChoice:
    """Resolves ``requested`` (one of ``CHOICES``); ``auto`` by the CPU's features.

    The rule, from measurements (BENCHMARKS.md "Precision" and "Issue 24"): on
    a CPU with native bfloat16 arithmetic -- ``amx_bf16`` (AMX tiles, Intel
    Sapphire Rapids and later) or ``avx512_bf16`` (AVX512-BF16 dot products,
    AMD Zen 4, Intel Cooper Lake) -- oneDNN runs the convolutions in bfloat16
    and a paper-width ROI is 2.1-2.4x faster than float32 (measured on
    AVX512-BF16 without AMX; AMX not measured), with maps within
    ``EQUIVALENCE_TOLERANCE`` / the tests' map bound of float32's.  Without
    either (AVX2, AVX-512 without BF16) bfloat16 is emulated by conversions
    around float32 arithmetic, no faster, so ``float32``; likewise on Arm
    (its ``bf16`` feature is not measured here).  float16 is never chosen: no
    CPU here computes it natively (3x slower than bfloat16 measured).  Only
    the CPU is looked at: a scan on a GPU should name its precision.  An
    explicit precision is returned unchanged.  ``cpu_flags`` reads the flags
    (default ``read_cpu_flags``, looked up at call time so tests can replace it).
    """
    if requested != AUTO:
        return PrecisionChoice(check_precision(requested), requested, "asked for")
    found = (cpu_flags or read_cpu_flags)()
    if found is None:
        return PrecisionChoice("float32", AUTO, "CPU features unknown (no /proc/cpuinfo flags)")
    if "amx_bf16" in found:
        return PrecisionChoice("bfloat16", AUTO, "CPU has amx_bf16")
    if "avx512_bf16" in found:
        return PrecisionChoice("bfloat16", AUTO, "CPU has avx512_bf16 (no AMX)")
    return PrecisionChoice("float32", AUTO, "CPU has neither amx_bf16 nor avx512_bf16: bfloat16 would be emulated")


def resolve_precision(
    requested: Optional[str], cpu_flags: Optional[Callable[[], Optional[frozenset]]] = None
) -> Optional[str]:
    """``requested`` with ``auto`` resolved (``choose_precision``); None stays None (the export's precision)."""
    if requested is None:
        return None
    return choose_precision(requested, cpu_flags).precision


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
