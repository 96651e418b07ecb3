"""Evaluation throughput: weighted kNN search and feature extraction through a SavedModel.

    python benchmarks/knn.py [--queries=10000 --bank=50000 --k=200] [--arch=medium --image_size=96]
        [--figures=knn,extraction,feature_maps]

Prints one JSON line per figure (median of --repeats timed runs after one untimed warm-up):
  knn          seconds for --queries random queries against a --bank x --dim bank (`metrics.knn.weighted_knn`, k, tau 0.07,
               10 classes), and queries per second
  extraction   images per second through `serving_default` of a fresh export of build_encoder(--arch) (random
               weights): one call computes both outputs, `embedding` (image resized to --input_size inside) and
               `features` (quadrant evaluation features at --image_size); batches of --batch_size uint8 images
  feature_maps images per second of the quadrant features alone (no SavedModel) of one random encoder, the
               direct convs (`feature_maps`) and the DFT convs (`evaluation_maps`, what the export uses) timed
               interleaved in one process (--repeats rounds of --batches calls each), their ratio, and the
               largest difference of the two feature vectors
Every line names the CPU (`lscpu` model name) and its AVX-512 / bf16 flags.
"""
from __future__ import annotations

import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from exemplar_tf.metrics import knn as metrics_knn  # noqa: E402
from exemplar_tf.models import ProjectionHead, build_encoder  # noqa: E402
from exemplar_tf.models import features  # noqa: E402
from exemplar_tf.serving import export  # noqa: E402
from machine import cpu_flags, cpu_name  # noqa: E402  (benchmarks/ is on the path when run)

FLAGS = flags.FLAGS
flags.DEFINE_integer("queries", 10_000, "kNN queries")
flags.DEFINE_integer("bank", 50_000, "kNN bank rows")
flags.DEFINE_integer("dim", 128, "code dimension")
flags.DEFINE_integer("k", 200, "neighbours")
flags.DEFINE_integer("query_batch", 512, "queries per chunk")
flags.DEFINE_string("arch", "medium", "encoder to export for the extraction figure")
flags.DEFINE_integer("input_size", 32, "encoder training size")
flags.DEFINE_integer("image_size", 96, "image side fed to the SavedModel")
flags.DEFINE_integer("batch_size", 128, "images per SavedModel call (SavedModelFeatures' default)")
flags.DEFINE_integer("batches", 5, "timed SavedModel calls per run")
flags.DEFINE_integer("repeats", 3, "timed runs per figure")
flags.DEFINE_list("figures", ["knn", "extraction", "feature_maps"], "which figures to print")


def median_seconds(run, repeats: int) -> float:
    run()  # warm-up: tracing, memory allocation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def knn_figure() -> dict:
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(FLAGS.bank, FLAGS.dim)).astype(np.float32)
    labels = rng.integers(0, 10, FLAGS.bank)
    queries = rng.normal(size=(FLAGS.queries, FLAGS.dim)).astype(np.float32)
    seconds = median_seconds(
        lambda: metrics_knn.weighted_knn(bank, labels, queries, k=FLAGS.k, num_classes=10, batch=FLAGS.query_batch),
        FLAGS.repeats)
    return {"figure": "knn", "queries": FLAGS.queries, "bank": FLAGS.bank, "dim": FLAGS.dim, "k": FLAGS.k,
            "seconds": round(seconds, 3), "queries_per_second": round(FLAGS.queries / seconds, 1)}


def extraction_figure() -> dict:
    tf.keras.utils.set_random_seed(0)
    encoder = build_encoder(FLAGS.arch, input_size=FLAGS.input_size, mean_rgb=(0.45, 0.45, 0.45))
    head = ProjectionHead(128)
    head.build((None, encoder.representation_dim))
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (FLAGS.batch_size, FLAGS.image_size, FLAGS.image_size, 3), dtype=np.uint8)
    percentiles = export.measure_percentiles(encoder, images[:8])
    with tempfile.TemporaryDirectory() as base:
        path = export.export_encoder(encoder, head, export_dir_base=base, name=FLAGS.arch, percentiles=percentiles)
        serve = tf.saved_model.load(path).signatures[export.SERVING_SIGNATURE]
        batch = tf.constant(images)

        def run():
            for _ in range(FLAGS.batches):
                serve(images=batch)["features"].numpy()

        seconds = median_seconds(run, FLAGS.repeats)
        widths = {key: int(value.shape[-1]) for key, value in serve(images=batch[:1]).items()}
    return {"figure": "extraction", "arch": FLAGS.arch, "signature": export.SERVING_SIGNATURE, "dims": widths,
            "image_size": FLAGS.image_size, "batch_size": FLAGS.batch_size,
            "images_per_second": round(FLAGS.batches * FLAGS.batch_size / seconds, 1)}


def feature_maps_figure() -> dict:
    tf.keras.utils.set_random_seed(0)
    encoder = build_encoder(FLAGS.arch, input_size=FLAGS.input_size, mean_rgb=(0.45, 0.45, 0.45))
    rng = np.random.default_rng(1)
    images = tf.constant(rng.integers(0, 256, (FLAGS.batch_size, FLAGS.image_size, FLAGS.image_size, 3)),
                         tf.float32) / 255.0
    percentiles = [1.0] * len(encoder.feature_maps(images[:1, :FLAGS.input_size, :FLAGS.input_size]))
    spec = [tf.TensorSpec([None, None, None, 3], tf.float32)]
    paths = {
        "direct": tf.function(lambda x: features.evaluation_features(encoder.feature_maps(x), percentiles),
                              input_signature=spec),
        "dft": tf.function(lambda x: features.evaluation_features(encoder.evaluation_maps(x), percentiles),
                           input_signature=spec),
    }
    outputs = {name: path(images).numpy() for name, path in paths.items()}  # warm-up
    times = {name: [] for name in paths}
    for _ in range(FLAGS.repeats):
        for name, path in paths.items():
            start = time.perf_counter()
            for _ in range(FLAGS.batches):
                path(images).numpy()
            times[name].append(time.perf_counter() - start)
    per_second = {name: FLAGS.batches * FLAGS.batch_size / statistics.median(t) for name, t in times.items()}
    return {"figure": "feature_maps", "arch": FLAGS.arch, "image_size": FLAGS.image_size,
            "batch_size": FLAGS.batch_size,
            "images_per_second": {name: round(value, 1) for name, value in per_second.items()},
            "dft_over_direct": round(per_second["dft"] / per_second["direct"], 2),
            "max_abs_difference": float(np.abs(outputs["dft"] - outputs["direct"]).max()),
            "max_abs_feature": float(np.abs(outputs["direct"]).max())}


def main(argv) -> None:
    del argv
    device = "gpu" if tf.config.list_physical_devices("GPU") else f"cpu x{os.cpu_count()}"
    machine = {"device": device, "cpu": cpu_name(), "cpu_flags": cpu_flags()}
    figures = {"knn": knn_figure, "extraction": extraction_figure, "feature_maps": feature_maps_figure}
    for name in FLAGS.figures:
        print(json.dumps({**figures[name](), **machine}), flush=True)


if __name__ == "__main__":
    app.run(main)
