"""Morphological features of a probability map, in physical units (section 2.4)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pfascannet import io_utils
from pfascannet.evaluation import features


def _map():
    """A 30 x 60 px rectangle at p = 0.95, a 4 x 4 blob at 0.6 and noise below 0.3."""
    prob = np.random.default_rng(0).uniform(0, 0.3, (200, 300)).astype(np.float32)
    prob[50:80, 100:160] = 0.95
    prob[150:154, 20:24] = 0.6
    return prob


def test_known_region_sizes():
    um_per_px = 32 * 0.243                                  # a 32 px stride map at 0.243 um/px
    f = features.slide_features(_map(), um_per_px)
    assert list(f) == features.feature_names()
    mm2 = (um_per_px / 1000) ** 2
    assert f["max_prob"] == pytest.approx(0.95)
    assert f["n_regions@0.5"] == 2 and f["n_regions@0.7"] == 1
    assert f["largest_area_mm2@0.5"] == pytest.approx(30 * 60 * mm2)
    assert f["second_area_mm2@0.5"] == pytest.approx(16 * mm2)
    assert f["total_area_mm2@0.5"] == pytest.approx(1816 * mm2)
    # skimage's moment major axis of a filled rectangle of length w px: 4 * sqrt(var) with
    # var = (w^2 - 1) / 12 (the same measure Camelyon's ITC rule uses): 69.27 px for w = 60.
    assert f["largest_major_axis_um@0.9"] == pytest.approx(4 * np.sqrt((60**2 - 1) / 12) * um_per_px, rel=1e-6)
    assert f["largest_mean_prob@0.9"] == pytest.approx(0.95)
    assert f["n_regions@0.9"] == 1 and f["second_area_mm2@0.9"] == 0.0


def test_empty_map_gives_zeros():
    f = features.slide_features(np.zeros((10, 10), np.float32), 7.776)
    assert f["n_regions@0.5"] == 0 and f["largest_major_axis_um@0.5"] == 0 and f["max_prob"] == 0


def test_map_file_uses_stride_and_mpp(tmp_path):
    io_utils.save_npy(tmp_path / "s.npy", _map())
    (tmp_path / "s.json").write_text(json.dumps({"slide": "s", "stride_px": 16, "mpp": 0.5}))
    f = features.features_from_map_file(tmp_path / "s.npy")
    assert f["largest_area_mm2@0.5"] == pytest.approx(1800 * (8 / 1000) ** 2)
    (tmp_path / "s.json").write_text(json.dumps({"slide": "s", "mpp": 0.5}))
    with pytest.raises(features.FeatureError, match="stride_px"):
        features.features_from_map_file(tmp_path / "s.npy")
    (tmp_path / "s.json").unlink()
    with pytest.raises(features.FeatureError, match="missing"):
        features.features_from_map_file(tmp_path / "s.npy")


def test_features_csv_round_trip(tmp_path):
    feats = {"b": features.slide_features(_map(), 7.776), "a": features.slide_features(_map()[:50], 7.776)}
    features.write_features_csv(tmp_path / "f.csv", feats)
    assert features.read_features_csv(tmp_path / "f.csv") == feats
    x = features.feature_matrix(feats, ["a", "b"])
    assert x.shape == (2, len(features.feature_names()))
    with pytest.raises(features.FeatureError, match="no features for 1"):
        features.feature_matrix(feats, ["c"])


def test_features_csv_bad_lines_name_file_and_line(tmp_path):
    p = tmp_path / "f.csv"
    for content, match in ((b"slide,max_prob\na,abc\n", r"f\.csv:2: feature values must be numbers"),
                           (b"slide,max_prob\na,0.5\na,0.6\n", r"f\.csv:3: slide 'a' is listed twice"),
                           (b"slide,max_prob\n\xff\xfe\n", r"f\.csv:2: .*not UTF-8"),
                           (b"a,0.5\n", r"f\.csv: expected a first line")):
        p.write_bytes(content)
        with pytest.raises(features.FeatureError, match=match):
            features.read_features_csv(p)
