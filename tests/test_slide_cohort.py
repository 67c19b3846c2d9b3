"""The slide layer on the session's synthetic cohort: tissue detection and masks vs the generator's truth."""

import numpy as np
import pandas as pd
import pytest

from pfascannet.slide.annotations import rasterize, read_asap_xml, read_mask_level
from pfascannet.slide.reader import SlideReader
from pfascannet.slide.tissue import read_tissue_png, tissue_mask


def iou(a, b):
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return (a & b).sum() / max((a | b).sum(), 1)


@pytest.fixture(scope="module")
def slides(cohort):
    return pd.read_csv(cohort / "slides.csv")


def test_tissue_detection_matches_generator_truth(cohort, slides):
    assert len(slides) >= 4
    scores = {}
    for row in slides.itertuples():
        with SlideReader(cohort / "images" / f"{row.slide}.tif") as reader:
            assert reader.dimensions == (row.width, row.height)
            assert reader.mpp == pytest.approx(0.243)
            mask = tissue_mask(reader, downsample=32)
        truth = read_tissue_png(cohort / "tissue" / f"{row.slide}_tissue.png", mask.shape)
        scores[row.slide] = iou(mask, truth)
    assert min(scores.values()) >= 0.95, scores


def test_masks_agree_with_annotations_at_level5(cohort, slides):
    openslide = pytest.importorskip("openslide")
    lesion_slides = slides[slides.label != "negative"]
    assert len(lesion_slides) >= 3
    for row in lesion_slides.itertuples():
        annotations = read_asap_xml(cohort / "annotations" / f"{row.slide}.xml")
        assert any(a.is_tumour for a in annotations)
        expected = rasterize(annotations, (row.width, row.height), 32)
        assert expected.any()
        path = cohort / "masks" / f"{row.slide}_mask.tif"
        assert iou(read_mask_level(path, 32), expected) >= 0.99, row.slide
        # What the Camelyon16 evaluation does: OpenSlide, level 5, first channel.
        slide = openslide.OpenSlide(str(path))
        try:
            assert slide.level_count > 5
            level5 = np.asarray(slide.read_region((0, 0), 5, slide.level_dimensions[5]))[..., 0]
        finally:
            slide.close()
        assert level5.shape == expected.shape
        assert iou(level5, expected) >= 0.99, row.slide
    for row in slides[slides.label == "negative"].itertuples():
        assert not (cohort / "annotations" / f"{row.slide}.xml").exists()
