"""Seed patches of Exemplar-CNN's surrogate classes, drawn where images have structure (the release's rule), as
batched TensorFlow ops that run in `Dataset.map` and inside a `tf.function` step.

For each image and each scale s in `scales` the image is resized by s (area averaging when shrinking: a *level*)
and its energy map computed: e = lowpass((gray - lowpass(gray))²), lowpass = Gaussian of radius r = patch_size / 4
(σ = r / 2, kernel 2r + 1, edges reflected), so e is the local high-frequency energy around each pixel. Cells where
a patch would leave the level are zeroed; the others get a tiny floor (`ENERGY_FLOOR`) so that a flat image still
yields seeds, uniformly. A seed is a cell (scale, y, x) drawn with probability ∝ energy over all levels of the image
jointly, k of them without replacement (Gumbel-top-k: the k largest of log e + Gumbel noise are an exact
successive draw without replacement ∝ e, and for k = 1 the same distribution as `tf.random.stateless_categorical`);
the online mode's single draw per visit is by inverse CDF instead (`draw_cells_by_cdf`: a binary search in the
cumulative energies, which an image's energy cache keeps, so the draw costs O(log C) rather than O(C) random
numbers and logarithms for C cells; a cached visit still gathers the image's CDF row).
Its window (side S = round(patch_size * window_factor)) is cut from the level around the cell by integer offsets
(no resampling), so the seed patch is the window's central patch_size square; where the window leaves the level it
is filled by reflection (without repeating the edge pixel, as np.pad's "reflect"). The transformation chain's one
projective resampling then turns a window into a training patch.

`sample_windows` does this for a batch of same-size images; `sample_seeds` draws a run's fixed seeds with it,
batching images of one size and mapping batches in parallel; `online_windows` draws one window per image.

Images for `sample_seeds`: with N seeds and `seeds_per_image` k, ceil(N / k) images are chosen uniformly without
replacement by `rng_seed` (the last chosen image gives the remainder); energy maps and windows are computed for
those only. When the number of images is known (a dataset with known cardinality, a sized sequence) the positions
are chosen first and the others filtered out inside tf.data (a source still decodes what its own pipeline decodes
before that filter; reading stops after the last chosen image); otherwise a reservoir sample is kept over one pass.
"""
from __future__ import annotations

import dataclasses
import io
import math
from typing import Iterable, Iterator, Sequence

import numpy as np
import tensorflow as tf

from exemplar_tf.io.atomic import atomic_write
from exemplar_tf.errors import InputError

DEFAULT_SCALES = (0.512, 0.64, 0.8, 1.0)  # 0.8 ** (3, 2, 1, 0)
ENERGY_FLOOR = 1e-3  # gray levels², added to every valid cell; real texture has energy ~1e1..1e4
GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601, as OpenCV's RGB2GRAY
SEED_BATCH = 64  # images of one size per sampling call in `sample_seeds`


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


# --- energy maps and drawing (TensorFlow, batched) -----------------------------------------------------------------

def lowpass_radius(patch_size: int) -> int:
    return max(1, round(patch_size / 4))


def check_sampling(patch_size: int, window_size: int, scales: Sequence[float]) -> None:
    """Raises ValueError for settings the sampler cannot serve: a window narrower than the patch or more than twice
    as wide (its reflected margin must fit inside a level, which is at least a patch wide), or no positive scales."""
    if not patch_size <= window_size <= 2 * patch_size:
        raise ValueError(f"window_factor must be in [1, 2], got a {window_size} px window for {patch_size} px patches")
    if not scales or min(scales) <= 0:
        raise ValueError(f"scales must be positive, got {tuple(scales)}")


def gaussian_kernel(radius: int) -> np.ndarray:
    """float32 [2r+1]: normalised Gaussian taps, σ = r / 2 (OpenCV's getGaussianKernel for that size and σ)."""
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    taps = np.exp(-offsets**2 / (2 * (radius / 2.0) ** 2))
    return (taps / taps.sum()).astype(np.float32)


def lowpass_matrix(size, radius: int, rows=None) -> tf.Tensor:
    """float32 [n,size]: the Gaussian blur of radius `radius` along one axis of length `size` as a matrix (edges
    reflected without repeating the edge sample, as OpenCV's BORDER_REFLECT_101; needs size > radius). `rows`
    (default all) keeps output rows [rows[0], rows[1]) only."""
    taps = tf.constant(gaussian_kernel(radius))
    first, stop = (0, size) if rows is None else rows
    outputs = tf.range(first, stop)
    sources = reflect_index(outputs[:, None] + tf.range(-radius, radius + 1)[None, :], size)  # [n,2r+1]
    rows_index = tf.broadcast_to((outputs - first)[:, None], tf.shape(sources))
    count = stop - first
    return tf.scatter_nd(tf.reshape(tf.stack([rows_index, sources], axis=-1), [-1, 2]),
                         tf.reshape(tf.broadcast_to(taps, tf.shape(sources)), [-1]), tf.stack([count, size]))


def lowpass(values, radius: int, rows=None, columns=None) -> tf.Tensor:
    """float32 [B,h',w']: separable Gaussian blur of values [B,h,w] (σ = radius / 2, edges reflected, h, w > radius),
    two matrix products (`lowpass_matrix`); `rows` / `columns` = (first, stop) keep only those outputs."""
    height, width = tf.shape(values)[1], tf.shape(values)[2]
    blurred = tf.linalg.matmul(lowpass_matrix(height, radius, rows), values)
    return tf.linalg.matmul(blurred, lowpass_matrix(width, radius, columns), transpose_b=True)


def gray(images) -> tf.Tensor:
    """float32 [B,h,w]: luma of float RGB images [B,h,w,3] (same value range)."""
    red, green, blue = tf.unstack(images, axis=-1)
    return GRAY_WEIGHTS[0] * red + GRAY_WEIGHTS[1] * green + GRAY_WEIGHTS[2] * blue


def valid_energy(luma, patch_size: int) -> tf.Tensor:
    """float32 [B,h-P+1,w-P+1] for gray levels luma [B,h,w] (0..255, h, w >= P):
    lowpass((luma - lowpass(luma))²) + ENERGY_FLOOR at the cells whose patch lies inside the level; element (v, u)
    is cell (v + P//2, u + P//2), the patch with top-left pixel (v, u)."""
    radius = lowpass_radius(patch_size)
    half = patch_size // 2
    height, width = tf.shape(luma)[1], tf.shape(luma)[2]
    high = tf.square(luma - lowpass(luma, radius))
    return lowpass(high, radius, (half, height - patch_size + half + 1),
                   (half, width - patch_size + half + 1)) + ENERGY_FLOOR


def level_size(height, width, scale: float) -> tuple[tf.Tensor, tf.Tensor]:
    """int32 scalars: a level's size, max(1, round(side * scale)) (round half to even, as Python's round)."""
    side = lambda n: tf.maximum(1, tf.cast(tf.round(tf.cast(n, tf.float64) * scale), tf.int32))  # noqa: E731
    return side(height), side(width)


def resize(images, size, scale: float) -> tf.Tensor:
    """float32 [B,h,w,C]: images [B,H,W,C] resized to size (h, w), as a level of `scale` is (area averaging when
    shrinking, bilinear when enlarging)."""
    images = tf.cast(images, tf.float32)
    if scale == 1.0:
        return images
    return tf.image.resize(images, tf.stack(size), method="area" if scale < 1 else "bilinear")


def resize_matrix(size, new_size, scale: float) -> tf.Tensor:
    """float32 [new_size,size]: `resize` along one axis as a matrix (row i: the weights of output pixel i; resizing
    is separable, so a level is rows_matrix @ image @ columns_matrixᵀ per channel)."""
    return resize(tf.eye(size)[None, :, :, None], (new_size, size), scale)[0, :, :, 0]


@dataclasses.dataclass
class Draws:
    """k cells drawn in each of B images: windows float32 [B,k,S,S,3] (gray levels 0..255), scale float32 [B,k],
    centre_yx float32 [B,k,2] in the source image's pixel coordinates, positions int32 [] (valid cells per image
    over all levels; fewer than k means the draw could not be served and k shrank to it)."""

    windows: tf.Tensor
    scale: tf.Tensor
    centre_yx: tf.Tensor
    positions: tf.Tensor


def reflect_index(index, size) -> tf.Tensor:
    """int32 like index: positions outside [0, size) reflected back without repeating the edge (needs
    -size < index < 2 size - 1)."""
    index = tf.abs(index)
    return tf.where(index >= size, 2 * (size - 1) - index, index)


@dataclasses.dataclass
class Levels:
    """Where an image's cells lie, the same for every image of one size: shapes int32 [L,4] (per scale: cells high,
    wide; level high, wide; all 0 if the level is narrower than a patch), rows float32 [sum of level highs,H] and
    columns float32 [sum of level wides,W] (the levels' `resize_matrix`es stacked in scale order)."""

    shapes: tf.Tensor
    rows: tf.Tensor
    columns: tf.Tensor


def energy_scores(images, *, patch_size: int, scales: Sequence[float] = DEFAULT_SCALES) -> tuple[tf.Tensor, Levels]:
    """(scores float32 [B,C], levels) for images [B,H,W,3] (uint8 or float 0..255, one size): log `valid_energy`
    of every cell of every usable level, flattened row-major per level and concatenated in scale order (C cells in
    all). A pure function of the images: `draw_cells` (or `draw_cells_by_cdf` of their `cell_cdf`) and `cut_cells` turn
    the scores into windows, and scores kept from an earlier call give the same draws as fresh ones."""
    images = tf.cast(tf.convert_to_tensor(images), tf.float32)
    batch, height, width = tf.shape(images)[0], tf.shape(images)[1], tf.shape(images)[2]
    luma = gray(images)
    log_energies, level_shapes, row_matrices, column_matrices = [], [], [], []
    for scale in scales:
        level_height, level_width = level_size(height, width, scale)

        def energy_and_matrices(scale=scale, level_height=level_height, level_width=level_width):
            rows, columns = resize_matrix(height, level_height, scale), resize_matrix(width, level_width, scale)
            level = luma if scale == 1.0 else tf.linalg.matmul(tf.linalg.matmul(rows, luma), columns, transpose_b=True)
            return valid_energy(level, patch_size), rows, columns

        def skipped():
            return tf.zeros([batch, 0, 0]), tf.zeros([0, height]), tf.zeros([0, width])

        static_sides = images.shape[1:3]
        if static_sides.is_fully_defined():  # known sizes: choose while tracing (no conditional in the graph)
            usable = min(max(1, round(side * scale)) for side in static_sides) >= patch_size
            energy, rows, columns = energy_and_matrices() if usable else skipped()
        else:
            energy, rows, columns = tf.cond(tf.minimum(level_height, level_width) >= patch_size,
                                            energy_and_matrices, skipped)
        log_energies.append(tf.reshape(tf.math.log(energy), [batch, -1]))
        level_shapes.append(tf.concat([tf.shape(energy)[1:3], tf.shape(rows)[:1], tf.shape(columns)[:1]],
                                      axis=0))  # 0 x 0 if unusable
        row_matrices.append(rows)
        column_matrices.append(columns)
    levels = Levels(tf.stack(level_shapes), tf.concat(row_matrices, axis=0), tf.concat(column_matrices, axis=0))
    return tf.concat(log_energies, axis=1), levels


def draw_cells(scores, count: int, seed) -> tf.Tensor:
    """int32 [B,k]: k = min(count, C) distinct cells of each image drawn ∝ exp(score) without replacement
    (Gumbel-top-k), from scores float32 [B,C] (`energy_scores`), stateless from `seed` int [2]. O(C) per draw."""
    uniform = tf.random.stateless_uniform(tf.shape(scores), seed, minval=np.finfo(np.float32).tiny, maxval=1.0)
    return tf.math.top_k(scores - tf.math.log(-tf.math.log(uniform)), tf.minimum(count, tf.shape(scores)[1]))[1]


def cell_cdf(scores) -> tf.Tensor:
    """float32 [B,C]: the cumulative sums of exp(score) over each row of scores [B,C] (`energy_scores`), scaled so
    the row's largest cell is 1; `cells_at`'s table. Float32 keeps each cell's step to within one rounding of the
    running sum (~6e-8 of the row total): cells far below that (flat cells beside strong texture) may get an
    empty step, so at most ~C x 3e-8 of the mass moves (2e-4 for 96-px images' 7 565 cells)."""
    return tf.math.cumsum(tf.exp(scores - tf.reduce_max(scores, axis=1, keepdims=True)), axis=1)


def cells_at(cdf, fractions) -> tf.Tensor:
    """int32 [B,k]: for cdf float32 [B,C] (`cell_cdf`) and fractions float32 [B,k] in [0, 1), the cell whose step
    holds fraction x row total (the first cell with cdf > it, so a cell with an empty step is never chosen; a
    fraction below 1 times the total stays below the total, so the cell exists)."""
    return tf.searchsorted(cdf, fractions * cdf[:, -1:], side="right", out_type=tf.int32)


def draw_cells_by_cdf(cdf, count: int, seed) -> tf.Tensor:
    """int32 [B,count]: independent draws (with replacement) of cells ∝ their probability by inverse CDF
    (`cells_at` of uniform fractions; a binary search per draw), from cdf float32 [B,C] (`cell_cdf`), stateless
    from `seed` int [2]. For count = 1 the distribution of `draw_cells(scores, 1, seed)`, not the same draws."""
    return cells_at(cdf, tf.random.stateless_uniform(tf.stack([tf.shape(cdf)[0], count]), seed))


def locate_cells(picks, levels: Levels, height, width, *, patch_size: int) -> tuple[tf.Tensor, ...]:
    """Where cells picks int32 [B,k] (indices into `energy_scores` columns; levels from the same call, images
    height x width) lie: (level int32 [B,k] (index into the scales), top, left int32 [B,k] (the patch's top-left
    pixel in its level), centre_yx float32 [B,k,2] (the patch centre in source-image pixel coordinates))."""
    shapes = levels.shapes  # [levels, 4]: cells high, wide; level high, wide
    cell_starts = tf.math.cumsum(shapes[:, 0] * shapes[:, 1], exclusive=True)
    level = tf.reduce_sum(tf.cast(picks[..., None] >= cell_starts[1:], tf.int32), axis=-1)  # [B,k]
    cell = picks - tf.gather(cell_starts, level)
    cells_wide = tf.gather(shapes[:, 1], level)
    top, left = cell // cells_wide, cell % cells_wide
    factor_y = tf.cast(tf.gather(shapes[:, 2], level), tf.float32) / tf.cast(height, tf.float32)
    factor_x = tf.cast(tf.gather(shapes[:, 3], level), tf.float32) / tf.cast(width, tf.float32)
    centre = patch_size / 2.0  # the patch centre's distance from its top-left edge, in level pixels
    centre_yx = tf.stack([(tf.cast(top, tf.float32) + centre) / factor_y - 0.5,
                          (tf.cast(left, tf.float32) + centre) / factor_x - 0.5], axis=-1)
    return level, top, left, centre_yx


def cut_cells(images, picks, levels: Levels, *, patch_size: int, window_size: int,
              scales: Sequence[float] = DEFAULT_SCALES) -> Draws:
    """The windows of cells picks int32 [B,k] (from `draw_cells` or `draw_cells_by_cdf`) of images [B,H,W,3]
    (uint8 or float 0..255, one size; levels from their `energy_scores`): each cut from the source image by the
    resize weights of its level's rows and columns (`cut_windows`), placed by `locate_cells`."""
    images = tf.cast(tf.convert_to_tensor(images), tf.float32)
    level, top, left, centre_yx = locate_cells(picks, levels, tf.shape(images)[1], tf.shape(images)[2],
                                               patch_size=patch_size)
    shapes = levels.shapes
    offsets = tf.range(window_size) - (window_size - patch_size) // 2
    rows = reflect_index(top[..., None] + offsets, tf.gather(shapes[:, 2], level)[..., None])  # [B,k,S] level rows
    columns = reflect_index(left[..., None] + offsets, tf.gather(shapes[:, 3], level)[..., None])
    row_entries = tf.gather(tf.math.cumsum(shapes[:, 2], exclusive=True), level)[..., None] + rows
    column_entries = tf.gather(tf.math.cumsum(shapes[:, 3], exclusive=True), level)[..., None] + columns
    windows = cut_windows(images, tf.gather(levels.rows, row_entries), tf.gather(levels.columns, column_entries))
    return Draws(windows, tf.gather(tf.constant(scales, tf.float32), level), centre_yx,
                 tf.reduce_sum(shapes[:, 0] * shapes[:, 1]))


def sample_windows(images, count: int, seed, *, patch_size: int, window_size: int,
                   scales: Sequence[float] = DEFAULT_SCALES) -> Draws:
    """Draws `count` seed windows in each of images [B,H,W,3] (uint8 or float 0..255, one size), ∝ energy jointly over
    the levels, without replacement within an image (see the module docstring); stateless from `seed` int [2].
    Needs window_size <= 2 patch_size (`check_sampling`). `cut_cells` of `draw_cells` of `energy_scores`.

    Only the gray levels are computed (matrix products, `resize_matrix`); a window is cut from the source image by
    the resize weights of its level's rows and columns (`cut_windows`): the same values as cutting it from the
    RGB level resized by `resize`, without resizing the RGB image at every scale."""
    scores, levels = energy_scores(images, patch_size=patch_size, scales=scales)
    return cut_cells(images, draw_cells(scores, count, seed), levels, patch_size=patch_size, window_size=window_size,
                     scales=scales)


def online_windows(images, seed, *, patch_size: int, window_size: int, scales: Sequence[float] = DEFAULT_SCALES,
                   energy: tuple[tf.Tensor, Levels] | None = None) -> tf.Tensor:
    """float32 [B,S,S,3] (0..255): one window per image of images [B,H,W,3] (uint8 or float 0..255, one size),
    drawn ∝ energy by `draw_cells_by_cdf`, stateless from `seed` int [2]: the online mode's draw at every visit.
    `energy`: these images' (`cell_cdf` [B,C], levels), e.g. gathered from a table kept since an earlier call;
    computed here if None, with the same result."""
    if energy is None:
        scores, levels = energy_scores(images, patch_size=patch_size, scales=scales)
        energy = cell_cdf(scores), levels
    cdf, levels = energy
    draws = cut_cells(images, draw_cells_by_cdf(cdf, 1, seed), levels, patch_size=patch_size,
                      window_size=window_size, scales=scales)
    return draws.windows[:, 0]


def cut_windows(images, rows, columns) -> tf.Tensor:
    """float32 [B,k,S,S,3]: windows[b,j] = rows[b,j] @ images[b] @ columns[b,j]ᵀ per channel, for images [B,H,W,3],
    rows float32 [B,k,S,H] and columns [B,k,S,W] (the resize weights of the window's level rows and columns).
    Channel planes first, columns then rows (batched matmuls broadcast over the channels): ~25 % less CPU time
    than rows first on the interleaved [H, W·3] layout, which needs a transpose between the two products."""
    planes = tf.transpose(tf.cast(images, tf.float32), [0, 3, 1, 2])[:, None]  # [B,1,3,H,W]
    cut = tf.linalg.matmul(planes, columns[:, :, None], transpose_b=True)  # [B,k,3,H,S]
    cut = tf.linalg.matmul(rows[:, :, None], cut)  # [B,k,3,S,S]
    return tf.transpose(cut, [0, 1, 3, 4, 2])


# --- the run's fixed seeds -----------------------------------------------------------------------------------------

def sample_seeds(images, *, num_seeds: int, patch_size: int = 32, window_factor: float = 2.0,
                 scales: Sequence[float] = DEFAULT_SCALES, seeds_per_image: int = 1, rng_seed: int = 0) -> Seeds:
    """Draws `num_seeds` seed windows from `images` (see the module docstring), reproducibly from `rng_seed`.

    images: a tf.data.Dataset of {"image": uint8 [H,W,3], "index": int64} (a `Source.dataset`), or an iterable of
      (index, uint8 [H,W,3]) pairs or of bare uint8 [H,W,3] arrays (index = position).
    Images of one size are sampled SEED_BATCH at a time (`sample_windows`, batches mapped in parallel; grouped by
    size unless the dataset's image shape is static); the draws of a batch come from (rng_seed, reading position of
    its first image). Seeds are ordered by the images' reading
    order. Raises InputError (a ValueError) if there are fewer than ceil(num_seeds / seeds_per_image) images, or an
    image is smaller than the patch at every scale, or has fewer possible positions than the seeds asked of it
    (naming its index; a folder source given `min_size=min_image_side(...)` names such files by path before this).
    """
    if num_seeds <= 0 or seeds_per_image <= 0:
        raise ValueError(f"num_seeds and seeds_per_image must be > 0, got {num_seeds} and {seeds_per_image}")
    window_size = round(patch_size * window_factor)
    check_sampling(patch_size, window_size, scales)
    rng = np.random.default_rng(rng_seed)
    num_images = math.ceil(num_seeds / seeds_per_image)
    chosen = chosen_dataset(images, num_images, rng)
    run_seed = tf.constant(rng_seed % 2**31, tf.int64)

    def draw(order, index, image):
        draws = sample_windows(image, seeds_per_image, tf.stack([run_seed, order[0]]), patch_size=patch_size,
                               window_size=window_size, scales=scales)
        windows = tf.cast(tf.clip_by_value(tf.round(draws.windows), 0, 255), tf.uint8)
        return order, index, tf.shape(image)[1:3], windows, draws.scale, draws.centre_yx, draws.positions

    if chosen.element_spec[2].shape.is_fully_defined():  # one static size: plain batches (shapes fold into the graph)
        batches = chosen.batch(SEED_BATCH)
    else:
        batches = chosen.group_by_window(lambda order, index, image: _size_key(image),
                                         lambda _, group: group.batch(SEED_BATCH), window_size=SEED_BATCH)
    batches = batches.map(draw, num_parallel_calls=tf.data.AUTOTUNE)
    parts = []
    for order, index, size, windows, scale, centre_yx, positions in batches.as_numpy_iterator():
        for row in range(len(order)):
            count = min(seeds_per_image, num_seeds - int(order[row]) * seeds_per_image)
            if positions < count:
                where = f"source index {int(index[row])}"
                if positions == 0:
                    raise InputError(f"{where}: image {size[0]}×{size[1]} is smaller than the "
                                     f"{patch_size}×{patch_size} patch at every scale {tuple(scales)}")
                raise InputError(f"{where}: only {positions} possible seed positions, fewer than the {count} seeds "
                                 "asked for")
            parts.append((int(order[row]), int(index[row]), windows[row, :count], scale[row, :count],
                          centre_yx[row, :count]))
    parts.sort(key=lambda part: part[0])
    return Seeds(np.concatenate([p[2] for p in parts]),
                 np.concatenate([np.full(len(p[2]), p[1], np.int64) for p in parts]),
                 np.concatenate([p[3] for p in parts]).astype(np.float32),
                 np.concatenate([p[4] for p in parts]).astype(np.float32).reshape(-1, 2), patch_size)


def _size_key(image) -> tf.Tensor:
    shape = tf.cast(tf.shape(image), tf.int64)
    return shape[0] * 2**31 + shape[1]


# --- choosing images -----------------------------------------------------------------------------------------------

def chosen_dataset(images, count: int, rng: np.random.Generator) -> tf.data.Dataset:
    """(order int64, index int64, uint8 [H,W,3]) of `count` images chosen uniformly without replacement, in reading
    order (order = 0..count-1)."""
    if isinstance(images, tf.data.Dataset) and int(images.cardinality()) >= 0:
        positions = choose_positions(int(images.cardinality()), count, rng)
        chosen = _chosen_from_dataset(images, positions)
    else:
        if isinstance(images, tf.data.Dataset):
            images = images.map(lambda e: (e["index"], e["image"])).as_numpy_iterator()
        pairs = list(_chosen_from_iterable(images, choose_positions(len(images), count, rng))
                     if hasattr(images, "__len__") else _reservoir(images, count, rng))
        for index, image in pairs:
            if image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"source index {index}: expected an RGB image [H,W,3], got shape {image.shape}")
        chosen = tf.data.Dataset.from_generator(
            lambda: ((np.int64(index), np.asarray(image, np.uint8)) for index, image in pairs),
            output_signature=(tf.TensorSpec([], tf.int64), tf.TensorSpec([None, None, 3], tf.uint8)))
    return chosen.enumerate().map(lambda order, pair: (order, pair[0], pair[1]))


def choose_positions(total: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted int64 [count]: distinct positions in [0, total)."""
    check_enough_images(total, count)
    return np.sort(rng.choice(total, size=count, replace=False))


def min_image_side(patch_size: int, scales: Sequence[float] = DEFAULT_SCALES) -> int:
    """The shortest image side that holds a patch_size patch at the largest of `scales` (what the sampler needs)."""
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


def _chosen_from_dataset(dataset: tf.data.Dataset, positions: np.ndarray) -> tf.data.Dataset:
    wanted = np.zeros(positions[-1] + 1, bool)
    wanted[positions] = True
    wanted = tf.constant(wanted)
    return (dataset.enumerate()
            .take(int(positions[-1]) + 1)
            .filter(lambda position, _: wanted[position])
            .map(lambda _, element: (tf.cast(element["index"], tf.int64), element["image"])))


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
