"""Merging similar surrogate classes (Dosovitskiy et al.'s clustering remedy: near-duplicate seeds make the
surrogate task ambiguous, so at some step the N seeds are clustered into K classes and training continues on those).

Clustering: spherical k-means, i.e. scikit-learn's KMeans (k-means++ init, several restarts) on L2-normalised codes.
For unit vectors ||a - b||^2 = 2 - 2 cos(a, b), so Euclidean k-means on them groups by cosine similarity; it costs
O(N K D) per iteration where agglomerative clustering needs the N x N similarity matrix (8000 seeds: 64M entries,
and its average/complete linkage is O(N^2 log N)), and it returns exactly K non-empty clusters for any N >= K.

The training step keeps every seed's label as its seed id in tf.data and maps it through `relabel` (int64 [N]).
Nothing changes shape: the softmax classifier keeps its N outputs and the ones past the last merged class are
masked (`objectives.losses.mask_inactive`; class c starts from its members' mean column, `merged_columns`). A memory bank keeps its
N rows: row c < K becomes the normalised mean of its members' rows (`merged_bank_rows`) and rows >= K are
inactive, masked out of the exact non-parametric softmax (`objectives.losses.mask_inactive` on the scores) and never drawn as NCE
noise (noise and NCE's Pn = 1/K, Z = K * mean exp are over [0, K)); the bank update writes row relabel[seed],
averaging a batch's codes per class (`memory_bank.average_duplicates`).
"""
from __future__ import annotations

import numpy as np


def merge_labels(codes: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Clusters N codes into k classes by cosine similarity (spherical k-means).

    codes: float [N,D] (any scale; each row is L2-normalised first, zero rows stay zero); k: 1 <= k <= N.
    Returns int64 [N] class ids, dense in [0, k): classes numbered in order of their first seed.
    """
    from sklearn.cluster import KMeans  # imported here: scikit-learn takes a second to import

    codes = np.asarray(codes, np.float64)
    if codes.ndim != 2 or not 1 <= k <= len(codes):
        raise ValueError(f"merge_labels needs codes [N,D] and 1 <= k <= N, got shape {codes.shape} and k={k}")
    norms = np.linalg.norm(codes, axis=1, keepdims=True)
    unit = codes / np.maximum(norms, 1e-12)
    clusters = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(unit)
    _, first = np.unique(clusters, return_index=True)
    order = np.argsort(np.argsort(first))  # cluster (sorted id) -> rank of its first seed
    dense = np.searchsorted(np.unique(clusters), clusters)
    return order[dense].astype(np.int64)


def merged_columns(weights: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The classifier's columns after a merge: column c = mean of the old columns of the seeds in class c, columns
    past the last class unchanged (they are masked). weights: float [..., N] (kernel [F,N] or bias [N]); labels:
    int [N] in [0, K). Returns the same shape and dtype: class c starts from the mean logit of its members."""
    labels = np.asarray(labels)
    num_classes = int(labels.max()) + 1
    sums = np.zeros(weights.shape[:-1] + (num_classes,), np.float64)
    np.add.at(sums.T, labels, weights.T.astype(np.float64))
    merged = weights.copy()
    merged[..., :num_classes] = sums / np.bincount(labels, minlength=num_classes)
    return merged.astype(weights.dtype)


def merged_bank_rows(rows: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The memory bank after a merge: row c = L2-normalised mean of the rows of the seeds in class c, rows past the
    last class unchanged (inactive). rows: float [N,D] (unit rows); labels: int [N] in [0, K). Returns float [N,D]
    in the dtype of `rows`; a class whose members' rows cancel exactly (mean 0) gets a zero row."""
    labels = np.asarray(labels)
    num_classes = int(labels.max()) + 1
    sums = np.zeros((num_classes, rows.shape[1]), np.float64)
    np.add.at(sums, labels, rows.astype(np.float64))  # the normalised sum is the normalised mean
    merged = rows.copy()
    merged[:num_classes] = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    return merged
