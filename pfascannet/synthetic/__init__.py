"""The Camelyon-like synthetic cohort (``shared/DESIGN.md`` section 4).

Camelyon16/17 (700 GB) is not reachable here, so the project tests itself end
to end on synthetic lymph-node slides laid out like Camelyon: pyramidal JPEG
TIFFs with mpp, ASAP XML, mask TIFFs, a Camelyon17 stage CSV and a lesion
table.  Results on these slides measure the pipeline, not clinical accuracy.

Entry point: :func:`make_cohort` (``data_prep/make_synthetic_cohort.py``).
"""

from pfascannet.synthetic.cohort import CohortError, CohortInfo, CohortSettings, make_cohort

__all__ = ["CohortError", "CohortInfo", "CohortSettings", "make_cohort"]
