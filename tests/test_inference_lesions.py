"""The scanner's lesion candidates: every local maximum of the map down to a low floor (ARCHITECTURE.md)."""

from __future__ import annotations

import numpy as np

from pfascannet.inference import lesions


def _points(found):
    return [(round(f.confidence, 3), f.x, f.y) for f in found]


def test_candidates_golden():
    """A 10 x 10 map at stride 32 (cell (r, c) has its centre at level-0 (32 c + 16, 32 r + 16)):

      (2, 2) = .9 and (2, 4) = .8      two maxima 2 cells apart: both kept (no suppression disk)
      (5, 5..7) = .3                   a plateau of three: one point, the centroid cell (5, 6)
      (4, 0), (4, 1) = .2              a plateau of two: centroid between them, first cell (4, 0)
      (7, 7) = .7, (7, 8) = .6         .6 is next to a higher cell: not a maximum
      (9, 0) = .04                     a maximum below the 0.05 floor: dropped
      (0, 9) = .1                      a maximum on the border: kept
    Nothing is cut at 0.5: the FROC needs the .3, .2 and .1 points.
    """
    m = np.zeros((10, 10), np.float32)
    m[2, 2], m[2, 4], m[7, 7], m[7, 8], m[9, 0], m[0, 9] = 0.9, 0.8, 0.7, 0.6, 0.04, 0.1
    m[5, 5:8] = 0.3
    m[4, 0:2] = 0.2
    found = lesions.lesion_candidates(m, 32)
    assert _points(found) == [(0.9, 80, 80), (0.8, 144, 80), (0.7, 240, 240), (0.3, 208, 176),
                              (0.2, 16, 144), (0.1, 304, 16)]
    assert _points(lesions.lesion_candidates(m, 32, floor=0.5)) == _points(found)[:3]
    assert len(lesions.lesion_candidates(m, 32, max_candidates=2)) == 2
    assert lesions.lesion_candidates(np.zeros((4, 4), np.float32), 32) == []
    assert lesions.lesion_candidates(np.zeros((0, 0), np.float32), 32) == []


def test_candidate_stays_on_the_slide():
    # A 100 x 70 px slide has a 4 x 3 map at stride 32; the last cells' centres (112, 80)
    # overhang it, so the point moves to the slide's last pixel, in the same cell.
    m = np.zeros((3, 4), np.float32)
    m[2, 3] = 0.9
    assert _points(lesions.lesion_candidates(m, 32)) == [(0.9, 112, 80)]
    assert _points(lesions.lesion_candidates(m, 32, dimensions_xy=(100, 70))) == [(0.9, 99, 69)]


def test_every_candidate_is_a_maximum_of_its_neighbourhood():
    rng = np.random.default_rng(0)
    m = rng.uniform(0, 1, (40, 50)).astype(np.float32)
    found = lesions.lesion_candidates(m, 32)
    assert found and all(f.confidence >= lesions.CANDIDATE_FLOOR for f in found)
    assert [f.confidence for f in found] == sorted((f.confidence for f in found), reverse=True)
    for f in found:
        r, c = f.y // 32, f.x // 32
        assert m[r, c] == np.float32(f.confidence)
        assert m[r, c] == m[max(r - 1, 0):r + 2, max(c - 1, 0):c + 2].max()
