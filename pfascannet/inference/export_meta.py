"""``export.json``: what an export directory says about its detector, readable without Keras.

Kept apart from ``export.py`` so commands can validate a model path (and
report a bad one) before paying for the framework import.
"""

from __future__ import annotations

import hashlib
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


_DIGESTS: dict = {}


def files_digest(path: str | os.PathLike) -> str:
    """SHA-256 (hex, 16 chars) of a file, or of every file under a folder (names and contents).

    The scanner keys its resume decisions on it: a model replaced behind the
    same path is a different model.  Cached per process by the files'
    (name, size, mtime), so a big SavedModel is hashed once per load, not per
    slide; hidden temporaries (``io_utils.is_temp_name``) are left out.
    """
    from pfascannet.io_utils import is_temp_name  # noqa: PLC0415

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
