"""The XLA policy of inference, in one place and without importing Keras.

``xla`` is ``"auto"``, ``"on"`` or ``"off"`` (``XLA_SETTINGS``; the scan's
``--xla``).  ``"auto"`` compiles the forward pass with XLA where that was
measured faster (BENCHMARKS.md): under TensorFlow only on a GPU (on the
2-core CPU XLA was no faster in float32 and 3x slower in bfloat16), and
always under JAX, where ``"off"`` is ignored (eager JAX runs op by op);
``"on"`` / ``"off"`` force it under TensorFlow.  ``check_xla`` needs no
framework (``runs.resolve_run`` checks the flag before any model loads);
``resolve_xla`` asks Keras for its backend when a detector is built.
"""

from __future__ import annotations

from pfascannet.inference.export_meta import ExportError

XLA_SETTINGS = ("auto", "on", "off")
"""``xla`` values: compile the forward pass where measured faster, always, never."""


def check_xla(xla: str, error: type[Exception] = ExportError) -> str:
    """Returns ``xla`` if it is one of ``XLA_SETTINGS``, else raises ``error``."""
    if xla not in XLA_SETTINGS:
        raise error(f"xla must be one of {', '.join(XLA_SETTINGS)}, got {xla!r}")
    return xla


def resolve_xla(xla: str = "auto") -> bool:
    """Whether ``xla`` compiles the forward pass on this backend and machine (see the module docstring)."""
    check_xla(xla)
    import keras  # noqa: PLC0415  (only where a detector is being built: this module stays Keras-free)

    backend = keras.backend.backend()
    if backend == "jax":
        return True  # always: eager JAX would run op by op
    if backend == "tensorflow":
        import tensorflow as tf  # noqa: PLC0415

        return xla == "on" or (xla == "auto" and bool(tf.config.list_physical_devices("GPU")))
    return False  # torch: no XLA
