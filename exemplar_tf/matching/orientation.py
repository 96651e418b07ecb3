"""Dominant gradient orientation of elliptical regions (SIFT's keypoint orientation, Lowe 2004 §5), measured on
the upright affine-normalised patch so that it fixes the one freedom the ellipse leaves: rotation.

Per region: the upright patch (ellipse enlarged `context` times onto the disc of a P x P patch, gray), its
gradients, a 36-bin histogram of gradient directions weighted by magnitude times a Gaussian window (sigma = half
the disc radius, i.e. 1.5 ellipse radii at context 3, SIFT's 1.5 x scale; nothing outside the disc, so the
corners that a rotation brings in never count), smoothed circularly with [1, 4, 6, 4, 1] / 16 (OpenCV's SIFT),
and its highest peak refined by a parabola through the peak bin and its neighbours. One orientation per region.
"""
from __future__ import annotations

import cv2
import numpy as np

from exemplar_tf.matching.descriptors import normalised_patches
from exemplar_tf.matching.ellipses import Ellipses

ORIENTATIONS = ("upright", "dominant")
ORIENTATION_BINS = 36
ORIENTATION_PATCH_SIZE = 41
_SMOOTHING = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def orientation_histograms(gray_patches: np.ndarray, bins: int = ORIENTATION_BINS) -> np.ndarray:
    """float [N,P,P] -> float64 [N,bins]: magnitude x Gaussian-weighted histogram of gradient directions
    atan2(dy, dx) (patch coordinates, y down), bin b covering [b, b + 1) * 2 pi / bins, before smoothing."""
    patches = np.asarray(gray_patches, np.float64)
    size = patches.shape[1]
    dy, dx = np.gradient(patches, axis=(1, 2))
    middle = (size - 1) / 2.0
    rows, columns = np.mgrid[0:size, 0:size]
    radius_squared = (columns - middle) ** 2 + (rows - middle) ** 2
    disc_radius = size / 2.0
    window = np.exp(-radius_squared / (2 * (disc_radius / 2.0) ** 2)) * (radius_squared <= (disc_radius - 1) ** 2)
    weights = np.hypot(dx, dy) * window[None]
    directions = np.mod(np.arctan2(dy, dx), 2 * np.pi)
    indices = np.minimum((directions / (2 * np.pi) * bins).astype(int), bins - 1)
    offsets = np.arange(len(patches))[:, None, None] * bins
    return np.bincount((indices + offsets).ravel(), weights=weights.ravel(),
                       minlength=len(patches) * bins).reshape(len(patches), bins)


def histogram_peaks(histograms: np.ndarray) -> np.ndarray:
    """float [N,bins] -> [N] radians in [0, 2 pi): the highest bin of the circularly smoothed histogram,
    refined by the parabola through it and its two neighbours."""
    bins = histograms.shape[1]
    padded = np.concatenate([histograms[:, -2:], histograms, histograms[:, :2]], axis=1)
    smoothed = sum(weight * padded[:, shift:shift + bins] for shift, weight in enumerate(_SMOOTHING))
    peak = np.argmax(smoothed, axis=1)
    rows = np.arange(len(histograms))
    left, centre, right = smoothed[rows, (peak - 1) % bins], smoothed[rows, peak], smoothed[rows, (peak + 1) % bins]
    curvature = left - 2 * centre + right
    offset = np.where(curvature < 0, 0.5 * (left - right) / np.where(curvature < 0, curvature, -1.0), 0.0)
    return np.mod((peak + 0.5 + offset) * 2 * np.pi / bins, 2 * np.pi)


def dominant_orientations(image: np.ndarray, ellipses: Ellipses, context: float = 3.0,
                          patch_size: int = ORIENTATION_PATCH_SIZE) -> np.ndarray:
    """image uint8 [H,W,3], N ellipses -> float64 [N] radians: each region's dominant gradient direction in its
    upright normalised patch; `normalised_patches(..., angles=that)` turns it onto the patch's +x axis."""
    if len(ellipses) == 0:
        return np.zeros(0)
    patches = normalised_patches(image, ellipses, patch_size, context)
    gray = np.stack([cv2.cvtColor(patch, cv2.COLOR_RGB2GRAY) for patch in patches])
    return histogram_peaks(orientation_histograms(gray))
