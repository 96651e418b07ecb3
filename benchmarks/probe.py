"""Linear-probe speed and accuracy: the TensorFlow Newton-CG squared-hinge SVM vs scikit-learn's LinearSVC.

    nice -n 19 python benchmarks/probe.py [--cache=/tmp/probe_features.npz] [--svc_train=10000]

Features (--features): synthetic (default), 50 000 + 5 000 rows x 3 840 columns shaped like the medium net's
`features` (see `synthetic`); or cifar10, the `features` of a fresh export of a randomly initialised
build_encoder(--arch) on the CIFAR-10 folders in --data (native 32x32, every --stride-th training image and all
test images), extracted once and kept in --cache (on a shared 2-core CPU this extraction runs at ~15 images/s). Prints one JSON line per figure, each naming the CPU:
  protocol        the probe as `evaluate` runs it (C grid on a held-out 20 %, edge extension, refit on all
                  training rows, test): seconds and test accuracy, chosen C, Newton iterations and convergence
  solver_at_c     on --svc_train training rows (evenly spread) at one C of the grid: seconds and test accuracy of
                  `probe.svm` and of LinearSVC (same objective, dual="auto", tol 1e-4, max_iter 1000), and the
                  largest weight difference relative to LinearSVC's largest weight
  best_c          over those C: each solver's best test accuracy and the ratio of summed fit times
"""
from __future__ import annotations

import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from exemplar_tf.evaluation import probe, savedmodel  # noqa: E402
from exemplar_tf.models import ProjectionHead, build_encoder  # noqa: E402
from exemplar_tf.probe import svm  # noqa: E402
from exemplar_tf.serving import export  # noqa: E402
from machine import cpu_name  # noqa: E402  (benchmarks/ is on the path when run)

FLAGS = flags.FLAGS
flags.DEFINE_enum("features", "synthetic", ["synthetic", "cifar10"], "synthetic: `synthetic` rows (no "
                  "encoder); cifar10: a random --arch export's features of --data")
flags.DEFINE_integer("synthetic_train", 50_000, "synthetic training rows")
flags.DEFINE_float("separation", 0.15, "synthetic class-mean scale (smaller: harder)")
flags.DEFINE_string("data", "/tmp/data/cifar10", "CIFAR-10 folders <data>/{train,test}/<class>/*.jpg")
flags.DEFINE_string("arch", "medium", "encoder whose random-initialisation features are probed")
flags.DEFINE_string("cache", "/tmp/probe_features.npz", "feature cache (written on the first run)")
flags.DEFINE_integer("stride", 1, "extract every stride-th training image (1: all 50 000)")
flags.DEFINE_integer("svc_train", 10_000, "training rows for the per-C comparison with LinearSVC")
flags.DEFINE_bool("linearsvc", True, "also run the per-C comparison with LinearSVC (slow: minutes per C)")
flags.DEFINE_list("c_values", [f"{c:g}" for c in probe.C_GRID], "C values of the comparison")




def synthetic(n: int, seed: int, dim: int = 3840, latent: int = 64, classes: int = 10) -> savedmodel.Extracted:
    """ReLU features of a class-dependent 64-d latent through a fixed random map (overlapping classes), all
    columns divided by one 99.99th percentile: shaped like an export's `features`, without an encoder."""
    fixed = np.random.default_rng(1234)
    means = fixed.normal(size=(classes, latent)) * FLAGS.separation
    mix = fixed.normal(size=(latent, dim)).astype(np.float32) / np.sqrt(latent)
    offset = fixed.normal(size=dim).astype(np.float32) * 0.5
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    latent_rows = (means[labels] + rng.normal(size=(n, latent))).astype(np.float32)
    x = np.maximum(latent_rows @ mix + offset + 0.5 * rng.normal(size=(n, dim)).astype(np.float32), 0.0)
    return savedmodel.Extracted(x / np.float32(8.0), labels, np.arange(n))


def features() -> tuple[savedmodel.Extracted, savedmodel.Extracted]:
    if FLAGS.features == "synthetic":
        return synthetic(FLAGS.synthetic_train, 0), synthetic(5000, 1)
    if os.path.exists(FLAGS.cache):
        saved = np.load(FLAGS.cache)
        return (savedmodel.Extracted(saved["train_x"], saved["train_y"], np.arange(len(saved["train_y"]))),
                savedmodel.Extracted(saved["test_x"], saved["test_y"], np.arange(len(saved["test_y"]))))
    from exemplar_tf.data import sources

    tf.keras.utils.set_random_seed(0)
    encoder = build_encoder(FLAGS.arch, input_size=32, mean_rgb=(0.49, 0.48, 0.45))
    head = ProjectionHead(128)
    head.build((None, encoder.representation_dim))
    spec = f"folder:{FLAGS.data}"
    source = sources.load_source(spec, "train")
    subset, _ = sources.spread_subset(source.dataset, source.num_examples, 256)  # percentile images
    images = np.stack([e["image"] for e in subset.as_numpy_iterator()])
    with tempfile.TemporaryDirectory() as base:
        path = export.export_encoder(encoder, head, export_dir_base=base, name="random",
                                     percentiles=export.measure_percentiles(encoder, images))
        model = savedmodel.SavedModelFeatures(path, batch_size=256)
        train = model.extract(spec, "train", "features", max_examples=-(-source.num_examples // FLAGS.stride))
        test = model.extract(spec, "test", "features")
    np.savez(FLAGS.cache, train_x=train.features, train_y=train.labels, test_x=test.features, test_y=test.labels)
    return train, test


def emit(figure: str, **values) -> None:
    print(json.dumps({"figure": figure, **values, "cpu": cpu_name(), "cores": os.cpu_count(),
                      "load_average_1min": round(os.getloadavg()[0], 2)}), flush=True)


def main(argv) -> None:
    from sklearn.svm import LinearSVC

    train, test = features()
    shape = list(train.features.shape)
    started = time.perf_counter()
    result = probe.linear_probe(train, test)
    emit("protocol", train_shape=shape, num_test=len(test.labels), seconds=round(time.perf_counter() - started, 1),
         accuracy=result.accuracy, chosen_c=result.c,
         fits=[dict(c=f.c, seconds=round(f.seconds, 1), newton=f.newton_iterations, cg=f.cg_iterations,
                    converged=f.converged) for f in result.fits])

    if not FLAGS.linearsvc:
        return
    rows = np.linspace(0, len(train.labels) - 1, min(FLAGS.svc_train, len(train.labels))).round().astype(int)
    x, y = train.features[rows], train.labels[rows]
    ours, theirs, previous = {}, {}, None
    for c in sorted(float(v) for v in FLAGS.c_values):
        started = time.perf_counter()
        model = svm.fit_ovr_squared_hinge(x, y, c, init=previous)
        ours[c] = (time.perf_counter() - started, float(np.mean(model.predict(test.features) == test.labels)))
        previous = model
        started = time.perf_counter()
        reference = LinearSVC(C=c, dual="auto", max_iter=1000).fit(x, y)
        theirs[c] = (time.perf_counter() - started, float(np.mean(reference.predict(test.features) == test.labels)))
        emit("solver_at_c", train_shape=list(x.shape), c=c, seconds=round(ours[c][0], 2), accuracy=ours[c][1],
             newton=model.newton_iterations, cg=model.cg_iterations, converged=model.converged,
             linearsvc_seconds=round(theirs[c][0], 2), linearsvc_accuracy=theirs[c][1],
             linearsvc_iterations=int(np.max(reference.n_iter_)),
             max_weight_difference=float(np.abs(model.weights - reference.coef_.T).max()
                                         / np.abs(reference.coef_).max()))
    emit("best_c", train_shape=list(x.shape), accuracy=max(a for _, a in ours.values()),
         linearsvc_accuracy=max(a for _, a in theirs.values()),
         linearsvc_over_ours_seconds=round(sum(s for s, _ in theirs.values()) / sum(s for s, _ in ours.values()), 2))


if __name__ == "__main__":
    app.run(main)
