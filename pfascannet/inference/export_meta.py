"""``export.json``: what an export directory says about its detector, readable without Keras.

Kept apart from ``export.py`` so commands can validate a model path (and
report a bad one) before paying for the framework import.
"""

from __future__ import annotations

import json
import os

from pfascannet.errors import PfaError

EXPORT_JSON = "export.json"


class ExportError(PfaError):
    """An export that cannot be written or read."""


def read_export_json(export_dir: str) -> dict:
    """The export.json of ``export_dir``, with a clear error if it is missing or unreadable."""
    path = os.path.join(export_dir, EXPORT_JSON)
    if not os.path.isfile(path):
        raise ExportError(f"{export_dir} has no {EXPORT_JSON}: not an export directory, or an interrupted export")
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
        int(meta["alpha"]), int(meta["roi_px"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ExportError(f"{path} is not a valid export description: {exc}") from None
    return meta
