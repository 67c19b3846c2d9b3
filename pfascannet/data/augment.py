"""Joint geometric augmentation of patch and mask; colour and HSV jitter of the patch.

Zhao et al. (MICCAI 2019), Sec. 2.4 "(1) Data Preprocessing": "Training
patches and corresponding mask patches are augmented with random flipping,
scaling, rotation, and cropping together.  Color jittering and HSV
augmentation are applied to training patches to overcome color variance."

The geometric part works on the 692 x 692 patch and a mask of the *same*
692 x 692 window, with one sampled transform applied to both (bilinear for
the image, nearest for the mask), so alignment holds by construction; the
pipeline crops the mask's centre 512 x 512 afterwards (the decoder target,
Implementation Details).  Using the full window means rotated corners of the
512 target are filled with real truth rather than padding.

"Cropping" is a random shift of the sampling window (crop at an offset,
resample to 692), combined with scaling into one affine resample about the
patch centre.  Everything is stateless (``tf.random.stateless_*``): the same
seed gives the same augmentation, which is what lets a resumed training run
see the same data it would have seen uninterrupted.

``tf.*`` only (no tensorflow-addons), usable eagerly and inside ``tf.data``.
"""

from __future__ import annotations

import math

import tensorflow as tf

from pfascannet.data.augment_settings import AugmentSettings, AugmentError  # noqa: F401  (their home; re-exported)


def _sub(seed: tf.Tensor, k: int) -> tf.Tensor:
    # Independent stream per operation from one element seed.
    return tf.random.experimental.stateless_fold_in(seed, k)


def _uniform(seed, k, lo, hi):
    return tf.random.stateless_uniform([], _sub(seed, k), minval=lo, maxval=hi, dtype=tf.float32)


def affine_resample(image: tf.Tensor, transform: tf.Tensor, interpolation: str) -> tf.Tensor:
    """Resamples ``[H, W, C]`` with an 8-vector output->input projective transform.

    Reflect padding for both image and mask keeps them aligned where the
    window leaves the patch.
    """
    x = image[tf.newaxis]
    shape = tf.shape(image)[:2]
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=x,
        transforms=tf.reshape(tf.cast(transform, tf.float32), [1, 8]),
        output_shape=shape,
        fill_value=0.0,
        interpolation=interpolation,
        fill_mode="REFLECT",
    )
    return out[0]


def sample_affine(seed: tf.Tensor, size_px: int, config: AugmentSettings) -> tf.Tensor:
    """The output->input transform of rotation, scaling and crop shift about the centre."""
    theta = _uniform(seed, 10, -config.max_rotation_deg, config.max_rotation_deg) * (math.pi / 180.0)
    lo, hi = config.scale_range
    # Log-uniform zoom: as likely to shrink by a factor as to grow by it.
    scale = tf.exp(_uniform(seed, 11, math.log(lo), math.log(hi))) if hi > lo else tf.constant(lo, tf.float32)
    s = float(config.max_shift_px)
    tx = _uniform(seed, 12, -s, s) if s else tf.constant(0.0)
    ty = _uniform(seed, 13, -s, s) if s else tf.constant(0.0)
    c = (size_px - 1) / 2.0
    cos, sin = tf.cos(theta) / scale, tf.sin(theta) / scale
    # input = R(theta) (output - c) / scale + c + shift
    a0, a1 = cos, -sin
    b0, b1 = sin, cos
    a2 = c - a0 * c - a1 * c + tx
    b2 = c - b0 * c - b1 * c + ty
    return tf.stack([a0, a1, a2, b0, b1, b2, 0.0, 0.0])


def geometric(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor, config: AugmentSettings) -> tuple[tf.Tensor, tf.Tensor]:
    """Applies one random flip / rot90 / rotation / scale / crop to both.

    Args:
      image: float32 ``[S, S, 3]``.
      mask: ``[S, S, 1]`` of the same window.
      seed: int ``[2]`` stateless seed.
      config: ranges.

    Returns:
      (image float32, mask float32 {0, 1}) of the same shapes.
    """
    mask = tf.cast(mask, tf.float32)
    both = tf.concat([image, mask], axis=-1)
    if config.flip:
        both = tf.image.stateless_random_flip_left_right(both, _sub(seed, 1))
        both = tf.image.stateless_random_flip_up_down(both, _sub(seed, 2))
    if config.rot90:
        k = tf.random.stateless_uniform([], _sub(seed, 3), minval=0, maxval=4, dtype=tf.int32)
        both = tf.image.rot90(both, k)
    image, mask = both[..., :3], both[..., 3:]
    if config.max_rotation_deg or config.max_shift_px or config.scale_range != (1.0, 1.0):
        size = int(image.shape[0]) if image.shape[0] is not None else None
        if size is None:
            raise AugmentError("geometric augmentation needs a static patch size")
        t = sample_affine(seed, size, config)
        image = affine_resample(image, t, "BILINEAR")
        mask = affine_resample(mask, t, "NEAREST")
    return image, mask


def colour(image: tf.Tensor, seed: tf.Tensor, config: AugmentSettings) -> tf.Tensor:
    """Colour jitter then HSV jitter, on a float32 0..255 RGB image only."""
    x = image / 255.0
    if config.brightness:
        x = tf.image.stateless_random_brightness(x, config.brightness, _sub(seed, 20))
    if config.contrast != (1.0, 1.0):
        x = tf.image.stateless_random_contrast(x, config.contrast[0], config.contrast[1], _sub(seed, 21))
    x = tf.clip_by_value(x, 0.0, 1.0)
    if config.saturation != (1.0, 1.0):
        x = tf.image.stateless_random_saturation(x, config.saturation[0], config.saturation[1], _sub(seed, 22))
    if config.hue:
        x = tf.image.stateless_random_hue(x, config.hue, _sub(seed, 23))
    if config.hsv_h or config.hsv_s or config.hsv_v:
        hsv = tf.image.rgb_to_hsv(tf.clip_by_value(x, 0.0, 1.0))
        dh = _uniform(seed, 24, -config.hsv_h, config.hsv_h) if config.hsv_h else 0.0
        fs = _uniform(seed, 25, 1.0 - config.hsv_s, 1.0 + config.hsv_s) if config.hsv_s else 1.0
        fv = _uniform(seed, 26, 1.0 - config.hsv_v, 1.0 + config.hsv_v) if config.hsv_v else 1.0
        h = tf.math.floormod(hsv[..., 0] + dh, 1.0)
        s = tf.clip_by_value(hsv[..., 1] * fs, 0.0, 1.0)
        v = tf.clip_by_value(hsv[..., 2] * fv, 0.0, 1.0)
        x = tf.image.hsv_to_rgb(tf.stack([h, s, v], axis=-1))
    return tf.clip_by_value(x, 0.0, 1.0) * 255.0


def augment_pair(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor, config: AugmentSettings) -> tuple[tf.Tensor, tf.Tensor]:
    """Geometric augmentation of both, then colour/HSV jitter of the image (Sec. 2.4).

    Args:
      image: uint8 or float ``[S, S, 3]`` in 0..255.
      mask: ``[S, S]`` or ``[S, S, 1]`` of the same window, 1 = tumour.
      seed: int ``[2]`` stateless seed.
      config: ranges.

    Returns:
      (float32 ``[S, S, 3]`` in 0..255, float32 ``[S, S]`` in {0, 1}).
    """
    image = tf.cast(image, tf.float32)
    mask = tf.cast(mask, tf.float32)
    if mask.shape.rank == 2:
        mask = mask[..., tf.newaxis]
    seed = tf.cast(seed, tf.int64)
    image, mask = geometric(image, mask, seed, config)
    image = colour(image, seed, config)
    return image, mask[..., 0]
