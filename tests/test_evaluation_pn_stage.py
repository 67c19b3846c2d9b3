"""Clinical-order quadratic kappa (by hand), Camelyon17 stage CSVs, node forest (the pN rules: test_camelyon.py)."""

from __future__ import annotations

import numpy as np
import pytest

from pfascannet.evaluation import pn_stage

def test_kappa_by_hand_and_the_string_order_trap():
    """Five patients; clinical ranks pN0=0, pN0(i+)=1, pN1mi=2, pN1=3, pN2=4.

    reference  pN0  pN1mi  pN2    pN1  pN0(i+)   ranks r = [0, 2, 4, 3, 1]
    submitted  pN0  pN1mi  pN1mi  pN1  pN0       ranks p = [0, 2, 2, 3, 0]

    Quadratic kappa = 1 - sum(w O) / sum(w E), w_ij = (i - j)^2 (the 1/(K-1)^2 cancels).
    sum(w O) = 0 + 0 + (4-2)^2 + 0 + (1-0)^2 = 5.
    E = outer(a, b) / 5 with a = reference counts [1,1,1,1,1], b = submitted [2,0,2,1,0];
    S_j = sum_i (i - j)^2 = [30, 15, 10, 15, 30], so sum(w E) = (2*30 + 2*10 + 1*15) / 5 = 19.
    kappa = 1 - 5/19 = 14/19.

    String-sorted labels (pn0, pn0(i+), pn1, pn1mi, pn2) give pN1 rank 2 and pN1mi rank 3:
    r = [0, 3, 4, 2, 1], p = [0, 3, 3, 2, 0]; sum(w O) = 1 + 1 = 2; b = [2, 0, 1, 2, 0],
    sum(w E) = (60 + 10 + 30) / 5 = 20; kappa = 1 - 2/20 = 0.9: a different (wrong) number.
    """
    from sklearn.metrics import cohen_kappa_score

    ref = ["pN0", "pN1mi", "pN2", "pN1", "pN0(i+)"]
    sub = ["pn0", "PN1MI", "pN1mi", "pN1", "pN0"]
    assert pn_stage.quadratic_kappa(ref, sub) == pytest.approx(14 / 19)
    string_sorted = cohen_kappa_score([s.lower() for s in ref], [s.lower() for s in sub], weights="quadratic")
    assert string_sorted == pytest.approx(0.9)
    assert pn_stage.quadratic_kappa(ref, ref) == 1.0
    with pytest.raises(pn_stage.StageError):
        pn_stage.quadratic_kappa(ref, sub[:-1])


def test_kappa_uses_all_five_ranks_even_when_some_are_absent():
    """Absent stages must not compress the scale (sklearn's default label set would).

    ref [pN0, pN1, pN2] -> ranks [0, 3, 4]; sub [pN1, pN1, pN2] -> [3, 3, 4].
    sum(w O) = 9; a = [1,0,0,1,1], b = [0,0,0,2,1]; sum(w E) = (2*9 + 16 + 1 + 2*1) / 3 = 37/3;
    kappa = 1 - 27/37 = 10/37.  On the compressed ranks [0,1,2] vs [1,1,2] it would be
    1 - 1/3 = 2/3.
    """
    from sklearn.metrics import cohen_kappa_score

    ref, sub = ["pN0", "pN1", "pN2"], ["pN1", "pN1", "pN2"]
    assert pn_stage.quadratic_kappa(ref, sub) == pytest.approx(10 / 37)
    assert cohen_kappa_score([0, 1, 2], [1, 1, 2], weights="quadratic") == pytest.approx(2 / 3)


def test_camelyon17_csv_round_trip(tmp_path):
    path = tmp_path / "sub.csv"
    nodes = {f"patient_010_node_{k}": lab for k, lab in enumerate(["macro", "negative", "itc", "micro", "negative"])}
    nodes["patient_002_node_10"] = "negative"
    nodes["patient_002_node_2"] = "negative"
    stages = pn_stage.stages_from_node_table(nodes)
    assert stages == {"patient_002": "pN0", "patient_010": "pN1"}
    pn_stage.write_camelyon17_csv(path, stages, nodes)
    lines = path.read_text().splitlines()
    assert lines[:4] == ["patient,stage", "patient_002.zip,pN0", "patient_002_node_2.tif,negative",
                         "patient_002_node_10.tif,negative"]
    assert lines[4:6] == ["patient_010.zip,pN1", "patient_010_node_0.tif,macro"]
    table = pn_stage.read_camelyon17_csv(path)
    assert table.stages == stages and table.nodes == nodes
    assert set(table.nodes_of("patient_002")) == {"patient_002_node_2", "patient_002_node_10"}


def test_csv_errors_name_the_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("patient,stage\npatient_001.zip,pN3\n")
    with pytest.raises(pn_stage.StageError, match=r"bad.csv:2: unknown pN-stage"):
        pn_stage.read_camelyon17_csv(path)
    path.write_text("name,label\n")
    with pytest.raises(pn_stage.StageError, match="header"):
        pn_stage.read_camelyon17_csv(path)
    path.write_text("patient,stage\npatient_001.zip,pN1\npatient_001.zip,pN2\n")
    with pytest.raises(pn_stage.StageError, match="duplicate"):
        pn_stage.read_camelyon17_csv(path)


def test_score_submission_requires_every_reference_patient(tmp_path):
    ref = pn_stage.Camelyon17Table({"patient_000": "pN1", "patient_001": "pN0"})
    sub = pn_stage.Camelyon17Table({"patient_000": "pN1mi"})
    with pytest.raises(pn_stage.StageError, match="lacks 1"):
        pn_stage.score_submission(ref, sub)
    sub.stages["patient_001"] = "pN0"
    sub.stages["patient_999"] = "pN2"
    rep = pn_stage.score_submission(ref, sub)
    assert rep["n_patients"] == 2 and rep["extra_patients_ignored"] == ["patient_999"]
    assert rep["confusion_rows_reference_cols_submission"][3][2] == 1


def test_forest_learns_separable_node_classes():
    rng = np.random.default_rng(0)
    # One informative feature (largest major axis, um) spanning the class limits 200 / 2000 um.
    centres = {"negative": 0.0, "itc": 100.0, "micro": 800.0, "macro": 4000.0}
    labels = [lab for lab in centres for _ in range(12)]
    x = np.array([[centres[lab] * rng.uniform(0.8, 1.2), rng.normal()] for lab in labels])
    clf = pn_stage.train_node_classifier(x, labels, seed=0, n_estimators=25)
    test = np.array([[0.0, 0.0], [110.0, 0.0], [700.0, 0.0], [3500.0, 0.0]])
    assert pn_stage.predict_node_labels(clf, test) == ["negative", "itc", "micro", "macro"]
    with pytest.raises(pn_stage.StageError, match="one feature row per label"):
        pn_stage.train_node_classifier(x[:3], labels, n_estimators=5)
