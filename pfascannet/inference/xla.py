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


def static_graphs(fn, jit: bool = False):
    """``fn`` compiled once per input shape with that shape fixed: a TensorFlow graph (or XLA with ``jit``), a JAX jit.

    Why not one graph for every shape (Keras' ``predict_on_batch`` relaxes the
    shape after the second one it meets): a graph traced with unknown sides
    fuses fewer kernels (oneDNN's convolution + bias + add), and in bfloat16
    the unfused sum rounds once more, so the same pixel came out up to 0.013
    apart in an edge ROI and in the whole ROI (the tests' amplified
    classifier).  Static shapes give every shape the fused graph: edge ROIs,
    whole ROIs and streamed strips agree bit for bit (tests/test_inference_stream.py,
    tests/test_inference_edge_rois.py).  ``fn`` takes a tensor or a list of tensors.
    """
    import keras  # noqa: PLC0415

    backend = keras.backend.backend()
    if backend == "jax":
        import jax  # noqa: PLC0415

        return jax.jit(fn)  # static shapes already: one compile per shape
    if backend != "tensorflow":
        return fn
    import tensorflow as tf  # noqa: PLC0415

    graphs: dict = {}

    def call(x):
        many = isinstance(x, (list, tuple))
        xs = list(x) if many else [x]
        key = tuple((tuple(t.shape), t.dtype) for t in xs)
        graph = graphs.get(key)
        if graph is None:
            specs = [tf.TensorSpec(t.shape, t.dtype) for t in xs]
            traced = tf.function(fn, input_signature=[specs] if many else specs, autograph=False, jit_compile=jit)
            graph = graphs[key] = traced.get_concrete_function()
        return graph(xs) if many else graph(xs[0])

    return call
