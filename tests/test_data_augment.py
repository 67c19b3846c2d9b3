"""Patch and mask stay aligned through every augmentation (Sec. 2.4)."""

import dataclasses

import cv2
import numpy as np
import pytest
import tensorflow as tf

from pfascannet.data import augment
from pfascannet.data.augment import AugmentSettings

S = 692


def _shape_pair():
    # An asymmetric shape (an ellipse plus a bar) away from the centre, so a
    # flip or rotation of one but not the other shows up as a low IoU.
    img = np.zeros((S, S, 3), np.uint8)
    cv2.ellipse(img, (250, 300), (120, 60), 30, 0, 360, (255, 255, 255), -1)
    cv2.rectangle(img, (400, 150), (460, 520), (255, 255, 255), -1)
    mask = (img[..., 0] > 0).astype(np.uint8)
    return img, mask


def _iou(a, b):
    return np.logical_and(a, b).sum() / max(np.logical_or(a, b).sum(), 1)


_ONLY = {
    "flip": dataclasses.replace(AugmentSettings.none(), flip=True),
    "rot90": dataclasses.replace(AugmentSettings.none(), rot90=True),
    "rotation": dataclasses.replace(AugmentSettings.none(), max_rotation_deg=180.0),
    "scaling": dataclasses.replace(AugmentSettings.none(), scale_range=(0.7, 1.4)),
    "cropping": dataclasses.replace(AugmentSettings.none(), max_shift_px=60),
    "all": dataclasses.replace(AugmentSettings(), max_rotation_deg=180.0, scale_range=(0.7, 1.4), max_shift_px=60),
}


@pytest.mark.parametrize("name", sorted(_ONLY))
def test_shape_drawn_on_patch_stays_on_mask(name):
    img, mask = _shape_pair()
    cfg = _ONLY[name]
    moved = 0
    for k in range(6):
        out_img, out_mask = augment.augment_pair(img, mask, tf.constant([7, k], tf.int64), cfg)
        out_img, out_mask = out_img.numpy(), out_mask.numpy()
        assert out_img.shape == (S, S, 3) and out_mask.shape == (S, S)
        assert set(np.unique(out_mask)) <= {0.0, 1.0}
        drawn = out_img.mean(-1) > 127.5
        assert _iou(drawn, out_mask > 0.5) >= 0.95, (name, k)
        moved += _iou(out_mask > 0.5, mask > 0) < 0.9
    # The augmentation does something (not the identity every time).
    assert moved >= 2, name


def test_colour_jitter_touches_patch_only_and_is_seeded():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (S, S, 3), dtype=np.uint8)
    mask = (rng.random((S, S)) > 0.5).astype(np.uint8)
    cfg = dataclasses.replace(AugmentSettings(), flip=False, rot90=False, max_rotation_deg=0.0,
                              scale_range=(1.0, 1.0), max_shift_px=0)
    a_img, a_mask = augment.augment_pair(img, mask, tf.constant([1, 2], tf.int64), cfg)
    b_img, _ = augment.augment_pair(img, mask, tf.constant([1, 2], tf.int64), cfg)
    c_img, _ = augment.augment_pair(img, mask, tf.constant([1, 3], tf.int64), cfg)
    np.testing.assert_array_equal(a_mask.numpy(), mask)
    np.testing.assert_array_equal(a_img.numpy(), b_img.numpy())
    assert np.abs(a_img.numpy() - img).mean() > 1.0
    assert np.abs(a_img.numpy() - c_img.numpy()).mean() > 0.5
    assert 0.0 <= a_img.numpy().min() and a_img.numpy().max() <= 255.0


def test_augment_inside_tf_data_matches_eager():
    img, mask = _shape_pair()
    cfg = AugmentSettings()
    ds = tf.data.Dataset.from_tensors((img, mask)).map(
        lambda i, m: augment.augment_pair(i, m, tf.constant([3, 4], tf.int64), cfg))
    g_img, g_mask = next(iter(ds))
    e_img, e_mask = augment.augment_pair(img, mask, tf.constant([3, 4], tf.int64), cfg)
    np.testing.assert_array_equal(g_mask.numpy(), e_mask.numpy())
    np.testing.assert_allclose(g_img.numpy(), e_img.numpy(), atol=1e-3)


def test_bad_ranges_are_rejected():
    with pytest.raises(augment.AugmentError):
        AugmentSettings(scale_range=(1.2, 0.8))
    with pytest.raises(augment.AugmentError):
        AugmentSettings(hue=0.7)
