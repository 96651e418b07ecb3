"""Surrogate samples/s of the training input in-process and on tf.data service (one and two local workers).

    python benchmarks/data_service.py [--batches=30] [--out=benchmarks/results/data_service/<name>.jsonl]

The demo recipe's input (flags/demo.cfg: 1 200 fixed seeds, the paper's transformations on the host, 32-px
patches), batch 128, one input pipeline. Figures, one JSON line each:
  in_process:  the in-process stream (`--data_service` unset);
  by_number:   the same pipeline built batch by batch from batch numbers (what the service runs), in-process:
               the cost of that formulation alone;
  service_1_worker / service_2_workers: through a dispatcher in this process and worker processes
               (`python -m exemplar_tf.data_service --worker`) on this machine, read by this process.
Each figure is the median of `--repeats` timed blocks of `--batches` batches after `--warmup` batches. On a
machine with few cores the workers and the reader share them, so the figures measure the service's overhead
(serialisation, gRPC, the reader's copies), not the speed-up that workers on other machines give.
"""
from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from exemplar_tf.data import service  # noqa: E402
from exemplar_tf.training import inputs  # noqa: E402
from exemplar_tf.training.config import TrainConfig  # noqa: E402
from machine import cpu_name  # noqa: E402  (benchmarks/ is on the path when run)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS
flags.DEFINE_integer("batch_size", 128, "samples per batch")
flags.DEFINE_integer("batches", 30, "batches per timed block")
flags.DEFINE_integer("warmup", 5, "untimed batches first (per figure)")
flags.DEFINE_integer("repeats", 2, "timed blocks per figure")
flags.DEFINE_string("out", "", "also append the JSON lines to this file")


def samples_per_second(dataset: tf.data.Dataset) -> float:
    """Median samples/s over --repeats blocks of --batches batches of `dataset`, after --warmup batches."""
    iterator = iter(dataset)
    for _ in range(FLAGS.warmup):
        next(iterator)
    rates = []
    for _ in range(FLAGS.repeats):
        started = time.perf_counter()
        for _ in range(FLAGS.batches):
            next(iterator)["label"].numpy()
        rates.append(FLAGS.batches * FLAGS.batch_size / (time.perf_counter() - started))
    return statistics.median(rates)


def start_worker(address: str) -> subprocess.Popen:
    """A worker process registered with the dispatcher at `address`, once it prints its status line."""
    process = subprocess.Popen([sys.executable, "-m", "exemplar_tf.data_service", "--worker",
                                f"--dispatcher_address={address}"], cwd=REPO, stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if "serving at" not in line:
        raise RuntimeError(f"the worker did not start: {line!r}")
    return process


def report(figure: str, rate: float, **extra) -> None:
    line = json.dumps({"benchmark": "data_service", "figure": figure, "samples_per_s": round(rate, 1),
                       "batch_size": FLAGS.batch_size, "batches": FLAGS.batches, "repeats": FLAGS.repeats,
                       "cpu": cpu_name(), "cores": os.cpu_count(), "load_1min": round(os.getloadavg()[0], 2),
                       **extra})
    print(line, flush=True)
    if FLAGS.out:
        os.makedirs(os.path.dirname(FLAGS.out) or ".", exist_ok=True)
        with open(FLAGS.out, "a") as out:
            out.write(line + "\n")


def main(argv):
    del argv
    run_dir = tempfile.mkdtemp(prefix="data_service_bench_")
    config = TrainConfig(run_dir=run_dir, source="demo", num_seeds=1200, seeds_per_image=100,
                         batch_size=FLAGS.batch_size, knn_source="")
    context = tf.distribute.InputContext(1, 0, 1)
    report("in_process", samples_per_second(inputs.training_data(config).dataset_fn(context, 0)))
    dispatcher = service.dispatcher(0)
    address = dispatcher.target.split("://")[1]
    served = dataclasses.replace(config, data_service=address)
    report("by_number", samples_per_second(inputs.exemplar_data(served).dataset_fn(context, 0)))
    workers = []
    try:
        for count in (1, 2):
            workers.append(start_worker(address))
            data = inputs.training_data(served)
            report(f"service_{count}_worker{'s' if count > 1 else ''}",
                   samples_per_second(data.dataset_fn(context, 0)), workers=count)
    finally:
        for worker in workers:
            worker.terminate()
            worker.wait(timeout=30)
        dispatcher.stop()


if __name__ == "__main__":
    app.run(main)
