"""Training-step throughput: plain softmax head vs NPID's NCE memory bank, per encoder, in one run.

    python benchmarks/train_step.py --archs=small,medium --steps=5

For each arch it builds one compiled `tf.function` step per objective on synthetic 32x32 images (data loading
and augmentation excluded), runs `--warmup` untimed steps, then times `--repeats` blocks of `--steps` steps,
interleaving the objectives so that a busy machine slows them alike; a figure is the median block.
  softmax      encoder -> SurrogateClassifier(--classes) -> softmax_loss
  nce          encoder -> ProjectionHead(128) -> nce_loss against a MemoryBank(--instances) with --noise
               per-example noise samples, then the bank update and the Z moving average
  nce_shared   the same with one set of --noise samples shared by the batch (`sample_shared_noise`)
All use SGD with momentum 0.9. Prints one JSON line per figure: images/s per (arch, objective), then
nce/softmax step-time ratios.

Per-example noise gathers B*m bank rows (128 x 4096 x 128 floats = 268 MB) in the forward pass and reads them
again for the gradient: on a memory-bound CPU that is the whole difference between `nce` and `nce_shared`.
`--jit_compile` is off by default: XLA's CPU convolutions were much slower than oneDNN's here.
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

from exemplar_tf.models import ProjectionHead, SurrogateClassifier, build_encoder  # noqa: E402
from exemplar_tf.objectives import losses  # noqa: E402
from exemplar_tf.objectives.memory_bank import MemoryBank  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("archs", ["small", "medium", "large", "resnet18"], "encoders to time")
flags.DEFINE_list("objectives", ["softmax", "nce", "nce_shared"], "softmax, nce, nce_shared")
flags.DEFINE_integer("steps", 10, "timed steps per block")
flags.DEFINE_integer("warmup", 3, "untimed steps first (tracing, compilation)")
flags.DEFINE_integer("repeats", 3, "timed blocks per objective, interleaved")
flags.DEFINE_integer("batch_size", 128, "images per step")
flags.DEFINE_integer("input_size", 32, "image side")
flags.DEFINE_integer("classes", 8000, "surrogate classes of the softmax head")
flags.DEFINE_integer("instances", 100_000, "memory-bank rows")
flags.DEFINE_integer("noise", 4096, "NCE noise samples m")
flags.DEFINE_float("tau", 0.07, "NCE temperature")
flags.DEFINE_bool("jit_compile", False, "XLA-compile the steps")

MEAN_RGB = (0.45, 0.45, 0.45)


def softmax_step(encoder, *, jit_compile):
    """Returns step(images [B,H,W,3], indices [B], step) -> loss for encoder + surrogate classifier."""
    classifier = SurrogateClassifier(FLAGS.classes)
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)

    @tf.function(jit_compile=jit_compile)
    def step(images, indices, step_number):
        del step_number
        labels = indices % FLAGS.classes
        with tf.GradientTape() as tape:
            loss = losses.softmax_loss(classifier(encoder(images, training=True)), labels)
        variables = encoder.trainable_variables + classifier.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    return step


def nce_step(encoder, *, shared_noise, jit_compile):
    """Returns step(images, indices, step) -> loss for encoder + projection head + NCE memory bank."""
    head = ProjectionHead(128)
    bank = MemoryBank(FLAGS.instances, 128)
    z = tf.Variable(1.0, trainable=False)
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    sample = losses.sample_shared_noise if shared_noise else losses.sample_noise

    @tf.function(jit_compile=jit_compile)
    def step(images, indices, step_number):
        noise = sample(indices, FLAGS.instances, FLAGS.noise, tf.stack([step_number, 0]))
        with tf.GradientTape() as tape:
            v = head(encoder(images, training=True))
            loss, z_batch = losses.nce_loss(v, bank(), indices, noise, FLAGS.tau, z)
        variables = encoder.trainable_variables + head.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        bank.update(indices, v)
        z.assign(losses.update_z(z, z_batch, 0.99, tf.equal(step_number, 0)))
        return loss

    return step


def make_step(objective, arch):
    encoder = build_encoder(arch, input_size=FLAGS.input_size, mean_rgb=MEAN_RGB)
    if objective == "softmax":
        return softmax_step(encoder, jit_compile=FLAGS.jit_compile)
    if objective in ("nce", "nce_shared"):
        return nce_step(encoder, shared_noise=objective == "nce_shared", jit_compile=FLAGS.jit_compile)
    raise ValueError(f"unknown objective {objective!r}")


def run_block(step, images, indices, first_step, count):
    """Runs `count` steps, waits for the last result, returns seconds."""
    start = time.perf_counter()
    for i in range(count):
        loss = step(images, indices[(first_step + i) % len(indices)], tf.constant(first_step + i, tf.int32))
    loss.numpy()
    return time.perf_counter() - start


def benchmark_arch(arch):
    """Yields the JSON records for one encoder."""
    images = tf.random.stateless_uniform([FLAGS.batch_size, FLAGS.input_size, FLAGS.input_size, 3], [1, 2])
    indices = [
        tf.random.stateless_uniform([FLAGS.batch_size], [3, i], 0, FLAGS.instances, dtype=tf.int64)
        for i in range(8)
    ]
    steps = {objective: make_step(objective, arch) for objective in FLAGS.objectives}
    for step in steps.values():
        run_block(step, images, indices, 0, FLAGS.warmup)
    blocks = {objective: [] for objective in steps}
    for repeat in range(FLAGS.repeats):
        for objective, step in steps.items():
            first = FLAGS.warmup + repeat * FLAGS.steps
            blocks[objective].append(run_block(step, images, indices, first, FLAGS.steps))
    step_seconds = {objective: statistics.median(times) / FLAGS.steps for objective, times in blocks.items()}
    common = {"arch": arch, "batch_size": FLAGS.batch_size, "input_size": FLAGS.input_size,
              "jit_compile": FLAGS.jit_compile, "steps": FLAGS.steps, "repeats": FLAGS.repeats}
    for objective, seconds in step_seconds.items():
        yield {**common, "objective": objective, "images_per_s": round(FLAGS.batch_size / seconds, 1),
               "step_ms": round(1000 * seconds, 1), **objective_settings(objective)}
    for objective in ("nce", "nce_shared"):
        if objective in step_seconds and "softmax" in step_seconds:
            yield {**common, "figure": f"{objective}_over_softmax_step_time",
                   "ratio": round(step_seconds[objective] / step_seconds["softmax"], 3)}


def objective_settings(objective):
    if objective == "softmax":
        return {"classes": FLAGS.classes}
    return {"instances": FLAGS.instances, "noise": FLAGS.noise, "dim": 128}


def main(argv):
    del argv
    for arch in FLAGS.archs:
        for record in benchmark_arch(arch):
            print(json.dumps(record), flush=True)


if __name__ == "__main__":
    app.run(main)
