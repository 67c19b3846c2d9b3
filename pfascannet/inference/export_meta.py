"""``export.json`` and the layout of an export folder: what it says about its detector, readable without Keras.

Kept apart from ``export.py`` (writing) and ``detectors.py`` (loading) so
commands can validate a model path (and report a bad one) before paying for
the framework import.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Optional, Sequence

from pfascannet.errors import PfaError
from pfascannet.io_utils import is_temp_name
from pfascannet.layout import EXPORT_JSON, KERAS_FILE, SAVED_MODEL_DIR, ExportFolder  # noqa: F401  (the export's names)

FORMATS = ("savedmodel", "keras")
"""The format names of an export folder (``layout.ExportFolder``: ``saved_model/``, ``detector.keras``)."""


class ExportError(PfaError):
    """An export that cannot be written or read."""


def read_export_json(export_dir: str) -> dict:
    """The export.json of ``export_dir``, with a clear error if it is missing or unreadable."""
    path = ExportFolder(export_dir).export_json
    if not os.path.isfile(path):
        raise ExportError(f"{export_dir} has no {EXPORT_JSON}: not an export directory, or an interrupted export")
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
        int(meta["alpha"]), int(meta["roi_px"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ExportError(f"{path} is not a valid export description: {exc}") from None
    mpp = meta.get("training_mpp")  # absent in exports written before it was recorded
    if mpp is not None and not _positive_number(mpp):
        raise ExportError(f"{path}: training_mpp must be a positive number of microns per pixel, got {mpp!r}")
    return meta


MPP_TOLERANCE = 0.10
"""Largest relative difference between a slide's pixel size and the model's training one that passes silently."""


def mpp_mismatch(model_mpp: Optional[float], slide_mpp: Optional[float]) -> Optional[str]:
    """A warning when a slide's pixel size differs from the model's training pixel size by more than 10 %.

    The detector's receptive field and its pooling windows are fixed in
    pixels, so on a slide at another pixel size it sees tissue at another
    scale than it learned (TIAToolbox validates a model's resolution against
    each slide the same way).

    Args:
      model_mpp: um/px the model was trained at (None: unknown, no check).
      slide_mpp: the slide's level-0 um/px (None: unknown, no check).

    Returns:
      The warning text, or None when the two agree within ``MPP_TOLERANCE``
      of the model's (or either is unknown).
    """
    if model_mpp is None or slide_mpp is None:
        return None
    ratio = float(slide_mpp) / float(model_mpp)
    if abs(ratio - 1.0) <= MPP_TOLERANCE:
        return None
    return (
        f"the slide's pixel size {float(slide_mpp):.4g} um/px differs from the {float(model_mpp):.4g} um/px the "
        f"model was trained at by {100 * abs(ratio - 1.0):.0f} %: cells appear {1.0 / ratio:.2f}x the size "
        "the model learned, so its map may be wrong (check the slide's --mpp, or use a model trained at it)"
    )


def mpp_warnings(slide: str, slide_mpp: Optional[float], detectors: Sequence) -> list:
    """``mpp_mismatch`` of each distinct ``training_mpp`` among ``detectors`` (those that say one), as ``slide: text`` lines."""
    model_mpps = dict.fromkeys(getattr(d, "training_mpp", None) for d in detectors)
    texts = (mpp_mismatch(m, slide_mpp) for m in model_mpps)
    return [f"{slide}: {t}" for t in texts if t]


def _positive_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


_DIGESTS: dict = {}


def files_digest(path: str | os.PathLike) -> str:
    """SHA-256 (hex, 16 chars) of a file, or of every file under a folder (names and contents).

    The scanner keys its resume decisions on it: a model replaced behind the
    same path is a different model.  Cached per process by the files'
    (name, size, mtime), so a big SavedModel is hashed once per load, not per
    slide; hidden temporaries (``io_utils.is_temp_name``) are left out.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        files = []
        for root, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not is_temp_name(d))
            files += [os.path.join(root, n) for n in sorted(names) if not is_temp_name(n)]
    else:
        files = [path]
    stats = []
    for f in files:
        st = os.stat(f)
        stats.append((os.path.relpath(f, path), st.st_size, st.st_mtime_ns))
    key = (path, tuple(stats))
    if key in _DIGESTS:
        return _DIGESTS[key]
    h = hashlib.sha256()
    for f, (rel, size, _) in zip(files, stats):
        h.update(f"{rel}\0{size}\0".encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    digest = h.hexdigest()[:16]
    _DIGESTS[key] = digest
    return digest
