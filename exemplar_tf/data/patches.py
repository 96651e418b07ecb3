"""Seed patches of Exemplar-CNN's surrogate classes, drawn where images have structure (the release's rule).

For each chosen image and each scale s in `scales` the image is resized by s (`cv2.INTER_AREA` when shrinking) and
its energy map computed: e = lowpass((gray - lowpass(gray))²), lowpass = Gaussian of radius r = patch_size / 4
(σ = r / 2, kernel 2r + 1), so e is the local high-frequency energy around each pixel. Cells where a patch would
leave the resized image are zeroed; the remaining cells get a tiny floor (`ENERGY_FLOOR`) so that a flat image
still yields seeds, uniformly. A seed is a cell (scale, y, x) drawn with probability ∝ energy over all scales of
the image jointly, without replacement. Its window (side S = round(patch_size * window_factor)) is cut from the
resized image around the cell, so the seed patch is the window's central patch_size square; where the window
leaves the image it is filled by reflection.

Images: with N seeds and `seeds_per_image` k, ceil(N / k) images are chosen uniformly without replacement by
`rng_seed` (the last chosen image gives the remainder); energy maps and windows are computed for those only.
When the number of images is known (a dataset with known cardinality, a sized sequence) the positions are chosen
first and the others filtered out inside tf.data (a source still decodes what its own pipeline decodes before
that filter; reading stops after the last chosen image); otherwise a reservoir sample is kept over one pass.
"""
from __future__ import annotations

import dataclasses
import io
import math
from typing import Iterable, Iterator, Sequence

import cv2
import numpy as np
import tensorflow as tf

from exemplar_tf.io.atomic import atomic_write
from exemplar_tf.errors import InputError

DEFAULT_SCALES = (0.512, 0.64, 0.8, 1.0)  # 0.8 ** (3, 2, 1, 0)
ENERGY_FLOOR = 1e-3  # gray levels², added to every valid cell; real texture has energy ~1e1..1e4


@dataclasses.dataclass
class Seeds:
    """N seed patches. Seed i is surrogate class i.

    windows: uint8 [N,S,S,3], each centred on its seed and already resampled to the seed's scale (the seed patch
      is the central patch_size square). source_index: int64 [N], the image's `index`. scale: float32 [N], the
      factor the image was resized by. centre_yx: float32 [N,2], the patch centre in the source image's pixel
      coordinates (pixel (i, j) has its centre at (i, j)). patch_size: the seed patch side P.
    """

    windows: np.ndarray
    source_index: np.ndarray
    scale: np.ndarray
    centre_yx: np.ndarray
    patch_size: int

    def central_patches(self) -> np.ndarray:
        """uint8 [N,P,P,3]: the seed patches themselves."""
        offset = (self.windows.shape[1] - self.patch_size) // 2
        return self.windows[:, offset:offset + self.patch_size, offset:offset + self.patch_size]

    def save(self, path: str) -> None:
        """Writes an .npz at `path` atomically (`io.atomic.atomic_write`)."""
        buffer = io.BytesIO()
        np.savez(buffer, windows=self.windows, source_index=self.source_index, scale=self.scale,
                 centre_yx=self.centre_yx, patch_size=np.int64(self.patch_size))
        atomic_write(path, buffer.getvalue())

    @classmethod
    def load(cls, path: str) -> Seeds:
        with np.load(path) as data:
            return cls(data["windows"], data["source_index"], data["scale"], data["centre_yx"],
                       int(data["patch_size"]))


def sample_seeds(images, *, num_seeds: int, patch_size: int = 32, window_factor: float = 2.0,
                 scales: Sequence[float] = DEFAULT_SCALES, seeds_per_image: int = 1, rng_seed: int = 0) -> Seeds:
    """Draws `num_seeds` seed windows from `images` (see the module docstring), reproducibly from `rng_seed`.

    images: a tf.data.Dataset of {"image": uint8 [H,W,3], "index": int64} (a `Source.dataset`), or an iterable of
      (index, uint8 [H,W,3]) pairs or of bare uint8 [H,W,3] arrays (index = position).
    Raises InputError (a ValueError) if there are fewer than ceil(num_seeds / seeds_per_image) images, or an image
    is smaller than the patch at every scale, or has fewer possible positions than the seeds asked of it (naming its
    index; a folder source given `min_size=min_image_side(...)` names such files by path before this).
    """
    if num_seeds <= 0 or seeds_per_image <= 0:
        raise ValueError(f"num_seeds and seeds_per_image must be > 0, got {num_seeds} and {seeds_per_image}")
    window_size = round(patch_size * window_factor)
    if window_size < patch_size:
        raise ValueError(f"window_factor must be >= 1, got {window_factor}")
    rng = np.random.default_rng(rng_seed)
    num_images = math.ceil(num_seeds / seeds_per_image)
    windows, source_index, scale, centre_yx = [], [], [], []
    for order, (index, image) in enumerate(choose_images(images, num_images, rng)):
        count = min(seeds_per_image, num_seeds - order * seeds_per_image)
        for window, seed_scale, centre in image_seeds(image, count, rng, patch_size=patch_size,
                                                      window_size=window_size, scales=scales, where=index):
            windows.append(window)
            source_index.append(index)
            scale.append(seed_scale)
            centre_yx.append(centre)
    return Seeds(np.stack(windows), np.asarray(source_index, np.int64), np.asarray(scale, np.float32),
                 np.asarray(centre_yx, np.float32).reshape(-1, 2), patch_size)


# --- choosing images -----------------------------------------------------------------------------------------------

def choose_images(images, count: int, rng: np.random.Generator) -> Iterator[tuple[int, np.ndarray]]:
    """(index, uint8 [H,W,3]) of `count` images chosen uniformly without replacement, in reading order."""
    if isinstance(images, tf.data.Dataset):
        total = int(images.cardinality())
        if total >= 0:
            return _chosen_from_dataset(images, choose_positions(total, count, rng))
        images = images.map(lambda e: (e["index"], e["image"])).as_numpy_iterator()
    elif hasattr(images, "__len__"):
        positions = choose_positions(len(images), count, rng)
        return _chosen_from_iterable(images, positions)
    return _reservoir(images, count, rng)


def choose_positions(total: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted int64 [count]: distinct positions in [0, total)."""
    check_enough_images(total, count)
    return np.sort(rng.choice(total, size=count, replace=False))


def min_image_side(patch_size: int, scales: Sequence[float] = DEFAULT_SCALES) -> int:
    """The shortest image side that holds a patch_size patch at the largest of `scales` (what image_seeds needs)."""
    return math.ceil(patch_size / max(scales))


def check_enough_images(total: int, count: int) -> None:
    if count > total:
        raise InputError(f"{count} images are needed (num_seeds / seeds_per_image, rounded up) but the source has "
                         f"only {total}; raise seeds_per_image or lower num_seeds")


def _as_pair(position: int, element) -> tuple[int, np.ndarray]:
    if isinstance(element, np.ndarray):
        return position, element
    index, image = element
    return int(index), np.asarray(image)


def _chosen_from_dataset(dataset: tf.data.Dataset, positions: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    wanted = np.zeros(positions[-1] + 1, bool)
    wanted[positions] = True
    wanted = tf.constant(wanted)
    last = int(positions[-1])
    chosen = (dataset.enumerate()
              .take(last + 1)
              .filter(lambda position, _: wanted[position])
              .map(lambda _, element: (element["index"], element["image"])))
    for index, image in chosen.as_numpy_iterator():
        yield int(index), image


def _chosen_from_iterable(images: Iterable, positions: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    wanted = set(positions.tolist())
    for position, element in enumerate(images):
        if position in wanted:
            yield _as_pair(position, element)
        if position >= positions[-1]:
            return


def _reservoir(images: Iterable, count: int, rng: np.random.Generator) -> Iterator[tuple[int, np.ndarray]]:
    """Algorithm R over one pass: a uniform `count`-subset of a stream of unknown length."""
    kept: list[tuple[int, tuple[int, np.ndarray]]] = []
    total = 0
    for position, element in enumerate(images):
        total += 1
        if len(kept) < count:
            kept.append((position, _as_pair(position, element)))
        else:
            slot = rng.integers(0, position + 1)
            if slot < count:
                kept[slot] = (position, _as_pair(position, element))
    check_enough_images(total, count)
    return iter(pair for _, pair in sorted(kept, key=lambda item: item[0]))


# --- energy and drawing --------------------------------------------------------------------------------------------

def resize_by(image: np.ndarray, scale: float) -> np.ndarray:
    """uint8 [round(H*scale), round(W*scale), 3] (area averaging when shrinking, bilinear when enlarging)."""
    if scale == 1.0:
        return image
    height, width = image.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def lowpass(values: np.ndarray, radius: int) -> np.ndarray:
    """float32 [h,w]: Gaussian blur of radius `radius` (σ = radius / 2), edges reflected."""
    return cv2.GaussianBlur(values, (2 * radius + 1, 2 * radius + 1), radius / 2.0)


def energy_map(image: np.ndarray, patch_size: int) -> np.ndarray:
    """float32 [h,w] for uint8 [h,w,3]: lowpass((gray - lowpass(gray))²) + ENERGY_FLOOR at cells (y, x) whose patch
    rows [y - P//2, y - P//2 + P) and columns likewise lie inside the image, 0 elsewhere."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    radius = max(1, round(patch_size / 4))
    energy = lowpass((gray - lowpass(gray, radius)) ** 2, radius) + ENERGY_FLOOR
    return zero_borders(energy, patch_size)


def zero_borders(energy: np.ndarray, patch_size: int) -> np.ndarray:
    """energy [h,w] with the cells whose patch would leave the image set to 0 (a copy)."""
    height, width = energy.shape
    valid = np.zeros_like(energy)
    half = patch_size // 2
    valid[half:height - patch_size + half + 1, half:width - patch_size + half + 1] = 1
    return energy * valid


def draw_cells(energy_maps: Sequence[np.ndarray], count: int, rng: np.random.Generator) -> list[tuple[int, int, int]]:
    """`count` distinct cells (map number, y, x) drawn without replacement with probability ∝ energy over all maps
    jointly. energy_maps: float [h_i,w_i] >= 0 (may be empty). Raises ValueError if fewer than `count` cells have
    positive energy."""
    flat = np.concatenate([np.ravel(energy) for energy in energy_maps]).astype(np.float64)
    positive = np.count_nonzero(flat)
    if positive < count:
        raise ValueError(f"only {positive} possible seed positions, fewer than the {count} seeds asked for")
    picks = rng.choice(flat.size, size=count, replace=False, p=flat / flat.sum())
    starts = np.cumsum([0] + [energy.size for energy in energy_maps])
    cells = []
    for pick in picks:
        number = int(np.searchsorted(starts, pick, side="right") - 1)
        y, x = divmod(int(pick - starts[number]), energy_maps[number].shape[1])
        cells.append((number, y, x))
    return cells


def cut_window(image: np.ndarray, y: int, x: int, patch_size: int, window_size: int) -> np.ndarray:
    """uint8 [S,S,3] of image [h,w,3] whose central P×P square is the patch at cell (y, x) (rows
    [y - P//2, y - P//2 + P)); parts outside the image are filled by reflection."""
    height, width = image.shape[:2]
    top = y - patch_size // 2 - (window_size - patch_size) // 2
    left = x - patch_size // 2 - (window_size - patch_size) // 2
    pads = ((max(0, -top), max(0, top + window_size - height)), (max(0, -left), max(0, left + window_size - width)),
            (0, 0))
    padded = np.pad(image, pads, mode="reflect") if any(sum(p) for p in pads) else image
    top, left = top + pads[0][0], left + pads[1][0]
    return np.ascontiguousarray(padded[top:top + window_size, left:left + window_size])


def image_seeds(image: np.ndarray, count: int, rng: np.random.Generator, *, patch_size: int, window_size: int,
                scales: Sequence[float], where) -> list[tuple[np.ndarray, float, tuple[float, float]]]:
    """`count` seeds of one uint8 [H,W,3] image: (window uint8 [S,S,3], scale, centre (y, x) in the image's pixel
    coordinates). `where` names the image (its source index) in errors."""
    image = np.asarray(image, np.uint8)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"source index {where}: expected an RGB image [H,W,3], got shape {image.shape}")
    resized = [resize_by(image, s) for s in scales]
    usable = [min(r.shape[:2]) >= patch_size for r in resized]
    if not any(usable):
        raise InputError(f"source index {where}: image {image.shape[0]}×{image.shape[1]} is smaller than the "
                         f"{patch_size}×{patch_size} patch at every scale {tuple(scales)}")
    maps = [energy_map(r, patch_size) if ok else np.zeros((0, 0), np.float32) for r, ok in zip(resized, usable)]
    try:
        cells = draw_cells(maps, count, rng)
    except ValueError as error:
        raise InputError(f"source index {where}: {error}") from None
    seeds = []
    for number, y, x in cells:
        scaled = resized[number]
        factor_y, factor_x = scaled.shape[0] / image.shape[0], scaled.shape[1] / image.shape[1]
        centre_edge = (y - patch_size // 2 + patch_size / 2, x - patch_size // 2 + patch_size / 2)
        centre = (centre_edge[0] / factor_y - 0.5, centre_edge[1] / factor_x - 0.5)
        seeds.append((cut_window(scaled, y, x, patch_size, window_size), float(scales[number]), centre))
    return seeds
