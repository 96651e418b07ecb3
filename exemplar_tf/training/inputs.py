"""Per-replica input pipelines for the two training methods.

exemplar: the cached seeds (surrogate classes) with the transformation chain drawn afresh each time.
npid:     every image of the source is its own instance, with NPID's crop/jitter/gray/flip augmentation.

Both yield per-replica batches `{"image": float32 [b,P,P,3] in [0,1], "label": int64 [b]}` (`label` is the
surrogate class / bank row); with `--augment_on=device` the exemplar pipeline yields raw windows instead and the
chain runs inside the training step.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable

import numpy as np
import tensorflow as tf

from exemplar_tf.augment import npid as npid_augment
from exemplar_tf.augment.chain import TransformChain
from exemplar_tf.data import patches, sources, surrogate
from exemplar_tf.training.config import TrainConfig


@dataclasses.dataclass
class TrainingData:
    """What the loop needs to know about its data."""

    num_instances: int  # N: surrogate classes or image instances (bank rows)
    mean_rgb: np.ndarray  # float32 [3], in [0, 1]
    dataset_fn: object  # tf.distribute.InputContext -> per-replica tf.data.Dataset
    chain: TransformChain | None  # the transformation chain (exemplar only)
    preview_images: np.ndarray  # float32 [n,P,P,3] in [0,1], a few training inputs for TensorBoard
    eval_images: np.ndarray  # uint8 [n,H,W,3] whole training images, for feature percentiles
    instances: Callable[[], tf.data.Dataset]  # -> {"image": float32 [P,P,3] in [0,1], "index": int64}, one
    #                                             un-augmented input per bank row (for --bank_init=features)


def _limited_source(config: TrainConfig) -> sources.Source:
    """The training source; with --max_instances, an evenly spread subset whose "index" is renumbered 0..n-1
    (bank rows), so a class-sorted folder still gives every class."""
    source = sources.load_source(config.source, config.split, data_dir=config.data_dir)
    if not config.max_instances or config.max_instances >= source.num_examples:
        return source
    subset, count = sources.spread_subset(source.dataset, source.num_examples, config.max_instances)
    renumbered = subset.enumerate().map(lambda position, element: {**element, "index": position})
    return dataclasses.replace(source, dataset=renumbered, num_examples=count)


def _whole_images(source: sources.Source, count: int, size: int) -> np.ndarray:
    """uint8 [count,size,size,3]: the first `count` source images resized to size×size."""
    resized = source.dataset.take(count).map(
        lambda e: tf.cast(tf.clip_by_value(tf.image.resize(e["image"], (size, size)), 0, 255), tf.uint8)
    )
    return np.stack(list(resized.as_numpy_iterator()))


def percentile_images(config: TrainConfig, source: sources.Source | None = None) -> np.ndarray:
    """uint8 [n,H,W,3]: the whole training images the export's feature percentiles are measured on (exemplar:
    64 at max(96, 3 * patch_size), npid: 256 at image_size), from `source` (default: the run's source limited by
    --max_instances). The training loop and `export.export_run` both take them from here."""
    source = source or _limited_source(config)
    if config.method == "exemplar":
        return _whole_images(source, 64, max(config.patch_size * 3, 96))
    return _whole_images(source, 256, config.image_size)


def _as_instances(images: tf.data.Dataset, size: int) -> tf.data.Dataset:
    """{"image": uint8/float [H,W,C], "index"} -> {"image": float32 [size,size,3] in [0,1], "index"}."""
    def resize(element):
        image = tf.image.resize(tf.cast(element["image"], tf.float32), (size, size)) / 255.0
        return {"image": tf.clip_by_value(image, 0.0, 1.0), "index": tf.cast(element["index"], tf.int64)}

    return images.map(resize, num_parallel_calls=tf.data.AUTOTUNE)


def load_or_sample_seeds(config: TrainConfig, source: sources.Source) -> patches.Seeds:
    """The run's seeds: read from `<run_dir>/seeds.npz`, or sampled once and written atomically."""
    path = os.path.join(config.run_dir, "seeds.npz")
    if os.path.exists(path):
        return patches.Seeds.load(path)
    seeds = patches.sample_seeds(
        source.dataset,
        num_seeds=config.num_seeds,
        patch_size=config.patch_size,
        seeds_per_image=config.seeds_per_image,
        rng_seed=config.seed,
    )
    seeds.save(path)
    return seeds


def exemplar_data(config: TrainConfig) -> TrainingData:
    source = _limited_source(config)
    seeds = load_or_sample_seeds(config, source)
    pca = surrogate.fit_color_pca(seeds)
    chain = TransformChain(config.preset, config.transforms, pca, config.patch_size)
    mean_rgb = (seeds.windows.reshape(-1, 3).mean(axis=0) / 255.0).astype(np.float32)

    def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        return surrogate.surrogate_dataset(
            seeds,
            chain,
            batch_size=ctx.get_per_replica_batch_size(config.batch_size),
            rng_seed=config.seed * 1000 + ctx.input_pipeline_id,
            augment_on=config.augment_on,
            fixed_copies=config.fixed_copies or None,
        )

    preview = surrogate.surrogate_dataset(seeds, chain, batch_size=32, rng_seed=config.seed, augment_on="host")
    preview_images = next(iter(preview))["image"].numpy()
    return TrainingData(
        num_instances=len(seeds.windows),
        mean_rgb=mean_rgb,
        dataset_fn=dataset_fn,
        chain=chain,
        preview_images=preview_images,
        eval_images=percentile_images(config, source),
        instances=lambda: _as_instances(tf.data.Dataset.from_tensor_slices(
            {"image": seeds.central_patches(), "index": np.arange(len(seeds.windows))}), config.patch_size),
    )


def npid_data(config: TrainConfig) -> TrainingData:
    source = _limited_source(config)
    eval_images = percentile_images(config, source)
    mean_rgb = (eval_images.reshape(-1, 3).mean(axis=0) / 255.0).astype(np.float32)

    def augment(element, seed):
        return {
            "image": npid_augment.npid_augment(element["image"], config.image_size, seed),
            "label": element["index"],
        }

    def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        shard = source.dataset.shard(ctx.num_input_pipelines, ctx.input_pipeline_id)
        seeds = tf.data.Dataset.random(seed=config.seed * 1000 + ctx.input_pipeline_id).batch(2)
        return (
            tf.data.Dataset.zip(shard.shuffle(10_000, seed=config.seed, reshuffle_each_iteration=True).repeat(),
                                seeds)
            .map(augment, num_parallel_calls=tf.data.AUTOTUNE)
            .batch(ctx.get_per_replica_batch_size(config.batch_size), drop_remainder=True)
            .prefetch(tf.data.AUTOTUNE)
        )

    preview_ctx = tf.distribute.InputContext(1, 0, 1)
    preview_images = next(iter(dataset_fn(preview_ctx).unbatch().batch(32)))["image"].numpy()
    return TrainingData(
        num_instances=source.num_examples,
        mean_rgb=mean_rgb,
        dataset_fn=dataset_fn,
        chain=None,
        preview_images=preview_images,
        eval_images=eval_images,
        instances=lambda: _as_instances(source.dataset, config.image_size),
    )


def training_data(config: TrainConfig) -> TrainingData:
    return exemplar_data(config) if config.method == "exemplar" else npid_data(config)
