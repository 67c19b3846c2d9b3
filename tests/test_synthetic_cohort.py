"""The synthetic cohort: Camelyon layout, OpenSlide-readable files, lesion classes, truth."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import openslide
import pytest
from scipy import ndimage
from skimage.measure import regionprops

from pfascannet.camelyon import node_class, pn_stage_from_nodes
from pfascannet.evaluation.pn_stage import read_camelyon17_csv
from pfascannet.slide.annotations import read_asap_xml
from pfascannet.slide.tiff_writer import pyramid_dimensions
from pfascannet.synthetic import lesion_shapes as lesion_lib
from pfascannet.synthetic.cohort import CohortError, make_cohort, plan_cohort
from tests.conftest import COHORT_KWARGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASS_ORDER = ("negative", "itc", "micro", "macro")


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_layout_tables_and_stages(cohort):
    assert sorted(os.listdir(cohort)) == sorted(
        ["images", "annotations", "masks", "tissue", "stages.csv", "slides.csv", "lesions.csv", "mimics.csv",
         "cohort.json"])
    slides = _rows(cohort / "slides.csv")
    assert list(slides[0]) == ["slide", "patient", "node", "split", "label", "centre", "width", "height"]
    assert len(slides) == 6
    assert {r["split"] for r in slides} == {"train", "test"}
    for r in slides:
        assert re.fullmatch(r"patient_\d{3}_node_\d", r["slide"]) and r["slide"].startswith(r["patient"])
        sid = r["slide"]
        assert (cohort / "images" / f"{sid}.tif").is_file()
        assert (cohort / "tissue" / f"{sid}_tissue.png").is_file()
        lesion_slide = r["label"] != "negative"
        assert (cohort / "annotations" / f"{sid}.xml").is_file() == lesion_slide
        assert (cohort / "masks" / f"{sid}_mask.tif").is_file() == lesion_slide
    labels = {r["slide"]: r["label"] for r in slides}
    assert labels == {f"patient_{p:03d}_node_{n}": lab for p, labs in enumerate(COHORT_KWARGS["node_labels"])
                      for n, lab in enumerate(labs)}
    # stages.csv is Camelyon17's format, and its stages follow the rules from the node rows.
    table = read_camelyon17_csv(cohort / "stages.csv")
    assert table.nodes == labels
    assert table.stages == {"patient_000": "pN1", "patient_001": "pN1mi"}
    for patient, stage in table.stages.items():
        assert stage == pn_stage_from_nodes(table.nodes_of(patient).values())
    settings = json.loads((cohort / "cohort.json").read_text())
    assert settings["seed"] == 0 and settings["mpp"] == 0.243


def test_default_cohort_plan_covers_every_stage():
    stages = {e.patient: e.stage for e in plan_cohort(seed=3, patients=5, slide_size=2048 * 2)}
    assert sorted(stages.values()) == sorted(["pN0", "pN0(i+)", "pN1mi", "pN1", "pN2"])


def test_slides_open_in_openslide_with_size_levels_and_mpp(cohort):
    for r in _rows(cohort / "slides.csv"):
        dims = (int(r["width"]), int(r["height"]))
        with openslide.OpenSlide(str(cohort / "images" / f"{r['slide']}.tif")) as s:
            assert s.properties["openslide.vendor"] == "generic-tiff"
            assert s.dimensions == dims
            assert s.level_dimensions == tuple(pyramid_dimensions(dims, 1024))
            assert max(s.level_dimensions[-1]) <= 1024 < max(s.level_dimensions[-2])
            assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.243, abs=1e-6)
            assert float(s.properties["openslide.mpp-y"]) == pytest.approx(0.243, abs=1e-6)
            thumb = np.asarray(s.read_region((0, 0), s.level_count - 1, s.level_dimensions[-1]))[..., :3]
        # The tissue truth is at downsample 32 and marks where the stain is.
        truth = cv2.imread(str(cohort / "tissue" / f"{r['slide']}_tissue.png"), cv2.IMREAD_UNCHANGED)
        assert truth.shape == (math.ceil(dims[1] / 32), math.ceil(dims[0] / 32))
        assert set(np.unique(truth)) == {0, 255}
        assert 0.3 < (truth == 255).mean() < 0.95
        small = cv2.resize(thumb, (truth.shape[1], truth.shape[0]), interpolation=cv2.INTER_AREA)
        sat = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)[..., 1].astype(float)
        inner = cv2.erode(truth, np.ones((5, 5), np.uint8)) == 255
        outer = cv2.dilate(truth, np.ones((5, 5), np.uint8)) == 0
        assert sat[inner].mean() > sat[outer].mean() + 40


def test_masks_have_camelyon_level5_page(cohort):
    for r in _rows(cohort / "slides.csv"):
        if r["label"] == "negative":
            continue
        w, h = int(r["width"]), int(r["height"])
        with openslide.OpenSlide(str(cohort / "masks" / f"{r['slide']}_mask.tif")) as m:
            assert m.dimensions == (w, h) and m.level_count >= 6
            assert m.level_dimensions[5] == (math.ceil(w / 32), math.ceil(h / 32))
            level5 = np.asarray(m.read_region((0, 0), 5, m.level_dimensions[5]))[..., 0]
            assert set(np.unique(level5)) <= {0, 255} and level5.max() == 255


def test_every_lesion_class_at_its_physical_size(cohort):
    lesions = _rows(cohort / "lesions.csv")
    assert list(lesions[0]) == ["slide", "lesion_id", "class", "centre_x", "centre_y", "major_axis_um"]
    assert {r["class"] for r in lesions} == {"itc", "micro", "macro"}
    slides = {r["slide"]: r for r in _rows(cohort / "slides.csv")}
    per_slide = {}
    for r in lesions:
        um = float(r["major_axis_um"])
        assert node_class(um) == r["class"]
        lo, hi = lesion_lib.class_range_um(r["class"])
        assert lo - 0.1 <= um <= hi + 0.1
        per_slide.setdefault(r["slide"], []).append(r["class"])
    # A node's label is its largest lesion's class; negative nodes have none.
    for sid, s in slides.items():
        found = per_slide.get(sid, [])
        assert (max(found, key=CLASS_ORDER.index) if found else "negative") == s["label"]
    # The mask agrees: measure every lesion's major axis on the mask TIFF itself.
    for r in lesions:
        cls, um = r["class"], float(r["major_axis_um"])
        level = {"itc": 0, "micro": 2, "macro": 4}[cls]
        with openslide.OpenSlide(str(cohort / "masks" / f"{r['slide']}_mask.tif")) as m:
            ds = 2**level
            half = int(0.75 * um / 0.243)
            cx, cy = int(r["centre_x"]), int(r["centre_y"])
            region = np.asarray(m.read_region((cx - half, cy - half), level, (2 * half // ds, 2 * half // ds)))
        lesion = ndimage.binary_fill_holes(region[..., 0] == 255)  # exclusion holes are inside the lesion
        comps, _ = ndimage.label(lesion)
        own = comps[half // ds, half // ds]
        assert own > 0, f"{r['slide']} lesion {r['lesion_id']}: no tumour at its centre"
        measured_um = regionprops((comps == own).astype(np.uint8))[0].axis_major_length * ds * 0.243
        assert measured_um == pytest.approx(um, rel=0.06)
        assert node_class(measured_um) == cls


def test_annotations_use_camelyon_groups(cohort):
    groups = set()
    for r in _rows(cohort / "slides.csv"):
        if r["label"] != "negative":
            anns = read_asap_xml(cohort / "annotations" / f"{r['slide']}.xml")
            groups |= {a.group for a in anns}
            assert any(a.is_tumour for a in anns)
    assert {"_0", "_2"} <= groups <= {"_0", "_1", "_2"}


def _block_means(cohort, plans, region_codes, block=64, per_slide=12):
    """Mean RGB of level-0 blocks lying wholly inside the given region types, read from the TIFFs."""
    from pfascannet.synthetic.tissue_render import SlideRenderer  # noqa: PLC0415

    out = {code: [] for code in region_codes}
    for entry in plans:
        plan = entry.plan
        renderer = SlideRenderer(plan, COHORT_KWARGS["mpp"])
        anchors = [poly.mean(0) for _, poly in plan.mimics] + [l.outline.coords_xy.mean(0) for l in plan.lesions]
        rng = np.random.default_rng(0)
        anchors += [rng.uniform((0, 0), (plan.width, plan.height)) for _ in range(per_slide)]
        with openslide.OpenSlide(str(cohort / "images" / f"{plan.slide_id}.tif")) as s:
            for ax, ay in anchors:
                x, y = int(ax) - 2 * block, int(ay) - 2 * block
                img = np.asarray(s.read_region((x, y), 0, (4 * block, 4 * block)))[..., :3].astype(float)
                lab = renderer.region_labels(x, y, 4 * block, 4 * block)
                for by in range(0, 4 * block, block):
                    for bx in range(0, 4 * block, block):
                        cell = lab[by:by + block, bx:bx + block]
                        code = int(np.bincount(cell.ravel()).argmax())
                        if code in out and (cell == code).mean() >= 0.95:
                            out[code].append(img[by:by + block, bx:bx + block].reshape(-1, 3).mean(0))
    return {k: np.array(v) for k, v in out.items()}


def _best_threshold_accuracy(a, b):
    """Best balanced accuracy of one threshold on R, G, B, grey or (max - min) of block means."""
    def feats(v):
        return np.c_[v, v.mean(1), v.max(1) - v.min(1)]

    fa, fb = feats(a), feats(b)
    best = 0.5
    for j in range(fa.shape[1]):
        for t in np.unique(np.r_[fa[:, j], fb[:, j]]):
            acc = ((fa[:, j] > t).mean() + (fb[:, j] <= t).mean()) / 2
            best = max(best, acc, 1 - acc)
    return best


def test_colour_threshold_cannot_tell_tumour_from_mimics(cohort):
    from pfascannet.synthetic.tissue_render import GERMINAL_CENTRE, HISTIOCYTES, PARENCHYMA, TUMOUR  # noqa: PLC0415

    plans = [e for e in plan_cohort(**COHORT_KWARGS)]
    means = _block_means(cohort, plans, (TUMOUR, GERMINAL_CENTRE, HISTIOCYTES, PARENCHYMA))
    tumour, parenchyma = means[TUMOUR], means[PARENCHYMA]
    mimics = np.concatenate([means[GERMINAL_CENTRE], means[HISTIOCYTES]])
    assert len(tumour) >= 20 and len(mimics) >= 20 and len(parenchyma) >= 20
    assert len(means[GERMINAL_CENTRE]) and len(means[HISTIOCYTES])
    # Mean colours within a few grey levels ...
    assert np.abs(tumour.mean(0) - mimics.mean(0)).max() < 15
    # ... and no single colour threshold separates them, while one does separate
    # tumour from ordinary lymphoid parenchyma (so the measure can tell).
    assert _best_threshold_accuracy(tumour, mimics) < 0.8
    assert _best_threshold_accuracy(tumour, parenchyma) > 0.9


def test_same_seed_same_bytes_other_seed_other_pixels(tmp_path):
    kwargs = dict(patients=1, nodes_per_patient=1, slide_size=2048, node_labels=[["itc"]], workers=2)
    a = make_cohort(tmp_path / "a", seed=5, **kwargs)
    b_dir = tmp_path / "b"
    b = make_cohort(b_dir, seed=5, **kwargs)
    files_a = sorted(str(p.relative_to(a.out_dir)) for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(str(p.relative_to(b.out_dir)) for p in b_dir.rglob("*") if p.is_file())
    assert files_a == files_b and "images/patient_000_node_0.tif" in files_a
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (b_dir / rel).read_bytes(), rel
    c = make_cohort(tmp_path / "c", seed=6, **kwargs)
    assert (tmp_path / "c" / "images" / "patient_000_node_0.tif").read_bytes() != \
        (tmp_path / "a" / "images" / "patient_000_node_0.tif").read_bytes()
    assert c.lesions != a.lesions


def test_bad_settings_are_clear_errors(tmp_path):
    with pytest.raises(CohortError, match="slide_size"):
        make_cohort(tmp_path / "x", patients=1, slide_size=100)
    with pytest.raises(CohortError, match="node_labels"):
        make_cohort(tmp_path / "x", patients=1, nodes_per_patient=2, node_labels=[["macro", "tumour"]])
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "data_prep", "make_synthetic_cohort.py"), f"--out={tmp_path / 'y'}",
         "--patients=1", "--mpp=0"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: mpp must be a pixel size in microns between 0.05 and 5, got 0.0"]
    assert not (tmp_path / "y").exists()


def test_lesion_longest_diameter_agrees_with_its_class(cohort):
    """Camelyon17 classes by longest diameter; the moment axis in lesions.csv must agree."""
    for r in _rows(cohort / "slides.csv"):
        if r["label"] == "negative":
            continue
        for ann in read_asap_xml(cohort / "annotations" / f"{r['slide']}.xml"):
            if ann.is_tumour:
                longest_um = lesion_lib.longest_diameter_px(ann.coords_xy) * 0.243
                moment_um = lesion_lib.major_axis_px(ann.coords_xy) * 0.243
                assert node_class(longest_um) == node_class(moment_um)


def test_regions_do_not_depend_on_the_tile_grid():
    """Tiles rendered separately meet without seams: labels of one window equal those of its quarters."""
    from pfascannet.synthetic.tissue_render import SlideRenderer  # noqa: PLC0415

    entry = next(e for e in plan_cohort(**COHORT_KWARGS) if e.label == "micro")
    renderer = SlideRenderer(entry.plan, COHORT_KWARGS["mpp"])
    x, y = (int(v) - 500 for v in entry.plan.lesions[0].outline.coords_xy.mean(0))
    whole = renderer.region_labels(x, y, 1000, 1000)
    quarters = np.block([[renderer.region_labels(x + dx, y + dy, 500, 500) for dx in (0, 500)] for dy in (0, 500)])
    assert len(np.unique(whole)) >= 3
    np.testing.assert_array_equal(whole, quarters)
