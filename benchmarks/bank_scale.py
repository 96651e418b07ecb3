"""Memory-bank scale: NCE's objective step alone, the bank replicated on one device vs sharded over 2 and 4 logical
CPUs (--bank_sharding=sharded, objectives/sharded_bank.py).

    python benchmarks/bank_scale.py [--instances=1281167,14000000 --steps=3 --out=FILE.jsonl]

One step: every replica takes fixed unit codes [b,D] (b = B/R) and runs `NCE.loss_on_codes` (noise sampling,
scores, loss) and its gradient w.r.t. the codes, then `NCE.update` (bank rows and Z); no encoder. Each (N, layout)
runs in its own process (logical devices are fixed at start-up, and two MirroredStrategies' collectives clash in
one process). The bank starts as constant unit rows (the random initialisation draws the whole [N,D] bank and
normalises it, ~3x its size at the peak; the step's cost does not depend on the values).
Prints one JSON line per (N, layout), also appended to --out:
  bank_bytes_per_replica     N/R x D x 4 (sharded, N padded to a multiple of R) or N x D x 4
  step_ms                    median of --steps timed steps after one untimed (compiling) step
  collective_bytes_per_step  float32 bytes each replica contributes to the step's all-reduces, from their shapes:
                             the global batch gathered twice (loss and update, B x (D+1) each), the scores
                             B x (1+m), Z (1); replicated on R > 1 only the update's gather and Z; 0 on one device
or "skipped" with the reason when the estimated peak memory does not fit in MemAvailable.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("instances", ["1281167", "14000000"], "bank sizes N")
flags.DEFINE_list("layouts", ["replicated:1", "sharded:2", "sharded:4", "replicated:2", "replicated:4"],
                  "layout:replicas")
flags.DEFINE_integer("noise", 4096, "noise samples m per example")
flags.DEFINE_integer("batch_size", 256, "global batch B")
flags.DEFINE_integer("dim", 128, "embedding size D")
flags.DEFINE_integer("steps", 3, "timed steps")
flags.DEFINE_string("out", "", "append the JSON lines to this file too")
flags.DEFINE_string("child", "", "internal: N,layout,replicas to measure in this process")

FLOAT = 4


def bank_bytes_per_replica(num_instances: int, layout: str, replicas: int, dim: int) -> int:
    rows = math.ceil(num_instances / replicas) if layout == "sharded" else num_instances
    return rows * dim * FLOAT


def collective_bytes_per_step(layout: str, replicas: int, batch: int, dim: int, noise: int) -> int:
    """Bytes of the float32 tensors each replica all-reduces per step (see the module docstring)."""
    if replicas == 1:
        return 0
    gathered = batch * (dim + 1) * FLOAT
    if layout == "replicated":
        return gathered + FLOAT
    return 2 * gathered + batch * (1 + noise) * FLOAT + FLOAT


def peak_bytes(num_instances: int, layout: str, replicas: int, batch: int, dim: int, noise: int) -> int:
    """Estimated peak: the bank (R copies replicated, one in R shards sharded) plus its initial value, once
    whole, and per replica the gathered noise rows (sharded: and the gathered codes of the owned pairs)."""
    whole = num_instances * dim * FLOAT
    copies = replicas if layout == "replicated" else 1
    per_replica_rows = batch * noise // replicas * (1 if layout == "replicated" else 2)
    return (copies + 1) * whole + replicas * per_replica_rows * dim * FLOAT


def available_bytes() -> int:
    with open("/proc/meminfo") as file:
        return next(int(line.split()[1]) * 1024 for line in file if line.startswith("MemAvailable"))


def measure(num_instances: int, layout: str, replicas: int) -> dict:
    """Runs in a child process: builds the NCE objective under the layout and times its step."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * replicas)
    from exemplar_tf import objectives
    from exemplar_tf.objectives import memory_bank, sharded_bank

    dim, batch = FLAGS.dim, FLAGS.batch_size

    def constant_unit_rows(seed):
        return lambda shape, dtype=None: tf.fill(shape, tf.constant(1.0 / math.sqrt(dim), dtype or tf.float32))

    memory_bank.random_unit_rows = sharded_bank.random_unit_rows = constant_unit_rows
    strategy = (tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(replicas)]) if replicas > 1
                else tf.distribute.get_strategy())
    objective = objectives.make("nce", objectives.Settings(embedding_dim=dim, nce_m=FLAGS.noise, bank_sharding=layout))

    class Encoder(tf.keras.Sequential):
        input_size = 1

    with strategy.scope():
        objective.build(Encoder([tf.keras.layers.Flatten(), tf.keras.layers.Dense(dim)]), num_instances, None)
    assert objective.bank.sharded == (layout == "sharded")
    per_replica = batch // replicas
    codes = tf.math.l2_normalize(tf.random.stateless_normal([batch, dim], [1, 2]), axis=-1)
    labels = tf.random.stateless_uniform([batch], [3, 4], maxval=num_instances, dtype=tf.int64)

    @tf.function
    def step(index):
        def replica_step():
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            part = slice(replica * per_replica, (replica + 1) * per_replica)
            own = tf.identity(codes[part])
            noise_seed = tf.stack([tf.constant(0, tf.int64), index * replicas + tf.cast(replica, tf.int64)])
            with tf.GradientTape() as tape:
                tape.watch(own)
                loss, forward = objective.loss_on_codes(own, labels[part], noise_seed)
            gradient = tape.gradient(loss, own)
            objective.update(forward)
            return loss, gradient

        return strategy.run(replica_step)

    times = []
    for index in range(FLAGS.steps + 1):
        started = time.perf_counter()
        outputs = strategy.experimental_local_results(step(tf.constant(index, tf.int64)))
        tf.nest.map_structure(lambda x: x.numpy(), outputs)
        times.append(time.perf_counter() - started)
    return {"step_ms": round(1000 * statistics.median(times[1:]), 1), "first_step_ms": round(1000 * times[0], 1)}


def main(argv):
    del argv
    if FLAGS.child:
        num_instances, layout, replicas = FLAGS.child.split(",")
        print(json.dumps(measure(int(num_instances), layout, int(replicas))))
        return
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from machine import cpu_name

    for num_instances in map(int, FLAGS.instances):
        for layout, replicas in (entry.split(":") for entry in FLAGS.layouts):
            replicas = int(replicas)
            line = {"figure": "bank_scale", "cpu": cpu_name(), "instances": num_instances, "layout": layout,
                    "replicas": replicas, "batch_size": FLAGS.batch_size, "noise": FLAGS.noise, "dim": FLAGS.dim,
                    "bank_bytes_per_replica": bank_bytes_per_replica(num_instances, layout, replicas, FLAGS.dim),
                    "collective_bytes_per_step": collective_bytes_per_step(layout, replicas, FLAGS.batch_size,
                                                                           FLAGS.dim, FLAGS.noise)}
            needed, available = (peak_bytes(num_instances, layout, replicas, FLAGS.batch_size, FLAGS.dim, FLAGS.noise),
                                 available_bytes())
            if needed > 0.85 * available:
                line["skipped"] = (f"does not fit: estimated peak {needed / 2**30:.1f} GiB, "
                                   f"{available / 2**30:.1f} GiB available")
            else:
                child = subprocess.run([sys.executable, os.path.abspath(__file__), f"--child={num_instances},{layout},"
                                        f"{replicas}", f"--steps={FLAGS.steps}", f"--noise={FLAGS.noise}",
                                        f"--batch_size={FLAGS.batch_size}", f"--dim={FLAGS.dim}"],
                                       capture_output=True, text=True)
                if child.returncode:
                    line["skipped"] = f"failed: {child.stderr.strip().splitlines()[-1:]}"
                else:
                    line.update(json.loads(child.stdout.strip().splitlines()[-1]))
            print(json.dumps(line), flush=True)
            if FLAGS.out:
                with open(FLAGS.out, "a") as file:
                    file.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    app.run(main)
