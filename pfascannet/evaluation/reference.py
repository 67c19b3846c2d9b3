"""Ground-truth slide lists: the cohort's ``slides.csv``, Camelyon16 and Camelyon17 references.

One reader for the three formats a user may hold, so every ``eval/`` script
takes ``--reference`` as any of them (``read_reference``, ``SlideRef`` and
``ReferenceFileError`` live in ``pfascannet.camelyon_files`` with the other
Camelyon files; they stay importable from here):

* the cohort's ``slides.csv`` (``ARCHITECTURE.md``): header
  ``slide,patient,node,split,label,...``, ``label`` a node class
  (``negative|itc|micro|macro``) or ``tumor|normal``;
* Camelyon16 ``reference.csv``: no header, rows ``test_001,Tumor,Macro,...``
  or ``test_002,Normal``;
* a Camelyon17 stage CSV (``patient,stage`` header): its node rows
  ``patient_XXX_node_Y.tif,macro`` give the slides.

A slide is a tumour slide when its label is tumour/tumor or any node class but
negative: ITC-only slides are tumour slides, as in Camelyon16's reference.
"""

from __future__ import annotations

import os
from typing import Optional

from pfascannet.camelyon_files import ReferenceFileError, SlideRef, read_reference  # noqa: F401  (their home)


def select_split(reference: dict[str, SlideRef], split: Optional[str],
                 source: Optional[str | os.PathLike] = None) -> dict[str, SlideRef]:
    """The slides of one split (all slides when ``split`` is None or empty).

    Args:
      source: the reference file, named in the error.
    """
    if not split:
        return dict(reference)
    chosen = {s: r for s, r in reference.items() if (r.split or "").lower() == split.lower()}
    if not chosen:
        splits = sorted({r.split for r in reference.values() if r.split})
        where = f"{source}: " if source else ""
        raise ReferenceFileError(f"{where}no slide in split {split!r}; the reference has splits {splits or 'none'}")
    return chosen
