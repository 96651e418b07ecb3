"""Per-replica input pipelines for the two training methods.

exemplar: --seed_sampling=fixed: the cached seeds (surrogate classes) with the transformation chain drawn afresh
          each time; online: every source image is a class, each visit a fresh energy-weighted patch of it + chain.
npid:     every image of the source is its own instance, with NPID's crop/jitter/gray/flip augmentation.

Every pipeline yields per-replica batches of `label` int64 [b] (the surrogate class / bank row) with the views
its objective asks for (`views.py` states the contract): one view augmented in tf.data is `{"image": float32
[b,P,P,3] in [0,1], "label"}`; with `--augment_on=device` the exemplar pipelines yield raw windows (fixed) or whole
images (online) and npid whole uint8 images, with a seed, and the sampler / chain / NPID's augmentation run
batched inside the step (`TrainingData.views`). Several views augmented on the host are the device computation
run in tf.data (`views.views_on_host`), so both places give the same views.

With --data_service every pipeline is built batch by batch from batch numbers (`by_batch_number`, the source the
tf.data service shards among its workers, `data.service`) and read from the service (`on_service`).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable

import numpy as np
import tensorflow as tf

from exemplar_tf.augment import npid as npid_augment
from exemplar_tf.augment import surrogate
from exemplar_tf.augment.chain import TransformChain
from exemplar_tf.augment.transforms import ColorPCA
from exemplar_tf.data import instances as data_instances
from exemplar_tf.data import patches, service, sources
from exemplar_tf.data.images import resize_uint8
from exemplar_tf.errors import InputError
from exemplar_tf.io.status import status
from exemplar_tf.training import rundir
from exemplar_tf.training.views import Augment, Views, device_views, one_host_view, stacked_views, views_on_host
from exemplar_tf.training.config import TrainConfig, seeds_per_image_for

WINDOW_FACTOR = 2.0  # seed window side / patch side (room for the chain's rotation and scaling)


@dataclasses.dataclass
class TrainingData:
    """What the loop needs to know about its data."""

    num_instances: int  # N: surrogate classes or image instances (bank rows)
    mean_rgb: np.ndarray  # float32 [3], in [0, 1]
    dataset_fn: DatasetFn  # (tf.distribute.InputContext, start batch) -> the per-replica batches from that batch on
    views: Views  # the contract: a batch of dataset_fn's -> its views (augmented here or in the step)
    preview_images: np.ndarray  # float32 [n,P,P,3] in [0,1], a few training inputs for TensorBoard
    eval_images: np.ndarray  # uint8 [n,H,W,3] whole training images, for feature percentiles
    instances: Callable[[], tf.data.Dataset]  # -> {"image": float32 [P,P,3] in [0,1], "index": int64}, one
    #   un-augmented input per bank row in random order (--bank_init=features: batch statistics of mixed classes)
    skipped: tuple[tuple[str, str], ...] = ()  # (path, reason) of the files --skip_bad_images left out


DatasetFn = Callable[[tf.distribute.InputContext, int], tf.data.Dataset]  # (context, first batch) -> batches


def with_views(config: TrainConfig, count: int, host_fn: DatasetFn, raw_fn: DatasetFn,
               augment: Augment) -> tuple[DatasetFn, Views]:
    """(dataset_fn, views) for `count` views of each instance: one view on the host keeps the host pipeline
    (`host_fn`); otherwise the raw-input batches of `raw_fn` are augmented by `augment`, in the step (device) or
    in tf.data (host, `views_on_host`)."""
    if count == 1 and config.augment_on == "host":
        return host_fn, one_host_view
    views = device_views(augment, count)
    if config.augment_on == "device":
        return raw_fn, views
    return (lambda ctx, start=0: views_on_host(raw_fn(ctx, start), views)), stacked_views


def _limited_source(config: TrainConfig) -> sources.Source:
    """The training source; with --max_instances, exactly that many images evenly spread over it, "index"
    renumbered 0..n-1 (bank rows), so a class-sorted folder still gives every class."""
    min_size = patches.min_image_side(config.patch_size) if config.method == "exemplar" else 0
    source = sources.load_source(config.source, config.split, data_dir=config.data_dir, min_size=min_size,
                                 skip_bad_images=config.skip_bad_images)
    return sources.spread_source(source, config.max_instances)


def _whole_images(source: sources.Source, count: int, size: int) -> np.ndarray:
    """uint8 [count,size,size,3]: `count` source images evenly spread over it, resized to size×size (the first
    images of a class-sorted folder would all be one class)."""
    subset, _ = sources.spread_subset(source.dataset, source.num_examples, count)
    resized = subset.map(lambda e: resize_uint8(e["image"], size, antialias=False), num_parallel_calls=tf.data.AUTOTUNE)
    return np.stack(list(resized.as_numpy_iterator()))


def percentile_images(config: TrainConfig, source: sources.Source | None = None) -> np.ndarray:
    """uint8 [n,H,W,3]: the whole training images the export's feature percentiles are measured on (exemplar:
    64 at max(96, 3 * patch_size), npid: 256 at image_size), from `source` (default: the run's source limited by
    --max_instances). The training loop and `serving.runs.export_run` both take them from here."""
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


def _shuffled_slices(images: np.ndarray, seed: int) -> tf.data.Dataset:
    """{"image": images[i], "index": i} for every row i of `images` [N,...], in a random order drawn from `seed`
    (seeds are sampled image by image, so in index order their batches would hold one class of a class-sorted
    folder)."""
    order = np.random.default_rng(seed).permutation(len(images))
    return tf.data.Dataset.from_tensor_slices({"image": images[order], "index": order.astype(np.int64)})


def load_or_sample_seeds(config: TrainConfig, source: sources.Source, chief: bool = True) -> patches.Seeds:
    """The run's seeds: read from `<run_dir>/seeds.npz`, or sampled once by the chief and written atomically
    (other workers wait for the chief's file). A reused run directory's flags were checked against this run's
    (`rundir.check_reuse`), so its seeds belong to the same settings."""
    path = os.path.join(config.run_dir, rundir.SEEDS_FILE)
    if not chief:
        rundir.wait_for_file(path)
    if os.path.exists(path):
        return patches.Seeds.load(path)
    seeds = patches.sample_seeds(
        source.dataset,
        num_seeds=config.num_seeds,
        patch_size=config.patch_size,
        window_factor=WINDOW_FACTOR,
        seeds_per_image=seeds_per_image_for(config, source.num_examples),
        rng_seed=config.seed,
    )
    seeds.save(path)
    return seeds


def exemplar_data(config: TrainConfig, chief: bool = True, views: int = 1) -> TrainingData:
    if config.seed_sampling == "online":
        return online_exemplar_data(config, views)
    if views > 1 and config.fixed_copies:
        raise InputError(f"--fixed_copies draws one fixed copy per seed and visit: it cannot give the {views} views "
                         f"per instance this objective needs (--momentum_encoder); leave --fixed_copies at 0")
    source = _limited_source(config)
    seeds = load_or_sample_seeds(config, source, chief)
    pca = surrogate.fit_color_pca(seeds)
    chain = TransformChain(config.preset, config.transforms, pca, config.patch_size, config.scale_max)
    mean_rgb = (seeds.windows.reshape(-1, 3).mean(axis=0) / 255.0).astype(np.float32)

    def seed_batches(ctx: tf.distribute.InputContext, start: int, augment_on: str) -> tf.data.Dataset:
        batch_size = ctx.get_per_replica_batch_size(config.batch_size)
        rng_seed = config.seed * 1000 + ctx.input_pipeline_id

        def from_batch(first, items=None):
            return surrogate.surrogate_dataset(seeds, chain, batch_size=batch_size, rng_seed=rng_seed,
                                               augment_on=augment_on, fixed_copies=config.fixed_copies or None,
                                               start_batch=first, items=items)

        if not config.data_service:
            return from_batch(start)
        num_items = len(seeds.windows) * (config.fixed_copies or 1)  # the service's order: stateless permutations
        return by_batch_number(start, lambda number: from_batch(number, data_instances.permuted_indices(
            num_items, seed=rng_seed, first=number * batch_size, count=batch_size)))

    dataset_fn, batch_views = with_views(config, views, lambda ctx, start=0: seed_batches(ctx, start, "host"),
                                         lambda ctx, start=0: seed_batches(ctx, start, "device"),
                                         surrogate.window_augment(chain))

    preview = surrogate.surrogate_dataset(seeds, chain, batch_size=32, rng_seed=config.seed, augment_on="host")
    preview_images = next(iter(preview))["image"].numpy()
    return TrainingData(
        num_instances=len(seeds.windows),
        mean_rgb=mean_rgb,
        dataset_fn=dataset_fn,
        views=batch_views,
        preview_images=preview_images,
        eval_images=percentile_images(config, source),
        instances=lambda: _as_instances(_shuffled_slices(seeds.central_patches(), config.seed), config.patch_size),
        skipped=source.skipped,
    )


def one_size(source: sources.Source, decoded: data_instances.DecodedImages | None) -> bool:
    """Whether every image of `source` has the same size (known from the decoded shapes or a static image shape)."""
    if decoded is not None:
        return len(np.unique(decoded.shapes, axis=0)) <= 1
    return source.dataset.element_spec["image"].shape.is_fully_defined()


def online_exemplar_data(config: TrainConfig, views: int = 1) -> TrainingData:
    """--seed_sampling=online: N = the source's images; each visit of image i draws a fresh energy-weighted patch of
    it (then the chain), labelled i. Colour PCA and mean RGB come from the percentile images (spread over the
    source). Host batches of decoded images of one size draw from energy CDFs computed once
    (`surrogate.energy_cache`, when they fit)."""
    source = _limited_source(config)
    if config.objective == "nce" and config.nce_m >= source.num_examples:
        raise InputError(f"--nce_m={config.nce_m} must be smaller than the {source.num_examples} images of "
                         f"--source={config.source} (--seed_sampling=online: one instance per image)")
    eval_images = percentile_images(config, source)
    pixels = eval_images.reshape(-1, 3)
    pca = ColorPCA.fit(pixels[::max(1, len(pixels) // surrogate.PCA_MAX_PIXELS)] / 255.0)
    chain = TransformChain(config.preset, config.transforms, pca, config.patch_size, config.scale_max)
    window_size = round(config.patch_size * WINDOW_FACTOR)
    decoded = data_instances.in_memory(source)
    check_servable(config, source, decoded)
    same_size = one_size(source, decoded)
    if config.augment_on == "device" and not same_size:
        raise InputError(f"--seed_sampling=online --augment_on=device needs images of one size (a batch carries "
                         f"whole images); --source={config.source} has several: use --augment_on=host")
    if views > 1 and not same_size:
        raise InputError(f"--seed_sampling=online with {views} views per instance (--momentum_encoder) needs images of "
                         f"one size (the views are drawn from whole-image batches); --source={config.source} has "
                         f"several")
    energy = None
    if decoded is not None and same_size and config.augment_on == "host" and source.num_examples:
        energy = surrogate.energy_cache(decoded.flat.reshape(source.num_examples, *decoded.shapes[0]),
                                        patch_size=config.patch_size)
        if energy is not None:
            print(f"Energy CDFs of the {source.num_examples} images kept in memory "
                  f"({energy.cdf.shape[1] * source.num_examples * 4 / 2**20:.0f} MiB)")

    def dataset_fn(ctx: tf.distribute.InputContext, start: int = 0,
                   augment_on: str = config.augment_on) -> tf.data.Dataset:
        batch_size = ctx.get_per_replica_batch_size(config.batch_size)

        def from_batch(first, elements):
            return surrogate.online_dataset(elements, chain, batch_size=batch_size,
                                            rng_seed=config.seed * 1000 + ctx.input_pipeline_id,
                                            window_size=window_size, one_size=same_size, augment_on=augment_on,
                                            energy=energy if augment_on == "host" else None, start_batch=first)

        return instance_batches(config, source, decoded, ctx, start, from_batch)

    preview = dataset_fn(tf.distribute.InputContext(1, 0, 1), augment_on="host")
    batches_fn, batch_views = with_views(config, views, dataset_fn,
                                         lambda ctx, start=0: dataset_fn(ctx, start, augment_on="device"),
                                         surrogate.source_image_augment(chain, window_size=window_size))
    return TrainingData(
        num_instances=source.num_examples,
        mean_rgb=(pixels.mean(axis=0) / 255.0).astype(np.float32),
        dataset_fn=batches_fn,
        views=batch_views,
        preview_images=next(iter(preview.unbatch().batch(32)))["image"].numpy(),
        eval_images=eval_images,
        instances=lambda: _as_instances(data_instances.one_shuffled_pass(source, seed=config.seed, decoded=decoded),
                                        config.patch_size),
        skipped=source.skipped,
    )


def npid_batch_augment(size: int) -> Augment:
    """NPID's augmentation of a device batch: ({"source_image": uint8 [B,H,W,3], ...}, seed int32 [2]) -> float32
    [B,size,size,3] in [0,1] (`npid_augment.npid_augment_batch`)."""
    def augment(batch: dict, seed) -> tf.Tensor:
        return npid_augment.npid_augment_batch(batch["source_image"], size, seed)

    return augment


def npid_batches(config: TrainConfig, source: sources.Source, decoded, ctx: tf.distribute.InputContext,
                 start: int = 0, augment_on: str = "host") -> tf.data.Dataset:
    """NPID's per-replica batches from batch `start` on. host: `npid_augment` per image in `Dataset.map`, seeded
    from the pipeline's random stream (on the tf.data service, whose batches are found by number: from (pipeline
    seed, element number), as that stream cannot skip ahead cheaply) -> {"image", "label"}; device:
    {"source_image": uint8 [b,H,W,3], "label", "aug_seed": int32 [2] = (pipeline seed, batch number)}
    (`npid_batch_augment`, one image size)."""
    rng_seed = config.seed * 1000 + ctx.input_pipeline_id
    batch_size = ctx.get_per_replica_batch_size(config.batch_size)

    def from_batch(first, elements):
        if config.data_service:
            seeds = tf.data.Dataset.range(first * batch_size, first * batch_size + batch_size).map(
                lambda number: tf.stack([tf.constant(rng_seed, tf.int64), number]))
        else:
            seeds = tf.data.Dataset.random(seed=rng_seed).batch(2).skip(first * batch_size)
        return npid_batches_of(config, elements, seeds, rng_seed, batch_size, first, augment_on)

    return instance_batches(config, source, decoded, ctx, start, from_batch)


def npid_batches_of(config: TrainConfig, elements: tf.data.Dataset, seeds: tf.data.Dataset, rng_seed: int,
                    batch_size: int, start, augment_on: str) -> tf.data.Dataset:
    """`npid_batches` from its source elements and per-element augmentation seeds (host), batch `start` first."""
    if augment_on == "device":
        run_seed = tf.constant(rng_seed % 2**31, tf.int32)

        def device_batch(batch_number, batch):
            return {"source_image": tf.cast(batch["image"], tf.uint8), "label": batch["index"],
                    "aug_seed": tf.stack([run_seed, tf.cast(batch_number, tf.int32)])}

        return (elements.batch(batch_size, drop_remainder=True).enumerate(start=start)
                .map(device_batch, num_parallel_calls=tf.data.AUTOTUNE)
                .prefetch(tf.data.AUTOTUNE))

    def augment(element, seed):
        return {"image": npid_augment.npid_augment(element["image"], config.image_size, seed),
                "label": element["index"]}

    return (tf.data.Dataset.zip(elements, seeds)
            .map(augment, num_parallel_calls=tf.data.AUTOTUNE)
            .batch(batch_size, drop_remainder=True)
            .prefetch(tf.data.AUTOTUNE))


def npid_data(config: TrainConfig, views: int = 1) -> TrainingData:
    """Every source image is instance i (bank row i), augmented by NPID's crop/jitter/gray/flip (`npid_batches`)."""
    source = _limited_source(config)
    eval_images = percentile_images(config, source)
    decoded = data_instances.in_memory(source)
    check_servable(config, source, decoded)
    if decoded is not None:
        print(f"Decoded the {source.num_examples} training images into memory ({decoded.flat.nbytes / 2**20:.0f} MiB)")
    if config.augment_on == "device" and not one_size(source, decoded):
        raise InputError(f"--method=npid --augment_on=device needs images of one size (a batch carries whole "
                         f"images); --source={config.source} has several: use --augment_on=host")
    if views > 1 and not one_size(source, decoded):
        raise InputError(f"--method=npid with {views} views per instance (--momentum_encoder) needs images of one "
                         f"size (the views are drawn from whole-image batches); --source={config.source} has several")
    preview = npid_batches(config, source, decoded, tf.distribute.InputContext(1, 0, 1))
    batches_fn, batch_views = with_views(
        config, views, lambda ctx, start=0: npid_batches(config, source, decoded, ctx, start, config.augment_on),
        lambda ctx, start=0: npid_batches(config, source, decoded, ctx, start, "device"),
        npid_batch_augment(config.image_size))
    return TrainingData(
        num_instances=source.num_examples,
        mean_rgb=(eval_images.reshape(-1, 3).mean(axis=0) / 255.0).astype(np.float32),
        dataset_fn=batches_fn,
        views=batch_views,
        preview_images=next(iter(preview.unbatch().batch(32)))["image"].numpy(),
        eval_images=eval_images,
        instances=lambda: _as_instances(data_instances.one_shuffled_pass(source, seed=config.seed, decoded=decoded),
                                        config.image_size),
        skipped=source.skipped,
    )


def by_batch_number(start, batch_at: Callable[[tf.Tensor], tf.data.Dataset]) -> tf.data.Dataset:
    """The batches numbered start, start+1, ..., batch b made by `batch_at(b)` (a one-batch dataset), several at a
    time, in number order. The source is the range of batch numbers: what the tf.data service shards
    (`data.service`); batch b holds what the in-process stream's batch b holds (fixed seeds: drawn in their own
    stateless order)."""
    return (tf.data.Dataset.range(start, 2**62)
            .interleave(batch_at, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .prefetch(tf.data.AUTOTUNE))


def instance_batches(config: TrainConfig, source: sources.Source, decoded, ctx: tf.distribute.InputContext,
                     start, from_batch: Callable[..., tf.data.Dataset]) -> tf.data.Dataset:
    """`from_batch(first batch, source elements from there)` over this pipeline's shard of `shuffled_epochs`:
    one stream from `start` in-process, one batch per number on the tf.data service (`by_batch_number`)."""
    batch_size = ctx.get_per_replica_batch_size(config.batch_size)
    shard = dict(seed=config.seed, num_shards=ctx.num_input_pipelines, shard=ctx.input_pipeline_id, decoded=decoded)
    if not config.data_service:
        return from_batch(start, data_instances.shuffled_epochs(source, start=start * batch_size, **shard))
    return by_batch_number(start, lambda number: from_batch(number, data_instances.elements_at(
        source, first=number * batch_size, count=batch_size, **shard)))


def check_servable(config: TrainConfig, source: sources.Source, decoded) -> None:
    """On the tf.data service a batch is found by its number, which needs the source's images by index."""
    if config.data_service and decoded is None and source.read is None:
        raise InputError(f"--data_service needs the images of --source={config.source} by index (decoded in memory "
                         f"or an image folder); this source is too large to keep and is streamed: use a folder:<dir> "
                         f"copy of it, or train without --data_service")


def on_service(config: TrainConfig, dataset_fn: DatasetFn) -> DatasetFn:
    """`dataset_fn` run on the tf.data service's workers (`data.service`: distributed_epoch over batch numbers,
    one job per input pipeline and trainer process); the dispatcher must answer within seconds."""
    service.wait_for_dispatcher(config.data_service)

    def served_fn(ctx: tf.distribute.InputContext, start: int = 0) -> tf.data.Dataset:
        name = service.job_name(config.run_dir, ctx.input_pipeline_id, ctx.num_input_pipelines, start)
        status(service.start_line(config.data_service, name, start))
        return service.served(dataset_fn(ctx, start), config.data_service, name)

    return served_fn


def training_data(config: TrainConfig, chief: bool = True, views: int = 1) -> TrainingData:
    """The run's data with `views` augmented views of each instance per batch (the objective's `views`); only the
    chief writes shared files (the seed cache). With --data_service its batches come from the tf.data service."""
    data = exemplar_data(config, chief, views) if config.method == "exemplar" else npid_data(config, views)
    if config.data_service:
        return dataclasses.replace(data, dataset_fn=on_service(config, data.dataset_fn))
    return data
