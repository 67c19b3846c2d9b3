"""What a scan folder holds, slide by slide, and the rule for which of its files the viewer may read.

A scan folder S (ARCHITECTURE.md "Files between stages") names its slides by
their maps (``S/maps/<slide>.json``) and by the slide lists of its
``scan_config*.json``; a slide listed there without a map failed or is not
scanned yet, and the viewer shows it with that error.  The slide files
themselves lie wherever the scan read them (the sidecar's ``slide_path``),
or where ``--slides`` says they are now.

The server reads only (1) the slide files this catalogue resolved at start-up,
by slide id, and (2) files inside S whose real path (symlinks resolved) stays
inside S's real path: :meth:`ScanCatalogue.scan_file`.  A URL never becomes a
path by itself.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Mapping, Optional

import numpy as np

from pfascannet import camelyon
from pfascannet.camelyon_files import read_lesion_csv
from pfascannet.errors import PfaError
from pfascannet.io_utils import is_temp_name
from pfascannet.layout import SCAN_REL, ScanFolder
from pfascannet.slide.reader import SlideReader
from pfascannet.viewer import truth as truth_lib

LESION_LIST_MAX = 200
"""Lesion candidates a slide page receives (the most confident; a scan keeps up to 10 000 per slide)."""

DOWNLOADABLE = {
    # sub-folder of S -> file endings the viewer lets a user download (/files/...)
    "": (".csv", ".json"),
    "maps": (".json", ".png", ".tif"),
    "lesions": (".csv",),
    "contours": (".geojson", ".xml"),
    "heatmaps": (".png",),
}


class ViewerError(PfaError):
    """A scan folder the viewer cannot show (the message names it)."""


@dataclasses.dataclass
class SlideEntry:
    """One slide of the scan, as found at start-up (nothing heavy is opened here).

    Attributes:
      slide: slide id.
      slide_path: the slide file, or None when the scan's record of it is gone.
      meta: its map sidecar ``maps/<slide>.json``, or None.
      problem: why the map cannot be shown (no map, unreadable sidecar), or None.
    """

    slide: str
    slide_path: Optional[str]
    meta: Optional[dict]
    problem: Optional[str] = None

    @property
    def score(self) -> Optional[float]:
        value = (self.meta or {}).get("slide_score")
        return float(value) if isinstance(value, (int, float)) else None


class ScanCatalogue:
    """The slides of one scan folder and the truth the viewer draws over them.

    Args:
      scan_dir: the scan folder S.
      slide_paths: slide id -> where the slide file is now (overrides what the scan recorded).
      truth_override: where the truth is, field by field; a field left None is guessed by
        :func:`truth.find_truth_sources` from where the slides are.

    Raises:
      ViewerError: not a scan folder, or one with no slides.
      ReferenceFileError, FileNotFoundError: an unreadable reference list.
    """

    def __init__(self, scan_dir: str, slide_paths: Optional[Mapping[str, str]] = None,
                 truth_override: Optional[truth_lib.TruthSources] = None):
        self.scan_dir = os.path.abspath(scan_dir)
        self._root = os.path.realpath(self.scan_dir)
        self.folder = ScanFolder(self.scan_dir)
        if not os.path.isdir(self.folder.maps):
            raise ViewerError(f"{scan_dir}: not a scan folder (no maps/ folder; `pfascannet scan --out` makes one)")
        listed = self._listed_slides()
        ids = sorted({*self._map_ids(), *listed})
        if not ids:
            raise ViewerError(f"{scan_dir}: a scan folder with no slides (no maps/*.json and no scan_config*.json)")
        overrides = dict(slide_paths or {})
        self.entries: dict[str, SlideEntry] = {}
        for sid in ids:
            meta, problem = self._read_sidecar(sid)
            path = overrides.get(sid)
            if path is None and meta and isinstance(meta.get("slide_path"), str) and os.path.isfile(meta["slide_path"]):
                path = meta["slide_path"]
            if path is None and sid in listed and os.path.isfile(listed[sid]):
                path = listed[sid]
            self.entries[sid] = SlideEntry(sid, os.path.abspath(path) if path else None, meta, problem)
        self.order = ids
        recorded = {sid: e.slide_path for sid, e in self.entries.items() if e.slide_path}
        guessed, given = truth_lib.find_truth_sources(recorded), truth_override or truth_lib.TruthSources()
        self.truth_sources = truth_lib.TruthSources(*(getattr(given, f.name) or getattr(guessed, f.name)
                                                      for f in dataclasses.fields(truth_lib.TruthSources)))
        self.labels = truth_lib.read_labels(self.truth_sources)

    # ------------------------------------------------------------------ start-up reading

    def _map_ids(self) -> list[str]:
        out = []
        for path in glob.glob(self.folder.map_json_glob):
            name = os.path.basename(path)
            # no dot-file, temporary or symlink out of S
            if self.scan_file(SCAN_REL.map_json(name[: -len(".json")])) is not None:
                out.append(name[: -len(".json")])
        return out

    def _listed_slides(self) -> dict[str, str]:
        listed: dict[str, str] = {}
        for config in sorted(glob.glob(self.folder.scan_config_glob)):
            safe = self.scan_file(os.path.relpath(config, self.scan_dir))
            if safe is None:
                continue
            try:
                with open(safe, encoding="utf-8") as f:
                    slides = json.load(f).get("slides", [])
            except (OSError, ValueError, AttributeError):
                continue
            for path in slides if isinstance(slides, list) else []:
                if isinstance(path, str):
                    listed.setdefault(camelyon.slide_id(path), path)
        return listed

    def _read_sidecar(self, sid: str) -> tuple[Optional[dict], Optional[str]]:
        path = self.scan_file(SCAN_REL.map_json(sid))
        if path is None:
            return None, f"no map in {self.folder.maps} (not scanned, or its scan failed)"
        try:
            with open(path, encoding="utf-8") as f:
                meta = json.load(f)
        except (OSError, ValueError) as exc:
            return None, f"{path}: unreadable map sidecar ({' '.join(str(exc).split())})"
        if not isinstance(meta, dict):
            return None, f"{path}: the map sidecar is not a JSON object"
        if self.scan_file(SCAN_REL.map_npy(sid)) is None:
            return meta, f"{self.folder.map_npy(sid)}: the map itself is missing"
        return meta, None

    # ------------------------------------------------------------------ the file rule

    def scan_file(self, rel: str) -> Optional[str]:
        """The path of ``rel`` inside the scan folder, or None when it is not a regular file there.

        None also for absolute paths, ``..`` anywhere, dot-files and temporaries, and any file whose
        real path (symlinks resolved) leaves the scan folder.
        """
        if not rel or "\x00" in rel or "\\" in rel or os.path.isabs(rel):
            return None
        parts = rel.split("/")
        if any(p in ("", ".", "..") or p.startswith(".") or is_temp_name(p) for p in parts):
            return None
        real = os.path.realpath(os.path.join(self._root, *parts))
        if os.path.commonpath([real, self._root]) != self._root or not os.path.isfile(real):
            return None
        return real

    def download(self, rel: str) -> Optional[str]:
        """A scan output a user may download (``DOWNLOADABLE`` kinds), or None."""
        folder, _, name = rel.rpartition("/")
        if folder not in DOWNLOADABLE or not name.lower().endswith(DOWNLOADABLE[folder]):
            return None
        return self.scan_file(rel)

    # ------------------------------------------------------------------ per-slide data

    def label(self, sid: str) -> Optional[str]:
        return truth_lib.label_text(self.labels.get(sid.lower()))

    def summary(self, sid: str) -> dict:
        """The slide list's row of a slide."""
        e = self.entries[sid]
        meta = e.meta or {}
        ref = self.labels.get(sid.lower())
        return {
            "slide": sid,
            "score": e.score,
            "label": self.label(sid),
            "tumour": None if ref is None else bool(ref.tumour),
            "n_lesions": meta.get("n_lesions"),
            "split": None if ref is None else ref.split,
            "problem": e.problem or (None if e.slide_path else "slide file not found (give --slides)"),
        }

    def lesions(self, sid: str, limit: int = LESION_LIST_MAX) -> tuple[list[dict], Optional[str]]:
        """The slide's most confident lesion candidates ``[{p, x, y}]`` (level-0 px) and a problem, if any."""
        path = self.scan_file(SCAN_REL.lesions_csv(sid))
        if path is None:
            return [], "no lesion CSV (run `pfascannet lesions --scan_dir S`)"
        try:
            rows = read_lesion_csv(path)
        except PfaError as exc:
            return [], str(exc)
        rows = rows[np.argsort(-rows[:, 0], kind="stable")][:limit]
        return [{"p": round(float(p), 4), "x": int(x), "y": int(y)} for p, x, y in rows], None

    def contours(self, sid: str) -> tuple[list[dict], Optional[str]]:
        """The scan's lesion contours ``[{p, rings}]`` from ``contours/<slide>.geojson``."""
        path = self.scan_file(SCAN_REL.geojson(sid))
        if path is None:
            return [], "no contours file"
        try:
            with open(path, encoding="utf-8") as f:
                features = json.load(f).get("features", [])
            out = []
            for feature in features:
                rings = feature["geometry"]["coordinates"]
                p = feature.get("properties", {}).get("measurements", {}).get("max_probability")
                out.append({"p": p, "rings": [[[round(float(x), 1), round(float(y), 1)] for x, y in r] for r in rings]})
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            return [], f"{path}: unreadable contours ({type(exc).__name__})"
        return out, None

    def outlines(self, sid: str) -> tuple[dict, Optional[str]]:
        """Truth outlines of a slide (``truth.slide_outlines``) and a problem, if any."""
        try:
            return truth_lib.slide_outlines(self.truth_sources, sid), None
        except PfaError as exc:
            return {"source": None, "tumour": [], "exclusion": []}, str(exc)

    def slide_mpp(self, sid: str, reader: Optional[SlideReader] = None) -> Optional[float]:
        """Microns per level-0 pixel: what the scan used (its sidecar), else the slide's own."""
        value = (self.entries[sid].meta or {}).get("mpp")
        if isinstance(value, (int, float)) and value > 0:
            return float(value)
        return reader.mpp if reader is not None else None

    def neighbours(self, sid: str) -> tuple[Optional[str], Optional[str]]:
        i = self.order.index(sid)
        return (self.order[i - 1] if i > 0 else None, self.order[i + 1] if i + 1 < len(self.order) else None)
