"""Ranges of the Sec. 2.4 augmentation (``AugmentSettings``), without TensorFlow.

Kept apart from ``data.augment`` (the TensorFlow ops) so that settings and
flags (``training.settings``, ``pfascannet train --help``) do not import
TensorFlow.  ``data.augment`` re-exports both names.
"""

from __future__ import annotations

import dataclasses

from pfascannet.errors import PfaError
from pfascannet.settings import setting


class AugmentError(PfaError, ValueError):
    """An augmentation setting out of range."""


@dataclasses.dataclass(frozen=True)
class AugmentSettings:
    """Ranges of every augmentation; a zero/identity value switches one off.

    Attributes:
      flip: random left-right and up-down flips.
      rot90: random multiples of 90 degrees.
      max_rotation_deg: arbitrary-angle rotation drawn from +-this.
      scale_range: (min, max) zoom; > 1 magnifies.
      max_shift_px: random crop offset, +- pixels in x and y.
      brightness: additive brightness delta, fraction of full scale.
      contrast: (min, max) contrast factor.
      saturation: (min, max) saturation factor.
      hue: hue delta (fraction of the hue circle) of the colour jitter.
      hsv_h, hsv_s, hsv_v: HSV jitter: hue shift +-hsv_h, saturation and
        value scaled by 1 +- hsv_s / hsv_v.
    """

    flip: bool = setting(True, help="Random left-right and up-down flips.")
    rot90: bool = setting(True, help="Random multiples of 90 degrees.")
    max_rotation_deg: float = setting(45.0, help="Arbitrary-angle rotation drawn from +- this (degrees).")
    scale_range: tuple[float, float] = setting((0.9, 1.1), help="min,max zoom (> 1 magnifies), log-uniform.")
    max_shift_px: int = setting(16, help="Random crop offset, +- pixels in x and y.")
    brightness: float = setting(0.06, help="Additive brightness delta, fraction of full scale.")
    contrast: tuple[float, float] = setting((0.85, 1.15), help="min,max contrast factor.")
    saturation: tuple[float, float] = setting((0.85, 1.15), help="min,max saturation factor.")
    hue: float = setting(0.02, help="Hue delta of the colour jitter (fraction of the hue circle, <= 0.5).")
    hsv_h: float = setting(0.02, help="HSV jitter: hue shift +- this.")
    hsv_s: float = setting(0.1, help="HSV jitter: saturation scaled by 1 +- this.")
    hsv_v: float = setting(0.08, help="HSV jitter: value scaled by 1 +- this.")

    def __post_init__(self):
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise AugmentError(f"scale_range must be 0 < min <= max, got {self.scale_range}")
        for name in ("contrast", "saturation"):
            a, b = getattr(self, name)
            if not 0 <= a <= b:
                raise AugmentError(f"{name} must be 0 <= min <= max, got {(a, b)}")
        if not 0 <= self.hue <= 0.5:
            raise AugmentError(f"hue must be in [0, 0.5], got {self.hue}")
        if self.max_shift_px < 0 or self.max_rotation_deg < 0 or self.brightness < 0:
            raise AugmentError("max_shift_px, max_rotation_deg and brightness must be >= 0")

    @classmethod
    def none(cls) -> "AugmentSettings":
        """Every augmentation off (evaluation, tests)."""
        return cls(False, False, 0.0, (1.0, 1.0), 0, 0.0, (1.0, 1.0), (1.0, 1.0), 0.0, 0.0, 0.0, 0.0)
