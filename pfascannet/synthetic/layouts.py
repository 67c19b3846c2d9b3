"""The synthetic cohort in the official CAMELYON16 / CAMELYON17 layouts (``pfascannet cohort --layout``).

``make_cohort`` renders the slides (the same generator, the same bytes) into a
hidden scratch folder inside the root; ``write_layout`` then renames each file
to its official name and writes the official truth files, so the root reads
exactly like the download (``pfascannet/datasets.py`` module docstring):

``camelyon16``::

    ROOT/training/normal/normal_NNN.tif       train-split negative nodes
    ROOT/training/tumor/tumor_NNN.tif         train-split nodes with a lesion (ITC, micro, macro)
    ROOT/training/lesion_annotations.zip      tumor_NNN.xml (ASAP)
    ROOT/testing/images/test_NNN.tif          test-split nodes
    ROOT/testing/reference.csv                no header: Test_NNN,Tumor,Macro|Micro|ITC,Primary | Test_NNN,Normal
    ROOT/testing/lesion_annotations.zip       test_NNN.xml of the test tumour slides

Numbers count from 001 in the order of the generator's slide ids; file names
are lower case and reference.csv says ``Test_NNN`` (as in the current
download), so every stage must match ids in any case.

``camelyon17``::

    ROOT/training/center_K/patient_PPP_node_N.tif   train-split patients (K: the slide's stain centre)
    ROOT/testing/center_K/patient_PPP_node_N.tif    test-split patients
    ROOT/training/lesion_annotations.zip            patient_PPP_node_N.xml of the train lesion slides
    ROOT/testing/lesion_annotations.zip             the same for the test patients
    ROOT/stage_labels.csv                           patient,stage (+ node rows), every patient

The official CAMELYON17 download labels only ``training/``; the synthetic one
also writes its test patients (under ``testing/``, with their stages in
``stage_labels.csv``) so that pn-stage and kappa have test truth.

Both: ``ROOT/cohort.json`` holds the generator's settings, the layout and
``names`` ({official id: generator id}); it marks the root as synthetic
(reports say so).  Masks, tissue truth and lesions.csv are not part of the
official layouts and are not kept.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from typing import Optional

from pfascannet import io_utils
from pfascannet.camelyon_files import write_camelyon17_csv
from pfascannet.errors import PfaError
from pfascannet.layout import CohortFolder

LAYOUT_CHOICES = ("cohort", "camelyon16", "camelyon17")
"""``pfascannet cohort --layout``: the project's own layout, or an official one."""

SCRATCH_NAME = ".synthetic-cohort"
"""Hidden folder inside the root where the generator renders before the files are renamed."""

_REFERENCE_TYPE = {"macro": "Macro", "micro": "Micro", "itc": "ITC"}


def official_names(slides: list[dict], layout: str) -> dict[str, tuple[str, str]]:
    """{generator id: (official id, folder relative to the root)} for ``layout``."""
    out = {}
    if layout == "camelyon16":
        counters = {"normal": 0, "tumor": 0, "test": 0}
        for row in sorted(slides, key=lambda r: r["slide"]):
            if row["split"] == "test":
                kind, folder = "test", os.path.join("testing", "images")
            elif row["label"] == "negative":
                kind, folder = "normal", os.path.join("training", "normal")
            else:
                kind, folder = "tumor", os.path.join("training", "tumor")
            counters[kind] += 1
            out[row["slide"]] = (f"{kind}_{counters[kind]:03d}", folder)
    elif layout == "camelyon17":
        for row in slides:
            part = "testing" if row["split"] == "test" else "training"
            out[row["slide"]] = (row["slide"], os.path.join(part, f"center_{int(row['centre'])}"))
    else:
        raise PfaError(f"layout must be one of {LAYOUT_CHOICES[1:]}, got {layout!r}")
    return out


def _write_zip(path: str, members: dict[str, str]) -> None:
    """A zip of ``{member name: file}``, written atomically."""
    with io_utils.atomic_path(path, suffix=".zip") as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, src in sorted(members.items()):
            zf.write(src, arcname=name)


def write_layout(scratch: str, root: str, layout: str, slides: list[dict],
                 stages: dict[str, str]) -> dict[str, str]:
    """Moves a rendered cohort (``scratch``, the project layout) into ``root`` in an official layout.

    Args:
      scratch: the folder ``make_cohort`` wrote.
      root: the dataset root.
      layout: ``camelyon16`` or ``camelyon17``.
      slides: the rows of the cohort's ``slides.csv`` (``CohortInfo.slides``).
      stages: patient id -> pN-stage.

    Returns:
      {official id: generator id}.
    """
    names = official_names(slides, layout)
    zips: dict[str, dict[str, str]] = {}
    reference_lines = []
    nodes = {}
    for row in sorted(slides, key=lambda r: r["slide"]):
        sid, label = row["slide"], row["label"]
        new_id, folder = names[sid]
        os.makedirs(os.path.join(root, folder), exist_ok=True)
        os.replace(CohortFolder(scratch).image(sid), os.path.join(root, folder, f"{new_id}.tif"))
        xml = CohortFolder(scratch).annotation(sid)
        if os.path.isfile(xml):
            part = folder.split(os.sep)[0]
            zips.setdefault(part, {})[f"{new_id}.xml"] = xml
        if layout == "camelyon16" and row["split"] == "test":
            ref_id = new_id[:1].upper() + new_id[1:]  # Test_001, as the download's reference.csv
            reference_lines.append(f"{ref_id},Normal" if label == "negative"
                                   else f"{ref_id},Tumor,{_REFERENCE_TYPE[label]},Primary")
        nodes[sid] = label
    for part, members in zips.items():
        _write_zip(os.path.join(root, part, "lesion_annotations.zip"), members)
    if layout == "camelyon16":
        io_utils.write_text(os.path.join(root, "testing", "reference.csv"), "\n".join(reference_lines) + "\n")
    else:
        write_camelyon17_csv(os.path.join(root, "stage_labels.csv"), stages, nodes)
    return {new: sid for sid, (new, _) in names.items()}


def make_layout_cohort(root: str | os.PathLike, settings=None, *, layout: str, workers: Optional[int] = None,
                       progress=None, **kwargs):
    """``synthetic.cohort.make_cohort`` into ``root`` laid out as ``layout`` (module docstring).

    ``settings`` (a ``CohortSettings``) or its fields as keywords, as ``make_cohort`` takes them.

    Rerun after a kill: it renders again into the scratch folder and rewrites every file.

    Returns:
      The ``CohortInfo`` (its ``out_dir`` is ``root``; ``slides`` keep the generator's ids, with
      ``official_id`` and ``path`` added).
    """
    from pfascannet.synthetic.cohort import make_cohort  # noqa: PLC0415

    root = os.fspath(root)
    if layout not in LAYOUT_CHOICES[1:]:
        raise PfaError(f"layout must be one of {LAYOUT_CHOICES}, got {layout!r}")
    if os.path.exists(root) and not os.path.isdir(root):
        raise PfaError(f"{root} exists and is not a folder")
    scratch = os.path.join(root, SCRATCH_NAME)
    info = make_cohort(scratch, settings, workers=workers, progress=progress, **kwargs)
    mapping = write_layout(scratch, root, layout, info.slides, info.stages)
    by_generator = {v: k for k, v in mapping.items()}
    with open(CohortFolder(scratch).cohort_json, encoding="utf-8") as f:
        meta = json.load(f)
    meta.update(layout=layout, names=mapping)
    io_utils.write_json(CohortFolder(root).cohort_json, meta)
    shutil.rmtree(scratch)
    places = official_names(info.slides, layout)
    for row in info.slides:
        row["official_id"] = by_generator[row["slide"]]
        new_id, folder = places[row["slide"]]
        row["path"] = os.path.join(root, folder, f"{new_id}.tif")
    info.out_dir = root
    info.settings = meta
    return info
