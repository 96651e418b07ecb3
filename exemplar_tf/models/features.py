"""Exemplar-CNN evaluation features: every layer's map max-pooled over a spatial grid, scaled, concatenated.

Grid cells follow adaptive pooling: on a map of height h split into n rows, row i covers
[floor(i*h/n), ceil((i+1)*h/n)), and likewise for columns. Cells therefore always hold at least one pixel; on
odd or tiny maps neighbouring cells overlap (a 1x1 map gives the same value in all 4 quadrants).
Pooled cells are concatenated cell-major: [cell(0,0) channels, cell(0,1) channels, ...].
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import tensorflow as tf

POOLINGS = ("quadrants", "pyramid")
PYRAMID_LEVELS = (1, 2, 4)


def grid_max_pool(fmap: tf.Tensor, n: int) -> tf.Tensor:
    """fmap [B,h,w,C] (h, w may be dynamic) -> [B, n*n*C]: max over each cell of an n x n grid."""
    height, width = tf.shape(fmap)[1], tf.shape(fmap)[2]
    cells = []
    for i in range(n):
        row_start, row_end = (i * height) // n, -((-(i + 1) * height) // n)
        for j in range(n):
            col_start, col_end = (j * width) // n, -((-(j + 1) * width) // n)
            cells.append(tf.reduce_max(fmap[:, row_start:row_end, col_start:col_end, :], axis=[1, 2]))
    return tf.concat(cells, axis=-1)


def quadrant_max_pool(fmap: tf.Tensor) -> tf.Tensor:
    """fmap [B,h,w,C] -> [B,4C]: max over each of the 4 quadrants (top-left, top-right, bottom-left, bottom-right)."""
    return grid_max_pool(fmap, 2)


def pyramid_max_pool(fmap: tf.Tensor, levels: Sequence[int] = PYRAMID_LEVELS) -> tf.Tensor:
    """fmap [B,h,w,C] -> [B, sum(n*n for n in levels) * C] (default 1+4+16 = 21 cells)."""
    return tf.concat([grid_max_pool(fmap, n) for n in levels], axis=-1)


def at_least_size(images: tf.Tensor, size: int) -> tf.Tensor:
    """images float [B,H,W,3] -> [B, max(H,size), max(W,size), 3]: bilinear upsampling of any side shorter than
    `size` (the encoder's training size, the smallest input its fc layer accepts); larger images pass unchanged."""
    shape = tf.shape(images)[1:3]
    target = tf.maximum(shape, size)
    return tf.cond(tf.reduce_all(tf.equal(shape, target)), lambda: images,
                   lambda: tf.image.resize(images, target, method="bilinear"))


def evaluation_features(feature_maps: Sequence[tf.Tensor], scales: Sequence[float],
                        pooling: str = "quadrants") -> tf.Tensor:
    """Maps [[B,h_l,w_l,C_l]] -> float32 [B, sum_l cells * C_l]: each map pooled, divided by its scale
    (the layer's stored 99.99th-percentile activation), then concatenated in layer order."""
    if len(feature_maps) != len(scales):
        raise ValueError(f"{len(feature_maps)} feature maps but {len(scales)} scales")
    if pooling not in POOLINGS:
        raise ValueError(f"pooling={pooling!r} is not one of {POOLINGS}")
    pool = quadrant_max_pool if pooling == "quadrants" else pyramid_max_pool
    return tf.concat([pool(tf.cast(fmap, tf.float32)) / tf.cast(scale, tf.float32)
                      for fmap, scale in zip(feature_maps, scales)], axis=-1)


def _top_ranks_needed(total: int, q: float) -> int:
    """How many of the largest values np.percentile(values, q) (linear interpolation) depends on."""
    position = q / 100.0 * (total - 1)
    return min(total, total - math.floor(position) + 1)


def _percentile_from_top(top_values: np.ndarray, total: int, q: float) -> float:
    """np.percentile(values, q) of `total` values, given (at least) their largest `_top_ranks_needed` values."""
    position = q / 100.0 * (total - 1)
    lower = math.floor(position)
    descending = np.sort(top_values)[::-1]
    low_value = descending[total - 1 - lower]
    high_value = descending[max(total - 2 - lower, 0)]
    return float(low_value + (position - lower) * (high_value - low_value))


def activation_percentiles(encoder, images: np.ndarray, q: float = 99.99, batch_size: int = 32) -> list[float]:
    """Per layer of `encoder.feature_maps`, the q-th percentile of all its activations over `images`.

    images: uint8 [n,H,W,3] (training images, all one size; sides below encoder.input_size are upsampled as
    in the export, see `at_least_size`). Returns one float per feature map, equal to
    np.percentile(all activations of that layer, q). Memory stays small: each batch keeps only its largest
    values (the ones the percentile can depend on), so this works for big samples.
    A layer whose percentile is 0 (dead layer) gets 1.0, so dividing by it is harmless.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 [n,H,W,3], got {images.dtype} {images.shape}")
    if len(images) == 0:
        raise ValueError("activation_percentiles needs at least one image")
    tops: list[list[np.ndarray]] = []
    totals: list[int] = []
    for start in range(0, len(images), batch_size):
        batch = at_least_size(tf.convert_to_tensor(images[start:start + batch_size], tf.float32) / 255.0,
                              encoder.input_size)
        maps = encoder.feature_maps(batch, training=False)
        if not tops:
            per_image = [int(np.prod(m.shape[1:])) for m in maps]
            totals = [size * len(images) for size in per_image]
            tops = [[] for _ in maps]
        for layer, fmap in enumerate(maps):
            flat = tf.reshape(tf.cast(fmap, tf.float32), [-1])
            keep = min(_top_ranks_needed(totals[layer], q), int(flat.shape[0]))
            tops[layer].append(tf.math.top_k(flat, k=keep, sorted=False).values.numpy())
    percentiles = [_percentile_from_top(np.concatenate(top), total, q) for top, total in zip(tops, totals)]
    return [p if p > 0 else 1.0 for p in percentiles]
