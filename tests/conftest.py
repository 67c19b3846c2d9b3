"""Shared pytest fixtures.

``cohort`` -- a small synthetic Camelyon-like cohort, generated once per test
session in a temporary folder (about 10-20 s on one core).  It returns the
cohort folder as a ``pathlib.Path`` laid out as ARCHITECTURE.md "Files
between stages" describes (``images/``, ``annotations/``, ``masks/``,
``tissue/``, ``stages.csv``, ``slides.csv``, ``lesions.csv``,
``cohort.json``), with mpp 0.243 and these six slides:

    patient_000_node_0  negative   patient_001_node_0  micro
    patient_000_node_1  macro      patient_001_node_1  negative
    patient_000_node_2  itc        patient_001_node_2  itc

(patient_000 is pN1, patient_001 pN1mi; one patient is in the ``test`` split,
the other in ``train``; read ``slides.csv`` for which).  Every lesion class
is present; the macro slide is about 11k x 5.5k px, the others about 4k.

``cohort_info`` -- the :class:`pfascannet.synthetic.cohort.CohortInfo` of the
same cohort (rows of ``slides.csv`` / ``lesions.csv`` as dicts, stages).

``half_cohort`` -- the same cohort at 0.486 um/px (a 20x scan of the same tissue:
every level halved, annotations, masks and tables rescaled; ``synthetic.rescale``),
made once per session on first use.

``COHORT_KWARGS`` are the arguments it was made with, for tests that need the
generator's plans (``pfascannet.synthetic.cohort.plan_cohort(**COHORT_KWARGS)``).
Treat the folder as read-only: other tests share it.
"""

from __future__ import annotations

import pathlib

import pytest

COHORT_KWARGS = dict(
    seed=0,
    patients=2,
    nodes_per_patient=3,
    slide_size=4096,
    mpp=0.243,
    test_fraction=0.5,
    node_labels=[["negative", "macro", "itc"], ["micro", "negative", "itc"]],
)


@pytest.fixture(scope="session")
def cohort_info(tmp_path_factory):
    """The generated session cohort's ``CohortInfo`` (see the module docstring)."""
    from pfascannet.synthetic.cohort import make_cohort  # noqa: PLC0415

    out = tmp_path_factory.mktemp("synthetic_cohort")
    return make_cohort(out, **COHORT_KWARGS)


@pytest.fixture(scope="session")
def cohort(cohort_info) -> pathlib.Path:
    """Path of the session's synthetic cohort folder (see the module docstring)."""
    return pathlib.Path(cohort_info.out_dir)


@pytest.fixture(scope="session")
def half_cohort(cohort, tmp_path_factory) -> pathlib.Path:
    """The session cohort at 0.486 um/px (see the module docstring)."""
    from pfascannet.synthetic.rescale import rescale_cohort  # noqa: PLC0415

    out = tmp_path_factory.mktemp("half_cohort")
    rescale_cohort(str(cohort), str(out), 0.486, workers=1)
    return out


# --- issue 20: the viewer's tests share one scan folder of the session cohort (tests/viewer_support.py).
@pytest.fixture(scope="session")
def truth_scan(cohort, tmp_path_factory) -> pathlib.Path:
    """A scan folder of every session-cohort slide whose maps are the truth (``viewer_support.write_truth_scan``).

    Treat it as read-only: other tests share it (copy it to change it).
    """
    from tests.viewer_support import write_truth_scan  # noqa: PLC0415

    out = tmp_path_factory.mktemp("truth_scan")
    write_truth_scan(str(cohort), str(out))
    return out
