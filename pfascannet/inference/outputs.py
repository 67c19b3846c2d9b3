"""Per-slide scan outputs: map (.npy, .json, pyramidal TIFF), heatmap, lesions, contours, scores.

The layout is ARCHITECTURE.md "Files between stages" (a scan's ``S/``).  Every
file is written atomically (``pfascannet.io_utils``), so a killed scan leaves
whole files or none and a rerun can trust what exists.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
from typing import Optional, Sequence

import numpy as np

from pfascannet.inference import lesions as lesions_lib
from pfascannet.io_utils import atomic_path, save_npy, write_json, write_text

HEATMAP_MAX_SIDE_PX = 2048
"""Longest side of the heatmap PNG's thumbnail grid."""

TUMOR_COLOR_RGB = (255, 0, 0)


def map_paths(out_dir: str, slide: str) -> dict[str, str]:
    """Every output path of one slide, by kind."""
    return {
        "npy": os.path.join(out_dir, "maps", f"{slide}.npy"),
        "json": os.path.join(out_dir, "maps", f"{slide}.json"),
        "tif": os.path.join(out_dir, "maps", f"{slide}_map.tif"),
        "lesions": os.path.join(out_dir, "lesions", f"{slide}.csv"),
        "heatmap": os.path.join(out_dir, "heatmaps", f"{slide}.png"),
        "geojson": os.path.join(out_dir, "contours", f"{slide}.geojson"),
        "xml": os.path.join(out_dir, "contours", f"{slide}.xml"),
    }


def write_map_tiff(path: str, prob_map: np.ndarray, map_mpp: Optional[float]) -> None:
    """The map as a pyramidal uint8 TIFF (probability x 255, deflate) that viewers open.

    ``map_mpp`` is the slide's mpp times the map stride, so a viewer that
    honours resolution tags overlays it on the slide at the right scale.
    """
    from pfascannet.slide.tiff_writer import write_pyramid_tiff  # noqa: PLC0415

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
        tile_px=256,
        mpp=map_mpp,
        compression="deflate",
        channels=1,
        background=0,
        resample="max",  # a small lesion stays visible on zoomed-out levels
        min_side_px=256,
        workers=1,
        description="pfascannet tumour probability x 255",
    )


def write_lesions_csv(path: str, found: Sequence[lesions_lib.Lesion]) -> None:
    """Camelyon16 submission CSV: ``confidence,X,Y`` rows, level-0 integers, no header."""
    buf = io.StringIO()
    for lesion in found:
        buf.write(f"{lesion.confidence:.6f},{int(lesion.x)},{int(lesion.y)}\n")
    write_text(path, buf.getvalue())


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
    from pfascannet.slide.annotations import Annotation, write_asap_xml  # noqa: PLC0415

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


def write_slide_outputs(
    out_dir: str,
    slide: str,
    prob_map: np.ndarray,
    meta: dict,
    thumbnail: Optional[np.ndarray],
    scanned: Optional[np.ndarray] = None,
    threshold: float = 0.5,
    nms_radius_um: float = lesions_lib.DEFAULT_NMS_RADIUS_UM,
    write_map: bool = True,
) -> dict:
    """Writes every per-slide output; the map's ``.npy`` and ``.json`` last, as the 'done' mark.

    Args:
      out_dir: the scan's output folder S.
      slide: slide id.
      prob_map: float32 map (pixel (r, c) covers level-0 cell [S c, S (c+1)) x [S r, S (r+1))).
      meta: the map's sidecar (must hold ``stride_px``; ``mpp`` may be None).
      thumbnail: RGB ``[h, w, 3]`` at ``heatmap_grid`` map pixels per pixel, or None to skip the heatmap.
      scanned: bool map of the pixels that were computed.
      threshold: probability for the contours (lesion candidates have their own low floor).
      nms_radius_um: reach of a lesion candidate's local maximum (``lesions.lesion_candidates``).
      write_map: False when ``prob_map`` is the saved ``.npy`` itself (only
        the derived files are redone); the sidecar is still written last.

    Returns:
      The sidecar as written (with ``slide_score`` and ``n_lesions``).
    """
    paths = map_paths(out_dir, slide)
    stride = int(meta["stride_px"])
    mpp = meta.get("mpp")
    # FROC candidates: every local maximum down to a low floor, not the contour threshold (ARCHITECTURE.md).
    found = lesions_lib.lesion_candidates(prob_map, stride, radius_um=nms_radius_um, mpp=mpp,
                                          dimensions_xy=meta.get("dimensions"))
    write_lesions_csv(paths["lesions"], found)
    write_contours(paths["geojson"], paths["xml"], lesions_lib.lesion_contours(prob_map, stride, threshold))
    write_map_tiff(paths["tif"], prob_map, None if mpp is None else mpp * stride)
    if thumbnail is not None:
        f = heatmap_grid(prob_map.shape)
        small = block_max(prob_map, f)
        small_scanned = None if scanned is None else block_max(scanned, f)
        write_heatmap_png(paths["heatmap"], thumbnail[: small.shape[0], : small.shape[1]], small, small_scanned, slide)
    meta = dict(meta, slide_score=lesions_lib.slide_score(prob_map), n_lesions=len(found), threshold=threshold,
                candidate_floor=lesions_lib.CANDIDATE_FLOOR)
    if write_map:
        save_npy(paths["npy"], np.asarray(prob_map, np.float32))
    write_json(paths["json"], meta)
    return meta


def read_sidecar(out_dir: str, slide: str) -> Optional[dict]:
    """The slide's ``maps/<slide>.json``, or None if missing or unreadable."""
    try:
        with open(map_paths(out_dir, slide)["json"], encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def outputs_complete(out_dir: str, slide: str) -> bool:
    """True if every output of the slide exists (the heatmap is optional)."""
    return all(os.path.exists(p) for k, p in map_paths(out_dir, slide).items() if k != "heatmap")


def slide_done(out_dir: str, slide: str, fingerprint: dict) -> bool:
    """True if the slide's outputs are complete and its map was made with ``fingerprint``."""
    meta = read_sidecar(out_dir, slide)
    return meta is not None and outputs_complete(out_dir, slide) and meta.get("fingerprint") == fingerprint


def write_slide_scores(out_dir: str) -> str:
    """``slide_scores.csv`` (``name,probability``) rebuilt from every finished map's sidecar.

    Rebuilding from the sidecars (not appending) keeps it right after resumed
    runs and when shards share the output folder.
    """
    rows = []
    for path in sorted(glob.glob(os.path.join(out_dir, "maps", "*.json"))):
        try:
            with open(path, encoding="utf-8") as f:
                meta = json.load(f)
        except (OSError, ValueError):
            continue
        if "slide_score" in meta and "slide" in meta:
            rows.append((meta["slide"], float(meta["slide_score"])))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["name", "probability"])
    for name, score in rows:
        writer.writerow([name, f"{score:.6f}"])
    target = os.path.join(out_dir, "slide_scores.csv")
    write_text(target, buf.getvalue())
    return target
