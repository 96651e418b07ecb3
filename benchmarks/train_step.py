"""Training-step throughput per encoder, objective, precision and XLA setting, all measured in one run.

    nice -n 19 python benchmarks/train_step.py --archs=resnet18 --objectives=nce

Times the project's own training step (`training.step.build_state` + `make_train_step`: forward, loss, backward,
SGD update, memory-bank and Z updates, the in-graph NaN/Inf check), `--steps` steps per call as with
`--steps_per_call`, on synthetic 32x32 batches from a tf.data pipeline that only draws random instance labels
(decoding and augmentation excluded). By default every precision (float32, mixed_bfloat16, mixed_float16) and
both `--jit_compile` settings are measured for each arch and objective:
  softmax        encoder -> SurrogateClassifier(--classes) -> softmax cross-entropy
  nce            encoder -> ProjectionHead(128) -> NCE with --noise per-example noise samples against a
                 MemoryBank(--instances), then the bank update and Z's moving average
  nonparametric  encoder -> ProjectionHead(128) -> exact softmax over all --instances bank rows
After `--warmup` untimed calls (tracing, XLA compilation) it times `--repeats` calls of `--steps` steps for every
setting, interleaved so that a busy machine slows them alike; a figure is the median call. A setting that fails
to build or compile prints one line with "error" instead.
One JSON line per figure (each names the CPU): images/s per setting, then the ratios bf16_over_float32 and
fp16_over_float32 (images/s), nce_over_softmax_step_time and jit_over_no_jit (images/s), all from this run, and
per arch and objective the fastest setting measured ("best_setting") beside what `--precision=auto` picks here.
With --data=<image folder> (the CIFAR-10 JPEG training folder) every objective is also timed at float32 without
XLA on the real NPID input pipeline (`training.inputs.training_data`: images decoded once into memory, a fresh
permutation per epoch, NPID's augmentation in `Dataset.map`, sharing the cores with the step), interleaved with
the synthetic settings, with `"input": "folder"` and the ratio end_to_end_over_synthetic (images/s); and with
NPID's augmentation batched inside the step instead (`--augment_on=device`: tf.data only gathers the decoded
uint8 images), `"input": "folder_device"`, with the ratio device_over_host_end_to_end (images/s).
With --low_res_sides=24 (progressive resolution, docs/method.md section 8) it times instead one setting per arch at
the full side and at each listed side, and the ratio low_res_over_full (images/s).
"""
from __future__ import annotations

import itertools
import json
import os
import statistics
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from exemplar_tf.training.machine import this_machines_precision  # noqa: E402
from exemplar_tf.training.config import PRECISIONS, TrainConfig  # noqa: E402
from exemplar_tf.training.inputs import training_data  # noqa: E402
from exemplar_tf.training.step import build_state, make_train_step  # noqa: E402
from exemplar_tf.training.views import one_host_view  # noqa: E402
from machine import cpu_flags, cpu_name  # noqa: E402  (benchmarks/ is on the path when run)

FLAGS = flags.FLAGS
flags.DEFINE_list("archs", ["small", "medium", "resnet18"], "encoders to time; resnet18:32 is a ResNet-18 of base "
                  "width 32 (--resnet_width)")
flags.DEFINE_list("objectives", ["softmax", "nce", "nonparametric"], "softmax, nce, nonparametric")
flags.DEFINE_list("precisions", list(PRECISIONS), "dtype policies to time")
flags.DEFINE_list("jit_compile", ["false", "true"], "XLA settings to time")
flags.DEFINE_integer("steps", 3, "steps per timed call")
flags.DEFINE_integer("warmup", 1, "untimed calls first (tracing, compilation)")
flags.DEFINE_integer("repeats", 2, "timed calls per setting, interleaved")
flags.DEFINE_integer("batch_size", 128, "images per step")
flags.DEFINE_integer("input_size", 32, "image side")
flags.DEFINE_integer("instances", 50_000, "memory-bank rows (CIFAR-10's 50 000 images)")
flags.DEFINE_integer("classes", 8000, "surrogate classes of the softmax head (Exemplar-CNN's 8000)")
flags.DEFINE_integer("noise", 4096, "NCE noise samples m")
flags.DEFINE_boolean("grappler_bf16", False, "turn on Grappler's oneDNN bfloat16 auto-mixed-precision rewrite "
                     "(auto_mixed_precision_onednn_bfloat16) for every graph of this process")
flags.DEFINE_list("low_res_sides", [], "progressive resolution (--low_res_size): also time each arch's first "
                  "objective at --precision=auto without XLA on views downsampled in the step to each of these sides, "
                  "beside the full --input_size, interleaved; empty: not measured")
flags.DEFINE_string("data", "", "image folder for the end-to-end figures (e.g. /tmp/cifar10/..: the folder with "
                    "train/); empty: synthetic input only")


def synthetic_batches(num_labels: int) -> tf.data.Dataset:
    """Fixed random images with fresh random labels in [0, num_labels) every step."""
    images = tf.random.stateless_uniform([FLAGS.batch_size, FLAGS.input_size, FLAGS.input_size, 3], [1, 2])
    labels = lambda i: tf.random.stateless_uniform([FLAGS.batch_size], [3, i], 0, num_labels,  # noqa: E731
                                                   dtype=tf.int64)
    return tf.data.Dataset.range(1 << 40).map(lambda i: {"image": images, "label": labels(i)}).prefetch(2)


INPUTS = ("synthetic", "folder", "folder_device")


def make_runner(arch, objective, precision, jit_compile, source="synthetic", side=None):
    """Returns run() -> seconds for one call of --steps steps of this setting's training step; `source` (INPUTS):
    synthetic batches, or the real input pipeline of --data with NPID's augmentation on the host (folder) or in
    the step (folder_device); `side`: the views downsampled in the step to this side (default: --input_size)."""
    folder = source != "synthetic"
    arch, _, width = arch.partition(":")
    config = TrainConfig(run_dir="/tmp/unused", method="npid", arch=arch, resnet_width=int(width or 64),
                         objective=objective, precision=precision,
                         jit_compile=jit_compile, image_size=FLAGS.input_size, batch_size=FLAGS.batch_size,
                         nce_m=FLAGS.noise, dropout=0.0, batch_norm=True, steps=1 << 30,
                         augment_on="device" if source == "folder_device" else "host",
                         **({"source": f"folder:{FLAGS.data}", "split": "train"} if folder else {}))
    strategy = tf.distribute.get_strategy()
    views = one_host_view
    if folder:
        data = training_data(config)
        num_labels, dataset_fn, views = data.num_instances, data.dataset_fn, data.views
    else:
        num_labels = FLAGS.classes if objective == "softmax" else FLAGS.instances
        dataset_fn = lambda context: synthetic_batches(num_labels)  # noqa: E731
    state = build_state(config, num_labels, np.full(3, 0.45, np.float32), views)
    train_steps = make_train_step(config, strategy, state, side)
    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    steps = tf.constant(FLAGS.steps, tf.int32)

    def run():
        start = time.perf_counter()
        out = train_steps(iterator, steps)
        if not bool(out["finite"]):
            raise FloatingPointError(f"non-finite loss or weights ({float(out['loss'])})")
        return time.perf_counter() - start

    return run


def benchmark_arch(arch, common):
    """Yields the JSON records for one encoder."""
    settings = [(*setting, "synthetic") for setting in itertools.product(
        FLAGS.objectives, FLAGS.precisions, [value.lower() == "true" for value in FLAGS.jit_compile])]
    if FLAGS.data:
        settings += [(objective, "float32", False, source) for source in INPUTS[1:] for objective in FLAGS.objectives]
    runners = {}
    for setting in settings:
        objective, precision, jit, source = setting
        try:
            runner = make_runner(arch, objective, precision, jit, source)
            for _ in range(FLAGS.warmup):
                runner()
            runners[setting] = runner
        except Exception as error:  # noqa: BLE001 (reported, the other settings go on)
            message = str(error).strip().splitlines()
            yield {**common, "arch": arch, "objective": objective, "precision": precision, "jit_compile": jit,
                   "input": source, "error": f"{type(error).__name__}: {message[0] if message else ''}"[:300]}
    times = {setting: [] for setting in runners}
    for _ in range(FLAGS.repeats):
        for setting, runner in runners.items():
            times[setting].append(runner())
    step_s = {setting: statistics.median(values) / FLAGS.steps for setting, values in times.items()}
    for (objective, precision, jit, source), seconds in step_s.items():
        yield {**common, "arch": arch, "objective": objective, "precision": precision, "jit_compile": jit,
               "input": source, "images_per_s": round(FLAGS.batch_size / seconds, 1), "step_ms": round(1000 * seconds, 1)}
    for (objective, precision, jit, source), seconds in step_s.items():
        where = {**common, "arch": arch, "objective": objective, "precision": precision, "jit_compile": jit}
        if source == "folder":
            synthetic = step_s.get((objective, precision, jit, "synthetic"))
            if synthetic:
                yield {**where, "figure": "end_to_end_over_synthetic", "ratio": round(synthetic / seconds, 3)}
            continue
        if source == "folder_device":
            host = step_s.get((objective, precision, jit, "folder"))
            if host:
                yield {**where, "figure": "device_over_host_end_to_end", "ratio": round(host / seconds, 3)}
            continue
        base = step_s.get((objective, "float32", jit, "synthetic"))
        if precision != "float32" and base:
            name = {"mixed_bfloat16": "bf16_over_float32", "mixed_float16": "fp16_over_float32"}[precision]
            yield {**where, "figure": name, "ratio": round(base / seconds, 3)}
        softmax = step_s.get(("softmax", precision, jit, "synthetic"))
        if objective == "nce" and softmax:
            yield {**where, "figure": "nce_over_softmax_step_time", "ratio": round(seconds / softmax, 3)}
        no_jit = step_s.get((objective, precision, False, "synthetic"))
        if jit and no_jit:
            yield {**where, "figure": "jit_over_no_jit", "ratio": round(no_jit / seconds, 3)}
    for objective in FLAGS.objectives:
        timed = {(precision, jit): seconds for (name, precision, jit, source), seconds in step_s.items()
                 if name == objective and source == "synthetic"}
        if timed:
            (precision, jit), seconds = min(timed.items(), key=lambda item: item[1])
            yield {**common, "arch": arch, "objective": objective, "figure": "best_setting", "precision": precision,
                   "jit_compile": jit, "images_per_s": round(FLAGS.batch_size / seconds, 1),
                   "auto_precision": this_machines_precision(arch.partition(":")[0])}


def benchmark_sides(arch, common):
    """Yields images/s of the step at the full --input_size and at each --low_res_sides side (one setting: the
    first objective, --precision=auto, no XLA; synthetic input), then each low side's ratio low_res_over_full."""
    objective, precision = FLAGS.objectives[0], this_machines_precision(arch.partition(":")[0])
    sides = [FLAGS.input_size] + [int(side) for side in FLAGS.low_res_sides]
    runners = {side: make_runner(arch, objective, precision, False, side=side) for side in sides}
    for runner in runners.values():
        for _ in range(FLAGS.warmup):
            runner()
    times = {side: [] for side in sides}
    for _ in range(FLAGS.repeats):
        for side, runner in runners.items():
            times[side].append(runner())
    step_s = {side: statistics.median(values) / FLAGS.steps for side, values in times.items()}
    where = {**common, "arch": arch, "objective": objective, "precision": precision, "jit_compile": False,
             "input": "synthetic"}
    for side, seconds in step_s.items():
        yield {**where, "side": side, "images_per_s": round(FLAGS.batch_size / seconds, 1),
               "step_ms": round(1000 * seconds, 1)}
    for side in sides[1:]:
        yield {**where, "side": side, "figure": "low_res_over_full", "ratio": round(step_s[sides[0]] / step_s[side], 3)}


def main(argv):
    del argv
    if FLAGS.grappler_bf16:
        tf.config.optimizer.set_experimental_options({"auto_mixed_precision_onednn_bfloat16": True})
    common = {"cpu": cpu_name(), "cpu_flags": cpu_flags(), "cores": os.cpu_count(), "batch_size": FLAGS.batch_size,
              "input_size": FLAGS.input_size, "instances": FLAGS.instances, "classes": FLAGS.classes,
              "noise": FLAGS.noise,
              "steps": FLAGS.steps, "repeats": FLAGS.repeats, "data": FLAGS.data or None,
              "grappler_bf16": FLAGS.grappler_bf16}
    for arch in FLAGS.archs:
        records = benchmark_sides(arch, common) if FLAGS.low_res_sides else benchmark_arch(arch, common)
        for record in records:
            print(json.dumps(record), flush=True)


if __name__ == "__main__":
    app.run(main)
