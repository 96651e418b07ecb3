"""The linear probe (the paper's): one-vs-rest squared-hinge linear SVM on frozen features, C chosen on held-out
training images.

Features are used as the export gives them (percentile-scaled; `standardize` rescales columns first); the SVM is
LinearSVC's objective with bias, solved by `exemplar_tf.probe.svm`. C is chosen on a stratified held-out 20% of the
training images from a log-uniform grid in [2e-4, 0.2] (walked upwards, warm-started, stopping once the held-out
accuracy falls; a winning edge C extends the grid that way, at most `max_extension` steps, with a warning), then
the SVM is refit on all of them. Every fit logs its Newton/CG iterations and whether it converged.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from typing import Sequence

import numpy as np

from exemplar_tf.evaluation.savedmodel import Extracted
from exemplar_tf.probe import svm

C_GRID = tuple(float(c) for c in np.geomspace(2e-4, 0.2, 5))
MAX_GRID_EXTENSION = 3  # extra C values tried beyond an edge of the grid that wins
HOLDOUT_FRACTION = 0.2


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
    search = _CSearch.held_out(train, seed, standardize)
    grid = sorted(float(c) for c in c_values)
    walked_to_end = _walk_grid(search, grid)
    edge = _extend_grid(search, _grid_ratio(grid), walked_to_end, max_extension)
    chosen = search.best_c()
    accuracy = _refit(search, train, test, chosen, standardize)
    return ProbeResult(accuracy, chosen, search.validation, search.fits, edge)


@dataclasses.dataclass
class _CSearch:
    """The choice of C: SVMs fitted on the fit rows and scored on the held-out rows, every fit recorded."""

    fit_x: np.ndarray
    fit_y: np.ndarray
    held_x: np.ndarray
    held_y: np.ndarray
    num_classes: int
    validation: dict[float, float] = dataclasses.field(default_factory=dict)  # C -> held-out accuracy
    models: dict[float, svm.SvmModel] = dataclasses.field(default_factory=dict)
    fits: list[Fit] = dataclasses.field(default_factory=list)

    @classmethod
    def held_out(cls, train: Extracted, seed: int, standardize: bool) -> "_CSearch":
        """`HOLDOUT_FRACTION` of each class of `train` held out (seeded); `standardize` with the fit rows' stats."""
        fit_rows, held_rows = holdout_split(train.labels, HOLDOUT_FRACTION, np.random.default_rng(seed))
        fit_x, held_x = train.features[fit_rows], train.features[held_rows]
        if standardize:
            fit_x, held_x = standardized(fit_x, held_x)
        return cls(fit_x, train.labels[fit_rows], held_x, train.labels[held_rows], int(train.labels.max()) + 1)

    def try_c(self, c: float, init: svm.SvmModel | None) -> None:
        """Fits at `c` (warm-started from `init`), scores it on the held-out rows, logs it."""
        started = time.monotonic()
        model = _fit_svm(self.fit_x, self.fit_y, c, init, self.num_classes)
        self.models[c], self.validation[c] = model, float(np.mean(model.predict(self.held_x) == self.held_y))
        self.fits.append(_fit_record(c, self.validation[c], model, started))
        _log_fit(f"C={c:g} held-out accuracy {self.validation[c]:.4f}", self.fit_x.shape, self.fits[-1])

    def best_c(self) -> float:
        """The C of the best held-out accuracy; ties: the smaller C (stronger regularisation)."""
        return max(self.validation, key=lambda c: (self.validation[c], -c))


def _walk_grid(search: _CSearch, grid: Sequence[float]) -> bool:
    """Tries the ascending `grid`, each fit warm-started from the previous one, until the held-out accuracy falls
    below the best so far. Returns whether it walked to the end."""
    for c in grid:
        search.try_c(c, search.models[max(search.models)] if search.models else None)
        if search.validation[c] < max(search.validation.values()):
            break
    return len(search.validation) == len(grid)


def _extend_grid(search: _CSearch, ratio: float, walked_to_end: bool, max_extension: int) -> str | None:
    """While the best C is on an edge of those tried (`_edge`), at most `max_extension` times: one more C beyond
    that edge by `ratio`, with a warning. Returns the edge the best C is still on, if any (also a warning)."""
    edge = _edge(search.best_c(), search.validation, walked_to_end)
    for _ in range(max_extension):
        if edge is None:
            break
        best = search.best_c()
        new_c = best / ratio if edge == "smallest" else best * ratio
        print(f"probe: WARNING: the best held-out C={best:g} is the {edge} C tried; extending the grid to "
              f"C={new_c:g}", file=sys.stderr)
        search.try_c(new_c, search.models[best])
        if edge == "largest":
            walked_to_end = search.validation[new_c] >= search.validation[best]
        edge = _edge(search.best_c(), search.validation, walked_to_end)
    if edge is not None:
        print(f"probe: WARNING: C={search.best_c():g} is still the {edge} C tried after extending the grid "
              f"{max_extension} times; pass a wider --c_values", file=sys.stderr)
    return edge


def _refit(search: _CSearch, train: Extracted, test: Extracted, c: float, standardize: bool) -> float:
    """Test accuracy of the SVM refitted at `c` on all training rows (warm-started from the held-out fit at `c`;
    `standardize` with all training rows' stats); the fit is recorded in `search.fits` with no held-out score."""
    train_x, test_x = (standardized(train.features, test.features) if standardize
                       else (train.features, test.features))
    started = time.monotonic()
    model = _fit_svm(train_x, train.labels, c, search.models[c], search.num_classes)
    accuracy = float(np.mean(model.predict(test_x) == test.labels))
    search.fits.append(_fit_record(c, None, model, started))
    _log_fit(f"refit with C={c:g}, test accuracy {accuracy:.4f}", train_x.shape, search.fits[-1])
    return accuracy


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
