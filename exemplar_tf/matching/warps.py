"""The benchmark's transformations: each warps image 1 into image 2 and knows exactly where points go.

Every transformation offers
  warp(image [H,W,C] uint8) -> image 2, same size (pixels not seen in image 1 are black),
  map_points(points [N,2] (x, y) in image 1) -> [N,2] in image 2,
  jacobians(points [N,2]) -> [N,2,2] derivative of that map at the points (d(x', y') / d(x, y)),
  valid_mask(source_shape, target_shape) -> bool [H2,W2]: the pixels of image 2 that show image 1.
Families (six, four strengths each by default; strength values are in each family's own unit):
  rotation (degrees, about the image centre), zoom (scale factor about the centre), perspective (each corner
  moved by that fraction of the image side, random directions) -- homographies; nonlinear (a smooth random
  displacement field, strength = bound on the displacement as a fraction of the longer side) -- a closed-form
  field, so points and Jacobians are exact; lighting (gamma, darkening), blur (Gaussian sigma in pixels) -- the
  identity geometrically.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import cv2
import numpy as np


@dataclasses.dataclass(frozen=True)
class Homography:
    """x2 ~ matrix @ [x1, y1, 1] (float64 [3,3])."""

    matrix: np.ndarray

    def map_points(self, points: np.ndarray) -> np.ndarray:
        projected = _homogeneous(points) @ self.matrix.T
        return projected[:, :2] / projected[:, 2:]

    def jacobians(self, points: np.ndarray) -> np.ndarray:
        projected = _homogeneous(points) @ self.matrix.T  # [N,3]
        mapped = projected[:, :2] / projected[:, 2:]
        numerator = self.matrix[None, :2, :2] - mapped[:, :, None] * self.matrix[None, 2:, :2]
        return numerator / projected[:, 2, None, None]

    def warp(self, image: np.ndarray) -> np.ndarray:
        height, width = image.shape[:2]
        return cv2.warpPerspective(image, self.matrix, (width, height), flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_CONSTANT, borderValue=0)

    def valid_mask(self, source_shape: tuple[int, int], target_shape: tuple[int, int]) -> np.ndarray:
        ones = np.ones(source_shape[:2], np.uint8)
        seen = cv2.warpPerspective(ones, self.matrix, (target_shape[1], target_shape[0]), flags=cv2.INTER_NEAREST,
                                   borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return seen > 0


@dataclasses.dataclass(frozen=True)
class SmoothWarp:
    """x2 = x1 + u(x1), u(x) = sum_k amplitudes[k] * sin(2 pi frequencies[k] . x + phases[k]).

    amplitudes float [K,2] (pixels), frequencies float [K,2] (cycles per pixel), phases float [K]. The map is
    invertible when sum_k |amplitudes[k]| * 2 pi |frequencies[k]| < 1 (`lipschitz_bound`); `warp` inverts it
    by fixed-point iteration on the output grid and samples image 1 there with cv2.remap.
    """

    amplitudes: np.ndarray
    frequencies: np.ndarray
    phases: np.ndarray

    def _arguments(self, points: np.ndarray) -> np.ndarray:
        return 2 * np.pi * points @ self.frequencies.T + self.phases  # [N,K]

    def displacements(self, points: np.ndarray) -> np.ndarray:
        """points [N,2] -> u(points) [N,2]."""
        return np.sin(self._arguments(points)) @ self.amplitudes

    def map_points(self, points: np.ndarray) -> np.ndarray:
        points = np.asarray(points, np.float64)
        return points + self.displacements(points)

    def jacobians(self, points: np.ndarray) -> np.ndarray:
        slopes = 2 * np.pi * np.cos(self._arguments(np.asarray(points, np.float64)))  # [N,K]
        gradient = np.einsum("nk,ki,kj->nij", slopes, self.amplitudes, self.frequencies)
        return np.eye(2)[None] + gradient

    def lipschitz_bound(self) -> float:
        """An upper bound on |du/dx| (operator norm): the field is a contraction, hence invertible, below 1."""
        return float(np.sum(np.linalg.norm(self.amplitudes, axis=1) * 2 * np.pi
                            * np.linalg.norm(self.frequencies, axis=1)))

    def inverse_points(self, points: np.ndarray, *, tolerance: float = 1e-6, max_iterations: int = 200) -> np.ndarray:
        """points [N,2] in image 2 -> their preimages x1 with x1 + u(x1) = points (fixed point of
        x <- points - u(x), which converges because u is a contraction)."""
        if self.lipschitz_bound() >= 1.0:
            raise ValueError(f"field is not invertible: Lipschitz bound {self.lipschitz_bound():.2f} >= 1")
        targets = np.asarray(points, np.float64)
        preimages = targets.copy()
        for _ in range(max_iterations):
            updated = targets - self.displacements(preimages)
            converged = np.max(np.abs(updated - preimages), initial=0.0) < tolerance
            preimages = updated
            if converged:
                break
        return preimages

    def _source_grid(self, target_shape: tuple[int, int]) -> np.ndarray:
        """float32 [H2,W2,2]: for each pixel of image 2, the point of image 1 it shows (to 1e-3 pixels, finer
        than cv2.remap's 1/32-pixel interpolation)."""
        rows, columns = np.mgrid[0:target_shape[0], 0:target_shape[1]]
        grid = np.stack([columns.ravel(), rows.ravel()], axis=-1).astype(np.float64)
        return self.inverse_points(grid, tolerance=1e-3).reshape(target_shape[0], target_shape[1], 2).astype(np.float32)

    def warp(self, image: np.ndarray) -> np.ndarray:
        source = self._source_grid(image.shape[:2])
        return cv2.remap(image, source[..., 0], source[..., 1], interpolation=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)

    def valid_mask(self, source_shape: tuple[int, int], target_shape: tuple[int, int]) -> np.ndarray:
        source = self._source_grid(target_shape[:2])
        return ((source[..., 0] >= 0) & (source[..., 0] <= source_shape[1] - 1)
                & (source[..., 1] >= 0) & (source[..., 1] <= source_shape[0] - 1))


@dataclasses.dataclass(frozen=True)
class Photometric:
    """A change of pixel values only: `change` maps image uint8 [H,W,C] -> uint8 [H,W,C]; points stay put."""

    change: Callable[[np.ndarray], np.ndarray]

    def map_points(self, points: np.ndarray) -> np.ndarray:
        return np.asarray(points, np.float64).copy()

    def jacobians(self, points: np.ndarray) -> np.ndarray:
        return np.broadcast_to(np.eye(2), (len(points), 2, 2)).copy()

    def warp(self, image: np.ndarray) -> np.ndarray:
        return self.change(image)

    def valid_mask(self, source_shape: tuple[int, int], target_shape: tuple[int, int]) -> np.ndarray:
        return np.ones(target_shape[:2], bool)


Transformation = Homography | SmoothWarp | Photometric


def _homogeneous(points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, np.float64).reshape(-1, 2)
    return np.concatenate([points, np.ones((len(points), 1))], axis=1)


def _about_centre(linear: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """[3,3] homography applying `linear` [2,2] about the image centre ((W-1)/2, (H-1)/2)."""
    centre = np.array([(shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0])
    matrix = np.eye(3)
    matrix[:2, :2] = linear
    matrix[:2, 2] = centre - linear @ centre
    return matrix


def rotation(degrees: float, shape: tuple[int, int], rng: np.random.Generator) -> Homography:
    """Rotation by `degrees` about the centre; positive turns +x towards +y (clockwise on screen, y down)."""
    del rng  # deterministic
    angle = np.deg2rad(degrees)
    linear = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return Homography(_about_centre(linear, shape))


def zoom(factor: float, shape: tuple[int, int], rng: np.random.Generator) -> Homography:
    """Magnification by `factor` about the centre (factor > 1 zooms in)."""
    del rng
    return Homography(_about_centre(factor * np.eye(2), shape))


def perspective(corner_shift: float, shape: tuple[int, int], rng: np.random.Generator) -> Homography:
    """The homography moving each image corner by corner_shift * (W, H) with a random sign per coordinate."""
    height, width = shape[:2]
    corners = np.array([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], np.float64)
    shifts = corner_shift * np.array([width, height]) * rng.choice([-1.0, 1.0], size=(4, 2))
    matrix = cv2.getPerspectiveTransform(corners.astype(np.float32), (corners + shifts).astype(np.float32))
    return Homography(matrix.astype(np.float64))


def nonlinear(max_displacement: float, shape: tuple[int, int], rng: np.random.Generator,
              num_waves: int = 4, cycles: tuple[float, float] = (0.5, 1.5)) -> SmoothWarp:
    """A smooth random field of `num_waves` plane waves, each with 0.5-1.5 cycles across the longer side L, in
    random directions, with amplitudes summing to max_displacement * L (so |u| <= that)."""
    side = float(max(shape[:2]))
    wave_angles = rng.uniform(0, 2 * np.pi, num_waves)
    wave_numbers = rng.uniform(*cycles, num_waves) / side
    frequencies = wave_numbers[:, None] * np.stack([np.cos(wave_angles), np.sin(wave_angles)], axis=-1)
    push_angles = rng.uniform(0, 2 * np.pi, num_waves)
    weights = rng.uniform(0.5, 1.0, num_waves)
    lengths = max_displacement * side * weights / weights.sum()
    amplitudes = lengths[:, None] * np.stack([np.cos(push_angles), np.sin(push_angles)], axis=-1)
    return SmoothWarp(amplitudes, frequencies, rng.uniform(0, 2 * np.pi, num_waves))


def lighting(gamma: float, shape: tuple[int, int], rng: np.random.Generator) -> Photometric:
    """Pixel values v -> 255 (v / 255)^gamma (gamma > 1 darkens, compressing the shadows)."""
    del shape, rng
    table = np.clip(np.round(255.0 * (np.arange(256) / 255.0) ** gamma), 0, 255).astype(np.uint8)
    return Photometric(lambda image: cv2.LUT(image, table))


def blur(sigma: float, shape: tuple[int, int], rng: np.random.Generator) -> Photometric:
    """Gaussian blur with standard deviation `sigma` pixels."""
    del shape, rng
    return Photometric(lambda image: cv2.GaussianBlur(image, (0, 0), sigma))


class Family(NamedTuple):
    """A transformation family: build(strength, image shape (H, W), rng) -> transformation."""

    build: Callable[[float, tuple[int, int], np.random.Generator], Transformation]
    strengths: tuple[float, ...]  # the default levels, weakest first
    unit: str  # axis label for the strength


FAMILIES: dict[str, Family] = {
    "rotation": Family(rotation, (10.0, 20.0, 30.0, 45.0), "angle (degrees)"),
    "zoom": Family(zoom, (1.25, 1.5, 1.75, 2.0), "scale factor"),
    "perspective": Family(perspective, (0.05, 0.1, 0.15, 0.2), "corner shift (fraction of side)"),
    "nonlinear": Family(nonlinear, (0.0125, 0.025, 0.0375, 0.05), "max displacement (fraction of side)"),
    "lighting": Family(lighting, (1.5, 2.0, 2.5, 3.0), "gamma"),
    "blur": Family(blur, (1.0, 2.0, 3.0, 4.0), "Gaussian sigma (pixels)"),
}
