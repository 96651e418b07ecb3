"""TensorBoard content beyond scalars: sample grids, bank statistics, kNN monitoring, the projector."""
from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from exemplar_tf.data import sources
from exemplar_tf.errors import InputError


def image_grid(images: np.ndarray, columns: int = 8) -> np.ndarray:
    """Tiles float images [n,P,P,3] in [0,1] into one image [1, rows*P, columns*P, 3] (empty cells black)."""
    n, p = images.shape[0], images.shape[1]
    rows = -(-n // columns)
    canvas = np.zeros((rows * p, columns * p, 3), np.float32)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        canvas[r * p:(r + 1) * p, c * p:(c + 1) * p] = image
    return canvas[None]


def distinct_pair_cosines(rows: tf.Tensor) -> tf.Tensor:
    """Cosines between every ordered pair of distinct rows of [n,D] -> float [n*(n-1)]."""
    unit = tf.math.l2_normalize(tf.cast(rows, tf.float32), -1)
    cosine = tf.matmul(unit, unit, transpose_b=True)
    return tf.boolean_mask(cosine, ~tf.eye(tf.shape(rows)[0], dtype=tf.bool))


def bank_statistics(bank: tf.Tensor, sample: int = 1024, seed: int = 0) -> dict[str, float]:
    """Health of the memory bank [N,D]: mean row norm and the mean / max cosine between random distinct rows.

    A collapsing bank shows mean cosine drifting towards 1; a healthy one stays near 0.
    """
    rng = np.random.default_rng(seed)
    n = int(bank.shape[0])
    rows = tf.gather(bank, rng.choice(n, size=min(sample, n), replace=False))
    cosines = distinct_pair_cosines(rows)
    return {
        "bank/mean_norm": float(tf.reduce_mean(tf.norm(rows, axis=-1))),
        "bank/mean_cosine": float(tf.reduce_mean(cosines)),
        "bank/max_cosine": float(tf.reduce_max(cosines)),
    }


def representation_health(representations: np.ndarray, codes: np.ndarray) -> dict[str, float]:
    """Signs of collapse in what the network outputs for n monitoring images.

    representations: float [n,F] encoder outputs (post-ReLU for the Exemplar-CNNs); codes: float [n,D].
    active_units: fraction of the F units that fire (> 0) on at least one image; dead ReLUs lower it, and
    at 0 every image gets the same code. code_mean_cosine: mean cosine between the codes of distinct images;
    it goes to 1 as the codes collapse to one direction.
    """
    return {
        "representation/active_units": float(np.mean(np.any(representations > 0, axis=0))),
        "representation/code_mean_cosine": float(tf.reduce_mean(distinct_pair_cosines(codes))),
    }
def labelled_images(spec: str, split: str, size: int, limit: int, data_dir: str | None = None):
    """(images uint8 [n,size,size,3], labels int64 [n]): at most `limit` examples of a labelled source, evenly
    spread over it (`sources.spread_subset`)."""
    source = sources.load_source(spec, split, data_dir=data_dir)
    if source.num_classes is None:
        raise InputError(f"--knn_source={spec!r} split {split!r} has no labels")
    subset, _ = sources.spread_subset(source.dataset, source.num_examples, limit)
    resized = subset.map(
        lambda e: (tf.cast(tf.clip_by_value(tf.image.resize(e["image"], (size, size)), 0, 255), tf.uint8),
                   e["label"]),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    images, labels = zip(*resized.as_numpy_iterator())
    return np.stack(images), np.asarray(labels, np.int64)


def embed(encoder, head, images: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Codes and representations of uint8 images [n,H,W,3]: (L2-normalised codes float32 [n,D] = the head's
    output, or the representation when the head is a classifier; encoder representations float32 [n,F])."""
    codes, representations = [], []
    for start in range(0, len(images), batch_size):
        x = tf.cast(images[start:start + batch_size], tf.float32) / 255.0
        rep = encoder(x, training=False)
        v = head(rep, training=False) if head is not None else rep
        codes.append(tf.math.l2_normalize(v, axis=-1).numpy())
        representations.append(tf.cast(rep, tf.float32).numpy())
    return np.concatenate(codes), np.concatenate(representations)


def write_projector(log_dir: str, embeddings: np.ndarray, labels: list[str]) -> None:
    """Writes a TensorBoard projector view of `embeddings` [n,D] with one metadata label per row."""
    from tensorboard.plugins import projector

    projector_dir = os.path.join(log_dir, "projector")
    os.makedirs(projector_dir, exist_ok=True)
    with open(os.path.join(projector_dir, "metadata.tsv"), "w") as f:
        f.writelines(f"{label}\n" for label in labels)
    variable = tf.Variable(embeddings, name="embedding")
    tf.train.Checkpoint(embedding=variable).save(os.path.join(projector_dir, "embedding.ckpt"))
    config = projector.ProjectorConfig()
    entry = config.embeddings.add()
    entry.tensor_name = "embedding/.ATTRIBUTES/VARIABLE_VALUE"
    entry.metadata_path = "metadata.tsv"
    projector.visualize_embeddings(projector_dir, config)
