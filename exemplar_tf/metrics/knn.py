"""Weighted k-nearest-neighbour classification (NPID's evaluation, docs/method.md §4): cosine similarity to every
training feature, the k most similar vote for their class with weight exp(similarity / tau).

Pure functions of arrays: the training loop's kNN monitor and the `knn` / `evaluate` programs share them.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

DEFAULT_K = 200
DEFAULT_TAU = 0.07
TOP = 5


@tf.function(reduce_retracing=True)
def _vote_chunk(train_unit, train_labels, queries, k, tau, num_classes, top):
    """queries [q,D] -> classes [q,top] ordered by their summed vote exp(cos/tau) over the k nearest rows."""
    similarity = tf.matmul(tf.math.l2_normalize(queries, axis=-1), train_unit, transpose_b=True)  # [q,N]
    nearest_similarity, nearest = tf.math.top_k(similarity, k=k)  # [q,k]
    weights = tf.exp(nearest_similarity / tau)
    rows = tf.range(tf.shape(queries)[0])[:, None]
    slots = rows * num_classes + tf.gather(train_labels, nearest)  # [q,k] -> flat (query, class) slot
    votes = tf.math.unsorted_segment_sum(weights, slots, tf.shape(queries)[0] * num_classes)
    votes = tf.reshape(votes, [-1, num_classes])
    return tf.math.top_k(votes, k=top).indices  # ties: the lower class index first


def weighted_knn(train_feats, train_labels, query_feats, k: int = DEFAULT_K, tau: float = DEFAULT_TAU,
                 num_classes: int | None = None, batch: int = 512) -> np.ndarray:
    """Top-5 predicted classes int32 [Q, min(5, num_classes)], best first.

    train_feats float [N,D], train_labels int [N] in [0, num_classes), query_feats float [Q,D]; features need
    not be normalised (cosine similarity). k is capped at N. Queries are processed `batch` at a time, so memory
    is O(batch * N). num_classes defaults to max(train_labels) + 1.
    """
    train_labels = np.asarray(train_labels, np.int64)
    if len(train_feats) != len(train_labels):
        raise ValueError(f"{len(train_feats)} training features but {len(train_labels)} labels")
    num_classes = int(num_classes or train_labels.max() + 1)
    if train_labels.min() < 0 or train_labels.max() >= num_classes:
        raise ValueError(f"training labels must lie in [0, {num_classes})")
    train_unit = tf.math.l2_normalize(tf.constant(train_feats, tf.float32), axis=-1)
    labels = tf.constant(train_labels, tf.int32)
    k = min(int(k), len(train_labels))
    top = min(TOP, num_classes)
    query_feats = np.asarray(query_feats, np.float32)
    chunks = [_vote_chunk(train_unit, labels, tf.constant(query_feats[start:start + batch]), tf.constant(k),
                          tf.constant(tau, tf.float32), tf.constant(num_classes), tf.constant(top)).numpy()
              for start in range(0, len(query_feats), batch)]
    return np.concatenate(chunks) if chunks else np.zeros((0, top), np.int32)


def knn_accuracy(train_feats, train_labels, query_feats, query_labels, *, k: int = DEFAULT_K,
                 tau: float = DEFAULT_TAU, num_classes: int | None = None, batch: int = 512) -> dict[str, float]:
    """{"top1", "top5"}: fractions of queries whose label is the first / among the first five predictions
    (with fewer than 5 classes, top5 counts all of them and is 1.0)."""
    predictions = weighted_knn(train_feats, train_labels, query_feats, k, tau, num_classes, batch)
    query_labels = np.asarray(query_labels)[:, None]
    return {
        "top1": float(np.mean(predictions[:, 0] == query_labels[:, 0])),
        "top5": float(np.mean(np.any(predictions == query_labels, axis=1))),
    }
