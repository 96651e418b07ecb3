"""Linear-probe evaluation of an exported encoder, always next to a randomly initialised one.

    python -m exemplar_tf.evaluate --savedmodel=savedmodels/<name>/<v> --dataset=stl10 [--protocol=stl10]
        [--baseline_savedmodel=savedmodels/<name>_random/<v>] [--feature=features] [--eval_size=96]
        [--max_train=N] [--max_test=N] [--standardize] [--out_json=results.json]

Features come only through the SavedModel's signatures (any export of `exemplar_tf.export` works), so nothing
here can change the encoder. Labels are touched only by the probe (and by the protocols' per-class splits).
Probe (the paper's): the export's percentile-scaled features as they are (`--standardize` rescales columns
first), one-vs-rest squared-hinge linear SVM with bias (LinearSVC's objective, solved by `probe.svm`); C chosen
on a stratified held-out 20% of the training images from a log-uniform grid in [2e-4, 0.2] (walked upwards,
warm-started, stopping once the held-out accuracy falls; a winning edge C extends the grid that way, at most
`--max_grid_extension` steps, with a warning), then refit on all of them. Every fit logs its Newton/CG
iterations and whether it converged; the JSON carries them too.

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
from typing import Iterable, Iterator, Sequence

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from exemplar_tf import errors, export
from exemplar_tf.data import sources
from exemplar_tf.probe import svm

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
MAX_GRID_EXTENSION = 3  # extra C values tried beyond an edge of the grid that wins
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
class Fit:
    """One SVM fit of the probe: at `c`, its held-out accuracy (None for the final refit) and how the solver
    ended (`probe.svm.SvmModel`)."""

    c: float
    held_out_accuracy: float | None
    seconds: float
    newton_iterations: int
    cg_iterations: int
    converged: bool


@dataclasses.dataclass
class ProbeResult:
    accuracy: float  # on the test set, after refitting on all training images with `c`
    c: float
    validation: dict[float, float]  # C -> held-out accuracy
    fits: list[Fit] = dataclasses.field(default_factory=list)  # in order; the last one is the refit
    edge: str | None = None  # "smallest" / "largest": `c` is still on that edge after extending the grid

    @property
    def converged(self) -> bool:
        return all(fit.converged for fit in self.fits)


def standardized(reference: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Every array minus `reference`'s column means, divided by its column stds (1 where a column is constant)."""
    mean, std = reference.mean(axis=0), reference.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return [((x - mean) / std).astype(np.float32) for x in (reference, *others)]


def _fit_svm(features: np.ndarray, labels: np.ndarray, c: float, init: svm.SvmModel | None,
             num_classes: int) -> svm.SvmModel:
    return svm.fit_ovr_squared_hinge(features, labels, c, num_classes=num_classes, init=init)


def _grid_ratio(grid: Sequence[float]) -> float:
    """The factor between neighbouring C of a log-uniform grid (10 for a single C)."""
    return float(np.exp(np.mean(np.diff(np.log(grid))))) if len(grid) > 1 else 10.0


def linear_probe(train: Extracted, test: Extracted, c_values: Sequence[float] = C_GRID, seed: int = 0, *,
                 standardize: bool = False, max_extension: int = MAX_GRID_EXTENSION) -> ProbeResult:
    """One-vs-rest squared-hinge linear SVM (`probe.svm`, LinearSVC's objective); C picked on a held-out 20%.

    Features are used as given (the export's percentile-scaled features, as in the paper); `standardize`
    rescales every column to zero mean and unit variance first (statistics of the rows being fitted).
    The grid is walked from the smallest C up, each fit warm-started from the previous one, and the walk stops
    at the first C whose held-out accuracy is below the best so far. When the best C is the smallest tried (or
    the largest, with accuracy still rising) the grid is extended that way by its own ratio, at most
    `max_extension` times, with a warning; `edge` says if the chosen C is still on the edge after that.
    Every fit that did not converge is reported on stderr and in `fits`.
    """
    fit_rows, held_rows = holdout_split(train.labels, HOLDOUT_FRACTION, np.random.default_rng(seed))
    num_classes = int(train.labels.max()) + 1
    fit_x, held_x = train.features[fit_rows], train.features[held_rows]
    if standardize:
        fit_x, held_x = standardized(fit_x, held_x)
    fit_y, held_y = train.labels[fit_rows], train.labels[held_rows]
    validation: dict[float, float] = {}
    models: dict[float, svm.SvmModel] = {}
    fits: list[Fit] = []

    def try_c(c: float, init: svm.SvmModel | None) -> None:
        started = time.monotonic()
        model = _fit_svm(fit_x, fit_y, c, init, num_classes)
        models[c], validation[c] = model, float(np.mean(model.predict(held_x) == held_y))
        fits.append(_fit_record(c, validation[c], model, started))
        _log_fit(f"C={c:g} held-out accuracy {validation[c]:.4f}", fit_x.shape, fits[-1])

    def best_c() -> float:
        return max(validation, key=lambda c: (validation[c], -c))  # ties: the smaller C (stronger regularisation)

    grid = sorted(float(c) for c in c_values)
    for c in grid:
        try_c(c, models[max(models)] if models else None)
        if validation[c] < max(validation.values()):
            break
    ratio, walked_to_end = _grid_ratio(grid), len(validation) == len(grid)
    edge = _edge(best_c(), validation, walked_to_end)
    for _ in range(max_extension):
        if edge is None:
            break
        best = best_c()
        new_c = best / ratio if edge == "smallest" else best * ratio
        print(f"probe: WARNING: the best held-out C={best:g} is the {edge} C tried; extending the grid to "
              f"C={new_c:g}", file=sys.stderr)
        try_c(new_c, models[best])
        if edge == "largest":
            walked_to_end = validation[new_c] >= validation[best]
        edge = _edge(best_c(), validation, walked_to_end)
    if edge is not None:
        print(f"probe: WARNING: C={best_c():g} is still the {edge} C tried after extending the grid "
              f"{max_extension} times; pass a wider --c_values", file=sys.stderr)

    chosen = best_c()
    train_x, test_x = (standardized(train.features, test.features) if standardize
                       else (train.features, test.features))
    started = time.monotonic()
    model = _fit_svm(train_x, train.labels, chosen, models[chosen], num_classes)
    accuracy = float(np.mean(model.predict(test_x) == test.labels))
    fits.append(_fit_record(chosen, None, model, started))
    _log_fit(f"refit with C={chosen:g}, test accuracy {accuracy:.4f}", train_x.shape, fits[-1])
    return ProbeResult(accuracy, chosen, validation, fits, edge)


def _edge(best: float, validation: dict[float, float], walked_to_end: bool) -> str | None:
    """"smallest" / "largest" when `best` is on that edge of the C values tried (largest only while the held-out
    accuracy had not fallen yet), else None."""
    if best == min(validation):
        return "smallest"
    if best == max(validation) and walked_to_end:
        return "largest"
    return None


def _fit_record(c: float, held_out: float | None, model: svm.SvmModel, started: float) -> Fit:
    return Fit(c, held_out, time.monotonic() - started, model.newton_iterations, model.cg_iterations,
               model.converged)


def _log_fit(what: str, shape: tuple[int, int], fit: Fit) -> None:
    """One stderr line per SVM fit, with the solver's iterations; a fit that did not converge says so."""
    status = "converged" if fit.converged else "NOT CONVERGED (WARNING: stopped at the iteration limit)"
    print(f"probe: {what} ({shape[0]} x {shape[1]} features, {fit.seconds:.0f} s, {fit.newton_iterations} Newton "
          f"/ {fit.cg_iterations} CG iterations, {status})", file=sys.stderr)


@dataclasses.dataclass
class ProtocolResult:
    savedmodel: str
    accuracies: list[float]
    c_values: list[float]
    num_train: list[int]
    num_test: int
    probes: list[ProbeResult] = dataclasses.field(default_factory=list)  # one per trial

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
    standardize: bool = False
    max_grid_extension: int = MAX_GRID_EXTENSION


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
        probes.append(linear_probe(train, test, options.c_values, options.seed, standardize=options.standardize,
                                   max_extension=options.max_grid_extension))
        sizes.append(len(train.labels))
    return ProtocolResult(savedmodel, [p.accuracy for p in probes], [p.c for p in probes], sizes, len(test.labels),
                          probes)


def random_baseline_path(savedmodel: str) -> str | None:
    """The random baseline of `<base>/<name>/<version>`: the newest version of the sibling `<name>_random` that
    was exported by the same training run (export_info.json's run_dir); any newest version when the trained
    export does not record its run (exports written before it did). None when there is no such version."""
    sibling = os.path.dirname(os.path.normpath(savedmodel)) + "_random"
    if not os.path.isdir(sibling):
        return None
    run_dir = export.read_export_info(savedmodel).get("run_dir")
    for version in sorted((int(v) for v in os.listdir(sibling) if v.isdigit()), reverse=True):
        path = os.path.join(sibling, str(version))
        if run_dir is None or export.read_export_info(path).get("run_dir") == run_dir:
            return path
    return None


def missing_baseline_message(savedmodel: str) -> str:
    sibling = os.path.dirname(os.path.normpath(savedmodel)) + "_random"
    run_dir = export.read_export_info(savedmodel).get("run_dir")
    of_run = f" from run {run_dir}" if run_dir else ""
    return (f"WARNING: no random baseline: no {sibling}/<version>{of_run} exists (train.py exports it at step 0). "
            f"Pass --baseline_savedmodel=<export of a randomly initialised encoder of the same architecture>. "
            f"Reporting the trained encoder alone, without a gain over random.")


def baseline_mismatch(savedmodel: str, baseline: str) -> str | None:
    """One line naming the first of arch / input_size on which the two exports' export_info.json differ
    (None when they agree or do not record it)."""
    trained_info, baseline_info = export.read_export_info(savedmodel), export.read_export_info(baseline)
    for key in ("arch", "input_size"):
        if key in trained_info and key in baseline_info and trained_info[key] != baseline_info[key]:
            return (f"evaluate: the random baseline {baseline} has {key}={baseline_info[key]} but {savedmodel} has "
                    f"{key}={trained_info[key]}; pass --baseline_savedmodel=<random export of the same {key}>")
    return None


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
                "num_test": result.num_test, "converged": all(p.converged for p in result.probes),
                "c_at_grid_edge": [p.edge for p in result.probes],
                "fits": [[dataclasses.asdict(fit) for fit in p.fits] for p in result.probes]}

    return {
        "dataset": spec,
        "protocol": protocol,
        "feature": options.feature,
        "eval_size": options.eval_size or None,
        "probe": {"features": "standardized" if options.standardize else "as exported (percentile-scaled)",
                  "solver": "one-vs-rest squared-hinge SVM, Newton-CG (exemplar_tf.probe.svm)",
                  "c_grid": sorted(options.c_values), "max_grid_extension": options.max_grid_extension},
        "trained": entry(trained),
        "random_baseline": entry(baseline) if baseline else None,
        "trained_origin": _origin(trained.savedmodel),
        "baseline_origin": _origin(baseline.savedmodel) if baseline else None,
        "gain_over_random": trained.mean - baseline.mean if baseline else None,
    }


def _origin(savedmodel: str) -> dict:
    info = export.read_export_info(savedmodel)
    return {key: info.get(key) for key in ("name", "run_dir", "step", "arch", "input_size", "created")}


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("savedmodel", None, "Export folder savedmodels/<name>/<version>.", required=True)
    flags.DEFINE_string("dataset", None, "Labelled source spec: stl10, stl10_binary:<dir>, cifar10, caltech101, "
                        "folder:<dir>, demo_labelled.", required=True)
    flags.DEFINE_enum("protocol", None, PROTOCOLS, "Evaluation protocol (default: from --dataset).")
    flags.DEFINE_string("baseline_savedmodel", None, "Randomly initialised export of the same architecture "
                        "(default: the newest <name>_random version next to --savedmodel exported by the same training run).")
    flags.DEFINE_string("data_dir", None, "tensorflow-datasets data_dir.")
    flags.DEFINE_integer("eval_size", None, "Resize images to this square size (default: 96 STL native, 64 CIFAR, "
                         "150 Caltech, native for folders; 0: native size).")
    flags.DEFINE_enum("feature", None, sorted(FEATURE_SIGNATURES), "SavedModel output to probe (default: pyramid "
                      "for caltech101, features otherwise).")
    flags.DEFINE_integer("max_train", 0, "Use at most this many images per training set (0: all).")
    flags.DEFINE_integer("max_test", 0, "Use at most this many test images (0: all).")
    flags.DEFINE_integer("splits", None, "Random draws for cifar10_400 (default 10) and caltech101 (default 1).")
    flags.DEFINE_list("c_values", [f"{c:g}" for c in C_GRID], "SVM C grid searched on held-out training data "
                      "(default: the paper's log-uniform [2e-4, 0.2]).")
    flags.DEFINE_integer("max_grid_extension", MAX_GRID_EXTENSION, "When the best C is on an edge of the grid, "
                         "try up to this many more C values beyond it (0: never).")
    flags.DEFINE_boolean("standardize", False, "Standardise every feature column before the SVM (not the paper: "
                         "it cancels the export's per-layer percentile scaling).")
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
        standardize=values.standardize,
        max_grid_extension=values.max_grid_extension,
    )
    baseline_path = values.baseline_savedmodel or random_baseline_path(values.savedmodel)
    if baseline_path is None:
        print(missing_baseline_message(values.savedmodel), file=sys.stderr)
    elif baseline_mismatch(values.savedmodel, baseline_path):
        print(baseline_mismatch(values.savedmodel, baseline_path), file=sys.stderr)
        return 1
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
