"""Batched transformations of Exemplar-CNN's surrogate data: pure TensorFlow functions, one parameter set per sample.

Images are float32 RGB in [0, 1]. B is the batch, S the seed window side, P the patch side, H×W any size.
Each function with neutral parameters returns its input (to float rounding):
  geometric: dx = dy = 0, scale = 1, angle = 0 (the central P×P square, exactly)
  pca_color: factors 1;  saturation_value_hsv: power 1, multiplier 1, offset 0;  hue_shift_hsv: 0 or 1 (a full
  turn); mirror, to_grayscale: chosen False. The two HSV steps take and return HSV, so the chain converts
  RGB -> HSV -> RGB once for both.

`geometric` uses `tf.raw_ops.ImageProjectiveTransformV3`, which has CPU and GPU kernels but no XLA lowering: a
step that runs the chain on the device must not be `jit_compile`d. The colour ops lower to XLA.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf


def projective_matrices(dx, dy, scale, angle, *, patch_size: int, window_size: int) -> tf.Tensor:
    """float32 [B,8] projective transforms (a0..a7 of ImageProjectiveTransformV3) mapping output-patch pixel
    coordinates (x, y) of a P×P patch to window coordinates of an S×S window.

    dx, dy: float32 [B], offset of the sampled patch centre from the window centre, in window pixels (the content
      moves by -dx, -dy). scale: float32 [B] > 0, zoom factor (> 1 enlarges the content). angle: float32 [B],
      radians; positive turns the content counter-clockwise on screen (y axis pointing down).
    window (x, y) = window_centre + (dx, dy) + R(angle) (patch (x, y) - patch_centre) / scale, with
    R = [[cos, -sin], [sin, cos]] and centres at (side - 1) / 2 (pixel centres are integers).
    """
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    patch_centre = (patch_size - 1) / 2.0
    window_centre = (window_size - 1) / 2.0
    a2 = window_centre + dx - (cos - sin) * patch_centre
    a5 = window_centre + dy - (sin + cos) * patch_centre
    zeros = tf.zeros_like(cos)
    return tf.stack([cos, -sin, a2, sin, cos, a5, zeros, zeros], axis=1)


def geometric(windows, dx, dy, scale, angle, *, patch_size: int) -> tf.Tensor:
    """float32 [B,P,P,3]: each window [B,S,S,3] resampled (bilinear, reflected at the window's edges) by its
    translation, scale and rotation (see `projective_matrices`), in one ImageProjectiveTransformV3 call."""
    window_size = windows.shape[1]
    transforms = projective_matrices(dx, dy, scale, angle, patch_size=patch_size, window_size=window_size)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=windows, transforms=transforms, output_shape=[patch_size, patch_size], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="REFLECT")


def central_crop(windows, patch_size: int) -> tf.Tensor:
    """[B,P,P,3]: the central P×P square of windows [B,S,S,3] (the seed patch itself)."""
    offset = (windows.shape[1] - patch_size) // 2
    return windows[:, offset:offset + patch_size, offset:offset + patch_size, :]


@dataclasses.dataclass(frozen=True)
class ColorPCA:
    """Principal components of RGB pixel values in [0, 1].

    mean: float32 [3]; eigvecs: float32 [3,3], column i is component i; eigvals: float32 [3], descending.
    """

    mean: np.ndarray
    eigvecs: np.ndarray
    eigvals: np.ndarray

    @classmethod
    def fit(cls, pixels: np.ndarray) -> ColorPCA:
        """From pixels [M,3] (float in [0, 1]): mean, covariance eigen-decomposition (float64 sums)."""
        pixels = np.asarray(pixels, np.float64).reshape(-1, 3)
        mean = pixels.mean(axis=0)
        covariance = np.cov(pixels - mean, rowvar=False)
        eigvals, eigvecs = np.linalg.eigh(covariance)
        order = np.argsort(eigvals)[::-1]
        return cls(mean.astype(np.float32), eigvecs[:, order].astype(np.float32),
                   eigvals[order].astype(np.float32))


def pca_color(images, factors, pca: ColorPCA) -> tf.Tensor:
    """[B,H,W,3]: each pixel's projection on principal component i (relative to `pca.mean`) multiplied by
    factors[b, i] (float32 [B,3]), then clipped to [0, 1]."""
    eigvecs = tf.constant(pca.eigvecs)
    mean = tf.constant(pca.mean)
    projections = tf.einsum("bhwc,ck->bhwk", images - mean, eigvecs) * factors[:, None, None, :]
    return tf.clip_by_value(tf.einsum("bhwk,ck->bhwc", projections, eigvecs) + mean, 0.0, 1.0)


def minmax_normalise(images) -> tf.Tensor:
    """[B,H,W,3]: each image stretched so that its smallest value (any channel) is 0 and its largest 1
    (a constant image becomes 0)."""
    low = tf.reduce_min(images, axis=[1, 2, 3], keepdims=True)
    high = tf.reduce_max(images, axis=[1, 2, 3], keepdims=True)
    return tf.math.divide_no_nan(images - low, high - low)


def saturation_value_hsv(hsv, power, multiplier, offset) -> tf.Tensor:
    """[B,H,W,3]: hsv [B,H,W,3] with S and V each clip(x ** power * multiplier + offset, 0, 1); power, multiplier,
    offset: float32 [B,2], column 0 for S, column 1 for V. (The release code first stretches each RGB image to
    span [0, 1], `minmax_normalise`; `TransformChain` does so when the preset asks.)"""
    expand = lambda t: t[:, None, None, :]  # noqa: E731  [B,2] -> [B,1,1,2]
    changed = tf.clip_by_value(hsv[..., 1:] ** expand(power) * expand(multiplier) + expand(offset), 0.0, 1.0)
    return tf.concat([hsv[..., :1], changed], axis=-1)


def hue_shift_hsv(hsv, shift) -> tf.Tensor:
    """[B,H,W,3]: hsv [B,H,W,3] with the hue moved by shift (float32 [B], in turns of the colour circle), wrapped
    into [0, 1)."""
    return tf.concat([tf.math.floormod(hsv[..., :1] + shift[:, None, None, None], 1.0), hsv[..., 1:]], axis=-1)


def mirror(images, chosen) -> tf.Tensor:
    """[B,H,W,C]: image b mirrored left-right where chosen[b] (bool [B]), else unchanged."""
    return tf.where(chosen[:, None, None, None], tf.reverse(images, axis=[2]), images)


def to_grayscale(images, chosen) -> tf.Tensor:
    """[B,H,W,3]: image b's luma (`tf.image.rgb_to_grayscale`: 0.2989 R + 0.587 G + 0.114 B) in all three channels
    where chosen[b] (bool [B]), else unchanged."""
    luma = tf.broadcast_to(tf.image.rgb_to_grayscale(images), tf.shape(images))
    return tf.where(chosen[:, None, None, None], luma, images)
