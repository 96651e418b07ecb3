"""Host surrogate-data pipeline throughput, and whether it keeps up with training the medium network.

    python benchmarks/pipeline.py
    python benchmarks/pipeline.py --preset=paper --transforms=translate,hue --batches=50

Seeds come from the demo source (`--num_seeds`, `--seeds_per_image` per chosen photograph); the pipeline is
`surrogate_dataset(..., augment_on="host")` with all transforms of the `release_code` preset, batch 128, 32×32
patches. The training step is the medium Exemplar-CNN + SurrogateClassifier(num_seeds) with softmax loss and SGD
(momentum 0.9) on a fixed synthetic batch (no input pipeline). Pipeline and training blocks are interleaved
(`--repeats` each, after warm-up) so that a busy machine slows them alike; a figure is the median block.
Prints one JSON line per figure: pipeline samples/s, training images/s, and their ratio (> 1: the host pipeline
produces batches faster than the network consumes them, when the two do not compete for the same cores).
"""
from __future__ import annotations

import json
import os
import statistics
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from exemplar_tf.augment.chain import TransformChain  # noqa: E402
from exemplar_tf.augment.presets import ALL_TRANSFORMS, PRESETS  # noqa: E402
from exemplar_tf.data import patches, sources, surrogate  # noqa: E402
from exemplar_tf.models import SurrogateClassifier, build_encoder  # noqa: E402
from exemplar_tf.objectives import losses  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum("preset", "release_code", list(PRESETS), "transformation ranges")
flags.DEFINE_list("transforms", list(ALL_TRANSFORMS), "transforms in the chain")
flags.DEFINE_integer("batch_size", 128, "samples per batch")
flags.DEFINE_integer("patch_size", 32, "patch side")
flags.DEFINE_integer("num_seeds", 1200, "seeds (and classifier outputs)")
flags.DEFINE_integer("seeds_per_image", 100, "seeds per chosen demo photograph")
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


def main(argv):
    del argv
    demo = sources.load_source("demo", "train")
    seeds = patches.sample_seeds(demo.dataset, num_seeds=FLAGS.num_seeds, patch_size=FLAGS.patch_size,
                                 seeds_per_image=FLAGS.seeds_per_image, rng_seed=0)
    chain = TransformChain(FLAGS.preset, FLAGS.transforms, surrogate.fit_color_pca(seeds), FLAGS.patch_size)
    dataset = surrogate.surrogate_dataset(seeds, chain, batch_size=FLAGS.batch_size, rng_seed=0)
    mean_rgb = seeds.central_patches().reshape(-1, 3).mean(axis=0) / 255.0
    step = softmax_train_step(FLAGS.arch, FLAGS.num_seeds, mean_rgb)
    batch = next(iter(dataset))
    images, labels = batch["image"], batch["label"]

    train_block(step, images, labels, FLAGS.warmup)
    pipeline_seconds, train_seconds = [], []
    for _ in range(FLAGS.repeats):
        pipeline_seconds.append(pipeline_block(dataset, FLAGS.batches))
        train_seconds.append(train_block(step, images, labels, FLAGS.steps))
    samples_per_s = FLAGS.batch_size * FLAGS.batches / statistics.median(pipeline_seconds)
    images_per_s = FLAGS.batch_size * FLAGS.steps / statistics.median(train_seconds)

    common = {"preset": FLAGS.preset, "transforms": ",".join(chain.transforms), "batch_size": FLAGS.batch_size,
              "patch_size": FLAGS.patch_size, "num_seeds": FLAGS.num_seeds, "source": "demo",
              "cpu_cores": os.cpu_count(), "gpus": len(tf.config.list_physical_devices("GPU"))}
    records = [
        {"figure": "surrogate_pipeline_samples_per_s", "value": round(samples_per_s, 1), **common},
        {"figure": "train_step_images_per_s", "value": round(images_per_s, 1), "arch": FLAGS.arch,
         "objective": "softmax", "classes": FLAGS.num_seeds, **common},
        {"figure": "pipeline_over_train_throughput", "value": round(samples_per_s / images_per_s, 2),
         "arch": FLAGS.arch, **common},
    ]
    for record in records:
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    app.run(main)
