"""Where one training step's time goes: the encoder's forward pass (training mode), its forward + backward pass
(gradient of a scalar of the representation), and the project's whole step (`training.step.make_train_step`:
head, NCE with m = 4096 against N = 50 000 bank rows, backward, SGD update, bank and Z updates, NaN/Inf check),
batch 128 of 32x32 float32 images, one step per call; the rest of the step is whole minus forward + backward.

    python benchmarks/step_profile.py [--archs=resnet18,medium] [--repeats=5]

One JSON line per encoder, naming the CPU.
"""
from __future__ import annotations

import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from exemplar_tf.training.config import TrainConfig  # noqa: E402
from exemplar_tf.training.step import build_state, make_train_step  # noqa: E402
from machine import cpu_name  # noqa: E402  (benchmarks/ is on the path when run)

FLAGS = flags.FLAGS
flags.DEFINE_list("archs", ["resnet18", "medium"], "encoders to profile (resnet18:32 = base width 32)")
flags.DEFINE_integer("repeats", 5, "timed calls per stage (after two untimed ones)")
BATCH, SIZE, INSTANCES = 128, 32, 50_000




def seconds_per_call(fn) -> float:
    fn(), fn()
    started = time.perf_counter()
    for _ in range(FLAGS.repeats):
        fn()
    return (time.perf_counter() - started) / FLAGS.repeats


def profile(arch_spec: str) -> dict:
    arch, _, width = arch_spec.partition(":")
    config = TrainConfig(run_dir="/tmp/unused", method="npid", arch=arch, resnet_width=int(width or 64),
                         objective="nce", nce_m=4096, image_size=SIZE, batch_size=BATCH, dropout=0.0,
                         batch_norm=True, steps=1 << 30)
    strategy = tf.distribute.get_strategy()
    state = build_state(config, INSTANCES, np.full(3, 0.45, np.float32))
    images = tf.random.stateless_uniform([BATCH, SIZE, SIZE, 3], [1, 2])
    labels = tf.random.stateless_uniform([BATCH], [3, 4], 0, INSTANCES, dtype=tf.int64)
    encoder = state.encoder
    forward = tf.function(lambda: tf.reduce_sum(encoder(images, training=True)))

    @tf.function
    def forward_backward():
        with tf.GradientTape() as tape:
            total = tf.reduce_sum(encoder(images, training=True))
        return tape.gradient(total, encoder.trainable_variables)

    train_steps = make_train_step(config, strategy, state)
    batches = tf.data.Dataset.from_tensors({"image": images, "label": labels}).repeat()
    iterator = iter(strategy.distribute_datasets_from_function(lambda context: batches))
    one = tf.constant(1, tf.int32)
    f = seconds_per_call(lambda: forward().numpy())
    fb = seconds_per_call(lambda: forward_backward()[0].numpy())
    whole = seconds_per_call(lambda: train_steps(iterator, one)["loss"].numpy())
    return {"arch": arch_spec, "batch_size": BATCH, "input_size": SIZE, "forward_ms": round(1e3 * f, 1),
            "backward_ms": round(1e3 * (fb - f), 1), "rest_of_step_ms": round(1e3 * (whole - fb), 1),
            "whole_step_ms": round(1e3 * whole, 1), "forward_share": round(f / whole, 3),
            "backward_share": round((fb - f) / whole, 3), "rest_share": round((whole - fb) / whole, 3),
            "cpu": cpu_name(), "cores": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2)}


def main(argv) -> None:
    del argv
    for arch in FLAGS.archs:
        print(json.dumps(profile(arch)), flush=True)


if __name__ == "__main__":
    app.run(main)
