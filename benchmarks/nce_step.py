"""NCE objective cost without the encoder: dense vs gathered noise scores, and reading the bank in place vs whole.

    python benchmarks/nce_step.py [--instances=2000,16000,50000,1281167 --noise=4096 --batch_size=128]

Embeddings v [B,D] are fixed random unit rows; every timed step is one compiled `tf.function` (median of
--repeats blocks of --steps steps after --warmup untimed steps; the variants of one N are interleaved).
Prints one JSON line per figure:
  nce_scores      loss + gradient w.r.t. v of `losses.nce_loss` with per-example noise, per N and score path
                  ("dense": v . bank^T and a pick of the noise columns; "gather": B*m bank rows), against a
                  bank tensor; then `dense_over_gather` (step-time ratio) and the path "auto" picks
  nce_bank_step   the objective's whole bank work per step: noise sampling, loss + gradient, `MemoryBank.update`
                  (scatter), with the loss reading `MemoryBank.variable` in place ("variable", the training
                  step's way) or a whole read of the bank first ("whole_read", `bank()`: after the first
                  scatter every such read copies N x D floats); score path "auto"; then `variable_over_whole_read`
"""
from __future__ import annotations

import json
import os
import statistics
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from exemplar_tf.objectives import losses  # noqa: E402
from exemplar_tf.objectives.memory_bank import MemoryBank  # noqa: E402
from machine import cpu_name  # noqa: E402  (benchmarks/ is on the path when run)

FLAGS = flags.FLAGS
flags.DEFINE_list("instances", ["2000", "16000", "50000", "100000", "1281167"], "bank sizes N")
flags.DEFINE_list("figures", ["nce_scores", "nce_bank_step"], "which figures")
flags.DEFINE_integer("noise", 4096, "noise samples m per example")
flags.DEFINE_integer("batch_size", 128, "examples per step")
flags.DEFINE_integer("dim", 128, "embedding size D")
flags.DEFINE_float("tau", 0.07, "temperature")
flags.DEFINE_integer("steps", 5, "timed steps per block")
flags.DEFINE_integer("warmup", 2, "untimed steps first")
flags.DEFINE_integer("repeats", 3, "timed blocks per variant, interleaved")




def unit_rows(shape, seed):
    return tf.math.l2_normalize(tf.random.stateless_normal(shape, [seed, 0]), axis=-1)


def scores_step(bank, num_instances, path):
    """step(v, indices, seed) -> (loss, dloss/dv) with the given score path."""

    @tf.function
    def step(v, indices, seed):
        noise = losses.sample_noise(indices, num_instances, FLAGS.noise, seed)
        with tf.GradientTape() as tape:
            tape.watch(v)
            loss, _ = losses.nce_loss(v, bank, indices, noise, FLAGS.tau, 1000.0, scores=path)
        return loss, tape.gradient(loss, v)

    return step


def bank_step(bank: MemoryBank, whole_read: bool):
    """step(v, indices, seed) -> loss: noise, loss + gradient, bank update, the bank read in place or whole."""

    @tf.function
    def step(v, indices, seed):
        noise = losses.sample_noise(indices, bank.num_instances, FLAGS.noise, seed)
        rows = bank() if whole_read else bank.variable
        with tf.GradientTape() as tape:
            tape.watch(v)
            loss, _ = losses.nce_loss(v, rows, indices, noise, FLAGS.tau, 1000.0)
        gradient = tape.gradient(loss, v)
        bank.update(indices, v)
        return loss + 0.0 * tf.reduce_sum(gradient)

    return step


def time_variants(steps: dict, num_instances: int) -> dict:
    """Median seconds per step for each variant, blocks interleaved."""
    v = unit_rows([FLAGS.batch_size, FLAGS.dim], 1)
    indices = [tf.random.stateless_uniform([FLAGS.batch_size], [2, i], 0, num_instances, dtype=tf.int64)
               for i in range(4)]

    def block(step, first, count):
        start = time.perf_counter()
        for i in range(first, first + count):
            out = step(v, indices[i % len(indices)], tf.constant([3, i], tf.int64))
        tf.nest.map_structure(lambda t: t.numpy(), out)
        return time.perf_counter() - start

    for step in steps.values():
        block(step, 0, FLAGS.warmup)
    times = {name: [] for name in steps}
    for repeat in range(FLAGS.repeats):
        for name, step in steps.items():
            times[name].append(block(step, FLAGS.warmup + repeat * FLAGS.steps, FLAGS.steps))
    return {name: statistics.median(t) / FLAGS.steps for name, t in times.items()}


def scores_figures(num_instances: int, common: dict):
    bank = unit_rows([num_instances, FLAGS.dim], 0)
    seconds = time_variants({path: scores_step(bank, num_instances, path) for path in ("dense", "gather")},
                            num_instances)
    for path, s in seconds.items():
        yield {**common, "figure": "nce_scores", "path": path, "step_ms": round(1000 * s, 2)}
    yield {**common, "figure": "nce_scores_dense_over_gather", "ratio": round(seconds["dense"] / seconds["gather"], 3),
           "auto": "dense" if losses.uses_dense_scores(num_instances, FLAGS.noise) else "gather"}


def bank_figures(num_instances: int, common: dict):
    bank = MemoryBank(num_instances, FLAGS.dim)
    seconds = time_variants({"variable": bank_step(bank, False), "whole_read": bank_step(bank, True)},
                            num_instances)
    path = "dense" if losses.uses_dense_scores(num_instances, FLAGS.noise) else "gather"
    for read, s in seconds.items():
        yield {**common, "figure": "nce_bank_step", "bank_read": read, "scores": path, "step_ms": round(1000 * s, 2)}
    yield {**common, "figure": "nce_bank_step_variable_over_whole_read", "scores": path,
           "ratio": round(seconds["variable"] / seconds["whole_read"], 3)}


def main(argv):
    del argv
    cpu = cpu_name()
    for n in (int(x) for x in FLAGS.instances):
        common = {"instances": n, "noise": FLAGS.noise, "batch_size": FLAGS.batch_size, "dim": FLAGS.dim, "cpu": cpu}
        if "nce_scores" in FLAGS.figures:
            for record in scores_figures(n, common):
                print(json.dumps(record), flush=True)
        if "nce_bank_step" in FLAGS.figures:
            for record in bank_figures(n, common):
                print(json.dumps(record), flush=True)


if __name__ == "__main__":
    app.run(main)
