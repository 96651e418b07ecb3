"""Instances in random order: every source image once per epoch, in a fresh full permutation each epoch.

Image folders list files by class and a bounded shuffle buffer over them yields batches of a few classes, so NPID's
input reads the source by *index* instead: a stateless permutation of 0..N-1 per epoch, then the image of each
index. Random access comes from one of

- the decoded images kept in memory (`in_memory`): every image decoded once, stored as one flat uint8 buffer with
  per-image offsets and shapes (images may differ in size), when the source fits in `max_bytes`;
- the source's own reader (`Source.read`, an image folder reads file `i`).

A source with neither (a streamed tfds or STL-10 binary split too large to keep) is shuffled through a buffer,
which is fine for those splits: their files are not sorted by class.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import tensorflow as tf

from exemplar_tf.data import sources

DEFAULT_MAX_CACHE_BYTES = 2 * 1024**3
SAMPLE_FOR_SIZE = 16  # images decoded to estimate a source's decoded size
STREAM_SHUFFLE_BUFFER = 10_000


@dataclasses.dataclass
class DecodedImages:
    """Images of possibly different sizes in one buffer: image i is flat[offsets[i]:...] reshaped to shapes[i]."""

    flat: np.ndarray  # uint8 [sum of H*W*3]
    offsets: np.ndarray  # int64 [N]
    shapes: np.ndarray  # int64 [N,3]
    labels: np.ndarray | None  # int64 [N]

    def reader(self) -> Callable[[tf.Tensor], dict]:
        """index int64 [] -> {"image": uint8 [H,W,3], "index", "label"?} (a tf function for Dataset.map)."""
        flat, offsets, shapes = tf.constant(self.flat), tf.constant(self.offsets), tf.constant(self.shapes)
        labels = None if self.labels is None else tf.constant(self.labels)

        def read(index):
            shape = tf.gather(shapes, index)
            image = tf.reshape(tf.slice(flat, [tf.gather(offsets, index)], [tf.reduce_prod(shape)]), shape)
            image.set_shape([None, None, 3])
            element = {"image": image, "index": index}
            if labels is not None:
                element["label"] = tf.gather(labels, index)
            return element

        return read


def estimated_decoded_bytes(source: sources.Source) -> int:
    """Decoded uint8 bytes of the whole source, from an evenly spread sample of SAMPLE_FOR_SIZE images."""
    sample, count = sources.spread_subset(source.dataset, source.num_examples, SAMPLE_FOR_SIZE)
    sizes = [int(np.prod(element["image"].shape)) for element in sample.as_numpy_iterator()]
    return int(np.mean(sizes) * source.num_examples) if count else 0


def in_memory(source: sources.Source, max_bytes: int = DEFAULT_MAX_CACHE_BYTES) -> DecodedImages | None:
    """The source decoded once into memory, or None if it would need more than `max_bytes`.

    Element `index` values must be 0..N-1 (every Source's contract); row i of the result is the image of index i.
    """
    if estimated_decoded_bytes(source) > max_bytes:
        return None
    images: list[np.ndarray] = [None] * source.num_examples  # type: ignore[list-item]
    labels = np.zeros(source.num_examples, np.int64) if source.num_classes is not None else None
    for element in source.dataset.prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
        images[int(element["index"])] = element["image"]
        if labels is not None:
            labels[int(element["index"])] = element["label"]
    shapes = np.array([image.shape for image in images], np.int64)
    sizes = shapes.prod(axis=1)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    flat = np.concatenate([image.reshape(-1) for image in images]) if images else np.zeros(0, np.uint8)
    return DecodedImages(flat, offsets, shapes, labels)


def epoch_permutations(num_examples: int, seed: int, first_epoch=0) -> tf.data.Dataset:
    """Infinite int64 indices: epoch e is a full permutation of 0..N-1 drawn statelessly from (seed, e); the stream
    begins at epoch `first_epoch` (an int or an int64 tensor)."""
    def permutation(epoch):
        return tf.data.Dataset.from_tensor_slices(tf.random.experimental.stateless_shuffle(
            tf.range(num_examples, dtype=tf.int64), seed=tf.stack([tf.constant(seed, tf.int64), epoch])))

    return tf.data.Dataset.range(first_epoch, 2**62).flat_map(permutation)


def permuted_indices(num_examples: int, *, seed: int, num_shards: int = 1, shard: int = 0, first,
                     count: int) -> tf.data.Dataset:
    """The `count` indices from element `first` (an int or an int64 tensor) of shard `shard` of
    `epoch_permutations(num_examples, seed)`, the indices `shuffled_epochs(start=first)` reads, computed from the
    epochs they fall in: a batch found by its number (the tf.data service's unit) costs one or two permutations
    of N, not the skip over everything before it."""
    position = tf.cast(first, tf.int64) * num_shards + shard  # in the unsharded stream
    epoch = position // num_examples
    return (epoch_permutations(num_examples, seed, first_epoch=epoch).skip(position - epoch * num_examples)
            .shard(num_shards, 0).take(count))


def shuffled_epochs(source: sources.Source, *, seed: int, num_shards: int = 1, shard: int = 0,
                    decoded: DecodedImages | None = None, start: int = 0) -> tf.data.Dataset:
    """Infinite source elements, each epoch a full permutation; shard k of `num_shards` takes every k-th index of
    the same permutation, so the shards of one epoch are disjoint and together cover the source once.

    `decoded` (from `in_memory`) or the source's own `read` gives random access; without either, a
    STREAM_SHUFFLE_BUFFER shuffle of the streamed source (see the module docstring).
    `start`: the shard's stream begins at its element `start` (a resumed run): the same elements the
    uninterrupted stream has from there. Random access skips indices only (cheap); a streamed source reads and
    skips the elements before it.
    """
    read = decoded.reader() if decoded is not None else source.read
    if read is None:
        return (source.dataset.shard(num_shards, shard)
                .shuffle(STREAM_SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True).repeat().skip(start))
    return (epoch_permutations(source.num_examples, seed).shard(num_shards, shard).skip(start)
            .map(read, num_parallel_calls=tf.data.AUTOTUNE))


def one_shuffled_pass(source: sources.Source, *, seed: int, decoded: DecodedImages | None = None
                      ) -> tf.data.Dataset:
    """Every source element exactly once, in random order (the first epoch of `shuffled_epochs`): for passes over
    the whole source whose batches must mix its images, as training batches do (an image folder lists its files by
    class)."""
    return shuffled_epochs(source, seed=seed, decoded=decoded).take(source.num_examples)


def elements_at(source: sources.Source, *, seed: int, num_shards: int = 1, shard: int = 0,
                decoded: DecodedImages | None = None, first, count: int) -> tf.data.Dataset:
    """The `count` elements of `shuffled_epochs(...)` from its element `first` on (`permuted_indices`, then read):
    the same elements, found without reading the stream before them. Needs random access (`decoded` or
    `source.read`)."""
    read = decoded.reader() if decoded is not None else source.read
    if read is None:
        raise ValueError("elements_at needs random access: decoded images or a source with read")
    return (permuted_indices(source.num_examples, seed=seed, num_shards=num_shards, shard=shard, first=first,
                             count=count)
            .map(read, num_parallel_calls=tf.data.AUTOTUNE))
