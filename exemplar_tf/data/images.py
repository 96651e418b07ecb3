"""Resizing images to uint8 (the one conversion of resampled pixel values back to 8 bits: rounded, clipped), and
tiling images into one (`tile`: TensorBoard grids, the projector sprite, the preview and retrieval figures)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf


def to_uint8(pixels: tf.Tensor) -> tf.Tensor:
    """float pixel values in [0, 255] (any shape) -> uint8, rounded to the nearest level and clipped to 0..255."""
    return tf.cast(tf.clip_by_value(tf.round(pixels), 0, 255), tf.uint8)


def resize_uint8(images: tf.Tensor, size: int | tuple[int, int], *, antialias: bool = True) -> tf.Tensor:
    """uint8 [..., H, W, 3] -> uint8 [..., h, w, 3] (bilinear; `size` an int for a square or (h, w))."""
    target = (size, size) if isinstance(size, int) else tuple(size)
    return to_uint8(tf.image.resize(images, target, method="bilinear", antialias=antialias))


def rows_of(cells: Sequence, columns: int) -> list:
    """`cells` in row-major rows of `columns` (the last one shorter when they do not divide)."""
    return [cells[start:start + columns] for start in range(0, len(cells), columns)]


def tile(rows: Sequence[Sequence[np.ndarray]], *, num_rows: int = 0, num_columns: int = 0, gap: int = 0,
         margin: int | tuple[int, int, int, int] = 0, fill=0) -> np.ndarray:
    """Cells [h,w,C], all one shape and dtype, laid out row by row into one image of that dtype.

    rows: rows of cells (a [R,C,h,w,C] array works); rows may be shorter than others. The grid has
    max(num_rows, len(rows)) rows and max(num_columns, the longest row) columns; cells without an image, and the
    `gap` pixels between neighbouring cells and the `margin` around the grid (one int, or (top, left, bottom,
    right)), are `fill`. Shape [t + R*h + (R-1)*gap + b, l + C*w + (C-1)*gap + r, C].
    """
    cells = [np.asarray(cell) for row in rows for cell in row]
    if not cells:
        raise ValueError("tile needs at least one cell")
    height, width, channels = cells[0].shape
    top, left, bottom, right = (margin,) * 4 if isinstance(margin, int) else margin
    grid_rows = max(num_rows, len(rows))
    grid_columns = max(num_columns, max(len(row) for row in rows))
    canvas = np.full((top + grid_rows * (height + gap) - gap + bottom,
                      left + grid_columns * (width + gap) - gap + right, channels), fill, cells[0].dtype)
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            y, x = top + r * (height + gap), left + c * (width + gap)
            canvas[y:y + height, x:x + width] = cell
    return canvas
