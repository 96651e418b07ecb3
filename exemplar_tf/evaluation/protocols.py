"""Evaluation protocols: a labelled source's training sets and test set, features through an export, the linear
probe, and the random-network baseline the trained export is reported against.

`PROTOCOLS` (stl10 folds, cifar10, cifar10_400 draws, caltech101 with pyramid pooling, folder) are described in the
`exemplar_tf.evaluate` program's help; each runs on the trained and on the random encoder with the same splits.
Labels are touched only by the probe (and by the protocols' per-class splits).
"""
from __future__ import annotations

import dataclasses
import datetime
import os
from typing import Iterator, Sequence

import numpy as np

from exemplar_tf import errors
from exemplar_tf.data import sources
from exemplar_tf.evaluation.probe import C_GRID, MAX_GRID_EXTENSION, ProbeResult, linear_probe
from exemplar_tf.evaluation.savedmodel import Extracted, SavedModelFeatures, read_export_info
from exemplar_tf.serving.export import CREATED_FORMAT

PROTOCOLS = ("stl10", "cifar10", "cifar10_400", "caltech101", "folder")
DEFAULT_EVAL_SIZE = {"stl10": 0, "cifar10": 64, "cifar10_400": 64, "caltech101": 150, "folder": 0}
DEFAULT_FEATURE = {"caltech101": "pyramid"}  # other protocols: "features" (the export's stored pooling)
PER_CLASS = {"cifar10_400": 400, "caltech101": 30}
DEFAULT_SPLITS = {"cifar10_400": 10, "caltech101": 1}
STL10_FOLDS = 10


def protocol_for(spec: str) -> str:
    """Default protocol of a source spec: stl10 / stl10_binary:* -> stl10, cifar10, caltech101, else folder."""
    name = spec.split(":", 1)[0]
    if name in ("stl10", "stl10_binary"):
        return "stl10"
    return name if name in ("cifar10", "caltech101") else "folder"


def per_class_subset(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted row indices: `per_class` random rows of every class (all rows of a class that has fewer)."""
    rows = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(rows))


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
    if problem := sources.same_images_problem(spec, "train", spec, "test"):
        raise errors.InputError(problem)
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


def _created(info: dict) -> datetime.datetime | None:
    """When an export was written (export_info.json's `created`), or None for exports that do not record it."""
    return datetime.datetime.strptime(info["created"], CREATED_FORMAT) if info.get("created") else None


def random_baseline_path(savedmodel: str) -> str | None:
    """The random baseline of `<base>/<name>/<version>`: the newest version of the sibling `<name>_random` that
    was exported by the same training run (export_info.json's run_dir) no later than the trained export, so a run
    started over in the same directory (--overwrite) does not lend its new baseline to the old run's exports; any
    newest version when the trained export does not record its run (exports written before it did). None when
    there is no such version."""
    sibling = os.path.dirname(os.path.normpath(savedmodel)) + "_random"
    if not os.path.isdir(sibling):
        return None
    trained = read_export_info(savedmodel)
    run_dir, trained_at = trained.get("run_dir"), _created(trained)
    for version in sorted((int(v) for v in os.listdir(sibling) if v.isdigit()), reverse=True):
        path = os.path.join(sibling, str(version))
        info = read_export_info(path)
        baseline_at = _created(info)
        if run_dir is None or (info.get("run_dir") == run_dir
                               and (trained_at is None or baseline_at is None or baseline_at <= trained_at)):
            return path
    return None


def missing_baseline_message(savedmodel: str) -> str:
    sibling = os.path.dirname(os.path.normpath(savedmodel)) + "_random"
    run_dir = read_export_info(savedmodel).get("run_dir")
    of_run = f" from run {run_dir}" if run_dir else ""
    return (f"WARNING: no random baseline: no {sibling}/<version>{of_run} exists (train.py exports it at step 0). "
            f"Pass --baseline_savedmodel=<export of a randomly initialised encoder of the same architecture>. "
            f"Reporting the trained encoder alone, without a gain over random.")


def baseline_mismatch(savedmodel: str, baseline: str) -> str | None:
    """One line naming the first of arch / input_size on which the two exports' export_info.json differ
    (None when they agree or do not record it)."""
    trained_info, baseline_info = read_export_info(savedmodel), read_export_info(baseline)
    for key in ("arch", "input_size"):
        if key in trained_info and key in baseline_info and trained_info[key] != baseline_info[key]:
            return (f"the random baseline {baseline} has {key}={baseline_info[key]} but {savedmodel} has "
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
    info = read_export_info(savedmodel)
    return {key: info.get(key) for key in ("name", "run_dir", "step", "arch", "input_size", "created")}
