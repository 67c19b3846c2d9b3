"""Per-slide scan outputs: map (.npy, .json, pyramidal TIFF), heatmap, lesions, contours, scores.

The layout is ARCHITECTURE.md "Files between stages" (a scan's ``S/``).  Every
file is written atomically (``pfascannet.io_utils``), so a killed scan leaves
whole files or none and a rerun can trust what exists.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Optional, Sequence

import cv2
import numpy as np

from pfascannet import camelyon_files
from pfascannet.inference import lesions as lesions_lib
from pfascannet.io_utils import FileLock, atomic_path, save_npy, write_json, write_text
from pfascannet.layout import ScanFolder
from pfascannet.slide.annotations import Annotation, write_asap_xml
from pfascannet.slide.tiff_writer import write_pyramid_tiff

HEATMAP_MAX_SIDE_PX = 2048
"""Longest side of the heatmap PNG's thumbnail grid."""

TUMOR_COLOR_RGB = (255, 0, 0)


def map_paths(out_dir: str, slide: str) -> dict[str, str]:
    """Every output path of one slide, by kind (``layout.ScanFolder.slide_files``)."""
    return ScanFolder(out_dir).slide_files(slide)


def write_map_tiff(path: str, prob_map: np.ndarray, map_mpp: Optional[float]) -> None:
    """The map as a pyramidal uint8 TIFF (probability x 255, deflate) that viewers open.

    ``map_mpp`` is the slide's mpp times the map stride, so a viewer that
    honours resolution tags overlays it on the slide at the right scale.
    """
    grey = np.clip(np.rint(np.asarray(prob_map, np.float32) * 255.0), 0, 255).astype(np.uint8)
    rows, cols = grey.shape

    def tile_source(x: int, y: int, w: int, h: int) -> Optional[np.ndarray]:
        tile = grey[y : y + h, x : x + w]
        if not tile.any():
            return None
        out = np.zeros((h, w), np.uint8)
        out[: tile.shape[0], : tile.shape[1]] = tile
        return out

    write_pyramid_tiff(
        path,
        (cols, rows),
        tile_source,
        tiff_tile_px=256,
        mpp=map_mpp,
        compression="deflate",
        channels=1,
        background=0,
        resample="max",  # a small lesion stays visible on zoomed-out levels
        min_side_px=256,
        workers=1,
        description="pfascannet tumour probability x 255",
    )


def write_lesions_csv(path: str, found: Sequence[lesions_lib.LesionCandidate]) -> None:
    """Camelyon16 submission CSV: ``confidence,X,Y`` rows, level-0 integers, no header (``camelyon_files``)."""
    camelyon_files.write_lesion_csv(path, ((lesion.confidence, lesion.x, lesion.y) for lesion in found))


def contours_geojson(contours: Sequence[lesions_lib.Contour]) -> dict:
    """A QuPath-importable GeoJSON FeatureCollection of lesion annotations (level-0 pixels)."""
    features = []
    for k, contour in enumerate(contours):
        rings = [contour.outer.tolist()] + [h.tolist() for h in contour.holes]
        features.append(
            {
                "type": "Feature",
                "id": f"lesion_{k}",
                "geometry": {"type": "Polygon", "coordinates": rings},
                "properties": {
                    "objectType": "annotation",
                    "name": f"lesion {k} (p={contour.max_probability:.3f})",
                    "classification": {"name": "Tumor", "color": list(TUMOR_COLOR_RGB)},
                    "isLocked": False,
                    "measurements": {"max_probability": contour.max_probability, "area_px": contour.area_px},
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def write_contours(geojson_path: str, xml_path: str, contours: Sequence[lesions_lib.Contour]) -> None:
    """Lesion contours as QuPath GeoJSON and ASAP XML (outer rings group ``_0``, holes ``_2``)."""
    write_text(geojson_path, json.dumps(contours_geojson(contours)) + "\n")
    annotations = []
    for k, contour in enumerate(contours):
        # ASAP closes polygons itself: drop the repeated first point.
        annotations.append(Annotation(f"lesion_{k}", "_0", contour.outer[:-1].tolist()))
        for h, hole in enumerate(contour.holes):
            annotations.append(Annotation(f"lesion_{k}_hole_{h}", "_2", hole[:-1].tolist()))
    write_asap_xml(xml_path, annotations)


def write_heatmap_png(
    path: str,
    thumbnail: np.ndarray,
    prob_map: np.ndarray,
    scanned: Optional[np.ndarray] = None,
    title: str = "",
    opacity: float = 0.55,
) -> None:
    """The map over the slide thumbnail in the style of the paper's Fig. 3 (jet, blue to red), with a colour bar.

    Args:
      thumbnail: RGB uint8 ``[h, w, 3]`` on the same grid as ``prob_map``.
      prob_map: float ``[h, w]``.
      scanned: bool ``[h, w]``: where the map was computed (tissue ROIs);
        elsewhere the thumbnail shows through untinted.  None: everywhere.
      title: figure title (the slide id).
      opacity: weight of the colour over the thumbnail.
    """
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt  # noqa: PLC0415

    h, w = prob_map.shape
    shown = np.ma.masked_array(prob_map, mask=None if scanned is None else ~scanned)
    scale = 8.0 / max(h, w)
    fig, ax = plt.subplots(figsize=(max(w * scale, 2.0) + 2.6, max(h * scale, 2.0) + 0.6), dpi=max(100, max(h, w) // 8))
    try:
        ax.imshow(thumbnail, interpolation="nearest")
        ax.imshow(shown, cmap="jet", vmin=0.0, vmax=1.0, alpha=opacity, interpolation="nearest")
        ax.set_axis_off()
        if title:
            ax.set_title(title)
        from mpl_toolkits.axes_grid1 import make_axes_locatable  # noqa: PLC0415

        # The bar gets its own opaque mappable (the overlay's alpha would fade it)
        # and an axis as tall as the image.
        cax = make_axes_locatable(ax).append_axes("right", size="4%", pad=0.1)
        mappable = matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(0.0, 1.0), cmap="jet")
        bar = fig.colorbar(mappable, cax=cax)
        bar.set_label("tumour probability")
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, bbox_inches="tight")
    finally:
        plt.close(fig)


def block_max(array: np.ndarray, factor: int) -> np.ndarray:
    """``factor x factor`` max pooling with ceil output size (keeps small lesions visible)."""
    if factor == 1:
        return array
    rows, cols = array.shape
    pr, pc = -(-rows // factor) * factor, -(-cols // factor) * factor
    padded = np.full((pr, pc), array.min() if array.size else 0, array.dtype)
    padded[:rows, :cols] = array
    return padded.reshape(pr // factor, factor, pc // factor, factor).max(axis=(1, 3))


def heatmap_grid(map_shape: tuple[int, int], max_side_px: int = HEATMAP_MAX_SIDE_PX) -> int:
    """Map pixels per heatmap pixel so the heatmap's longer side is <= max_side_px."""
    return max(1, -(-max(map_shape) // max_side_px))


def write_map(out_dir: str, slide: str, prob_map: np.ndarray, meta: dict, scanned: Optional[np.ndarray]) -> dict:
    """Writes a slide's map (``.npy``, viewer TIFF, scanned-cells PNG) and its sidecar last, as the map's 'done' mark.

    What post-processing derived from an earlier map of the slide (lesions,
    contours, heatmap) is removed first: a new map never sits next to files
    made from another one.  The sidecar holds no ``post`` record yet
    (``postprocess`` adds it).

    Args:
      out_dir: the scan's output folder S.
      slide: slide id.
      prob_map: float32 map (pixel (r, c) covers level-0 cell [S c, S (c+1)) x [S r, S (r+1))).
      meta: the map's sidecar (must hold ``stride_px``; ``mpp`` may be None).
      scanned: bool map of the cells that were computed (tissue ROIs), or None: all.

    Returns:
      The sidecar as written.
    """
    paths = map_paths(out_dir, slide)
    for kind in DERIVED_KINDS:
        try:
            os.remove(paths[kind])
        except FileNotFoundError:
            pass
    stride = int(meta["stride_px"])
    mpp = meta.get("mpp")
    save_npy(paths["npy"], np.asarray(prob_map, np.float32))
    if scanned is None:
        scanned = np.ones(prob_map.shape, bool)
    write_scanned_png(paths["scanned"], scanned)
    write_map_tiff(paths["tif"], prob_map, None if mpp is None else mpp * stride)
    meta = {k: v for k, v in meta.items() if k not in POST_KEYS}
    write_json(paths["json"], meta)
    return meta


def write_scanned_png(path: str, scanned: np.ndarray) -> None:
    """The cells a map computed, on the map's grid, as a greyscale PNG (255 = computed)."""
    with atomic_path(path, suffix=".png") as tmp:
        if not cv2.imwrite(tmp, np.where(np.asarray(scanned, bool), 255, 0).astype(np.uint8)):
            raise OSError(f"could not write {path}")


def read_scanned_png(path: str, map_shape: tuple[int, int]) -> Optional[np.ndarray]:
    """The cells a map computed (``write_scanned_png``), or None if missing, unreadable or of another shape."""
    if not os.path.exists(path):
        return None
    img = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    if img is None or img.shape != tuple(map_shape):
        return None
    return img > 127


POST_KEYS = ("post", "slide_score", "n_lesions", "threshold", "candidate_floor")
"""Sidecar keys that post-processing writes (``postprocess``): a new map drops them."""

DERIVED_KINDS = ("lesions", "geojson", "xml", "heatmap")
"""The files post-processing derives from a map (``map_paths`` kinds)."""

MAP_KINDS = ("npy", "json", "tif")
"""The files of a finished map (``scanned`` is optional: maps made before it existed lack it)."""


def read_sidecar(out_dir: str, slide: str) -> Optional[dict]:
    """The slide's ``maps/<slide>.json``, or None if missing or unreadable."""
    try:
        with open(map_paths(out_dir, slide)["json"], encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def map_complete(out_dir: str, slide: str) -> bool:
    """True if every file of the slide's map exists."""
    paths = map_paths(out_dir, slide)
    return all(os.path.exists(paths[k]) for k in MAP_KINDS)


def slide_lock(out_dir: str, slide: str) -> FileLock:
    """The lock a process holds while it writes ``slide``'s outputs in ``out_dir`` (scan or post-processing)."""
    return FileLock(ScanFolder(out_dir).lock(slide))


def write_slide_scores(out_dir: str) -> str:
    """``slide_scores.csv`` (``name,probability``) rebuilt from every finished map's sidecar.

    Rebuilding from the sidecars (not appending) keeps it right after resumed
    runs and when shards share the output folder.
    """
    rows = []
    for path in sorted(glob.glob(ScanFolder(out_dir).map_json_glob)):
        try:
            with open(path, encoding="utf-8") as f:
                meta = json.load(f)
        except (OSError, ValueError):
            continue
        if "slide_score" in meta and "slide" in meta:
            rows.append((meta["slide"], float(meta["slide_score"])))
    target = ScanFolder(out_dir).slide_scores_csv
    camelyon_files.write_slide_scores(target, rows)
    return target
