"""Configs, the DensePooling layer, and the shapes of every head (Fig. 1, Fig. 2, DESIGN.md section 1)."""

import ast
import os

import keras
import numpy as np
import pytest

from pfascannet import geometry
from pfascannet.model import config as config_mod
from pfascannet.model.config import ConfigError, ModelConfig, get_config
from pfascannet.model.decoder import DECODER_SCALES, decoder_targets
from pfascannet.model.dense_pooling import DensePooling
from pfascannet.model.detector import (
    PfaScanNetDetector,
    PfaScanNetTrainingModel,
    build_detector,
    build_training_model,
    transfer_weights,
)
from pfascannet.model.trunk import trunk_macs

MODEL_DIR = os.path.dirname(config_mod.__file__)


def test_configs():
    assert get_config("paper").widths == (64, 128, 256, 512, 512)
    tiny = get_config("tiny")
    assert tiny.name == "tiny" and all(t < p for t, p in zip(tiny.widths, ModelConfig.paper().widths))
    assert ModelConfig.from_dict(tiny.to_dict()) == tiny
    with pytest.raises(ConfigError, match="unknown model config"):
        get_config("vgg19")
    with pytest.raises(ConfigError, match="5 positive integers"):
        ModelConfig(widths=(64, 128, 256))
    with pytest.raises(ConfigError, match="unknown ModelConfig fields"):
        ModelConfig.from_dict({"width": 3})


def test_trunk_macs_match_the_paper():
    assert trunk_macs(2708, ModelConfig.paper()) / 1e12 == pytest.approx(2.17, abs=0.005)


def test_dense_pooling_config_round_trip_and_shapes():
    layer = DensePooling(margin=56, window=38, stride_train=128, alpha=16, name="dp")
    clone = DensePooling.from_config(layer.get_config())
    assert (clone.margin, clone.window, clone.stride_train, clone.alpha, clone.name) == (56, 38, 128, 16, "dp")
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(again, DensePooling) and again.stride == 8
    x = np.random.default_rng(0).normal(size=(2, 654, 654, 2)).astype(np.float32)
    y = np.asarray(layer(x))
    assert y.shape == layer.compute_output_shape(x.shape) == (2, 64, 64, 2)
    # Output (u, v) is the mean of the 38x38 window at 56 + 8 (u, v).
    np.testing.assert_allclose(y[1, 3, 5], x[1, 56 + 24:56 + 24 + 38, 56 + 40:56 + 40 + 38].mean((0, 1)), rtol=1e-5)
    assert DensePooling(56, 38, 128, 1).compute_output_shape((None, 150, 150, 2)) == (None, 1, 1, 2)
    with pytest.raises(geometry.GeometryError):
        DensePooling(56, 38, 128, alpha=3)


@pytest.mark.parametrize("alpha,roi_px", [(1, 692), (16, 2708), (32, 2708), (16, 1204)])
def test_detector_shapes_follow_the_geometry_table(alpha, roi_px):
    model = build_detector(ModelConfig.tiny(), alpha=alpha, input_px=roi_px)
    lm = geometry.tile_px(roi_px, alpha)
    assert model.output_shape == (None, lm, lm, 2)
    sides = geometry.feature_sides(roi_px)
    for level in range(1, 6):
        assert model.get_layer(f"block{level}_conv{2 if level < 3 else 3}").output.shape[1] == sides[level]
    for level in geometry.HEAD_LEVELS:
        assert model.get_layer(f"pfe{level}_sum").output.shape[1:] == (sides[level] - 14,) * 2 + (2,)
        assert model.get_layer(f"dense_pool{level}").output.shape[1:] == (lm, lm, 2)
    if roi_px == 2708:  # DESIGN.md's table
        assert [sides[i] for i in range(1, 6)] == [2704, 1348, 668, 328, 158]


def test_free_input_detector_serves_any_roi_on_the_grid():
    model = build_detector(ModelConfig.tiny(), alpha=16)
    assert model.input_shape == (None, None, None, 3)
    out = model.predict_on_batch(np.zeros((1, 724, 724, 3), np.float32))  # Lm = 2
    assert out.shape == (1, 2, 2, 2)
    np.testing.assert_allclose(out.sum(-1), 1.0, rtol=1e-5)


def test_detector_refuses_off_grid_sizes_and_bad_alphas():
    with pytest.raises(geometry.GeometryError, match="does not fit the grid"):
        build_detector(ModelConfig.tiny(), alpha=16, input_px=2700)
    with pytest.raises(geometry.GeometryError, match="alpha must be one of"):
        build_detector(ModelConfig.tiny(), alpha=12)


def test_detector_carries_its_config_through_a_keras_file(tmp_path):
    cfg = ModelConfig(name="narrow", widths=(3, 4, 8, 16, 16), bm_channels=5, input_convention="caffe")
    model = build_detector(cfg, alpha=8, precision="bfloat16", training_mpp=0.5)
    assert isinstance(model, PfaScanNetDetector)
    want = {"widths": [3, 4, 8, 16, 16], "bm_channels": 5, "config_name": "narrow", "input_convention": "caffe",
            "alpha": 8, "input_px": None, "training_mpp": 0.5, "precision": "bfloat16"}
    assert {k: model.get_config()[k] for k in want} == want
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras", compile=False)
    assert isinstance(again, PfaScanNetDetector) and again.get_config() == model.get_config()
    assert (again.model_config, again.alpha, again.training_mpp) == (cfg, 8, 0.5)
    x = np.random.default_rng(0).integers(0, 256, (1, 948, 948, 3)).astype(np.float32)  # Lm = 5 at alpha 8
    np.testing.assert_array_equal(again.predict_on_batch(x), model.predict_on_batch(x))
    # Layer names do not depend on the class: weights still match by name.
    assert {layer.name for layer in again.layers} == {layer.name for layer in build_detector(cfg, alpha=1).layers}
    with pytest.raises(ConfigError, match="training_mpp"):
        build_detector(cfg, training_mpp=0)


def test_training_model_carries_its_config_and_loads_the_shipped_weights():
    from pfascannet import workflow

    train = build_training_model(ModelConfig.tiny(), training_mpp=0.25)
    assert isinstance(train, PfaScanNetTrainingModel)
    assert (train.model_config, train.training_mpp) == (ModelConfig.tiny(), 0.25)
    assert PfaScanNetTrainingModel.from_config(train.get_config()).get_config() == train.get_config()
    weights, _ = workflow.shipped_weights("tiny_demo")
    train.load_weights(weights)  # written before the model was a subclass
    detector = build_detector(ModelConfig.tiny(), alpha=16)
    assert transfer_weights(train, detector) == sum(1 for layer in detector.layers if layer.weights)


def test_training_model_heads_and_weight_transfer():
    cfg = ModelConfig.tiny()
    train = build_training_model(cfg)
    out = train(np.full((1, 692, 692, 3), 128, np.uint8))
    assert set(out) == {"classifier", *DECODER_SCALES}
    assert tuple(out["classifier"].shape) == (1, 2)
    for name, (stride, side, _crop) in DECODER_SCALES.items():
        assert tuple(out[name].shape) == (1, side, side, 2), name
    detector = build_detector(cfg, alpha=16, input_px=1204)
    copied = transfer_weights(train, detector)
    assert copied == sum(1 for layer in detector.layers if layer.weights)
    for layer in detector.layers:
        for a, b in zip(layer.get_weights(), train.get_layer(layer.name).get_weights()):
            np.testing.assert_array_equal(a, b)
    # The detector alone has no decoder layers.
    assert not any(layer.name.startswith(("bm", "dec_", "pfe2")) for layer in detector.layers)
    with pytest.raises(ConfigError, match="do not fit"):
        transfer_weights(build_detector(ModelConfig(name="other", widths=(3, 4, 8, 16, 16))), detector)


def test_decoder_targets_cover_the_documented_mask_regions():
    mask = np.zeros((1, 512, 512), np.float32)
    mask[0, 0:8, 0:8] = 1.0  # top-left 8x8 of the mask: outside the stride-8 map's region (starts at 8)
    mask[0, 8:16, 8:16] = 1.0  # first stride-8 cell
    mask[0, 510:512, 510:512] = 1.0  # last stride-2 cell
    t = {k: np.asarray(v) for k, v in decoder_targets(mask).items()}
    for name, (_stride, side, _crop) in DECODER_SCALES.items():
        assert t[name].shape == (1, side, side, 1)
    s8 = t["seg_stride8"][0, ..., 0]
    assert s8[0, 0] == 1.0 and s8.sum() == pytest.approx(1.0)
    s4 = t["seg_stride4"][0, ..., 0]
    assert s4[0, 0] == 1.0 and s4[2, 2] == 1.0 and s4[127, 127] == pytest.approx(0.25)
    s2 = t["seg_stride2"][0, ..., 0]
    assert s2[255, 255] == 1.0 and s2[0, 0] == 1.0 and s2[4, 4] == 1.0
    with pytest.raises(geometry.GeometryError, match="512x512"):
        decoder_targets(np.zeros((1, 256, 256)))


def test_model_code_imports_no_tensorflow():
    # keras.ops only, so the model runs under the JAX and PyTorch backends.
    for fname in sorted(os.listdir(MODEL_DIR)):
        if not fname.endswith(".py"):
            continue
        tree = ast.parse(open(os.path.join(MODEL_DIR, fname), encoding="utf-8").read())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n.split(".")[0] == "tensorflow" for n in names), f"{fname} imports {names}"
