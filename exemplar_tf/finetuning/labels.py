"""The labelled subset: a seeded, class-balanced choice of training rows."""
from __future__ import annotations

import numpy as np

from exemplar_tf.evaluation.protocols import per_class_subset


def labelled_rows(labels: np.ndarray, *, per_class: int = 0, fraction: float = 0.0, seed: int = 0) -> np.ndarray:
    """Sorted row indices into `labels` (int [n]): `per_class` random rows of every class, or round(fraction * n_c)
    of each class c (at least one). Exactly one of per_class > 0 or 0 < fraction <= 1 must be given."""
    if (per_class > 0) == (fraction > 0):
        raise ValueError(f"give exactly one of labels_per_class > 0 or label_fraction > 0, got {per_class}, {fraction}")
    if fraction > 1:
        raise ValueError(f"label_fraction must be in (0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    if per_class:
        return per_class_subset(labels, per_class, rng)
    rows = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        rows.append(members[:max(1, round(fraction * len(members)))])
    return np.sort(np.concatenate(rows))
