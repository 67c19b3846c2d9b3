"""Model runs for a scan from exported detectors: alpha override, ``auto`` ROI, ensembles, patch mode.

The same weights serve every alpha (Zhao et al., MICCAI 2019, §2.2; layers
are matched by name), so a ``.keras`` export made at alpha 16 also scans at
alpha 32 (the paper's ensemble partner, §3) by rebuilding the detector at
the new alpha and copying the weights.  Likewise for the precision
(``model.precision``: float32, bfloat16, float16; the weights are float32 at
all three).  A SavedModel serves only the alpha, ROI side and precision it
was exported with; asking it for another one loads the export's ``.keras``
file instead.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Optional, Sequence, Union

import psutil

from pfascannet import geometry
from pfascannet.inference import export_meta
from pfascannet.inference.model_run import ModelRun
from pfascannet.inference.plan import auto_roi_px
from pfascannet.inference.scan_settings import ScanError
from pfascannet.layout import ExportFolder
from pfascannet.inference.xla import check_xla
from pfascannet.model.precision import AUTO, check_precision, choose_precision


DEFAULT_MEMORY_FRACTION = 0.25
"""``roi='auto'`` budget when none is given: this share of the machine's RAM."""


def default_memory_budget_bytes() -> float:
    """A quarter of physical memory (the reader threads, map and outputs need the rest)."""
    return DEFAULT_MEMORY_FRACTION * psutil.virtual_memory().total


def bytes_per_input_px(first_width: int, dtype_bytes: int = 4) -> float:
    """Peak activation bytes per input pixel: conv1_1 and conv1_2 outputs alive together, plus the input.

    The first VGG block runs at full resolution and dominates memory
    (DESIGN.md §5); three of its maps at once covers the framework's
    temporaries.
    """
    return 3.0 * first_width * dtype_bytes + 3 * 4


def paper_like_roi_px(alpha: int) -> int:
    """The largest valid ROI side <= the paper's 2708 on the grid of ``alpha`` (2708 at 16 and 32)."""
    stride = geometry.output_stride_px(alpha)
    for lm in range((geometry.PAPER_ROI_PX - geometry.PATCH_PX) // stride + 1, 0, -1):
        try:
            return geometry.ScanGeometry(alpha, geometry.roi_px(lm, alpha)).roi_px
        except geometry.GeometryError:
            continue
    return geometry.PATCH_PX


def _export_meta(path: str) -> Optional[dict]:
    # Read export.json without importing Keras, so bad --alpha/--roi values
    # are reported before the (slow) framework import.
    if not (os.path.isdir(path) and os.path.isfile(ExportFolder(path).export_json)):
        return None
    return export_meta.read_export_json(path)


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """What ``load_run`` will load, settled without Keras (so bad flags fail before the slow import)."""

    model_path: str
    alpha: int
    roi_px: int
    mode: str
    format: str
    meta: Optional[dict]
    precision: Optional[str] = None
    xla: str = "auto"
    precision_reason: Optional[str] = None


def resolve_run(
    model_path: str,
    alpha: Optional[int] = None,
    roi: Union[int, str, None] = None,
    mode: str = "dense",
    batch: int = 1,
    memory_budget_bytes: Optional[float] = None,
    precision: Optional[str] = None,
    xla: str = "auto",
    layers: bool = False,
) -> RunSpec:
    """Checks a model path and the requested alpha / ROI side, and settles them, without loading anything.

    ``precision`` None is the export's; ``"auto"`` is resolved here
    (``precision.choose_precision``: by the CPU's features), so the spec, the
    loaded detector and the map's fingerprint hold the precision chosen,
    never ``auto``; ``xla`` see ``xla.resolve_xla``; ``layers``: the scan needs
    the model's layers (``--stream``), so an export loads its ``.keras`` model.

    Raises:
      ScanError / ExportError / GeometryError: a missing or incomplete export,
        an alpha or ROI side off the grid of eq. (1), a bad mode or budget.
    """
    if mode not in ("dense", "patch"):
        raise ScanError(f"mode must be 'dense' or 'patch', got {mode!r}")
    if not os.path.exists(model_path):
        raise ScanError(f"no detector at {model_path}")
    if os.path.isdir(model_path) and not (
        os.path.isfile(ExportFolder(model_path).export_json)
        or os.path.isfile(os.path.join(model_path, "saved_model.pb"))
    ):
        raise ScanError(
            f"{model_path}: not an export folder (no {export_meta.EXPORT_JSON}; an interrupted export?) "
            "nor a SavedModel folder"
        )
    if os.path.isfile(model_path) and not model_path.endswith(".keras"):
        raise ScanError(f"{model_path}: expected an export folder, a .keras file or a SavedModel folder")
    if memory_budget_bytes is not None and not (memory_budget_bytes > 0 and math.isfinite(memory_budget_bytes)):
        raise ScanError(f"the memory budget must be a positive number, got {memory_budget_bytes!r}")
    reason = None
    if precision == AUTO:
        choice = choose_precision(AUTO)
        precision, reason = choice.precision, choice.line()
    elif precision is not None:
        check_precision(precision)
    check_xla(xla, ScanError)
    spec = _resolve(model_path, alpha, roi, mode, batch, memory_budget_bytes, precision, xla)
    if layers and spec.meta is not None and spec.format != "keras":
        if "keras" not in spec.meta.get("formats", {}):
            raise ScanError(f"{model_path}: --stream needs the export's .keras model, and this export has none")
        spec = dataclasses.replace(spec, format="keras")
    return dataclasses.replace(spec, precision_reason=reason)


def load_run(
    model_path: str,
    alpha: Optional[int] = None,
    roi: Union[int, str, None] = None,
    mode: str = "dense",
    batch: int = 1,
    memory_budget_bytes: Optional[float] = None,
    precision: Optional[str] = None,
    xla: str = "auto",
) -> ModelRun:
    """Loads an exported detector as a ModelRun at the requested alpha and ROI side.

    Args:
      model_path: export directory, ``.keras`` file or SavedModel directory.
      alpha: dense coefficient of the map grid; None: the export's (16 for a
        bare ``.keras`` file).
      roi: LR (int), ``"auto"`` (largest on the grid that fits the memory
        budget), or None (the export's, else the largest valid side <= 2708).
      mode: ``"dense"`` or ``"patch"`` (same weights on 692 patches, the speed baseline).
      batch: ROIs per model call (for the ``auto`` budget).
      memory_budget_bytes: for ``auto``; default a quarter of RAM.
      precision: None (the export's), "float32", "bfloat16", "float16" or
        "auto" (``precision.choose_precision``).
      xla: "auto", "on" or "off" (``xla.resolve_xla``).

    Returns:
      The ModelRun; its ``digest`` is the loaded file's (computed once here).
    """
    return load_spec(resolve_run(model_path, alpha, roi, mode, batch, memory_budget_bytes, precision, xla))


def load_spec(spec: RunSpec) -> ModelRun:
    """Loads what ``resolve_run`` settled (the slow part: Keras / TensorFlow)."""
    from pfascannet.inference import detectors  # noqa: PLC0415  (imports Keras)

    detector = detectors.load_detector(
        spec.model_path, format=spec.format, roi_px=spec.roi_px, precision=spec.precision, xla=spec.xla
    )
    if detector.alpha != spec.alpha:
        detector = rebuild_at_alpha(detector, spec.alpha, spec.roi_px)
    grid = geometry.ScanGeometry(detector.alpha, detector.roi_px)
    return ModelRun(detector, grid, mode=spec.mode, name=os.path.abspath(spec.model_path), digest=detector.digest)


def _resolve(model_path, alpha, roi, mode, batch, memory_budget_bytes, precision=None, xla="auto") -> RunSpec:
    meta = _export_meta(model_path)
    export_alpha = int(meta["alpha"]) if meta else None
    export_roi = int(meta["roi_px"]) if meta else None
    # A bare .keras file carries no export.json: scan it at the paper's alpha
    # unless told otherwise (any build converts, see rebuild_at_alpha).
    want_alpha = int(alpha) if alpha is not None else (export_alpha or geometry.PAPER_ALPHA)

    export_precision = (meta or {}).get("precision", "float32")
    want_precision = precision or export_precision
    if roi == "auto":
        first = int(meta["config"]["widths"][0]) if meta and "config" in meta else 64
        budget = memory_budget_bytes if memory_budget_bytes is not None else default_memory_budget_bytes()
        dtype_bytes = 4 if want_precision == "float32" else 2
        want_roi = auto_roi_px(want_alpha, budget, batch, bytes_per_input_px(first, dtype_bytes))
    elif roi is None:
        want_roi = export_roi if (export_roi and want_alpha == export_alpha) else paper_like_roi_px(want_alpha)
    else:
        try:
            want_roi = int(roi)
        except (TypeError, ValueError):
            raise ScanError(f"roi must be an integer ROI side or 'auto', got {roi!r}") from None

    # The SavedModel is fixed to its export's alpha, LR and precision; anything else needs the .keras model.
    fmt = "auto"
    if meta and (want_alpha != export_alpha or want_roi != export_roi or want_precision != export_precision):
        fmt = "keras"
    geometry.ScanGeometry(want_alpha, want_roi)  # a clear error before loading anything
    return RunSpec(model_path, want_alpha, want_roi, mode, fmt, meta, precision, xla)


def rebuild_at_alpha(detector, alpha: int, roi_px: int):
    """The same weights as a KerasDetector at another alpha (layers matched by name)."""
    from pfascannet.inference import detectors  # noqa: PLC0415  (imports Keras)

    model = getattr(detector, "model", None)
    if model is None:
        raise ScanError(
            f"the detector (alpha={detector.alpha}) is a SavedModel and cannot be rebuilt at alpha={alpha}; "
            "use a .keras export"
        )
    rebuilt = detectors.rebuild_detector(model, alpha=alpha, precision=detector.precision)
    xla = "on" if detector.xla else "off"
    return detectors.KerasDetector(rebuilt, alpha, roi_px, digest=detector.digest, xla=xla)


def resolve_runs(
    model_path: str,
    alpha: Optional[int] = None,
    roi: Union[int, str, None] = None,
    mode: str = "dense",
    ensemble: Sequence[str] = (),
    ensemble_alpha: Optional[int] = 32,
    batch: int = 1,
    memory_budget_bytes: Optional[float] = None,
    precision: Optional[str] = None,
    xla: str = "auto",
    layers: bool = False,
) -> list[RunSpec]:
    """The runs of a scan, checked but not loaded: the main model, then each ensemble member (default alpha 32, §3).

    Every model path, alpha and ROI side is checked up front (before any model
    loads); ``load_spec`` loads each.  An ensemble member's ROI side is chosen
    on its own grid: ``auto`` again, or the main run's map tile Lm (so both
    read ROIs of about the same size).
    """
    specs = [resolve_run(model_path, alpha, roi, mode, batch, memory_budget_bytes, precision, xla, layers)]
    if specs[0].precision_reason:  # --precision auto: say once what it chose, and why
        print(specs[0].precision_reason, flush=True)
    precision = specs[0].precision if precision == AUTO else precision  # one choice for every member
    for other in ensemble:
        other_roi: Union[int, str, None]
        if roi == "auto":
            other_roi = "auto"
        else:
            member_alpha = ensemble_alpha if ensemble_alpha is not None else specs[0].alpha
            geometry.ScanGeometry(member_alpha, geometry.roi_px(1, member_alpha))  # alpha itself valid?
            # Same ROI side in pixels as near as the member's grid allows.
            stride = geometry.output_stride_px(member_alpha)
            lm = max(1, (specs[0].roi_px - geometry.PATCH_PX) // stride + 1)
            other_roi = geometry.roi_px(lm, member_alpha)
        specs.append(resolve_run(other, ensemble_alpha, other_roi, mode, batch, memory_budget_bytes, precision, xla,
                                 layers))
    return specs
