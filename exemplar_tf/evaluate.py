"""Linear-probe evaluation of an exported encoder, always next to a randomly initialised one.

    python -m exemplar_tf.evaluate --savedmodel=savedmodels/<name>/<v> --dataset=stl10 [--protocol=stl10]
        [--baseline_savedmodel=savedmodels/<name>_random/<v>] [--feature=features] [--eval_size=96]
        [--max_train=N] [--max_test=N] [--out_json=results.json]

Features come only through the SavedModel's signatures (any export of `exemplar_tf.export` works), so nothing
here can change the encoder. Labels are touched only by the probe (and by the protocols' per-class splits).
Probe: standardised features, scikit-learn LinearSVC (one-vs-rest, with bias); C chosen on a stratified
held-out 20% of the training images from a log-uniform grid in [2e-4, 0.2] (walked upwards, stopping once the
held-out accuracy falls), then refit on all of them.

Protocols (each run on the trained and on the random encoder, with the same splits):
  stl10        train on each of the 10 predefined 1000-image folds, test on the 8000 test images; mean ± std
  cifar10      full training set, test set (images upsampled to 64x64 by default)
  cifar10_400  10 random draws of 400 training images per class; mean ± std
  caltech101   30 training images per class drawn from the train split (1 draw), test on the test split;
               1+4+16 pyramid pooling (the export's `pooled_features` signature), 150x150 images
  folder       any labelled source with train/test splits (e.g. folder:<dir> with <dir>/train/<class>/...)

Image sizes: with an eval size every image is resized (bilinear, antialiased) to that square. Without one
(`--eval_size=0`) each image keeps its own size; consecutive images of one size share a batch and a size change
starts a new batch, so mixed-size sources are exact but slower.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import warnings
from typing import Iterable, Iterator, Sequence

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from exemplar_tf import errors, export
from exemplar_tf.data import sources

PROTOCOLS = ("stl10", "cifar10", "cifar10_400", "caltech101", "folder")
FEATURE_SIGNATURES = {
    "features": export.SERVING_SIGNATURE,
    "embedding": export.SERVING_SIGNATURE,
    "quadrants": export.POOLED_SIGNATURE,
    "pyramid": export.POOLED_SIGNATURE,
}
DEFAULT_EVAL_SIZE = {"stl10": 0, "cifar10": 64, "cifar10_400": 64, "caltech101": 150, "folder": 0}
DEFAULT_FEATURE = {"caltech101": "pyramid"}  # other protocols: "features" (the export's stored pooling)
PER_CLASS = {"cifar10_400": 400, "caltech101": 30}
DEFAULT_SPLITS = {"cifar10_400": 10, "caltech101": 1}
STL10_FOLDS = 10
C_GRID = tuple(float(c) for c in np.geomspace(2e-4, 0.2, 5))
HOLDOUT_FRACTION = 0.2


@dataclasses.dataclass
class Extracted:
    """Features of a labelled split: features float32 [n,D], labels int64 [n], indices int64 [n]."""

    features: np.ndarray
    labels: np.ndarray
    indices: np.ndarray

    def subset(self, rows: np.ndarray) -> "Extracted":
        return Extracted(self.features[rows], self.labels[rows], self.indices[rows])


def protocol_for(spec: str) -> str:
    """Default protocol of a source spec: stl10 / stl10_binary:* -> stl10, cifar10, caltech101, else folder."""
    name = spec.split(":", 1)[0]
    if name in ("stl10", "stl10_binary"):
        return "stl10"
    return name if name in ("cifar10", "caltech101") else "folder"


def resize_images(dataset: tf.data.Dataset, size: int | None) -> tf.data.Dataset:
    """Dataset of {"image": uint8 [H,W,3], ...} with every image resized to size x size (None or 0: unchanged)."""
    if not size:
        return dataset

    def resize(example):
        image = tf.image.resize(example["image"], (size, size), method="bilinear", antialias=True)
        return {**example, "image": tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)}

    return dataset.map(resize, num_parallel_calls=tf.data.AUTOTUNE)


def same_size_batches(examples: Iterable[dict], batch_size: int) -> Iterator[dict]:
    """Groups consecutive examples {"image": [H,W,3], "label", "index"} into stacked batches of at most
    `batch_size` whose images all have one size; a size change closes the current batch."""
    pending: list[dict] = []
    for example in examples:
        if pending and (len(pending) == batch_size or example["image"].shape != pending[0]["image"].shape):
            yield {key: np.stack([e[key] for e in pending]) for key in pending[0]}
            pending = []
        pending.append(example)
    if pending:
        yield {key: np.stack([e[key] for e in pending]) for key in pending[0]}


class SavedModelFeatures:
    """An exported encoder used only through its signatures: images uint8 [B,H,W,3] -> float32 [B,D]."""

    def __init__(self, path: str, batch_size: int = 128):
        self.path = path
        self.batch_size = batch_size
        errors.check_savedmodel_folder(path)
        self.info = export.read_export_info(path)
        self._signatures = tf.saved_model.load(path).signatures

    def __call__(self, images: np.ndarray, key: str) -> np.ndarray:
        signature = FEATURE_SIGNATURES.get(key)
        if signature is None:
            raise errors.InputError(f"feature {key!r} is not one of {sorted(FEATURE_SIGNATURES)}")
        if signature not in self._signatures:
            raise errors.InputError(f"{self.path} has no {signature!r} signature (needed for feature {key!r})")
        return self._signatures[signature](images=tf.constant(images, tf.uint8))[key].numpy()

    def extract_dataset(self, dataset: tf.data.Dataset, total: int, key: str, *, eval_size: int | None = None,
                        desc: str = "") -> Extracted:
        """Features `key` of every example {"image": uint8 [H,W,3], "index", "label" (optional)} of `dataset`
        (`total` examples, for the progress bar). Unlabelled examples get label -1. Labels are carried along,
        never looked at."""
        examples = resize_images(dataset, eval_size).prefetch(tf.data.AUTOTUNE).as_numpy_iterator()
        parts = []
        with tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True, file=sys.stderr) as progress:
            for batch in same_size_batches(examples, self.batch_size):
                labels = batch.get("label", np.full(len(batch["index"]), -1))
                parts.append((self(batch["image"], key), labels, batch["index"]))
                progress.update(len(batch["index"]))
        if not parts:
            raise ValueError(f"no images to extract features from ({desc})")
        feats, labels, indices = zip(*parts)
        return Extracted(np.concatenate(feats).astype(np.float32), np.concatenate(labels).astype(np.int64),
                         np.concatenate(indices).astype(np.int64))

    def extract(self, spec: str, split: str, key: str, *, eval_size: int | None = None, fold: int | None = None,
                data_dir: str | None = None, max_examples: int = 0, desc: str = "") -> Extracted:
        """`extract_dataset` over the labelled `load_source(spec, split, fold=fold)` (at most `max_examples`
        if > 0, evenly spread over the split: `sources.spread_subset`)."""
        source = sources.load_source(spec, split, data_dir=data_dir, fold=fold)
        if source.num_classes is None:
            raise errors.InputError(f"{spec} split {split!r} has no labels")
        dataset, total = sources.spread_subset(source.dataset, source.num_examples, max_examples)
        return self.extract_dataset(dataset, total, key, eval_size=eval_size, desc=desc or f"{spec} {split}")


def per_class_subset(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted row indices: `per_class` random rows of every class (all rows of a class that has fewer)."""
    rows = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(rows))


def holdout_split(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, validation rows): about `fraction` of each class held out; classes with one image stay in fit."""
    fit, held = [], []
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        n_held = max(1, round(fraction * len(rows))) if len(rows) > 1 else 0
        held.append(rows[:n_held])
        fit.append(rows[n_held:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(held))


@dataclasses.dataclass
class ProbeResult:
    accuracy: float  # on the test set, after refitting on all training images with `c`
    c: float
    validation: dict[float, float]  # C -> held-out accuracy


def _fit_svm(features: np.ndarray, labels: np.ndarray, c: float, seed: int):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    model = make_pipeline(StandardScaler(), LinearSVC(C=c, fit_intercept=True, dual="auto", max_iter=2000,
                                                      random_state=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # the probe is compared at equal iterations
        return model.fit(features, labels)


def linear_probe(train: Extracted, test: Extracted, c_values: Sequence[float] = C_GRID,
                 seed: int = 0) -> ProbeResult:
    """One-vs-all linear SVM on standardised features; C picked on a held-out 20% of `train`.

    The grid is walked from the smallest C up and the walk stops at the first C whose held-out accuracy is below
    the best so far (accuracy is unimodal in C in practice; large C are also by far the slowest to fit).
    `validation` holds the C values actually tried.
    """
    fit_rows, held_rows = holdout_split(train.labels, HOLDOUT_FRACTION, np.random.default_rng(seed))
    validation = {}
    for c in sorted(c_values):
        started = time.monotonic()
        model = _fit_svm(train.features[fit_rows], train.labels[fit_rows], c, seed)
        validation[c] = float(np.mean(model.predict(train.features[held_rows]) == train.labels[held_rows]))
        _log_fit(f"C={c:g} held-out accuracy {validation[c]:.4f}", (len(fit_rows), train.features.shape[1]), started)
        if validation[c] < max(validation.values()):
            break
    best_c = max(validation, key=lambda c: (validation[c], -c))  # ties: the smaller C (stronger regularisation)
    started = time.monotonic()
    model = _fit_svm(train.features, train.labels, best_c, seed)
    accuracy = float(np.mean(model.predict(test.features) == test.labels))
    _log_fit(f"refit with C={best_c:g}, test accuracy {accuracy:.4f}", train.features.shape, started)
    return ProbeResult(accuracy, best_c, validation)


def _log_fit(what: str, shape: tuple[int, int], started: float) -> None:
    """One stderr line per SVM fit: on ResNet features each takes minutes without a progress bar."""
    print(f"probe: {what} ({shape[0]} x {shape[1]} features, {time.monotonic() - started:.0f} s)", file=sys.stderr)


@dataclasses.dataclass
class ProtocolResult:
    savedmodel: str
    accuracies: list[float]
    c_values: list[float]
    num_train: list[int]
    num_test: int

    @property
    def mean(self) -> float:
        return float(np.mean(self.accuracies))

    @property
    def std(self) -> float:
        return float(np.std(self.accuracies))


@dataclasses.dataclass(frozen=True)
class ProtocolOptions:
    feature: str = "features"
    eval_size: int | None = None
    data_dir: str | None = None
    max_train: int = 0
    max_test: int = 0
    splits: int = 1
    c_values: Sequence[float] = C_GRID
    seed: int = 0


def training_sets(model: SavedModelFeatures, protocol: str, spec: str, options: ProtocolOptions) -> Iterator[Extracted]:
    """The protocol's training sets, one per trial (same draws for every model: they depend on `seed` only)."""
    extract = dict(key=options.feature, eval_size=options.eval_size, data_dir=options.data_dir,
                   max_examples=options.max_train)
    if protocol == "stl10":
        for fold in range(STL10_FOLDS):
            yield model.extract(spec, "train", fold=fold, desc=f"train fold {fold}", **extract)
    elif protocol in PER_CLASS:
        full = model.extract(spec, "train", desc="train", **extract)
        for split in range(options.splits):
            rng = np.random.default_rng([options.seed, split])
            yield full.subset(per_class_subset(full.labels, PER_CLASS[protocol], rng))
    else:
        yield model.extract(spec, "train", desc="train", **extract)


def run_protocol(savedmodel: str, protocol: str, spec: str, options: ProtocolOptions,
                 batch_size: int = 128) -> ProtocolResult:
    """Extracts features through `savedmodel` and probes them with `protocol`'s trials."""
    if protocol not in PROTOCOLS:
        raise errors.InputError(f"protocol {protocol!r} is not one of {PROTOCOLS}")
    model = SavedModelFeatures(savedmodel, batch_size)
    test = model.extract(spec, "test", key=options.feature, eval_size=options.eval_size, data_dir=options.data_dir,
                         max_examples=options.max_test, desc="test")
    probes, sizes = [], []
    for train in training_sets(model, protocol, spec, options):
        probes.append(linear_probe(train, test, options.c_values, options.seed))
        sizes.append(len(train.labels))
    return ProtocolResult(savedmodel, [p.accuracy for p in probes], [p.c for p in probes], sizes, len(test.labels))


def random_baseline_path(savedmodel: str) -> str | None:
    """The newest version of the sibling export `<name>_random` of `<base>/<name>/<version>`, if any."""
    model_dir = os.path.dirname(os.path.normpath(savedmodel))
    sibling = model_dir + "_random"
    version = export.next_version(sibling) - 1
    return os.path.join(sibling, str(version)) if version > 0 else None


def missing_baseline_message(savedmodel: str) -> str:
    sibling = os.path.dirname(os.path.normpath(savedmodel)) + "_random"
    return (f"WARNING: no random baseline: {sibling}/<version> does not exist (train.py exports it at step 0). "
            f"Pass --baseline_savedmodel=<export of a randomly initialised encoder of the same architecture>. "
            f"Reporting the trained encoder alone, without a gain over random.")


def results_table(protocol: str, feature: str, trained: ProtocolResult, baseline: ProtocolResult | None) -> str:
    """Plain-text table: method, protocol, feature, trials, accuracy mean ± std (%), gain over random (points)."""
    header = (f"{'method':<44} {'protocol':<12} {'feature':<10} {'trials':>6} {'accuracy (%)':>16} "
              f"{'gain over random':>17}")
    lines = [header, "-" * len(header)]
    gain = f"{100 * (trained.mean - baseline.mean):+.2f}" if baseline else "n/a (no baseline)"
    rows = [(trained, gain)] + ([(baseline, "")] if baseline else [])
    for result, gain_text in rows:
        accuracy = f"{100 * result.mean:.2f} ± {100 * result.std:.2f}"
        lines.append(f"{result.savedmodel:<44} {protocol:<12} {feature:<10} {len(result.accuracies):>6} "
                     f"{accuracy:>16} {gain_text:>17}")
    return "\n".join(lines)


def results_json(spec: str, protocol: str, options: ProtocolOptions, trained: ProtocolResult,
                 baseline: ProtocolResult | None) -> dict:
    def entry(result: ProtocolResult) -> dict:
        return {"savedmodel": result.savedmodel, "accuracy_mean": result.mean, "accuracy_std": result.std,
                "accuracies": result.accuracies, "chosen_c": result.c_values, "num_train": result.num_train,
                "num_test": result.num_test}

    return {
        "dataset": spec,
        "protocol": protocol,
        "feature": options.feature,
        "eval_size": options.eval_size or None,
        "trained": entry(trained),
        "random_baseline": entry(baseline) if baseline else None,
        "gain_over_random": trained.mean - baseline.mean if baseline else None,
    }


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("savedmodel", None, "Export folder savedmodels/<name>/<version>.", required=True)
    flags.DEFINE_string("dataset", None, "Labelled source spec: stl10, stl10_binary:<dir>, cifar10, caltech101, "
                        "folder:<dir>, demo_labelled.", required=True)
    flags.DEFINE_enum("protocol", None, PROTOCOLS, "Evaluation protocol (default: from --dataset).")
    flags.DEFINE_string("baseline_savedmodel", None, "Randomly initialised export of the same architecture "
                        "(default: the newest <name>_random version next to --savedmodel).")
    flags.DEFINE_string("data_dir", None, "tensorflow-datasets data_dir.")
    flags.DEFINE_integer("eval_size", None, "Resize images to this square size (default: 96 STL native, 64 CIFAR, "
                         "150 Caltech, native for folders; 0: native size).")
    flags.DEFINE_enum("feature", None, sorted(FEATURE_SIGNATURES), "SavedModel output to probe (default: pyramid "
                      "for caltech101, features otherwise).")
    flags.DEFINE_integer("max_train", 0, "Use at most this many images per training set (0: all).")
    flags.DEFINE_integer("max_test", 0, "Use at most this many test images (0: all).")
    flags.DEFINE_integer("splits", None, "Random draws for cifar10_400 (default 10) and caltech101 (default 1).")
    flags.DEFINE_list("c_values", [f"{c:g}" for c in C_GRID], "SVM C grid searched on held-out training data.")
    flags.DEFINE_integer("seed", 0, "Seed of the per-class draws and the held-out split.")
    flags.DEFINE_integer("batch_size", 128, "Images per SavedModel call.")
    flags.DEFINE_string("out_json", None, "Write the results as JSON here.")


def main(argv) -> int:
    from absl import app, flags

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    values = flags.FLAGS
    protocol = values.protocol or protocol_for(values.dataset)
    options = ProtocolOptions(
        feature=values.feature or DEFAULT_FEATURE.get(protocol, "features"),
        eval_size=DEFAULT_EVAL_SIZE[protocol] if values.eval_size is None else values.eval_size,
        data_dir=values.data_dir,
        max_train=values.max_train,
        max_test=values.max_test,
        splits=values.splits or DEFAULT_SPLITS.get(protocol, 1),
        c_values=tuple(float(c) for c in values.c_values),
        seed=values.seed,
    )
    baseline_path = values.baseline_savedmodel or random_baseline_path(values.savedmodel)
    if baseline_path is None:
        print(missing_baseline_message(values.savedmodel), file=sys.stderr)
    trained = run_protocol(values.savedmodel, protocol, values.dataset, options, values.batch_size)
    baseline = run_protocol(baseline_path, protocol, values.dataset, options, values.batch_size) if baseline_path \
        else None
    print(results_table(protocol, options.feature, trained, baseline))
    report = results_json(values.dataset, protocol, options, trained, baseline)
    if values.out_json:
        with open(values.out_json, "w") as f:
            json.dump(report, f, indent=2)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    _define_flags()
    errors.run(main)
