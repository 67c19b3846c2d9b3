"""The scanner's lesion candidates: every local maximum of the map down to a low floor (ARCHITECTURE.md)."""

from __future__ import annotations

import numpy as np

from pfascannet.inference import lesions

REACH_2 = 2 * 32 * 0.243      # radius_um giving a reach of 2 map cells at stride 32, 0.243 um/px


def _points(found):
    return [(round(f.confidence, 3), f.x, f.y) for f in found]


def test_candidates_golden():
    """A 12 x 12 map at stride 32 (cell (r, c) has its centre at level-0 (32 c + 16, 32 r + 16)),
    reach 2 cells (a maximum is a cell no cell within +-2 rows and columns exceeds):

      (2, 2) = .9 and (2, 5) = .8      3 cells apart: two maxima, both kept
      (7, 7) = .7, (7, 9) = .6         .6 has .7 within reach: not a maximum (the 8-neighbour
                                       rule, radius 0, would keep it: (7, 8) = 0 lies between)
      (5, 0), (5, 1) = .3              a plateau: one point, the first, (5, 0)
      (11, 0) = .04                    a maximum below the 0.05 floor: dropped
      (0, 11) = .1                     a maximum on the border: kept
    Nothing is cut at 0.5: the FROC needs the .3 and .1 points.
    """
    m = np.zeros((12, 12), np.float32)
    m[2, 2], m[2, 5], m[7, 7], m[7, 9], m[11, 0], m[0, 11] = 0.9, 0.8, 0.7, 0.6, 0.04, 0.1
    m[5, 0:2] = 0.3
    found = lesions.lesion_candidates(m, 32, radius_um=REACH_2, mpp=0.243)
    assert _points(found) == [(0.9, 80, 80), (0.8, 176, 80), (0.7, 240, 240), (0.3, 16, 176), (0.1, 368, 16)]
    assert _points(lesions.lesion_candidates(m, 32, floor=0.5, radius_um=REACH_2, mpp=0.243)) == _points(found)[:3]
    eight = lesions.lesion_candidates(m, 32, radius_um=0)
    assert _points(eight) == _points(found)[:3] + [(0.6, 304, 240)] + _points(found)[3:]
    assert len(lesions.lesion_candidates(m, 32, radius_um=REACH_2, mpp=0.243, max_candidates=2)) == 2
    assert lesions.lesion_candidates(np.zeros((4, 4), np.float32), 32) == []
    assert lesions.lesion_candidates(np.zeros((0, 0), np.float32), 32) == []


def test_saturated_lesion_is_one_point_per_reach():
    # A 10 x 10 block of exactly 1.0 (a saturated softmax) with reach 2: plateau points are kept
    # row-major, each claiming +-2 cells, so every 3rd row and column: (3, 3), (3, 6), (3, 9), ...
    m = np.zeros((20, 20), np.float32)
    m[3:13, 3:13] = 1.0
    found = lesions.lesion_candidates(m, 32, radius_um=REACH_2, mpp=0.243)
    cells = [(f.y // 32, f.x // 32) for f in found]
    assert cells == [(r, c) for r in (3, 6, 9, 12) for c in (3, 6, 9, 12)]


def test_candidate_stays_on_the_slide():
    # A 100 x 70 px slide has a 4 x 3 map at stride 32; the last cells' centres (112, 80)
    # overhang it, so the point moves to the slide's last pixel, in the same cell.
    m = np.zeros((3, 4), np.float32)
    m[2, 3] = 0.9
    assert _points(lesions.lesion_candidates(m, 32)) == [(0.9, 112, 80)]
    assert _points(lesions.lesion_candidates(m, 32, dimensions_xy=(100, 70))) == [(0.9, 99, 69)]


def test_every_candidate_is_the_maximum_within_its_reach():
    rng = np.random.default_rng(0)
    m = rng.uniform(0, 1, (60, 80)).astype(np.float32)
    found = lesions.lesion_candidates(m, 32, radius_um=3 * 32 * 0.243, mpp=0.243)
    assert found and all(f.confidence >= lesions.CANDIDATE_FLOOR for f in found)
    assert [f.confidence for f in found] == sorted((f.confidence for f in found), reverse=True)
    cells = [(f.y // 32, f.x // 32) for f in found]
    for (r, c), f in zip(cells, found):
        assert m[r, c] == np.float32(f.confidence)
        assert m[r, c] == m[max(r - 3, 0):r + 4, max(c - 3, 0):c + 4].max()
    # every maximum of the map is there, and no two are within reach of each other
    from scipy import ndimage
    expected = np.argwhere((m == ndimage.maximum_filter(m, size=7, mode="constant", cval=-1)) & (m >= 0.05))
    assert sorted(cells) == sorted(map(tuple, expected))
    assert all(max(abs(a[0] - b[0]), abs(a[1] - b[1])) > 3 for i, a in enumerate(cells) for b in cells[:i])
