"""Model configurations: ``paper`` (VGG16 widths) and ``tiny`` (same geometry).

The geometry (patch 692, strides, pooling windows, k = 15) is fixed by
eq. (1) and Fig. 2 of Zhao et al. (MICCAI 2019) and lives in
``pfascannet.geometry``; a config only chooses the channel widths of the
no-padding VGG16 trunk (Sec. 2.2), the width of the decoder, and the dtype.
Every config therefore serves the same ROI sizes and alphas, and the ``tiny``
config exercises exactly the code paths of ``paper`` at a fraction of the cost.
"""

from __future__ import annotations

import dataclasses

from pfascannet.errors import PfaError


class ConfigError(PfaError, ValueError):
    """A model configuration that cannot be built."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Widths of one PFA-ScanNet build.

    Attributes:
      name: the config's name (written into exports).
      widths: output channels of the VGG16 conv blocks conv1..conv5; the
        paper's trunk is VGG16 (64, 128, 256, 512, 512).
      bm_channels: channels of the inner 3x3 convolution of each
        boundary-aware module; Fig. 2b labels it "Conv 3x3, 2", so 2.
      input_convention: how the model turns raw RGB 0..255 into the trunk's
        input, inside the model so that every export carries it:
        ``"unit"`` scales to [-1, 1] (the project's from-scratch default);
        ``"caffe"`` is what Keras' ImageNet VGG16 weights expect
        (``keras.applications.vgg16.preprocess_input``: RGB -> BGR, minus
        the ImageNet channel means, no scaling).  The paper fine-tunes an
        ImageNet VGG16 (Sec. 3), so a trunk started from those weights must
        see that convention (``model.imagenet``).

    Not configurable, because the figures fix them: the PFE score maps X'_i,
    M_i and the decoder maps all have 2 channels (normal, tumour) -- Fig. 2a
    "Conv 15x1, 2" -- and channel 1 is tumour (the detector contract).
    """

    name: str = "paper"
    widths: tuple[int, int, int, int, int] = (64, 128, 256, 512, 512)
    bm_channels: int = 2
    input_convention: str = "unit"

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"ModelConfig.name must be a non-empty string, got {self.name!r}")
        widths = tuple(self.widths)
        if len(widths) != 5 or not all(_is_pos_int(w) for w in widths):
            raise ConfigError(
                f"ModelConfig.widths must be 5 positive integers (conv1..conv5), got {self.widths!r}"
            )
        object.__setattr__(self, "widths", widths)
        if not _is_pos_int(self.bm_channels):
            raise ConfigError(f"ModelConfig.bm_channels must be a positive integer, got {self.bm_channels!r}")
        if self.input_convention not in INPUT_CONVENTIONS:
            raise ConfigError(
                f"ModelConfig.input_convention must be one of {INPUT_CONVENTIONS}, got {self.input_convention!r}"
            )

    @classmethod
    def paper(cls) -> "ModelConfig":
        """The paper's widths: VGG16 conv1..conv5 (Sec. 2.2, Fast ScanNet trunk)."""
        return cls(name="paper", widths=(64, 128, 256, 512, 512))

    @classmethod
    def tiny(cls) -> "ModelConfig":
        """The paper's geometry with narrow widths, for tests and the demo.

        About 1/32 of VGG16's widths: a 2708 ROI is ~2 GMAC in the trunk
        (the paper's is 2.17 TMAC), about 1.3 s on a 2-core CPU; the first
        block is the narrowest because at 2704 px it dominates time and memory.
        """
        return cls(name="tiny", widths=(2, 4, 8, 16, 16))

    @classmethod
    def small(cls) -> "ModelConfig":
        """Between ``tiny`` and ``paper``: 1/8 of VGG16's widths, 8 channels from the first block.

        ``tiny``'s 2-channel first block has no spare unit: when its ReLUs
        switch off early in a from-scratch run, nothing carries the signal
        and the output goes constant.  Eight channels learn reliably, at
        about 0.65 s per 2708 ROI on a 2-core CPU (``tiny``: 0.2 s).
        """
        return cls(name="small", widths=(8, 16, 32, 64, 64))

    @classmethod
    def paper_imagenet(cls) -> "ModelConfig":
        """The paper's widths with the input convention of ImageNet VGG16 weights (``model.imagenet``).

        The paper's own recipe: start the trunk from ImageNet and fine-tune
        (``experiments/train.py --config paper_imagenet --kernel_init imagenet``).
        """
        return cls(name="paper_imagenet", widths=cls.paper().widths, input_convention="caffe")

    def to_dict(self) -> dict:
        """JSON-ready dict; ``ModelConfig(**d)`` rebuilds it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """Inverse of ``to_dict``, with a clear error on unknown keys."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown ModelConfig fields {sorted(unknown)}; expected some of {sorted(known)}")
        d = dict(d)
        if "widths" in d:
            d["widths"] = tuple(d["widths"])
        return cls(**d)


_NAMED = {
    "paper": ModelConfig.paper,
    "paper_imagenet": ModelConfig.paper_imagenet,
    "small": ModelConfig.small,
    "tiny": ModelConfig.tiny,
}


def get_config(name: str) -> ModelConfig:
    """Returns the named config (``paper``, ``paper_imagenet``, ``small`` or ``tiny``)."""
    try:
        return _NAMED[name]()
    except KeyError:
        raise ConfigError(f"unknown model config {name!r}; expected one of {sorted(_NAMED)}") from None


def _is_pos_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


INPUT_CONVENTIONS = ("unit", "caffe")
"""``unit``: RGB/127.5 - 1; ``caffe``: BGR minus ImageNet means (Keras' VGG16 weights)."""

SCORE_CHANNELS = 2
"""Channels of X'_i, M_i and every decoder map (Fig. 2a: "Conv 15x1, 2"); channel 1 = tumour."""
