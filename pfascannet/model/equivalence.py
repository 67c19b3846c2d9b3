"""Dense scanning == patch classification, checked numerically (Sec. 2.2, eq. (1)).

The central invariant (``shared/DESIGN.md`` section 1): output pixel (u, v)
of an ROI whose top-left is (x0, y0) equals the patch classifier on the 692
patch whose top-left is (x0 + stride*u, y0 + stride*v), stride = 512/alpha.
These helpers sample output positions (the four corners always included),
cut the matching patches and compare; they take plain callables on NumPy
arrays, so they check a live model, a ``.keras`` file or a SavedModel alike,
under any Keras backend.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from pfascannet import geometry

DEFAULT_TOLERANCE = 1e-4
"""Largest |dense - patch| accepted in float32."""


def sample_positions(tile_px: int, count: int = 16, seed: int = 0) -> list[tuple[int, int]]:
    """``count`` distinct output positions (u, v) = (column, row) of an Lm x Lm tile, corners first."""
    last = tile_px - 1
    corners = list(dict.fromkeys([(0, 0), (last, 0), (0, last), (last, last)]))
    count = min(max(count, len(corners)), tile_px * tile_px)
    rng = np.random.default_rng(seed)
    chosen = set(corners)
    out = list(corners)
    while len(out) < count:
        uv = (int(rng.integers(0, tile_px)), int(rng.integers(0, tile_px)))
        if uv not in chosen:
            chosen.add(uv)
            out.append(uv)
    return out


def patches_at(roi: np.ndarray, positions: list[tuple[int, int]], alpha: int, shift_px: int = 0) -> np.ndarray:
    """The 692 patches of ``roi`` [LR, LR, 3] that output positions (u, v) stand for.

    ``shift_px`` moves every patch right and down (a control: a shifted patch must
    not match); patches that would leave the ROI are shifted left/up instead.
    """
    stride = geometry.output_stride_px(alpha)
    side = roi.shape[0]
    out = []
    for u, v in positions:
        x, y = stride * u, stride * v
        dx = shift_px if x + shift_px + geometry.PATCH_PX <= side else -shift_px
        dy = shift_px if y + shift_px + geometry.PATCH_PX <= side else -shift_px
        x, y = x + dx, y + dy
        out.append(roi[y:y + geometry.PATCH_PX, x:x + geometry.PATCH_PX])
    return np.stack(out)


@dataclasses.dataclass
class EquivalenceReport:
    """Dense vs patch tumour probabilities at sampled positions.

    Attributes:
      positions: (u, v) output positions compared.
      dense: dense-mode tumour probability at each position.
      patch: patch-classifier tumour probability of the matching patch.
      spread: max - min of the whole dense tile (how much outputs vary by position).
    """

    positions: list
    dense: np.ndarray
    patch: np.ndarray
    spread: float

    @property
    def max_abs_diff(self) -> float:
        return float(np.max(np.abs(self.dense - self.patch)))


def compare_dense_to_patches(
    dense_fn: Callable[[np.ndarray], np.ndarray],
    patch_fn: Callable[[np.ndarray], np.ndarray],
    roi: np.ndarray,
    alpha: int,
    positions: list[tuple[int, int]] | None = None,
    count: int = 16,
    seed: int = 0,
    shift_px: int = 0,
    patch_batch: int = 8,
    dense_tile: np.ndarray | None = None,
) -> EquivalenceReport:
    """Runs ``dense_fn`` on one ROI and ``patch_fn`` on the matching patches.

    Args:
      dense_fn: uint8 [1, LR, LR, 3] -> tumour probability [1, Lm, Lm].
      patch_fn: uint8 [n, 692, 692, 3] -> tumour probability [n] (any shape of n elements).
      roi: uint8 [LR, LR, 3]; LR must fit eq. (1) at ``alpha``.
      alpha: the dense coefficient ``dense_fn`` was built for.
      positions: (u, v) to compare; default ``sample_positions(Lm, count, seed)``.
      shift_px: offset the patches by this much (a control that must fail).
      patch_batch: patches per ``patch_fn`` call (memory).
      dense_tile: the dense output if already computed (skips ``dense_fn``).
    """
    lr = roi.shape[0]
    if roi.ndim != 3 or roi.shape[1] != lr or roi.shape[2] != 3:
        raise geometry.GeometryError(f"ROI must be [LR, LR, 3], got {roi.shape}")
    lm = geometry.tile_px(lr, alpha)
    tile = dense_tile if dense_tile is not None else np.asarray(dense_fn(roi[None]))[0]
    if tile.shape != (lm, lm):
        raise geometry.GeometryError(f"dense output is {tile.shape}, eq. (1) says ({lm}, {lm}) for LR={lr}, alpha={alpha}")
    positions = positions or sample_positions(lm, count, seed)
    patches = patches_at(roi, positions, alpha, shift_px)
    patch = np.concatenate(
        [np.asarray(patch_fn(patches[i:i + patch_batch])).reshape(-1) for i in range(0, len(patches), patch_batch)]
    )
    dense = np.array([tile[v, u] for u, v in positions], dtype=np.float32)
    return EquivalenceReport(positions, dense, patch.astype(np.float32), float(tile.max() - tile.min()))


def structured_roi(side_px: int, seed: int = 0) -> np.ndarray:
    """A uint8 RGB test ROI with structure at many scales, so that outputs vary by position.

    White noise averages out in the detector's large pooling windows (random
    weights then give outputs that differ by ~1e-4 across an ROI, too little
    for an equivalence test to mean anything); smooth blobs of 100-600 px
    plus texture do not.
    """
    rng = np.random.default_rng(seed)
    coords = np.arange(side_px, dtype=np.float32)
    img = np.zeros((side_px, side_px, 3), np.float32)
    for _ in range(12):
        cx, cy = rng.uniform(0, side_px, 2)
        r = rng.uniform(60, 400)
        colour = rng.uniform(-110, 110, 3).astype(np.float32)
        # A Gaussian blob is separable: outer product of two 1-D profiles.
        blob = np.outer(np.exp(-((coords - cy) ** 2) / (2 * r * r)), np.exp(-((coords - cx) ** 2) / (2 * r * r)))
        img += blob[..., None] * colour
    period = rng.uniform(150, 500, 2)
    img += 40 * np.outer(np.cos(2 * np.pi * coords / period[1]), np.sin(2 * np.pi * coords / period[0]))[..., None]
    img += rng.integers(-20, 21, img.shape, dtype=np.int16)  # texture
    return np.clip(img + 128, 0, 255).astype(np.uint8)
