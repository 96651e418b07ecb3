"""Surrogate-class batches: seed i, transformed, is an example of class i (also NPID's bank row i).

Two ways to get the patches (`--seed_sampling`):
- fixed (`surrogate_dataset`, the paper): the run's N seed windows, drawn once (`patches.sample_seeds`) and cached;
- online (`online_dataset`): every instance is a source image; each visit draws a fresh energy-weighted window of
  the image (`patches.online_windows`) and then the chain, and the class / bank row is the image.
  An image's energy never changes, so when the images are in memory and of one size the cumulative energies of
  their cells (`patches.cell_cdf` of `patches.energy_scores`) can be computed once (`energy_cache`, if the table
  fits in ENERGY_CACHE_MAX_BYTES) and only the draw (a binary search) and the cut run at each visit
  (`patches.online_windows`): the same draws from the same seed as computing them every time.

Fixed seeds, online transformations (default): every batch draws fresh transformations from a per-batch seed
(rng_seed, batch number), so no two epochs see the same copies. `fixed_copies=K`: the paper's fixed pool, K copies per seed, copy k of seed i
always drawn from the per-sample seed (i, k); the pool depends on the seeds only (identical on every input
pipeline and run), `rng_seed` only orders it.

`augment_on="host"` applies the chain in `Dataset.map` (batched: batch before map). `augment_on="device"` yields
the raw windows (fixed) or whole images (online) and the seed; the training step calls `window_augment` /
`source_image_augment` on them (`training.inputs` makes them the batch's views).

Merging near-duplicate seeds (the paper's clustering, 74.2 -> 75.4 on STL-10; --merge_classes_at/--merge_to) does
not change these pipelines: they keep emitting the seed id, and the training step maps it to its merged class
(`merging.merge_labels` clusters the seeds, `training.step.merge_classes` stores the map in the checkpoint).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import tensorflow as tf

from exemplar_tf.augment.chain import TransformChain
from exemplar_tf.augment.transforms import ColorPCA
from exemplar_tf.choices import AUGMENT_ON
from exemplar_tf.data import patches
from exemplar_tf.data.patches import Seeds

PCA_MAX_PIXELS = 1_000_000
ENERGY_CACHE_MAX_BYTES = 1024**3  # float32 cell CDFs of all images; 96-px images, 32-px patches: 30 KB each (~35k fit)
ENERGY_CACHE_BATCH = 256  # images per `patches.energy_scores` call while filling the cache


def fit_color_pca(seeds: Seeds, max_pixels: int = PCA_MAX_PIXELS) -> ColorPCA:
    """Colour PCA of the seed patches' pixels (scaled to [0, 1]); at most `max_pixels`, taken at a fixed stride,
    so the result is a deterministic function of the seeds."""
    pixels = seeds.central_patches().reshape(-1, 3)
    stride = max(1, len(pixels) // max_pixels)
    return ColorPCA.fit(pixels[::stride] / 255.0)


def surrogate_dataset(seeds: Seeds, chain: TransformChain, *, batch_size: int, rng_seed: int,
                      augment_on: str = "host", fixed_copies: int | None = None, shuffle: bool = True,
                      repeat: bool = True, start_batch=0, items: tf.data.Dataset | None = None) -> tf.data.Dataset:
    """Batches of transformed seeds.

    host:   {"image": float32 [B,P,P,3] in [0,1], "label": int64 [B]}
    device: {"window": uint8 [B,S,S,3], "label": int64 [B], "aug_seed": int32 [2] (online) or [B,2] (fixed)}
    label = seed id. With `repeat` the stream is endless and every batch full; without it one pass over the
    seeds (or seed copies), the last batch possibly smaller. `shuffle` reshuffles each pass (seeded by rng_seed).
    `start_batch` (endless streams): begin at that batch of the stream, exactly as the uninterrupted stream has
    it (the seed order is skipped, not computed; transformation seeds follow the batch number).
    `items`: the item numbers (seed * copies + copy) from batch `start_batch` on, instead of the shuffled passes
    (one batch found by its number for the tf.data service: `start_batch` may then be a tensor).
    """
    if augment_on not in AUGMENT_ON:
        raise ValueError(f"augment_on must be one of {AUGMENT_ON}, got {augment_on!r}")
    if fixed_copies is not None and fixed_copies <= 0:
        raise ValueError(f"fixed_copies must be a positive number of copies or None, got {fixed_copies}")
    copies = fixed_copies or 1
    windows = tf.constant(seeds.windows)
    run_seed = tf.constant(rng_seed % 2**31, tf.int32)
    if items is None:
        items = tf.data.Dataset.range(len(seeds.windows) * copies)  # item = seed * copies + copy
        if shuffle:
            items = items.shuffle(len(seeds.windows) * copies, seed=rng_seed, reshuffle_each_iteration=True)
        if repeat:
            items = items.repeat().skip(start_batch * batch_size)
        elif start_batch:
            raise ValueError("start_batch needs the endless stream (repeat=True)")

    def element(batch_number, item):
        labels = item // copies
        if fixed_copies:
            aug_seed = tf.cast(tf.stack([labels, item % copies], axis=1), tf.int32)
        else:
            aug_seed = tf.stack([run_seed, tf.cast(batch_number, tf.int32)])
        window = tf.gather(windows, labels)
        if augment_on == "device":
            return {"window": window, "label": labels, "aug_seed": aug_seed}
        return {"image": chain(tf.cast(window, tf.float32) / 255.0, aug_seed), "label": labels}

    return (items.batch(batch_size, drop_remainder=repeat)
            .enumerate(start=start_batch)
            .map(element, num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE))


@dataclasses.dataclass
class EnergyCache:
    """The energies of N images of one size, computed once: cdf float32 [N,C] (row i: `patches.cell_cdf` of the
    `patches.energy_scores` of the image of index i), levels (the same for every image of that size)."""

    cdf: tf.Tensor
    levels: patches.Levels


def energy_cache(images: np.ndarray, *, patch_size: int, scales: Sequence[float] = patches.DEFAULT_SCALES,
                 max_bytes: int = ENERGY_CACHE_MAX_BYTES) -> EnergyCache | None:
    """The cell CDFs of images uint8 [N,H,W,3] (image i has index i), in batches of ENERGY_CACHE_BATCH, or None
    if the float32 table (N * C * 4 bytes) would need more than `max_bytes`."""
    levels = patches.energy_scores(images[:1], patch_size=patch_size, scales=scales)[1]
    cells = int(tf.reduce_sum(levels.shapes[:, 0] * levels.shapes[:, 1]))
    if len(images) * cells * 4 > max_bytes:
        return None
    cdf_of = tf.function(lambda batch: patches.cell_cdf(
        patches.energy_scores(batch, patch_size=patch_size, scales=scales)[0]))
    with tf.device("/CPU:0"):  # the kernels the host pipeline's own recomputation would run: the same draws
        cdf = np.concatenate([cdf_of(images[start:start + ENERGY_CACHE_BATCH]).numpy()
                              for start in range(0, len(images), ENERGY_CACHE_BATCH)])
    return EnergyCache(tf.constant(cdf), levels)


def online_images(chain: TransformChain, images, seed, *, window_size: int,
                  scales: Sequence[float] = patches.DEFAULT_SCALES, energy=None) -> tf.Tensor:
    """float32 [B,P,P,3] in [0,1]: one energy-weighted window drawn in each of images uint8 [B,H,W,3] (one size,
    `patches.online_windows`), then the chain; stateless from seed int [2] (the draw and the chain take their own
    sub-seeds). `energy`: these images' (cdf [B,C], levels) with the chain's patch size and `scales` (e.g. gathered
    from an `EnergyCache`), computed here if None; the result is the same either way."""
    draw_seed = tf.random.experimental.stateless_fold_in(seed, 0)
    chain_seed = tf.random.experimental.stateless_fold_in(seed, 1)
    windows = patches.online_windows(images, draw_seed, patch_size=chain.patch_size, window_size=window_size,
                                     scales=scales, energy=energy)
    return chain(windows / 255.0, chain_seed)


def online_dataset(elements: tf.data.Dataset, chain: TransformChain, *, batch_size: int, rng_seed: int,
                   window_size: int, one_size: bool, augment_on: str = "host",
                   scales: Sequence[float] = patches.DEFAULT_SCALES,
                   energy: EnergyCache | None = None, start_batch: int = 0) -> tf.data.Dataset:
    """Endless batches of online patches from `elements` ({"image": uint8 [H,W,3], "index": int64}, e.g.
    `instances.shuffled_epochs`); label = the image's index.

    host:   {"image": float32 [B,P,P,3] in [0,1], "label": int64 [B]}
    device: {"source_image": uint8 [B,H,W,3], "label": int64 [B], "aug_seed": int32 [2]} (`source_image_augment`)
    one_size: every image has the same size, so the sampler runs on whole batches (`online_images`, the same
    function the device runs, from seed (rng_seed, batch number)); otherwise each image is sampled alone, from
    (rng_seed, element number), and the windows are batched before the chain. The device needs one size.
    energy: the `energy_cache` of the images the elements come from (by index; same patch size and scales), for
    one_size host batches only: each batch gathers its images' CDF rows instead of recomputing them (same batches).
    start_batch: `elements` begin at element start_batch * batch_size of their stream (a resumed run); batch and
    element numbers, hence every draw, continue from there as in the uninterrupted stream.
    """
    if augment_on not in AUGMENT_ON:
        raise ValueError(f"augment_on must be one of {AUGMENT_ON}, got {augment_on!r}")
    if augment_on == "device" and not one_size:
        raise ValueError("online sampling on the device needs images of one size (a batch carries whole images)")
    if energy is not None and (augment_on == "device" or not one_size):
        raise ValueError("an energy cache serves host batches of images of one size only")
    run_seed = tf.constant(rng_seed % 2**31, tf.int32)
    if one_size:
        def batch_of_images(batch_number, batch):
            seed = tf.stack([run_seed, tf.cast(batch_number, tf.int32)])
            if augment_on == "device":
                return {"source_image": batch["image"], "label": batch["index"], "aug_seed": seed}
            cached = None if energy is None else (tf.gather(energy.cdf, batch["index"]), energy.levels)
            return {"image": online_images(chain, batch["image"], seed, window_size=window_size, scales=scales,
                                           energy=cached),
                    "label": batch["index"]}

        batches = elements.batch(batch_size, drop_remainder=True).enumerate(start=start_batch)
        return batches.map(batch_of_images, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    def window(number, element):
        seed = tf.stack([run_seed, tf.cast(number, tf.int32)])
        windows = patches.online_windows(element["image"][None], tf.random.experimental.stateless_fold_in(seed, 0),
                                         patch_size=chain.patch_size, window_size=window_size, scales=scales)
        return {"window": windows[0], "label": element["index"]}

    def transformed(batch_number, batch):
        seed = tf.random.experimental.stateless_fold_in(tf.stack([run_seed, tf.cast(batch_number, tf.int32)]), 1)
        return {"image": chain(batch["window"] / 255.0, seed), "label": batch["label"]}

    return (elements.enumerate(start=start_batch * batch_size).map(window, num_parallel_calls=tf.data.AUTOTUNE)
            .batch(batch_size, drop_remainder=True).enumerate(start=start_batch)
            .map(transformed, num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE))


def window_augment(chain: TransformChain):
    """The device-side augmentation of fixed seeds: (batch {"window": uint8 [B,S,S,3], ...}, seed int [2] or [B,2])
    -> chain(window / 255, seed), float32 [B,P,P,3] in [0,1] (the host pipeline's own computation)."""
    def augment(batch: dict, seed) -> tf.Tensor:
        return chain(tf.cast(batch["window"], tf.float32) / 255.0, seed)

    return augment


def source_image_augment(chain: TransformChain, *, window_size: int,
                         scales: Sequence[float] = patches.DEFAULT_SCALES):
    """The device-side augmentation of online seeds: (batch {"source_image": uint8 [B,H,W,3], ...}, seed int [2])
    -> `online_images`, float32 [B,P,P,3] in [0,1]."""
    def augment(batch: dict, seed) -> tf.Tensor:
        return online_images(chain, batch["source_image"], seed, window_size=window_size, scales=tuple(scales))

    return augment
