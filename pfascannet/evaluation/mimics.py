"""Which points lie on the hard mimics a synthetic cohort recorded (``mimics.csv``).

The generator draws germinal centres and sinus histiocytes on purpose: large
pale nuclei that a detector may take for tumour.  It records each one
(``camelyon_files.MIMICS_COLUMNS``), so a false positive of a map (the
held-out report, ``heldout.false_positives``) or a negative a mining round
picked (``training.mining``) can be told to lie on one.  Real Camelyon data
has no such file: the answer is then None, never 0.
"""

from __future__ import annotations

import json
import os
from typing import Iterable, Optional

from pfascannet import camelyon_files
from pfascannet.camelyon import LEVEL0_MPP
from pfascannet.layout import CohortFolder

MIMIC_MARGIN_UM = 50.0
"""A point within this distance of a mimic's bounding box lies on it (map stride 7.8 um, candidate reach
100 um: a blob's maximum can sit just outside the drawn outline)."""


class CohortMimics:
    """A cohort's recorded mimics (``available`` False without ``mimics.csv``) and its pixel size."""

    def __init__(self, cohort_dir: str):
        folder = CohortFolder(cohort_dir)
        self.available = os.path.exists(folder.mimics_csv)
        self.by_slide = camelyon_files.read_mimics(folder.mimics_csv) if self.available else {}
        mpp = LEVEL0_MPP
        if os.path.exists(folder.cohort_json):
            with open(folder.cohort_json, encoding="utf-8") as f:
                mpp = float(json.load(f).get("mpp", LEVEL0_MPP))
        self.margin_px = MIMIC_MARGIN_UM / mpp

    def kinds_at(self, slide: str, x: float, y: float) -> set[str]:
        """Kinds of the mimics of ``slide`` that level-0 ``(x, y)`` lies on (empty: none)."""
        return {m.kind for m in self.by_slide.get(slide, []) if m.near(x, y, self.margin_px)}

    def count_on(self, points: Iterable[tuple[str, float, float]]) -> Optional[int]:
        """How many ``(slide, x, y)`` lie on a mimic; None when the cohort recorded none."""
        if not self.available:
            return None
        return sum(1 for sid, x, y in points if self.kinds_at(sid, x, y))
