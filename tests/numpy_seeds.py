"""The NumPy/OpenCV seed sampler the TensorFlow one replaced: the tests' oracle for the energy maps, and the
baseline `benchmarks/pipeline.py` times (seeds/s). Not used by the package.

Energy at each scale as `exemplar_tf.data.patches` defines it, computed with OpenCV in float32 (no uint8 rounding
of the resized image or its gray values, so it is the same function of the pixels as the TF version).
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from exemplar_tf.data.patches import DEFAULT_SCALES, ENERGY_FLOOR, lowpass_radius


def resize_by(image: np.ndarray, scale: float) -> np.ndarray:
    """[round(H*scale), round(W*scale), 3] (area averaging when shrinking, bilinear when enlarging)."""
    if scale == 1.0:
        return image
    height, width = image.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def energy_map(image: np.ndarray, patch_size: int) -> np.ndarray:
    """float32 [h,w] for RGB [h,w,3] (0..255): lowpass((gray - lowpass(gray))²) + ENERGY_FLOOR where a patch fits, 0
    elsewhere; lowpass = cv2.GaussianBlur, edges reflected (BORDER_REFLECT_101)."""
    gray = cv2.cvtColor(np.asarray(image, np.float32), cv2.COLOR_RGB2GRAY)
    radius = lowpass_radius(patch_size)
    blur = lambda v: cv2.GaussianBlur(v, (2 * radius + 1, 2 * radius + 1), radius / 2.0)  # noqa: E731
    energy = blur((gray - blur(gray)) ** 2) + ENERGY_FLOOR
    valid = np.zeros_like(energy)
    half = patch_size // 2
    valid[half:energy.shape[0] - patch_size + half + 1, half:energy.shape[1] - patch_size + half + 1] = 1
    return energy * valid


def cut_window(image: np.ndarray, y: int, x: int, patch_size: int, window_size: int) -> np.ndarray:
    """[S,S,3] of image [h,w,3] whose central P×P square is the patch at cell (y, x), reflected outside."""
    height, width = image.shape[:2]
    top = y - patch_size // 2 - (window_size - patch_size) // 2
    left = x - patch_size // 2 - (window_size - patch_size) // 2
    pads = ((max(0, -top), max(0, top + window_size - height)), (max(0, -left), max(0, left + window_size - width)),
            (0, 0))
    padded = np.pad(image, pads, mode="reflect")
    top, left = top + pads[0][0], left + pads[1][0]
    return padded[top:top + window_size, left:left + window_size]


def image_seeds(image: np.ndarray, count: int, rng: np.random.Generator, *, patch_size: int = 32,
                window_size: int = 64, scales: Sequence[float] = DEFAULT_SCALES) -> list[np.ndarray]:
    """`count` uint8 [S,S,3] windows of one uint8 image, cells drawn ∝ energy over all scales without replacement."""
    levels = [resize_by(image, s) for s in scales]
    maps = [energy_map(level, patch_size) if min(level.shape[:2]) >= patch_size else np.zeros((0, 0), np.float32)
            for level in levels]
    flat = np.concatenate([m.ravel() for m in maps]).astype(np.float64)
    picks = rng.choice(flat.size, size=count, replace=False, p=flat / flat.sum())
    starts = np.cumsum([0] + [m.size for m in maps])
    windows = []
    for pick in picks:
        number = int(np.searchsorted(starts, pick, side="right") - 1)
        y, x = divmod(int(pick - starts[number]), maps[number].shape[1])
        windows.append(cut_window(levels[number], y, x, patch_size, window_size))
    return windows
