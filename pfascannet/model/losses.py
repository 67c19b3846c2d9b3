"""Losses of synergistic learning: eq. (2) truncated loss and eq. (3) total loss (Sec. 2.3).

Eq. (2), for the predicted probability p = p(t|x; W) of the true class t of
pixel x and the truncation point gamma in [0, 0.5]:

    l(p) = -log(gamma) + (1 - p^2 / gamma^2) / 2    if p < gamma
    l(p) = -log(p)                                  otherwise

l is continuous and has a continuous first derivative at gamma (both
branches give -log(gamma) and slope -1/gamma there), its slope below gamma is
bounded by 1/gamma, so confidently "wrong" pixels (mislabelled regions,
zigzag annotation boundaries) cannot dominate the gradient; gamma = 0 is
binary cross-entropy.  The paper uses gamma = 0.04.

Eq. (3): L = Lcla + lambda * Lseg with lambda = 0.5; Lcla is binary
cross-entropy of the detector's patch output.  Choices the paper leaves open,
made here: losses are means (over patches, and over pixels of each map)
rather than sums, so lambda keeps its meaning at any batch or map size; Lseg
is the mean over the three deep-supervision scales; a soft target y (the
tumour fraction of a decoder cell, ``decoder_targets``) weights the two
classes, l = (1 - y) l(p0) + y l(p1), which is eq. (2) for y in {0, 1}.
"""

from __future__ import annotations

import dataclasses

from keras import ops

from pfascannet.errors import PfaError
from pfascannet.model.decoder import DECODER_SCALES, decoder_targets
from pfascannet.model.paper import PAPER_GAMMA, PAPER_LAMBDA  # noqa: F401  (re-exported: losses.PAPER_GAMMA)

_EPS = 1e-7  # keeps log finite for p -> 0 at gamma = 0 (plain BCE)


class LossConfigError(PfaError, ValueError):
    """A loss setting outside the range the paper defines."""


def truncated_log_loss(p, gamma: float = PAPER_GAMMA):
    """Eq. (2) per element: the truncated -log of the true-class probability ``p``."""
    _check_gamma(gamma)
    p = ops.clip(ops.cast(p, "float32"), _EPS, 1.0)
    if gamma == 0:
        return -ops.log(p)
    high = -ops.log(ops.maximum(p, gamma))  # maximum keeps this branch's gradient finite below gamma
    low = -ops.log(gamma) + 0.5 * (1.0 - ops.square(p) / (gamma * gamma))
    return ops.where(p < gamma, low, high)


def truncated_cross_entropy(y_tumour, probs, gamma: float = PAPER_GAMMA):
    """Mean eq. (2) loss of two-class softmax ``probs`` [..., 2] against tumour targets.

    Args:
      y_tumour: tumour label or fraction in [0, 1], shape ``probs.shape[:-1]``
        or with a trailing 1.
      probs: softmax probabilities, channel 1 = tumour.
      gamma: truncation point; 0 gives binary cross-entropy.
    """
    y = ops.cast(y_tumour, "float32")
    if len(ops.shape(y)) == len(ops.shape(probs)):
        y = ops.squeeze(y, -1)
    per_pixel = (1.0 - y) * truncated_log_loss(probs[..., 0], gamma) + y * truncated_log_loss(probs[..., 1], gamma)
    return ops.mean(per_pixel)


def classification_loss(labels, probs):
    """Lcla: binary cross-entropy of the detector's [N, 2] softmax against labels [N] in {0, 1}."""
    return truncated_cross_entropy(ops.reshape(ops.cast(labels, "float32"), (-1,)), ops.reshape(probs, (-1, 2)), 0.0)


@dataclasses.dataclass(frozen=True)
class SynergisticLoss:
    """Eq. (3): ``Lcla + lam * Lseg``, with Lseg the eq. (2) loss over the decoder's three scales.

    Attributes:
      gamma: truncation point of eq. (2), in [0, 0.5] (paper: 0.04).
      lam: the trade-off lambda (paper: 0.5).
      synergistic: False trains the detector alone (the paper's
        "PFA-ScanNet w/o SL"): the loss is Lcla and the decoder gets no gradient.
    """

    gamma: float = PAPER_GAMMA
    lam: float = PAPER_LAMBDA
    synergistic: bool = True

    def __post_init__(self):
        _check_gamma(self.gamma)
        if not (isinstance(self.lam, (int, float)) and self.lam >= 0):
            raise LossConfigError(f"lambda must be a number >= 0, got {self.lam!r}")

    def __call__(self, labels, seg_targets, outputs: dict) -> dict:
        """Computes the loss terms.

        Args:
          labels: patch labels [N] (1 = tumour at the patch centre).
          seg_targets: either the 512x512 masks [N, 512, 512(, 1)] or the dict
            from ``decoder.decoder_targets``; ignored when not synergistic (may be None).
          outputs: the training model's output dict.

        Returns:
          {"total", "classification", "segmentation"} scalar tensors.
        """
        cla = classification_loss(labels, outputs["classifier"])
        if not self.synergistic:
            return {"total": cla, "classification": cla, "segmentation": ops.zeros((), "float32")}
        if not isinstance(seg_targets, dict):
            seg_targets = decoder_targets(seg_targets)
        seg = ops.mean(
            ops.stack(
                [truncated_cross_entropy(seg_targets[name], outputs[name], self.gamma) for name in DECODER_SCALES]
            )
        )
        return {"total": cla + self.lam * seg, "classification": cla, "segmentation": seg}


def _check_gamma(gamma) -> None:
    if not (isinstance(gamma, (int, float)) and 0.0 <= gamma <= 0.5):
        raise LossConfigError(f"the truncation point gamma must be in [0, 0.5] (eq. (2)), got {gamma!r}")
