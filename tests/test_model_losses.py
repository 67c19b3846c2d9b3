"""Eq. (2) truncated loss and eq. (3) synergistic loss (Sec. 2.3)."""

import math

import numpy as np
import pytest
import tensorflow as tf

from pfascannet.model.losses import (
    LossConfigError,
    SynergisticLoss,
    classification_loss,
    truncated_cross_entropy,
    truncated_log_loss,
)

GAMMA = 0.04


def _np(x):
    return np.asarray(x, dtype=np.float64)


def _grad(p, gamma):
    p = tf.Variable(np.asarray(p, np.float32))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(truncated_log_loss(p, gamma))
    return tape.gradient(loss, p).numpy()


def test_values_follow_eq2_by_hand():
    p = np.array([0.02, 0.04, 0.5, 0.9], np.float32)
    want = [-math.log(GAMMA) + 0.5 * (1 - 0.02**2 / GAMMA**2), -math.log(GAMMA), -math.log(0.5), -math.log(0.9)]
    np.testing.assert_allclose(_np(truncated_log_loss(p, GAMMA)), want, rtol=1e-6)


def test_continuous_at_gamma():
    eps = 1e-4
    below, at, above = _np(truncated_log_loss(np.array([GAMMA - eps, GAMMA, GAMMA + eps], np.float32), GAMMA))
    assert abs(below - at) < 2 * eps / GAMMA and abs(above - at) < 2 * eps / GAMMA
    assert at == pytest.approx(-math.log(GAMMA), rel=1e-6)
    # The slopes of both branches meet too (-1/gamma).
    g_below, g_above = _grad([GAMMA - 1e-5, GAMMA + 1e-5], GAMMA)
    assert g_below == pytest.approx(-1 / GAMMA, rel=1e-3) and g_above == pytest.approx(-1 / GAMMA, rel=1e-3)


def test_gamma_zero_is_binary_cross_entropy():
    rng = np.random.default_rng(0)
    p = rng.uniform(1e-4, 1, 1000).astype(np.float32)
    np.testing.assert_allclose(_np(truncated_log_loss(p, 0.0)), -np.log(p.astype(np.float64)), rtol=1e-5)
    y = rng.integers(0, 2, (4, 10, 10)).astype(np.float32)
    p1 = rng.uniform(0.01, 0.99, (4, 10, 10)).astype(np.float32)
    probs = np.stack([1 - p1, p1], -1)
    bce = float(tf.reduce_mean(tf.keras.losses.binary_crossentropy(y[..., None], p1[..., None])))
    assert float(truncated_cross_entropy(y, probs, 0.0)) == pytest.approx(bce, rel=1e-4)


def test_gradient_bounded_below_gamma():
    p = np.geomspace(1e-6, GAMMA * 0.999, 200)
    g = _grad(p, GAMMA)
    assert np.all(np.isfinite(g))
    assert np.max(np.abs(g)) <= 1 / GAMMA * (1 + 1e-4)
    # Plain BCE's gradient there is unbounded (-1/p): the truncation is what bounds it.
    assert np.max(np.abs(_grad(p, 0.0))) > 1e4


def test_truncation_applies_to_the_true_class_probability():
    # A confidently wrong tumour pixel (p_tumour = 0.001): truncated, so far below BCE.
    probs = np.array([[0.999, 0.001]], np.float32)
    truncated = float(truncated_cross_entropy(np.array([1.0], np.float32), probs, GAMMA))
    bce = float(truncated_cross_entropy(np.array([1.0], np.float32), probs, 0.0))
    assert truncated == pytest.approx(-math.log(GAMMA) + 0.5 * (1 - 0.001**2 / GAMMA**2), rel=1e-5)
    assert bce == pytest.approx(-math.log(0.001), rel=1e-4) and truncated < bce


def _outputs(rng, n=2):
    def probs(side):
        p = rng.uniform(0.01, 0.99, (n, side, side)).astype(np.float32)
        return np.stack([1 - p, p], -1)

    c = rng.uniform(0.05, 0.95, n).astype(np.float32)
    return {
        "classifier": np.stack([1 - c, c], -1),
        "seg_stride8": probs(62),
        "seg_stride4": probs(128),
        "seg_stride2": probs(256),
    }


def test_total_loss_is_eq3_and_switch_drops_the_decoder():
    rng = np.random.default_rng(1)
    out = _outputs(rng)
    labels = np.array([0, 1])
    mask = rng.random((2, 512, 512)) > 0.5
    terms = SynergisticLoss()(labels, mask, out)
    cla = float(classification_loss(labels, out["classifier"]))
    want_cla = -np.mean(np.log([out["classifier"][0, 0], out["classifier"][1, 1]]))
    assert cla == pytest.approx(want_cla, rel=1e-5)
    assert float(terms["classification"]) == pytest.approx(cla, rel=1e-6)
    assert float(terms["segmentation"]) > 0
    assert float(terms["total"]) == pytest.approx(cla + 0.5 * float(terms["segmentation"]), rel=1e-6)
    lam2 = SynergisticLoss(lam=2.0)(labels, mask, out)
    assert float(lam2["total"]) == pytest.approx(cla + 2.0 * float(terms["segmentation"]), rel=1e-6)
    alone = SynergisticLoss(synergistic=False)(labels, None, out)
    assert float(alone["total"]) == pytest.approx(cla, rel=1e-6)
    assert float(alone["segmentation"]) == 0.0


@pytest.mark.parametrize("kwargs", [{"gamma": -0.1}, {"gamma": 0.6}, {"lam": -1.0}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(LossConfigError):
        SynergisticLoss(**kwargs)
