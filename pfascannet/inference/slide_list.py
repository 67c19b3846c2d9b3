"""Which slides a scan covers: slide files, folders, list files, shards, and a cheap check of each."""

from __future__ import annotations

import io
import os
from typing import Optional, Sequence

from pfascannet import camelyon, datasets
from pfascannet.camelyon import SLIDE_EXTENSIONS
from pfascannet.errors import PfaError
from pfascannet.inference.scan_settings import ScanError
from pfascannet.slide.reader import SlideReader


def check_slide(path: str, mpp: Optional[float] = None) -> Optional[str]:
    """Why ``path`` cannot be scanned (missing, unreadable, no pixel size without ``mpp``), or None.

    Opens the slide's directories only (no pixels): cheap enough to check a
    whole list before a model loads.
    """
    try:
        with SlideReader(path, mpp=mpp) as reader:
            reader.require_mpp()
    except PfaError as exc:
        return str(exc)
    except OSError as exc:
        return f"{path}: {exc.strerror or exc}"
    return None


def list_slides(spec: str | Sequence[str]) -> list[str]:
    """Slide paths from a slide file, a folder (or a dataset root: ``datasets.folder_slides``), or a list file.

    A list file (``.txt``, ``.csv``, ``.lst``) holds one path per line
    (relative paths are relative to the list file; ``#`` starts a comment; a
    CSV's first column is used and a header line whose first field is not a
    path is skipped).  A sequence of such specs is concatenated.  The result
    is sorted, without duplicates.  A folder's dot-files and temporary files
    (``io_utils.is_temp_name``) are not slides.

    Raises:
      ScanError: nothing found, or two slides with the same id (their outputs would collide).
    """
    specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    paths: list[str] = []
    for s in specs:
        s = os.fspath(s)
        if os.path.isdir(s):
            # A dataset root (a cohort, CAMELYON16/17 as downloaded) gives all its slides; any other
            # folder its slide files, or its subfolders' (CAMELYON17's training/center_K/).
            # Dot-files (a copy's or a writer's temporaries, macOS "._" files) are never slides.
            paths += datasets.folder_slides(s)
        elif s.lower().endswith((".txt", ".csv", ".lst")):
            if not os.path.exists(s):
                raise ScanError(f"{s}: no such slide list")
            base = os.path.dirname(os.path.abspath(s))
            with _list_text(s) as f:
                for line in f:
                    item = line.split("#", 1)[0].strip().split(",")[0].strip()
                    if not item:
                        continue
                    if not datasets.is_slide_name(item):
                        continue  # a CSV header or a non-slide column
                    paths.append(item if os.path.isabs(item) else os.path.join(base, item))
        else:
            paths.append(s)  # a slide; a missing one fails later with a clear message
    paths = sorted(set(os.path.normpath(p) for p in paths))
    if not paths:
        raise ScanError(f"no slides found in {specs} (looked for {', '.join(SLIDE_EXTENSIONS)})")
    ids: dict[str, str] = {}
    for p in paths:
        key = datasets.slide_key(p)  # ids match in any case (datasets), so Tumor_001 and tumor_001 collide
        if key in ids:
            raise ScanError(f"two slides share the id {camelyon.slide_id(p)!r} (in any case): {ids[key]} and {p}")
        ids[key] = p
    return paths


def _list_text(path: str) -> io.StringIO:
    """A slide list's text; one ``ScanError`` naming the file and line if it is not text."""
    if os.path.isdir(path):
        raise ScanError(f"{path}: a folder, not a slide list")
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ScanError(f"{path}:{line}: byte 0x{data[exc.start]:02x} is not UTF-8 text; "
                        "a slide list holds one path per line") from None
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise ScanError(f"{path}:{line}: holds a NUL byte; a slide list holds one path per line")
    return io.StringIO(text, newline=None)  # lines end at \n, \r\n or \r, as open() reads them


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/N"`` (0 <= i < N) -> ``(i, N)``."""
    try:
        i_text, n_text = str(text).split("/")
        i, n = int(i_text), int(n_text)
    except ValueError:
        raise ScanError(f"shard must look like i/N (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ScanError(f"shard {text!r}: need 0 <= i < N")
    return i, n


def shard_slides(paths: Sequence[str], shard: tuple[int, int]) -> list[str]:
    """Slide ``k`` of the sorted list goes to shard ``k mod N``: disjoint, and together all slides."""
    i, n = shard
    return [p for k, p in enumerate(sorted(paths)) if k % n == i]

