"""Host surrogate-data pipelines' throughput, whether they keep up with training the medium network, and how fast
the run's fixed seeds are drawn.

    python benchmarks/pipeline.py
    python benchmarks/pipeline.py --preset=paper --transforms=translate,hue --batches=50

Images: `--images` 96×96 crops (STL-10's size) cut from the demo photographs at evenly spread positions. Pipelines,
all transforms of the `release_code` preset, batch 128, 32×32 patches:
  fixed:  `surrogate_dataset(..., augment_on="host")` over `--num_seeds` seeds drawn once from the crops;
  online: `online_dataset(..., augment_on="host")` over the crops in shuffled epochs (a fresh energy-weighted
          patch of the image at every visit, batched sampler);
  online_cached: the same batches with the crops' energy CDFs computed once (`surrogate.energy_cache`, as
          training does for decoded images of one size), so each visit only draws and cuts its window.
The training step is the medium Exemplar-CNN + SurrogateClassifier(num_seeds) with softmax loss and SGD (momentum
0.9) on a fixed batch (no input pipeline). Pipeline and training blocks are interleaved (`--repeats` each, after
warm-up) so that a busy machine slows them alike; a figure is the median block.
Seed sampling: `patches.sample_seeds` (TF, batched, parallel map) vs the NumPy/OpenCV sampler it replaced
(`tests/numpy_seeds.py`, one image at a time), one seed per image from the same crops, seeds/s.
Prints one JSON line per figure (> 1 for a ratio over training: the host pipeline produces batches faster than the
network consumes them, when the two do not compete for the same cores).
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from exemplar_tf.augment.chain import TransformChain  # noqa: E402
from exemplar_tf.augment.presets import ALL_TRANSFORMS, PRESETS  # noqa: E402
from exemplar_tf.choices import PAPER_TRANSFORMS  # noqa: E402
from exemplar_tf.augment import surrogate  # noqa: E402
from exemplar_tf.data import instances, patches, sources  # noqa: E402
from exemplar_tf.models import SurrogateClassifier, build_encoder  # noqa: E402
from exemplar_tf.objectives import losses  # noqa: E402
from machine import cpu_name  # noqa: E402  (benchmarks/ is on the path when run)

FLAGS = flags.FLAGS
flags.DEFINE_enum("preset", "release_code", list(PRESETS), "transformation ranges")
flags.DEFINE_list("transforms", list(PAPER_TRANSFORMS), f"transforms in the chain, of {','.join(ALL_TRANSFORMS)}")
flags.DEFINE_integer("batch_size", 128, "samples per batch")
flags.DEFINE_integer("patch_size", 32, "patch side")
flags.DEFINE_integer("num_seeds", 1200, "seeds (and classifier outputs)")
flags.DEFINE_integer("images", 4800, "96x96 crops cut from the demo photographs (online instances; the TF sampler "
                     "draws one seed from each, its one-time graph tracing included)")
flags.DEFINE_integer("numpy_images", 300, "crops the NumPy sampler draws a seed from (it is the slow one)")
flags.DEFINE_string("arch", "medium", "encoder trained in the comparison")
flags.DEFINE_integer("batches", 40, "pipeline batches per timed block")
flags.DEFINE_integer("steps", 10, "training steps per timed block")
flags.DEFINE_integer("warmup", 3, "untimed batches (per pipeline block) and steps first")
flags.DEFINE_integer("repeats", 3, "timed blocks of each, interleaved")


def pipeline_block(dataset: tf.data.Dataset, count: int) -> float:
    """Seconds to pull `count` batches (images materialised on the host) from a fresh iterator after `--warmup`
    untimed ones; the iterator is dropped afterwards, so no prefetching runs during (or fills up across) the
    training blocks."""
    iterator = iter(dataset)
    for _ in range(FLAGS.warmup):
        next(iterator)["image"].numpy()
    start = time.perf_counter()
    for _ in range(count):
        next(iterator)["image"].numpy()
    return time.perf_counter() - start


def softmax_train_step(arch: str, num_classes: int, mean_rgb):
    """step(images [B,P,P,3], labels [B]) -> loss: encoder + surrogate classifier, softmax loss, SGD momentum 0.9."""
    encoder = build_encoder(arch, input_size=FLAGS.patch_size, mean_rgb=mean_rgb)
    classifier = SurrogateClassifier(num_classes)
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)

    @tf.function
    def step(images, labels):
        with tf.GradientTape() as tape:
            loss = losses.softmax_loss(classifier(encoder(images, training=True), training=True), labels)
        variables = encoder.trainable_variables + classifier.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    return step


def train_block(step, images, labels, count: int) -> float:
    """Seconds for `count` steps (waits for the last loss)."""
    start = time.perf_counter()
    for _ in range(count):
        loss = step(images, labels)
    loss.numpy()
    return time.perf_counter() - start


def demo_crops(count: int, side: int = 96) -> np.ndarray:
    """uint8 [count,side,side,3]: side×side crops of the demo photographs, at evenly spread positions."""
    photos = [element["image"] for element in sources.load_source("demo", "train").dataset.as_numpy_iterator()]
    crops = []
    for i in range(count):
        photo = photos[i % len(photos)]
        step = i // len(photos)
        rows, columns = photo.shape[0] - side, photo.shape[1] - side
        top, left = (step * 37) % (rows + 1), (step * 53) % (columns + 1)
        crops.append(photo[top:top + side, left:left + side])
    return np.stack(crops)


def seed_sampling_rates(crops: np.ndarray) -> tuple[float, float]:
    """(TF seeds/s, NumPy seeds/s): one seed per crop, median of --repeats."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
    import numpy_seeds  # the NumPy/OpenCV sampler the TF one replaced

    dataset = tf.data.Dataset.from_tensor_slices({"image": crops, "index": np.arange(len(crops))})
    patches.sample_seeds(dataset, num_seeds=patches.SEED_BATCH, rng_seed=0)  # warm-up (traces the map function)
    tf_seconds, numpy_seconds = [], []
    rng = np.random.default_rng(0)
    for _ in range(FLAGS.repeats):
        start = time.perf_counter()
        patches.sample_seeds(dataset, num_seeds=len(crops), rng_seed=0)
        tf_seconds.append(time.perf_counter() - start)
        start = time.perf_counter()
        for crop in crops[:FLAGS.numpy_images]:
            numpy_seeds.image_seeds(crop, 1, rng)
        numpy_seconds.append(time.perf_counter() - start)
    return len(crops) / statistics.median(tf_seconds), FLAGS.numpy_images / statistics.median(numpy_seconds)


def main(argv):
    del argv
    crops = demo_crops(FLAGS.images)
    seeds = patches.sample_seeds(tf.data.Dataset.from_tensor_slices({"image": crops, "index": np.arange(len(crops))}),
                                 num_seeds=FLAGS.num_seeds, patch_size=FLAGS.patch_size, rng_seed=0)
    chain = TransformChain(FLAGS.preset, FLAGS.transforms, surrogate.fit_color_pca(seeds), FLAGS.patch_size)
    crop_tensor = tf.constant(crops)
    elements = instances.epoch_permutations(len(crops), 0).map(lambda i: {"image": tf.gather(crop_tensor, i),
                                                                          "index": i})
    online = dict(batch_size=FLAGS.batch_size, rng_seed=0, window_size=2 * FLAGS.patch_size, one_size=True)
    pipelines = {
        "fixed": surrogate.surrogate_dataset(seeds, chain, batch_size=FLAGS.batch_size, rng_seed=0),
        "online": surrogate.online_dataset(elements, chain, **online),
        "online_cached": surrogate.online_dataset(
            elements, chain, energy=surrogate.energy_cache(crops, patch_size=FLAGS.patch_size), **online),
    }
    mean_rgb = seeds.central_patches().reshape(-1, 3).mean(axis=0) / 255.0
    step = softmax_train_step(FLAGS.arch, FLAGS.num_seeds, mean_rgb)
    batch = next(iter(pipelines["fixed"]))
    images, labels = batch["image"], batch["label"]

    train_block(step, images, labels, FLAGS.warmup)
    pipeline_seconds, train_seconds = {mode: [] for mode in pipelines}, []
    for _ in range(FLAGS.repeats):
        for mode, dataset in pipelines.items():
            pipeline_seconds[mode].append(pipeline_block(dataset, FLAGS.batches))
        train_seconds.append(train_block(step, images, labels, FLAGS.steps))
    images_per_s = FLAGS.batch_size * FLAGS.steps / statistics.median(train_seconds)
    tf_seeds_per_s, numpy_seeds_per_s = seed_sampling_rates(crops)

    cpu = cpu_name()
    common = {"preset": FLAGS.preset, "transforms": ",".join(chain.transforms), "batch_size": FLAGS.batch_size,
              "patch_size": FLAGS.patch_size, "image_side": 96, "source": "demo crops", "cpu": cpu,
              "cpu_cores": os.cpu_count(), "gpus": len(tf.config.list_physical_devices("GPU"))}
    records = [{"figure": "train_step_images_per_s", "value": round(images_per_s, 1), "arch": FLAGS.arch,
                "objective": "softmax", "classes": FLAGS.num_seeds, **common}]
    for mode in pipelines:
        samples_per_s = FLAGS.batch_size * FLAGS.batches / statistics.median(pipeline_seconds[mode])
        records.append({"figure": "surrogate_pipeline_samples_per_s", "seed_sampling": mode,
                        "value": round(samples_per_s, 1), "num_seeds" if mode == "fixed" else "num_images":
                        FLAGS.num_seeds if mode == "fixed" else len(crops), **common})
        records.append({"figure": "pipeline_over_train_throughput", "seed_sampling": mode,
                        "value": round(samples_per_s / images_per_s, 2), "arch": FLAGS.arch, **common})
    records.append({"figure": "fixed_seed_sampling_seeds_per_s", "implementation": "tensorflow",
                    "value": round(tf_seeds_per_s, 1), "images": len(crops), **common})
    records.append({"figure": "fixed_seed_sampling_seeds_per_s", "implementation": "numpy_opencv",
                    "value": round(numpy_seeds_per_s, 1), "images": FLAGS.numpy_images, **common})
    records.append({"figure": "seed_sampling_tf_over_numpy", "value": round(tf_seeds_per_s / numpy_seeds_per_s, 2),
                    **common})
    for record in records:
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    app.run(main)
