"""camelyon_files: each Camelyon file's writer and its one strict reader (issue 22)."""

from __future__ import annotations

import numpy as np
import pytest

from pfascannet import camelyon_files as cf
from pfascannet import datasets
from pfascannet.data import sampling
from pfascannet.evaluation import reference, slide_metrics, submission
from pfascannet.evaluation.froc import FrocError


def test_lesion_csv_bytes_and_round_trip(tmp_path):
    p = tmp_path / "s.csv"
    cf.write_lesion_csv(p, [(0.9, 100.7, 200), (0.05, 3, 4)])
    assert p.read_bytes() == b"0.900000,100,200\n0.050000,3,4\n"
    np.testing.assert_array_equal(cf.read_lesion_csv(p), [[0.9, 100, 200], [0.05, 3, 4]])
    # the FROC's reader is this one, failing with the FROC's error
    (tmp_path / "bad.csv").write_text("0.9,1,2\n0.5,x,3\n")
    with pytest.raises(FrocError, match=r"bad\.csv:2: expected three finite numbers"):
        submission.read_detections_csv(tmp_path / "bad.csv")
    with pytest.raises(cf.CamelyonFileError, match=r"bad\.csv:2:"):
        cf.read_lesion_csv(tmp_path / "bad.csv")


def test_slide_scores_bytes_and_round_trip(tmp_path):
    p = tmp_path / "slide_scores.csv"
    cf.write_slide_scores(p, [("a", 0.5), ("b", 1 / 3)])
    assert p.read_bytes() == b"name,probability\na,0.500000\nb,0.333333\n"
    assert cf.read_slide_scores(p) == {"a": 0.5, "b": 0.333333}
    (tmp_path / "twice.csv").write_text("name,probability\na,0.5\na.tif,0.1\n")
    with pytest.raises(slide_metrics.SlideMetricsError, match=r"twice\.csv:3: duplicate slide 'a'"):
        slide_metrics.read_slide_scores(tmp_path / "twice.csv")


SLIDES = [
    {"slide": "patient_000_node_0", "patient": "patient_000", "node": 0, "split": "train", "label": "macro",
     "centre": 0, "width": 64, "height": 32, "path": "ignored"},
    {"slide": "patient_000_node_1", "patient": "patient_000", "node": 1, "split": "test", "label": "negative",
     "centre": 0, "width": 64, "height": 32},
]


def test_slides_csv_bytes_and_the_one_reader(tmp_path):
    p = tmp_path / "slides.csv"
    cf.write_slides_csv(p, SLIDES)
    assert p.read_text() == ("slide,patient,node,split,label,centre,width,height\n"
                             "patient_000_node_0,patient_000,0,train,macro,0,64,32\n"
                             "patient_000_node_1,patient_000,1,test,negative,0,64,32\n")
    rows = cf.read_slides_csv(p)
    assert [(r.slide, r.tumour, r.node_label, r.split, r.dimensions_xy) for r in rows] == [
        ("patient_000_node_0", True, "macro", "train", (64, 32)),
        ("patient_000_node_1", False, "negative", "test", (64, 32))]
    refs = reference.read_reference(p)
    assert refs["patient_000_node_0"] == reference.SlideRef("patient_000_node_0", True, "macro", "train",
                                                            "patient_000", (64, 32))


@pytest.mark.parametrize("body, message", [
    ("slide,label\na,macro\na,negative\n", r"slides\.csv:3: slide 'a' is listed twice"),
    ("slide,label\na,tumourish\n", r"slides\.csv:2: "),
    ("slide,label,width,height\na,macro,10.5,3\n", r"slides\.csv:2: width/height must be positive whole numbers"),
    ("name,label\na,macro\n", r"slides\.csv: expected a header with 'slide' and 'label' columns"),
])
def test_slides_csv_errors_are_one_line(tmp_path, body, message):
    p = tmp_path / "slides.csv"
    p.write_text(body)
    with pytest.raises(cf.CamelyonFileError, match=message) as info:
        cf.read_slides_csv(p)
    assert "\n" not in str(info.value)


def test_the_sampler_reads_slides_csv_as_strictly_as_the_evaluation(tmp_path):
    """A bad label in a cohort's slides.csv was a tumour slide to the sampler; now it is the evaluation's error."""
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.tif").write_bytes(b"")
    (tmp_path / "slides.csv").write_text("slide,split,label\na,train,tumourish\n")
    with pytest.raises(sampling.SamplingError, match=r"slides\.csv:2: ") as info:
        sampling.load_cohort(tmp_path, split="train")
    assert "\n" not in str(info.value)
    with pytest.raises(reference.ReferenceFileError, match=r"slides\.csv:2: "):
        reference.read_reference(tmp_path / "slides.csv")
    # an unlabelled slide is still a slide of unknown label to the datasets (not to the evaluation)
    (tmp_path / "slides.csv").write_text("slide,split,label\na,train,\n")
    ds = datasets.open_dataset(tmp_path)
    assert [(s.slide_id, s.tumour, s.label) for s in ds.slides] == [("a", None, "")]
    with pytest.raises(reference.ReferenceFileError, match=r"slides\.csv:2: missing slide or label"):
        reference.read_reference(tmp_path / "slides.csv")


def test_truth_lesions_and_stage_csv_round_trip(tmp_path):
    p = tmp_path / "lesions.csv"
    cf.write_truth_lesions_csv(p, [{"slide": "s", "lesion_id": 0, "class": "micro", "centre_x": 5, "centre_y": 6,
                                    "major_axis_um": 300.0}])
    assert p.read_text() == "slide,lesion_id,class,centre_x,centre_y,major_axis_um\ns,0,micro,5,6,300.0\n"
    assert cf.read_truth_lesions(p) == {"s": [(5.0, 6.0, "micro")]}
    stages = tmp_path / "stages.csv"
    cf.write_camelyon17_csv(stages, {"patient_000": "pN1"}, {"patient_000_node_0": "macro"})
    assert stages.read_text() == "patient,stage\npatient_000.zip,pN1\npatient_000_node_0.tif,macro\n"
    table = cf.read_camelyon17_csv(stages)
    assert (table.stages, table.nodes) == ({"patient_000": "pN1"}, {"patient_000_node_0": "macro"})
