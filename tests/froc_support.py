"""The FROC golden case of tests/test_evaluation_froc.py (its docstring draws it), shared with
the eval/ script tests: slide T1's level-5 mask and detections, and three normal slides."""

from __future__ import annotations

import numpy as np


def golden_mask() -> np.ndarray:
    """Slide T1's level-5 truth: lesions A, B, C, D and an ITC (0/255)."""
    m = np.zeros((64, 100), np.uint8)
    m[5:15, 5:55] = 255      # A
    m[5:45, 70:75] = 255     # D
    m[30:40, 5:25] = 255     # B
    m[30:40, 33:53] = 255    # C
    m[55:58, 90:93] = 255    # ITC
    return m


def cell_xy(row: int, col: int, dy: int = 16, dx: int = 16) -> tuple[int, int]:
    """Level-0 (x, y) of the point (dy, dx) px into level-5 cell (row, col)."""
    return col * 32 + dx, row * 32 + dy


def detection(prob: float, row: int, col: int, dy: int = 16) -> list[float]:
    """A ``confidence, X, Y`` row at :func:`cell_xy`."""
    x, y = cell_xy(row, col, dy=dy)
    return [prob, x, y]


T1_DETECTIONS = np.array([
    detection(0.55, 10, 10),       # A, lower first
    detection(0.90, 10, 30),       # A, highest
    [0.85, 30 * 32, 607],          # A's growth, row 18
    [0.40, 30 * 32, 608],          # just outside the growth, row 19: FP
    detection(0.70, 35, 15),       # B
    detection(0.65, 35, 45),       # C (same lesion as B after the growth)
    detection(0.50, 25, 72),       # D
    detection(0.95, 56, 91),       # ITC
    detection(0.20, 60, 40),       # background: FP
])
NORMAL = {"N1": np.array([[0.8, 100, 100], [0.6, 3000, 900]]),
          "N2": np.array([[0.7, 10, 10]]),
          "N3": np.array([[0.7, 20, 20]])}
