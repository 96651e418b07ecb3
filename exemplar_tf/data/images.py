"""Resizing images to uint8: the one conversion of resampled pixel values back to 8 bits (rounded, clipped)."""
from __future__ import annotations

import tensorflow as tf


def to_uint8(pixels: tf.Tensor) -> tf.Tensor:
    """float pixel values in [0, 255] (any shape) -> uint8, rounded to the nearest level and clipped to 0..255."""
    return tf.cast(tf.clip_by_value(tf.round(pixels), 0, 255), tf.uint8)


def resize_uint8(images: tf.Tensor, size: int | tuple[int, int], *, antialias: bool = True) -> tf.Tensor:
    """uint8 [..., H, W, 3] -> uint8 [..., h, w, 3] (bilinear; `size` an int for a square or (h, w))."""
    target = (size, size) if isinstance(size, int) else tuple(size)
    return to_uint8(tf.image.resize(images, target, method="bilinear", antialias=antialias))
