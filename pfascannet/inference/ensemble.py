"""Ensembles of maps (Zhao et al., MICCAI 2019, §3: alpha 16 and 32 averaged) on the coarsest member's grid."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from pfascannet.inference.scan_settings import ScanError


def pool_to_stride(prob_map: np.ndarray, factor: int, out_shape: tuple[int, int]) -> np.ndarray:
    """Averages ``factor x factor`` blocks of a finer map onto a coarser grid.

    Cells of the coarse grid that run past the slide average only the fine
    cells that exist (the fine map of a 16-px grid has ceil(H/16) rows).
    """
    if factor == 1:
        return prob_map[: out_shape[0], : out_shape[1]]
    rows, cols = out_shape
    padded = np.full((rows * factor, cols * factor), np.nan, np.float64)
    r, c = min(prob_map.shape[0], rows * factor), min(prob_map.shape[1], cols * factor)
    padded[:r, :c] = prob_map[:r, :c]
    blocks = padded.reshape(rows, factor, cols, factor)
    count = np.isfinite(blocks).sum(axis=(1, 3))
    total = np.nansum(blocks, axis=(1, 3))
    return (total / np.maximum(count, 1)).astype(np.float32)


def ensemble_maps(maps: Sequence[np.ndarray], strides: Sequence[int], map_shape: tuple[int, int]) -> np.ndarray:
    """The mean of member maps on the coarsest member's grid (§3: alpha 16 and 32 ensembled).

    Args:
      maps: float maps, member m's pixel covering ``strides[m]`` level-0 pixels.
      strides: level-0 pixels per map pixel of each member.
      map_shape: shape of the coarsest grid.
    """
    coarse = max(strides)
    pooled = []
    for m, s in zip(maps, strides):
        if coarse % s:
            raise ScanError(f"ensemble strides {list(strides)} do not nest (each must divide {coarse})")
        pooled.append(pool_to_stride(np.asarray(m, np.float32), coarse // s, map_shape))
    return np.mean(np.stack(pooled), axis=0).astype(np.float32)

