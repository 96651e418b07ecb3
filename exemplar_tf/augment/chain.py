"""The transformation chain: draw each sample's parameters from a preset with stateless RNG, then apply
geometric (one projective resampling) -> flip -> PCA colour -> saturation/value -> hue (the last two in one HSV
round trip) -> grayscale. Flip and grayscale are NPID's, off unless asked for (`choices.PAPER_TRANSFORMS` is the paper).

The same seed gives the same output eagerly, in `Dataset.map` and inside a `tf.function`. Each transform draws
from its own sub-seed (`fold_in(seed, position in ALL_TRANSFORMS)`), so enabling or disabling one transform
leaves the others' parameters unchanged. Disabled transforms are skipped; with no geometric transform enabled
the output is the central patch exactly.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import tensorflow as tf

from exemplar_tf.augment import transforms as ops
from exemplar_tf.augment.npid import FLIP_PROBABILITY, GRAYSCALE_PROBABILITY
from exemplar_tf.augment.presets import ALL_TRANSFORMS, GEOMETRIC_TRANSFORMS, PRESETS, Log2NormalFactor, scale_max_problem


def _uniform(shape, seed, low, high):
    return tf.random.stateless_uniform(shape, seed, minval=low, maxval=high)


def _bernoulli(shape, seed, probability):
    """float32 `shape`: 1 with `probability`, else 0."""
    return tf.cast(tf.random.stateless_uniform(shape, seed) < probability, tf.float32)


def _log_uniform(shape, seed, low, high):
    return tf.exp(_uniform(shape, seed, math.log(low), math.log(high)))


class TransformChain:
    """`chain(windows float32 [B,S,S,3] in [0,1], seed) -> float32 [B,P,P,3] in [0,1]`.

    seed: int32/int64 [2], one seed for the batch, or [B,2], one per sample (sample b's parameters then depend
    only on seed[b]: the fixed pool of copies uses this).
    scale_max: the largest zoom of the scale step in place of the preset's (the range stays log-uniform from the
    preset's smallest); 0 keeps the preset's.
    """

    def __init__(self, preset: str, transforms: Sequence[str], pca: ops.ColorPCA, patch_size: int,
                 scale_max: float = 0.0):
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
        unknown = [name for name in transforms if name not in ALL_TRANSFORMS]
        if unknown:
            raise ValueError(f"unknown transforms {unknown}; valid names: {', '.join(ALL_TRANSFORMS)}")
        self.preset = PRESETS[preset]
        problem = scale_max_problem(preset, scale_max, "scale_max")
        if problem:
            raise ValueError(problem)
        if scale_max:
            self.preset = dataclasses.replace(self.preset, scale=(self.preset.scale[0], scale_max))
        self.transforms = tuple(name for name in ALL_TRANSFORMS if name in transforms)
        self.pca = pca
        self.patch_size = patch_size

    def sample_params(self, batch_size, seed) -> dict[str, tf.Tensor]:
        """Parameters of the enabled transforms, float32, keyed by
        translate [B,2] (dy, dx in window pixels), scale [B], rotate [B] (degrees), pca_color [B,3],
        sv_power / sv_multiplier / sv_offset [B,2] (S, V), hue [B] (turns), flip / grayscale [B] (1 or 0).

        seed: [2] draws B = batch_size sets; [B,2] draws one set per row (batch_size is then ignored)."""
        seed = tf.convert_to_tensor(seed)
        if seed.shape.rank == 2:
            return self._per_sample_params(seed)
        return self._batch_params(batch_size, seed)

    def _per_sample_params(self, seeds) -> dict[str, tf.Tensor]:
        signature = {key: tf.TensorSpec(value.shape[1:], tf.float32)
                     for key, value in self._batch_params(1, tf.zeros([2], seeds.dtype)).items()}
        return tf.map_fn(lambda seed: {k: v[0] for k, v in self._batch_params(1, seed).items()}, seeds,
                         fn_output_signature=signature)

    def _batch_params(self, batch_size, seed) -> dict[str, tf.Tensor]:
        preset, params = self.preset, {}
        sub_seeds = {name: tf.random.experimental.stateless_fold_in(seed, i) for i, name in enumerate(ALL_TRANSFORMS)}
        if "translate" in self.transforms:
            limit = preset.translate * self.patch_size
            params["translate"] = _uniform([batch_size, 2], sub_seeds["translate"], -limit, limit)
        if "scale" in self.transforms:
            params["scale"] = _log_uniform([batch_size], sub_seeds["scale"], *preset.scale)
        if "rotate" in self.transforms:
            limit = preset.rotate_degrees
            params["rotate"] = _uniform([batch_size], sub_seeds["rotate"], -limit, limit)
        if "pca_color" in self.transforms:
            params["pca_color"] = self._pca_factors(batch_size, sub_seeds["pca_color"])
        if "saturation_value" in self.transforms:
            power_seed, multiplier_seed, offset_seed = tf.unstack(
                tf.random.experimental.stateless_split(sub_seeds["saturation_value"], 3))
            params["sv_power"] = _log_uniform([batch_size, 2], power_seed, *preset.sv_power)
            params["sv_multiplier"] = _log_uniform([batch_size, 2], multiplier_seed, *preset.sv_multiplier)
            params["sv_offset"] = _uniform([batch_size, 2], offset_seed, *preset.sv_offset)
        if "hue" in self.transforms:
            params["hue"] = _uniform([batch_size], sub_seeds["hue"], -preset.hue_shift, preset.hue_shift)
        if "flip" in self.transforms:
            params["flip"] = _bernoulli([batch_size], sub_seeds["flip"], FLIP_PROBABILITY)
        if "grayscale" in self.transforms:
            params["grayscale"] = _bernoulli([batch_size], sub_seeds["grayscale"], GRAYSCALE_PROBABILITY)
        return params

    def _pca_factors(self, batch_size, seed) -> tf.Tensor:
        rule = self.preset.pca_factor
        if isinstance(rule, Log2NormalFactor):
            return 2.0 ** (tf.random.stateless_normal([batch_size, 3], seed) * tf.constant(rule.std, tf.float32))
        return _uniform([batch_size, 3], seed, rule.low, rule.high)

    def apply(self, windows, params: dict[str, tf.Tensor]) -> tf.Tensor:
        """float32 [B,P,P,3]: windows [B,S,S,3] transformed with `params` (from `sample_params`)."""
        if any(name in self.transforms for name in GEOMETRIC_TRANSFORMS):
            batch = tf.shape(windows)[0]
            translate = params.get("translate", tf.zeros([batch, 2]))
            images = ops.geometric(
                windows, translate[:, 1], translate[:, 0],
                params.get("scale", tf.ones([batch])),
                params.get("rotate", tf.zeros([batch])) * (math.pi / 180.0),
                patch_size=self.patch_size)
        else:
            images = ops.central_crop(windows, self.patch_size)
        if "flip" in self.transforms:
            images = ops.mirror(images, params["flip"] > 0.5)
        if "pca_color" in self.transforms:
            images = ops.pca_color(images, params["pca_color"], self.pca)
        if "saturation_value" in self.transforms or "hue" in self.transforms:
            images = self._in_hsv(images, params)
        images = tf.clip_by_value(images, 0.0, 1.0)
        if "grayscale" in self.transforms:
            images = ops.to_grayscale(images, params["grayscale"] > 0.5)
        return images

    def _in_hsv(self, images, params: dict[str, tf.Tensor]) -> tf.Tensor:
        """saturation/value then hue, in one RGB -> HSV -> RGB round trip (the same, to float rounding, as a round
        trip for each step: tests/colour_reference.py)."""
        if "saturation_value" in self.transforms and self.preset.sv_minmax_normalise:
            images = ops.minmax_normalise(images)
        hsv = tf.image.rgb_to_hsv(images)
        if "saturation_value" in self.transforms:
            hsv = ops.saturation_value_hsv(hsv, params["sv_power"], params["sv_multiplier"], params["sv_offset"])
        if "hue" in self.transforms:
            hsv = ops.hue_shift_hsv(hsv, params["hue"])
        return tf.image.hsv_to_rgb(hsv)

    def __call__(self, windows, seed) -> tf.Tensor:
        windows = tf.convert_to_tensor(windows, tf.float32)
        return self.apply(windows, self.sample_params(tf.shape(windows)[0], seed))
