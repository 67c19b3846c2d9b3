"""H&E stain model and per-centre variation for the synthetic cohort.

Colour follows the Beer-Lambert model that stain normalisation methods
(Ruifrok & Johnston; Macenko) assume: a pixel's optical density is
``OD = H * h + E * e`` for haematoxylin and eosin amounts ``H, E`` and stain
vectors ``h, e``, and ``RGB = glass * exp(-OD)``.  Camelyon17 comes from five
centres whose stain and scanners differ; each synthetic centre perturbs the
stain vectors, the stain strength, the glass colour, focus and noise.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# Reference stain vectors (OD per unit stain, RGB order), after Ruifrok & Johnston.
H_VECTOR = np.array([0.65, 0.70, 0.29])
E_VECTOR = np.array([0.07, 0.99, 0.11])


@dataclasses.dataclass(frozen=True)
class StainProfile:
    """How one centre's slides look.

    Attributes:
      h_vector, e_vector: unit-norm OD vectors of haematoxylin and eosin.
      h_scale, e_scale: stain strength multipliers.
      glass_rgb: colour of empty glass (what background tiles hold).
      blur_sigma_px: Gaussian focus blur of level 0, in pixels.
      noise_sd: sensor noise (grey levels) on tissue.
    """

    h_vector: tuple[float, float, float]
    e_vector: tuple[float, float, float]
    h_scale: float
    e_scale: float
    glass_rgb: tuple[int, int, int]
    blur_sigma_px: float
    noise_sd: float

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def centre_profile(seed: int, centre: int) -> StainProfile:
    """The stain profile of ``centre`` (0-based), deterministic from ``seed``.

    Centre 0 is the reference stain; the others vary by up to ~0.1 in each
    stain vector component, +-20% in strength, a few grey levels of glass
    tint, and in focus and noise, the spread seen across Camelyon17's centres.
    """
    if centre == 0:
        return StainProfile(
            tuple(H_VECTOR / np.linalg.norm(H_VECTOR)), tuple(E_VECTOR / np.linalg.norm(E_VECTOR)),
            1.0, 1.0, (244, 243, 246), 0.9, 3.0,
        )
    rng = np.random.default_rng([seed, 7919, centre])
    h = np.clip(H_VECTOR + rng.uniform(-0.1, 0.1, 3), 0.05, None)
    e = np.clip(E_VECTOR + rng.uniform(-0.08, 0.08, 3), 0.02, None)
    glass = np.clip(np.array([244, 243, 246]) + rng.integers(-8, 6, 3), 225, 252)
    return StainProfile(
        tuple(float(v) for v in h / np.linalg.norm(h)),
        tuple(float(v) for v in e / np.linalg.norm(e)),
        float(rng.uniform(0.8, 1.2)),
        float(rng.uniform(0.8, 1.2)),
        tuple(int(v) for v in glass),
        float(rng.uniform(0.6, 1.6)),
        float(rng.uniform(2.0, 5.0)),
    )
