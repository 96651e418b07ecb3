"""Surrogate-class batches from cached seeds: seed i, transformed, is an example of class i (also NPID's bank row i).

Online (default): every batch draws fresh transformations from a per-batch seed (rng_seed, batch number), so no
two epochs see the same copies. `fixed_copies=K`: the paper's fixed pool, K copies per seed, copy k of seed i
always drawn from the per-sample seed (i, k); the pool depends on the seeds only (identical on every input
pipeline and run), `rng_seed` only orders it.

`augment_on="host"` applies the chain in `Dataset.map` (batched: batch before map). `augment_on="device"` yields
the raw windows and the seed; the training step calls `chain(window / 255, aug_seed)` itself.

Hook, not built — merging near-duplicate seeds (the paper's clustering, 74.2 -> 75.4 on STL-10):
    merge_similar_seeds(seeds: Seeds, features: float32 [N,F], num_classes: int) -> int64 [N]
would cluster the seeds' features (from a first trained network) and return each seed's class; the pipelines
below would then emit `labels[seed]` instead of the seed id (and the classifier would get `num_classes` outputs).
"""
from __future__ import annotations

import tensorflow as tf

from exemplar_tf.augment.chain import TransformChain
from exemplar_tf.augment.transforms import ColorPCA
from exemplar_tf.choices import AUGMENT_ON
from exemplar_tf.data.patches import Seeds

PCA_MAX_PIXELS = 1_000_000


def fit_color_pca(seeds: Seeds, max_pixels: int = PCA_MAX_PIXELS) -> ColorPCA:
    """Colour PCA of the seed patches' pixels (scaled to [0, 1]); at most `max_pixels`, taken at a fixed stride,
    so the result is a deterministic function of the seeds."""
    pixels = seeds.central_patches().reshape(-1, 3)
    stride = max(1, len(pixels) // max_pixels)
    return ColorPCA.fit(pixels[::stride] / 255.0)


def surrogate_dataset(seeds: Seeds, chain: TransformChain, *, batch_size: int, rng_seed: int,
                      augment_on: str = "host", fixed_copies: int | None = None, shuffle: bool = True,
                      repeat: bool = True) -> tf.data.Dataset:
    """Batches of transformed seeds.

    host:   {"image": float32 [B,P,P,3] in [0,1], "label": int64 [B]}
    device: {"window": uint8 [B,S,S,3], "label": int64 [B], "aug_seed": int32 [2] (online) or [B,2] (fixed)}
    label = seed id. With `repeat` the stream is endless and every batch full; without it one pass over the
    seeds (or seed copies), the last batch possibly smaller. `shuffle` reshuffles each pass (seeded by rng_seed).
    """
    if augment_on not in AUGMENT_ON:
        raise ValueError(f"augment_on must be one of {AUGMENT_ON}, got {augment_on!r}")
    if fixed_copies is not None and fixed_copies <= 0:
        raise ValueError(f"fixed_copies must be a positive number of copies or None, got {fixed_copies}")
    copies = fixed_copies or 1
    windows = tf.constant(seeds.windows)
    run_seed = tf.constant(rng_seed % 2**31, tf.int32)
    items = tf.data.Dataset.range(len(seeds.windows) * copies)  # item = seed * copies + copy
    if shuffle:
        items = items.shuffle(len(seeds.windows) * copies, seed=rng_seed, reshuffle_each_iteration=True)
    if repeat:
        items = items.repeat()

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
            .enumerate()
            .map(element, num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE))
