"""Elliptical regions: MSER detection, ellipses from second moments, local affine mapping, ellipse IoU.

Conventions. Points are (x, y) = (column, row) in pixels, pixel centres at integer coordinates (OpenCV's
convention, shared by `cv2.warpPerspective`, `cv2.remap` and MSER's pixel lists). An ellipse is a centre c [2]
and a symmetric positive-definite shape matrix S [2,2]; it is the set {p : (p - c)^T S^-1 (p - c) <= 1}, so its
semi-axes are the square roots of S's eigenvalues and its area is pi * sqrt(det S).
"""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np

# A region of n pixels, each a unit square, has the second moments of its pixel centres plus 1/12 per axis;
# a uniformly filled ellipse with covariance C has shape matrix 4 C (so its area matches the region's).
PIXEL_VARIANCE = 1.0 / 12.0
ELLIPSE_FROM_COVARIANCE = 4.0


@dataclasses.dataclass(frozen=True)
class Ellipses:
    """N ellipses: centres float64 [N,2] (x, y), shapes float64 [N,2,2] (symmetric positive definite)."""

    centres: np.ndarray
    shapes: np.ndarray

    def __len__(self) -> int:
        return len(self.centres)

    def select(self, keep: np.ndarray) -> "Ellipses":
        """The ellipses picked by a boolean mask [N] or an index array."""
        return Ellipses(self.centres[keep], self.shapes[keep])

    def areas(self) -> np.ndarray:
        """[N] pi * sqrt(det S)."""
        return np.pi * np.sqrt(np.linalg.det(self.shapes))

    def half_extents(self) -> np.ndarray:
        """[N,2] half width and half height of each ellipse's axis-aligned bounding box: sqrt(diag S)."""
        return np.sqrt(np.stack([self.shapes[:, 0, 0], self.shapes[:, 1, 1]], axis=-1))

    def boundary_points(self, num_points: int = 8) -> np.ndarray:
        """[N, num_points, 2] points evenly spaced in angle on each ellipse's boundary: c + sqrt(S) u."""
        angles = 2 * np.pi * np.arange(num_points) / num_points
        unit = np.stack([np.cos(angles), np.sin(angles)], axis=-1)  # [K,2]
        return self.centres[:, None, :] + np.einsum("nij,kj->nki", symmetric_sqrt(self.shapes), unit)


def symmetric_sqrt(shapes: np.ndarray) -> np.ndarray:
    """[N,2,2] SPD -> [N,2,2] its symmetric square root (no rotation added: sqrt(S) maps the unit circle onto
    the ellipse keeping the ellipse's own orientation)."""
    values, vectors = np.linalg.eigh(shapes)
    return np.einsum("nij,nj,nkj->nik", vectors, np.sqrt(np.maximum(values, 0.0)), vectors)


def ellipses_from_regions(regions: list[np.ndarray]) -> Ellipses:
    """Pixel lists [[n_i,2] int (x, y)] -> the ellipses with the regions' centroids and second moments."""
    centres, shapes = [], []
    for pixels in regions:
        points = np.asarray(pixels, np.float64)
        centres.append(points.mean(axis=0))
        covariance = np.cov(points, rowvar=False, bias=True) + PIXEL_VARIANCE * np.eye(2)
        shapes.append(ELLIPSE_FROM_COVARIANCE * covariance)
    return Ellipses(np.reshape(centres, (-1, 2)), np.reshape(shapes, (-1, 2, 2)))


def boundary_contrast(gray: np.ndarray, regions: list[np.ndarray]) -> np.ndarray:
    """gray uint8 [H,W], pixel lists -> float [N]: |mean intensity of the 1-pixel ring around a region - mean
    intensity inside it|. An extremal region with a large step to its surroundings stays the same connected
    component over many thresholds, so this ranks regions by how stable they are."""
    contrasts = np.zeros(len(regions))
    kernel = np.ones((3, 3), np.uint8)
    for index, pixels in enumerate(regions):
        x0, y0 = np.maximum(pixels.min(axis=0) - 1, 0)
        x1, y1 = np.minimum(pixels.max(axis=0) + 2, (gray.shape[1], gray.shape[0]))
        inside = np.zeros((y1 - y0, x1 - x0), np.uint8)
        inside[pixels[:, 1] - y0, pixels[:, 0] - x0] = 1
        ring = cv2.dilate(inside, kernel) > inside
        crop = gray[y0:y1, x0:x1].astype(np.float64)
        if ring.any():
            contrasts[index] = abs(crop[ring].mean() - crop[inside > 0].mean())
    return contrasts


@dataclasses.dataclass(frozen=True)
class MserParameters:
    """OpenCV MSER settings: delta (threshold step over which a region's area variation is measured),
    min_area pixels, max_area_fraction of the image, max_variation (largest accepted area variation),
    min_diversity (nested regions more alike than this are pruned)."""

    delta: int = 5
    min_area: int = 30
    max_area_fraction: float = 0.05
    max_variation: float = 0.5
    min_diversity: float = 0.2

    def relaxed(self, step: int) -> "MserParameters":
        """Rung `step` of the fixed-count ladder: delta lowered by `step` (down to 1), max_variation raised by
        0.25 per step, so low-contrast images yield more regions."""
        return dataclasses.replace(self, delta=max(1, self.delta - step),
                                   max_variation=self.max_variation + 0.25 * step)


REGION_MODES = ("cap", "fixed")
RELAXATION_STEPS = 6  # rungs 0..5 of MserParameters.relaxed


def mser_regions(gray: np.ndarray, parameters: MserParameters) -> list[np.ndarray]:
    """gray uint8 [H,W] -> pixel lists [[n_i,2] int (x, y)] of its dark and bright MSER regions."""
    max_area = max(parameters.min_area + 1, int(parameters.max_area_fraction * gray.size))
    mser = cv2.MSER_create(delta=parameters.delta, min_area=parameters.min_area, max_area=max_area,
                           max_variation=parameters.max_variation, min_diversity=parameters.min_diversity)
    regions, _ = mser.detectRegions(gray)
    return [np.asarray(pixels).reshape(-1, 2) for pixels in regions]


def _stable_inside(gray: np.ndarray, parameters: MserParameters, keep_mask: np.ndarray | None
                   ) -> tuple[Ellipses, np.ndarray]:
    """All regions of one detector setting lying inside keep_mask, ordered by decreasing boundary contrast:
    (ellipses, contrasts [N])."""
    regions = mser_regions(gray, parameters)
    ellipses, contrasts = ellipses_from_regions(regions), boundary_contrast(gray, regions)
    if keep_mask is not None:
        inside = inside_mask(ellipses, keep_mask)
        ellipses, contrasts = ellipses.select(inside), contrasts[inside]
    order = np.argsort(-contrasts, kind="stable")
    return ellipses.select(order), contrasts[order]


def detect_mser_regions(image: np.ndarray, *, max_regions: int = 300, parameters: MserParameters = MserParameters(),
                        mode: str = "cap", keep_mask: np.ndarray | None = None) -> tuple[Ellipses, np.ndarray]:
    """image uint8 [H,W,3] (RGB) or [H,W] -> (Ellipses of its MSER regions, their stability [N]), most stable
    first. Stability is `boundary_contrast`; only regions inside keep_mask (bool [H,W], None: everywhere) count.

    mode "cap": at most `max_regions` of the regions found with `parameters`. mode "fixed": exactly
    `max_regions` whenever the detector can find that many: the first rung of `parameters.relaxed(0..5)` that
    yields enough regions, cut to the most stable `max_regions` (fewer only when even the last rung finds fewer).
    """
    if mode not in REGION_MODES:
        raise ValueError(f"region mode {mode!r} is not one of {REGION_MODES}")
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    ellipses, stability = _stable_inside(gray, parameters, keep_mask)
    step = 1
    while mode == "fixed" and len(ellipses) < max_regions and step < RELAXATION_STEPS:
        ellipses, stability = _stable_inside(gray, parameters.relaxed(step), keep_mask)
        step += 1
    return ellipses.select(np.arange(min(max_regions, len(ellipses)))), stability[:max_regions]


def detect_mser_ellipses(image: np.ndarray, *, max_regions: int = 300, parameters: MserParameters = MserParameters(),
                         mode: str = "cap", keep_mask: np.ndarray | None = None) -> Ellipses:
    """The ellipses of `detect_mser_regions` (most stable first)."""
    return detect_mser_regions(image, max_regions=max_regions, parameters=parameters, mode=mode,
                               keep_mask=keep_mask)[0]


def map_ellipses(ellipses: Ellipses, centres: np.ndarray, jacobians: np.ndarray) -> Ellipses:
    """Maps ellipses through a transformation linearised at their centres.

    centres [N,2]: the transformation applied to the centres; jacobians [N,2,2]: its derivative there.
    x -> f(c) + J (x - c) takes the ellipse (c, S) onto (f(c), J S J^T).
    """
    shapes = np.einsum("nij,njk,nlk->nil", jacobians, ellipses.shapes, jacobians)
    return Ellipses(np.asarray(centres, np.float64), 0.5 * (shapes + np.swapaxes(shapes, 1, 2)))


def inside_mask(ellipses: Ellipses, mask: np.ndarray) -> np.ndarray:
    """mask bool [H,W] -> bool [N]: the centre and 8 boundary points of each ellipse lie on True pixels."""
    points = np.concatenate([ellipses.centres[:, None, :], ellipses.boundary_points(8)], axis=1)  # [N,9,2]
    columns, rows = np.round(points[..., 0]).astype(int), np.round(points[..., 1]).astype(int)
    height, width = mask.shape
    within = (columns >= 0) & (columns < width) & (rows >= 0) & (rows < height)
    hits = np.zeros_like(within)
    hits[within] = mask[rows[within], columns[within]]
    return hits.all(axis=1)


def _chords(ellipses: Ellipses, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The exact chords of ellipse k along the horizontal lines y = rows[k, l]: (start x, end x), each [K,L];
    start > end where a line misses the ellipse."""
    inverse = np.linalg.inv(ellipses.shapes)
    q11, q12, q22 = inverse[:, 0, 0, None], inverse[:, 0, 1, None], inverse[:, 1, 1, None]
    dy = rows - ellipses.centres[:, 1, None]
    # q11 dx^2 + 2 q12 dy dx + q22 dy^2 <= 1
    half = np.sqrt(np.maximum((q12 * dy) ** 2 - q11 * (q22 * dy**2 - 1.0), 0.0)) / q11
    middle = ellipses.centres[:, 0, None] - q12 * dy / q11
    misses = q11 * (q22 * dy**2 - 1.0) > (q12 * dy) ** 2
    return np.where(misses, np.inf, middle - half), np.where(misses, -np.inf, middle + half)


def _fraction_inside(inner: Ellipses, outer: Ellipses, lines: int) -> np.ndarray:
    """float [K]: the fraction of ellipse inner[k]'s area that lies inside outer[k].

    Both ellipses are cut by `lines` evenly spaced horizontal lines across inner[k]'s height; the chords are
    exact, and the fraction is (summed length of the chords' overlaps) / (summed length of inner's chords), the
    midpoint rule for both areas, whose errors largely cancel (identical ellipses give exactly 1).
    """
    steps = (np.arange(lines) + 0.5) / lines * 2.0 - 1.0  # [L] in (-1, 1)
    rows = inner.centres[:, 1, None] + steps[None, :] * inner.half_extents()[:, 1, None]  # [K,L]
    inner_start, inner_end = _chords(inner, rows)
    outer_start, outer_end = _chords(outer, rows)
    own = np.clip(inner_end - inner_start, 0.0, None).sum(axis=1)
    shared = np.clip(np.minimum(inner_end, outer_end) - np.maximum(inner_start, outer_start), 0.0, None).sum(axis=1)
    return shared / np.maximum(own, 1e-300)


def pairwise_iou(first: Ellipses, second: Ellipses, *, min_iou: float = 0.0, lines: int = 128,
                 chunk: int = 4096) -> np.ndarray:
    """float [N,M] intersection-over-union of every first[i] with every second[j].

    Areas are exact (pi sqrt(det S)); the intersection is the smaller ellipse's area times the fraction of it
    inside the other, integrated over `lines` horizontal chords (exact chord lengths, midpoint rule across the
    smaller ellipse's height; IoU error well below 0.5% at 128 lines). Pairs whose IoU cannot exceed `min_iou` (by the area ratio, or by the bounding-box
    overlap) are not integrated and read 0; with min_iou=0 only pairs with disjoint bounding boxes are
    skipped, so every entry is the IoU.
    """
    areas1, areas2 = first.areas(), second.areas()
    low1, high1 = first.centres - first.half_extents(), first.centres + first.half_extents()
    low2, high2 = second.centres - second.half_extents(), second.centres + second.half_extents()
    overlap = np.clip(np.minimum(high1[:, None, :], high2[None, :, :])
                      - np.maximum(low1[:, None, :], low2[None, :, :]), 0.0, None)  # [N,M,2]
    box_area = np.prod(overlap, axis=-1)
    smaller = np.minimum(areas1[:, None], areas2[None, :])
    larger = np.maximum(areas1[:, None], areas2[None, :])
    bound = np.minimum(smaller, box_area) / larger  # IoU <= intersection / larger area
    rows, columns = np.nonzero((box_area > 0) & (bound > min_iou))
    iou = np.zeros((len(first), len(second)))
    for start in range(0, len(rows), chunk):
        i, j = rows[start:start + chunk], columns[start:start + chunk]
        first_smaller = areas1[i] <= areas2[j]
        inner = Ellipses(np.where(first_smaller[:, None], first.centres[i], second.centres[j]),
                         np.where(first_smaller[:, None, None], first.shapes[i], second.shapes[j]))
        outer = Ellipses(np.where(first_smaller[:, None], second.centres[j], first.centres[i]),
                         np.where(first_smaller[:, None, None], second.shapes[j], first.shapes[i]))
        intersection = _fraction_inside(inner, outer, lines) * inner.areas()
        iou[i, j] = intersection / (areas1[i] + areas2[j] - intersection)
    return iou
