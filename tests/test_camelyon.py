"""The Camelyon rules of ``pfascannet.camelyon`` at their boundaries (``shared/DESIGN.md`` section 3),
and the modules that apply them agreeing with it."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import measure

from pfascannet import camelyon
from pfascannet.camelyon import StageError, node_class, pn_stage_from_nodes


def test_level0_pixel_size_and_mask_level():
    assert camelyon.LEVEL0_MPP == 0.243
    assert camelyon.MASK_DOWNSAMPLE == 32 == 2**camelyon.MASK_LEVEL


@pytest.mark.parametrize("um,cls", [
    (0.0, "itc"), (199.9, "itc"),
    (200.0, "itc"),                      # exactly 0.2 mm is ITC (TNM; DESIGN.md section 3)
    (200.1, "micro"), (1999.9, "micro"),
    (2000.0, "micro"),                   # exactly 2 mm is micro
    (2000.1, "macro"), (9000.0, "macro"),
])
def test_node_class_boundaries(um, cls):
    assert node_class(um) == cls


def test_froc_itc_rule_is_strictly_below_275_um_of_the_grown_region():
    per_px = camelyon.LEVEL0_MPP * camelyon.MASK_DOWNSAMPLE       # um per level-5 px
    limit = camelyon.froc_itc_limit_px()
    assert limit == pytest.approx(275 / per_px) == pytest.approx(35.365, abs=1e-3)
    assert camelyon.is_froc_itc(np.nextafter(limit, 0))
    assert not camelyon.is_froc_itc(limit)                        # exactly 275 um: a lesion, not ITC
    assert camelyon.is_froc_itc(274.9 / per_px) and not camelyon.is_froc_itc(275.1 / per_px)
    # The two ITC rules are different rules: 250 um is ITC for the FROC, micro for Camelyon17.
    assert camelyon.is_froc_itc(250 / per_px) and node_class(250) == "micro"


def test_froc_module_uses_the_rules():
    from pfascannet.evaluation import froc

    # Bars of n level-5 px, grown by the evaluation mask; the longest one whose grown region
    # measures under 275 um is ITC in froc, one pixel longer is a lesion.
    def grown_bar(n):
        mask = np.zeros((20, 80), np.uint8)
        mask[10, 2:2 + n] = 255
        labels = froc.evaluation_mask(mask)
        return labels, camelyon.major_axis_length(measure.regionprops(labels)[0])

    limit = camelyon.froc_itc_limit_px()
    short = max(n for n in range(1, 60) if grown_bar(n)[1] < limit)
    assert froc.itc_labels(grown_bar(short)[0]) == {1}
    assert grown_bar(short + 1)[1] >= limit and froc.itc_labels(grown_bar(short + 1)[0]) == set()
    assert froc.METASTASIS_CLASSES == camelyon.METASTASIS_CLASSES


def test_synthetic_generator_draws_inside_the_node_classes():
    from pfascannet.synthetic import lesion_shapes

    for cls in camelyon.METASTASIS_CLASSES:
        lo, hi = lesion_shapes.class_range_um(cls)
        assert node_class(lo) == node_class(hi) == cls


def test_sampler_itc_default_is_the_froc_rule():
    from pfascannet.data import sampling

    assert sampling.SamplerSettings().itc_max_um == camelyon.FROC_ITC_MAX_UM == 275.0


# (node labels of one patient, pN-stage by the Camelyon17 rules)
RULES = [
    ([], "pN0"),
    (["negative"] * 5, "pN0"),
    (["negative", "itc", "negative", "negative", "negative"], "pN0(i+)"),
    (["itc", "itc", "itc", "itc", "itc"], "pN0(i+)"),
    (["micro", "negative", "negative", "negative", "negative"], "pN1mi"),
    (["micro", "micro", "micro", "micro", "itc"], "pN1mi"),          # 4 micro, no macro: still pN1mi
    (["macro", "negative", "negative", "negative", "negative"], "pN1"),
    (["macro", "micro", "micro", "itc", "itc"], "pN1"),               # 3 metastatic nodes, ITCs don't count
    (["macro", "micro", "micro", "micro", "negative"], "pN2"),        # 4 metastatic nodes with a macro
    (["macro"] * 5, "pN2"),
    (["Macro", "NEGATIVE", "Itc", "Micro", "normal"], "pN1"),         # any case; "normal" = negative
]


@pytest.mark.parametrize("nodes,stage", RULES)
def test_pn_rules(nodes, stage):
    assert pn_stage_from_nodes(nodes) == stage


def test_unknown_labels_and_stages_are_errors():
    with pytest.raises(StageError, match="unknown node label"):
        pn_stage_from_nodes(["tumour"])
    with pytest.raises(StageError, match="unknown pN-stage"):
        camelyon.stage_rank("pN3")
    assert camelyon.normalize_stage("PN0(I+)") == "pN0(i+)"
    assert [camelyon.stage_rank(s) for s in ("pn0", "pN0(i+)", "PN1MI", "pN1", "pn2")] == [0, 1, 2, 3, 4]


def test_stage_csv_and_cohort_use_the_same_rules(tmp_path):
    from pfascannet.evaluation import pn_stage

    nodes = {"patient_004_node_0": "macro", "patient_004_node_3": "micro", "patient_004_node_1": "negative"}
    assert pn_stage.stages_from_node_table(nodes) == {"patient_004": pn_stage_from_nodes(nodes.values())}
    assert camelyon.node_slide_id(4, 3) == "patient_004_node_3"
    assert camelyon.patient_of_slide(camelyon.node_slide_id(4, 3)) == camelyon.patient_id(4) == "patient_004"
    assert camelyon.patient_of_slide("test_001") is None
    pn_stage.write_camelyon17_csv(tmp_path / "s.csv", {"patient_004": "pn1"}, nodes)
    table = pn_stage.read_camelyon17_csv(tmp_path / "s.csv")
    assert table.stages == {"patient_004": "pN1"} and table.nodes == nodes


def test_slide_id():
    assert camelyon.slide_id("/data/images/Tumor_001.tif") == "Tumor_001"
    assert camelyon.slide_id("test_002.CSV") == "test_002"
    assert camelyon.slide_id("patient_004_node_3") == "patient_004_node_3"
