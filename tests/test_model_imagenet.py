"""The paper's ImageNet start (Sec. 3): our no-padding trunk computes what Keras' VGG16 computes.

Keras' VGG16 pads every convolution (``same``); ours pads none (``valid``,
DESIGN.md section 1).  With the same weights, each of our features is one of
VGG16's interior features, shifted.  Give our trunk the crop [d, d + n) of
VGG16's input: after the two convs of block 1 our pixel j is VGG16's pixel
j + d + 2.  A 2x2 pooling keeps that correspondence only if the offset is
even; dividing by two at each pool and adding 2 or 3 per block (2, 2, 3, 3, 3
convs) gives the condition d + 2 = 8 (mod 16).  With d = 6 the offsets are
X1: 8, then (after pool, +convs) X2: 6, X3: 6, X4: 6, X5: 6 in each level's
own pixels.  Away from VGG16's zero-padded border (which the crop never
reaches) the two then compute the same sums in the same order of terms per
kernel, so they agree to float32 rounding of differently ordered
accumulations: we allow 1e-4 relative to the feature's scale.
"""

import keras
import numpy as np
import pytest

from pfascannet.model.config import ConfigError, ModelConfig
from pfascannet.model.detector import build_detector
from pfascannet.model.imagenet import ImagenetInitError, load_imagenet_trunk

CROP_OFFSET_PX = 6
CROP_PX = 244  # our X5 is 4 x 4 on it: 242,240 -> 120 -> 118,116 -> 58 -> 52 -> 26 -> 20 -> 10 -> 4
BIG_PX = 256
OFFSETS = {1: 8, 2: 6, 3: 6, 4: 6, 5: 6}


@pytest.fixture(scope="module")
def vgg16_weights_file(tmp_path_factory):
    """A VGG16 weights file saved from ``VGG16(weights=None)`` (random, seeded): stands in for ImageNet's."""
    keras.utils.set_random_seed(3)
    vgg = keras.applications.VGG16(include_top=False, weights=None, input_shape=(None, None, 3))
    path = tmp_path_factory.mktemp("vgg16") / "vgg16_notop.weights.h5"
    vgg.save_weights(str(path))
    return str(path)


def _features(model, names, x):
    probe = keras.Model(model.inputs, [model.get_layer(n).output for n in names])
    return [np.asarray(f) for f in probe.predict(x, verbose=0)]


def test_loaded_trunk_equals_keras_vgg16_interior(vgg16_weights_file):
    config = ModelConfig(name="paper_imagenet", input_convention="caffe")
    ours = build_detector(config, alpha=1)
    assert load_imagenet_trunk(ours, vgg16_weights_file) == 13

    vgg = keras.applications.VGG16(include_top=False, weights=vgg16_weights_file, input_shape=(None, None, 3))
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, size=(1, BIG_PX, BIG_PX, 3)).astype(np.float32)
    crop = big[:, CROP_OFFSET_PX:CROP_OFFSET_PX + CROP_PX, CROP_OFFSET_PX:CROP_OFFSET_PX + CROP_PX]

    last = [f"block{b}_conv{c}" for b, c in zip(range(1, 6), (2, 2, 3, 3, 3))]
    theirs = _features(vgg, last, keras.applications.vgg16.preprocess_input(big.copy()))
    mine = _features(ours, last, crop)  # raw RGB: the model normalises (caffe) itself
    for level, (a, b) in enumerate(zip(mine, theirs), start=1):
        side, off = a.shape[1], OFFSETS[level]
        interior = b[:, off:off + side, off:off + side]
        scale = float(np.abs(interior).max())
        assert scale > 0, f"X{level} is all zero: the comparison would prove nothing"
        np.testing.assert_allclose(a, interior, rtol=0, atol=1e-4 * scale, err_msg=f"X{level}")
        # A one-pixel misplacement must fail: the test can tell aligned from not.
        shifted = b[:, off + 1:off + 1 + side, off:off + side]
        assert np.abs(a - shifted).max() > 1e-2 * scale


def test_imagenet_weights_refused_where_they_cannot_fit(vgg16_weights_file, tmp_path):
    with pytest.raises(ImagenetInitError, match="paper's widths"):
        load_imagenet_trunk(build_detector(ModelConfig(name="tiny", widths=(2, 4, 8, 16, 16),
                                                       input_convention="caffe")), vgg16_weights_file)
    with pytest.raises(ImagenetInitError, match="input_convention='caffe'"):
        load_imagenet_trunk(build_detector(ModelConfig.paper()), vgg16_weights_file)
    with pytest.raises(ImagenetInitError, match="no such VGG16 weights file"):
        load_imagenet_trunk(build_detector(ModelConfig(input_convention="caffe")), str(tmp_path / "none.h5"))
    with pytest.raises(ConfigError, match="input_convention"):
        ModelConfig(input_convention="torch")


def test_caffe_convention_survives_keras_export(tmp_path):
    config = ModelConfig(name="t", widths=(2, 4, 8, 16, 16), input_convention="caffe")
    model = build_detector(config, alpha=1, input_px=692)
    x = np.random.default_rng(1).integers(0, 256, size=(1, 692, 692, 3)).astype(np.uint8)
    path = str(tmp_path / "m.keras")
    model.save(path)
    again = keras.models.load_model(path)
    np.testing.assert_array_equal(np.asarray(model.predict(x, verbose=0)), np.asarray(again.predict(x, verbose=0)))
