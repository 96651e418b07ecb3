"""Parameter ranges of Exemplar-CNN's transformations: the paper's values and the authors' released code.

Every number comes from docs/method.md §1. `PRESETS["paper"]` is the default recipe, `PRESETS["release_code"]` the
2014 MATLAB release. Distributions (per sample, independent):

  translate         dx, dy ~ U(-t, t) * patch_size pixels, each axis
  scale             log-uniform in [low, high] (> 1 zooms in)
  rotate            U(-r, r) degrees
  pca_color         one factor per principal component: `UniformFactor` U(low, high), or
                    `Log2NormalFactor` 2 ** (N(0, 1) * std_i)
  saturation_value  for S and V separately: power and multiplier log-uniform, offset uniform;
                    `sv_minmax_normalise`: the patch is first stretched to span [0, 1] (the release does this)
  hue               shift ~ U(-h, h) of the hue circle (1 = full turn), wrapped
  flip              (not in the paper; NPID's, augment.npid.FLIP_PROBABILITY) mirror left-right
  grayscale         (not in the paper; NPID's, augment.npid.GRAYSCALE_PROBABILITY) luma in all three channels,
                    after the colour changes

Power and multiplier are read as log-uniform in both presets: the release draws them as 2 ** (a * U(-1, 1)),
and the paper's ranges [0.25, 4] and [0.7, 1.4] are (nearly) symmetric in log space.
"""
from __future__ import annotations

import dataclasses
import math

from exemplar_tf.choices import TRANSFORMS as ALL_TRANSFORMS  # the chain's steps, in order

GEOMETRIC_TRANSFORMS = ("translate", "scale", "rotate")


@dataclasses.dataclass(frozen=True)
class UniformFactor:
    """PCA colour factor_i ~ U(low, high), independently per component."""

    low: float
    high: float


@dataclasses.dataclass(frozen=True)
class Log2NormalFactor:
    """PCA colour factor_i = 2 ** (N(0, 1) * std[i])."""

    std: tuple[float, float, float]


@dataclasses.dataclass(frozen=True)
class Preset:
    """Ranges of every transformation (see the module docstring for the distributions)."""

    name: str
    translate: float  # max |offset| per axis, as a fraction of the patch size
    scale: tuple[float, float]  # log-uniform range of the zoom factor
    rotate_degrees: float  # max |angle|
    pca_factor: UniformFactor | Log2NormalFactor
    sv_power: tuple[float, float]  # log-uniform range of the exponent on S and V
    sv_multiplier: tuple[float, float]  # log-uniform range of the factor on S and V
    sv_offset: tuple[float, float]  # uniform range of the value added to S and V
    sv_minmax_normalise: bool  # stretch each patch to [0, 1] before the S/V change
    hue_shift: float  # max |shift| of the hue, in turns


PRESETS = {
    "paper": Preset(
        name="paper",
        translate=0.2,
        scale=(0.7, 1.4),
        rotate_degrees=20.0,
        pca_factor=UniformFactor(0.5, 2.0),
        sv_power=(0.25, 4.0),
        sv_multiplier=(0.7, 1.4),
        sv_offset=(-0.1, 0.1),
        sv_minmax_normalise=False,
        hue_shift=0.1,
    ),
    "release_code": Preset(
        name="release_code",
        translate=0.25,
        scale=(1 / math.sqrt(2), math.sqrt(2)),
        rotate_degrees=20.0,
        pca_factor=Log2NormalFactor((1.0, 1.0, 0.5)),
        sv_power=(0.25, 4.0),  # 2 ** (2 * U(-1, 1))
        sv_multiplier=(1 / math.sqrt(2), math.sqrt(2)),  # 2 ** (0.5 * U(-1, 1))
        sv_offset=(-0.1, 0.1),  # 0.1 * U(-1, 1)
        sv_minmax_normalise=True,
        hue_shift=0.1,
    ),
}


def scale_max_problem(preset: str, scale_max: float, name: str) -> str | None:
    """Why `scale_max` (the flag or argument `name`) cannot be the top of `preset`'s scale range, or None.

    0 keeps the preset's range; any other value must be above the preset's smallest scale (docs/method.md §1)."""
    smallest = PRESETS[preset].scale[0]
    if scale_max and not scale_max > smallest:
        return f"{name}={scale_max} must be 0 (the preset's) or above the {preset} preset's smallest scale {smallest:.3g}"
    return None
