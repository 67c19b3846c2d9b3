"""The one rule for finding a slide and its annotation, and the official CAMELYON16/17 layouts (fast: no pixels)."""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest

from pfascannet import datasets
from pfascannet.data import sampling
from pfascannet.evaluation import pn_stage, slide_metrics, submission
from pfascannet.inference import slide_list
from pfascannet.inference.scan_settings import ScanError
from pfascannet.slide.annotations import Annotation, AnnotationError, write_asap_xml

SQUARE = Annotation("a", "_0", np.array([[100.0, 100.0], [900.0, 100.0], [900.0, 700.0], [100.0, 700.0]]))


def _touch(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"not read by the finder")
    return str(path)


def _xml_bytes(tmp_path, annotations=(SQUARE,)):
    p = tmp_path / "one.xml"
    write_asap_xml(p, list(annotations))
    data = p.read_bytes()
    p.unlink()
    return data


def _zip(path, members: dict[str, bytes]):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return str(path)


def _camelyon16(root, tmp_path, upper=False):
    """A CAMELYON16 tree as downloaded: old copies' upper-case names when ``upper``."""
    t = (lambda s: s.capitalize()) if upper else (lambda s: s)
    _touch(root / "training" / "normal" / f"{t('normal')}_001.tif")
    _touch(root / "training" / "tumor" / f"{t('tumor')}_001.tif")
    _touch(root / "training" / "tumor" / f"{t('tumor')}_002.tif")
    for k in (1, 2, 3):
        _touch(root / "testing" / "images" / f"{t('test')}_00{k}.tif")
    xml = _xml_bytes(tmp_path)
    # One zip keeps its members in a folder, as some copies do.
    _zip(root / "training" / "lesion_annotations.zip",
         {"lesion_annotations/tumor_001.xml": xml, "lesion_annotations/Tumor_002.xml": xml, "__MACOSX/._x.xml": b""})
    _zip(root / "testing" / "lesion_annotations.zip", {"test_001.xml": xml})
    (root / "testing" / "reference.csv").write_text("Test_001,Tumor,Macro,Primary\nTest_002,Normal\n")
    return root


@pytest.mark.parametrize("upper", [False, True])
def test_camelyon16_root_as_downloaded_any_case(tmp_path, upper):
    root = _camelyon16(tmp_path / "CAMELYON16", tmp_path, upper)
    ds = datasets.open_dataset(root)
    assert ds.layout == "camelyon16"
    by_id = {s.slide_id.lower(): s for s in ds.slides}
    assert sorted(by_id) == ["normal_001", "test_001", "test_002", "test_003", "tumor_001", "tumor_002"]
    assert {k: (s.split, s.tumour) for k, s in by_id.items()} == {
        "normal_001": ("train", False), "tumor_001": ("train", True), "tumor_002": ("train", True),
        "test_001": ("test", True), "test_002": ("test", False), "test_003": ("test", None)}
    # Annotations straight from the zips, found in any case; none extracted.
    assert by_id["tumor_002"].annotation.member == "lesion_annotations/Tumor_002.xml"
    assert by_id["test_001"].annotation.read() == [SQUARE]
    assert by_id["normal_001"].annotation is None
    assert not any(f.endswith(".xml") for _, _, fs in os.walk(root) for f in fs)
    # The header-less reference gives the test truth; Test_003 has no row, so no truth.
    refs = ds.refs()
    assert sorted(r.lower() for r in refs) == ["normal_001", "test_001", "test_002", "tumor_001", "tumor_002"]
    # Training takes training/ with its annotations.
    entries = sampling.load_cohort(root, "train")
    assert sorted(e.slide_id.lower() for e in entries) == ["normal_001", "tumor_001", "tumor_002"]
    assert all((e.annotation_path is not None) == e.slide_id.lower().startswith("tumor") for e in entries)
    # Every slide of the root for a scan.
    assert len(slide_list.list_slides(str(root))) == 6
    assert len(slide_list.list_slides(str(root / "testing" / "images"))) == 3


def test_camelyon16_tumour_slide_without_annotation_is_refused_for_training(tmp_path):
    root = _camelyon16(tmp_path / "C16", tmp_path)
    _touch(root / "training" / "tumor" / "tumor_003.tif")
    with pytest.raises(sampling.SamplingError, match=r"tumour slide .*tumor_003.tif has no annotation tumor_003.xml"):
        sampling.load_cohort(root, "train")


@pytest.mark.parametrize("csv_name,where", [("stage_labels.csv", ""), ("stages.csv", "training"),
                                            ("Stage_Labels.CSV", "")])
def test_camelyon17_root_stage_csv_names_and_split_from_folders(tmp_path, csv_name, where):
    root = tmp_path / "CAMELYON17"
    for node in range(2):
        _touch(root / "training" / "center_0" / f"patient_000_node_{node}.tif")
        _touch(root / "training" / "center_1" / f"patient_001_node_{node}.tif")
        _touch(root / "testing" / "patients" / f"patient_002_node_{node}.tif")
    _zip(root / "training" / "lesion_annotations.zip", {"patient_000_node_1.xml": _xml_bytes(tmp_path)})
    (root / where / csv_name).write_text(
        "patient,stage\npatient_000.zip,pN1mi\npatient_000_node_0.tif,negative\npatient_000_node_1.tif,micro\n"
        "patient_001.zip,pN1mi\npatient_001_node_0.tif,micro\npatient_001_node_1.tif,negative\n"
        "patient_002.zip,pN0\npatient_002_node_0.tif,negative\npatient_002_node_1.tif,negative\n")
    ds = datasets.open_dataset(root)
    assert ds.layout == "camelyon17" and os.path.basename(ds.stages_path) == csv_name
    assert {s.slide_id: s.split for s in ds.slides} == {
        "patient_000_node_0": "train", "patient_000_node_1": "train", "patient_001_node_0": "train",
        "patient_001_node_1": "train", "patient_002_node_0": "test", "patient_002_node_1": "test"}
    refs = ds.refs()
    assert refs["patient_001_node_0"].node_label == "micro" and refs["patient_001_node_0"].patient == "patient_001"
    # patient_001_node_0 is micro but not annotated: its patches cannot be labelled, so training leaves it out.
    assert [e.slide_id for e in sampling.load_cohort(root, "train")] == [
        "patient_000_node_0", "patient_000_node_1", "patient_001_node_1"]
    # CAMELYON17's training/ holds centre folders: the scan takes their slides.
    assert len(slide_list.list_slides(str(root / "training"))) == 4


def test_finder_extensions_case_and_non_slides(tmp_path):
    for name in ("a.SVS", "b.ndpi", "c.mrxs", "D.tif", ".e.tif", "f.txt", "g.tif.partial"):
        _touch(tmp_path / name)
    index = datasets.SlideIndex(tmp_path)
    assert [os.path.basename(p) for p in index.paths()] == ["D.tif", "a.SVS", "b.ndpi", "c.mrxs"]
    assert index.find("A").endswith("a.SVS") and index.find("d").endswith("D.tif")
    assert index.find("e") is None and index.find("f") is None
    with pytest.raises(datasets.DatasetError, match=r"slide zzz: no file zzz.<ext> \(any case; ext one of .tif"):
        index.require("zzz")


def test_ambiguous_slide_is_an_error_naming_both(tmp_path):
    _touch(tmp_path / "tumor_001.tif")
    _touch(tmp_path / "Tumor_001.tif")
    _touch(tmp_path / "x.tif")
    _touch(tmp_path / "x.svs")
    index = datasets.SlideIndex(tmp_path)
    with pytest.raises(datasets.DatasetError, match=r"slide TUMOR_001: ambiguous, 2 files .*Tumor_001.tif.*tumor_001.tif"):
        index.find("TUMOR_001")
    with pytest.raises(datasets.DatasetError, match=r"ambiguous.*x.svs.*x.tif"):
        index.find("x")
    with pytest.raises(ScanError, match="two slides share the id"):
        slide_list.list_slides([str(tmp_path / "tumor_001.tif"), str(tmp_path / "Tumor_001.tif")])


def test_annotations_from_zip_equal_those_from_a_folder(tmp_path):
    folder = tmp_path / "xml"
    folder.mkdir()
    write_asap_xml(folder / "Tumor_001.xml", [SQUARE])
    z = _zip(tmp_path / "lesion_annotations.zip", {"tumor_001.xml": (folder / "Tumor_001.xml").read_bytes()})
    from_folder = submission.slide_tumour_mask("tumor_001", annotations_dir=str(folder), dimensions_xy=(1000, 800))
    from_zip = submission.slide_tumour_mask("TUMOR_001", annotations_dir=z, dimensions_xy=(1000, 800))
    assert from_zip.sum() > 0 and np.array_equal(from_zip, from_folder)
    assert datasets.AnnotationIndex(z).find("tumor_002") is None


def test_hostile_or_broken_annotation_zips_are_refused(tmp_path):
    bad = tmp_path / "lesion_annotations.zip"
    bad.write_bytes(b"PK but not a zip")
    with pytest.raises(datasets.DatasetError, match="expected a folder of ASAP XML files or a .zip of them"):
        datasets.AnnotationIndex(bad)
    dtd = (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]>'
           b'<ASAP_Annotations><Annotations/></ASAP_Annotations>')
    z = _zip(tmp_path / "evil.zip", {"tumor_001.xml": dtd})
    with pytest.raises(AnnotationError, match=r"evil.zip:tumor_001.xml: refused"):
        datasets.AnnotationIndex(z).find("tumor_001").read()
    with pytest.raises(datasets.DatasetError, match="no such annotation folder or zip"):
        datasets.AnnotationIndex(tmp_path / "nope.zip")


def test_layout_detection_error_says_what_was_expected(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(datasets.DatasetError, match=r"not a dataset folder: expected images/ \(a pfascannet cohort\), "
                                                    r"training/tumor/, training/normal/ or testing/images/ "
                                                    r"\(CAMELYON16\), or training/center_<K>/ \(CAMELYON17\)"):
        datasets.open_dataset(tmp_path / "stuff")


def test_ids_match_in_any_case_for_auc_and_kappa():
    names, labels, values = slide_metrics.match_scores({"Test_001": 1, "Test_002": 0},
                                                       {"test_001": 0.9, "TEST_002": 0.1})
    assert (names, labels, values) == (["Test_001", "Test_002"], [1, 0], [0.9, 0.1])
    with pytest.raises(slide_metrics.SlideMetricsError, match="differ only in case"):
        slide_metrics.match_scores({"Test_001": 1}, {"test_001": 0.9, "Test_001": 0.8})
    ref = pn_stage.Camelyon17Table({"Patient_004": "pN1"}, {"Patient_004_node_0": "macro"})
    sub = pn_stage.Camelyon17Table({"patient_004": "pN1"}, {"patient_004_node_0": "macro"})
    rep = pn_stage.score_submission(ref, sub)
    assert rep["n_patients"] == 1 and rep["accuracy"] == 1.0 and rep["node_accuracy"] == 1.0


def test_a_folder_of_no_known_layout_is_one_error_line_from_the_cli(tmp_path):
    import subprocess
    import sys

    (tmp_path / "scores.csv").write_text("name,probability\ntest_001,0.5\n")
    (tmp_path / "somewhere").mkdir()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-m", "pfascannet.cli", "auc", "--scores", "scores.csv", "--reference",
                           "somewhere", "--out", "R"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=root))
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "error: somewhere: not a dataset folder: expected images/ (a pfascannet cohort), training/tumor/, "
        "training/normal/ or testing/images/ (CAMELYON16), or training/center_<K>/ (CAMELYON17)"]
    assert not (tmp_path / "R").exists()
