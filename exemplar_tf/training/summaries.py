"""TensorBoard content beyond scalars: sample grids, bank statistics, kNN monitoring, the projector."""
from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from exemplar_tf.data import sources


def image_grid(images: np.ndarray, columns: int = 8) -> np.ndarray:
    """Tiles float images [n,P,P,3] in [0,1] into one image [1, rows*P, columns*P, 3] (empty cells black)."""
    n, p = images.shape[0], images.shape[1]
    rows = -(-n // columns)
    canvas = np.zeros((rows * p, columns * p, 3), np.float32)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        canvas[r * p:(r + 1) * p, c * p:(c + 1) * p] = image
    return canvas[None]


def bank_statistics(bank: tf.Tensor, sample: int = 1024, seed: int = 0) -> dict[str, float]:
    """Health of the memory bank [N,D]: mean row norm and the mean / max cosine between random distinct rows.

    A collapsing bank shows mean cosine drifting towards 1; a healthy one stays near 0.
    """
    rng = np.random.default_rng(seed)
    n = int(bank.shape[0])
    rows = tf.gather(bank, rng.choice(n, size=min(sample, n), replace=False))
    cosine = tf.matmul(tf.math.l2_normalize(rows, -1), tf.math.l2_normalize(rows, -1), transpose_b=True)
    off_diagonal = tf.boolean_mask(cosine, ~tf.eye(tf.shape(rows)[0], dtype=tf.bool))
    return {
        "bank/mean_norm": float(tf.reduce_mean(tf.norm(rows, axis=-1))),
        "bank/mean_cosine": float(tf.reduce_mean(off_diagonal)),
        "bank/max_cosine": float(tf.reduce_max(off_diagonal)),
    }


def labelled_images(spec: str, split: str, size: int, limit: int, data_dir: str | None = None):
    """(images uint8 [n,size,size,3], labels int64 [n]): at most `limit` examples of a labelled source, evenly
    spread over it (`sources.spread_subset`)."""
    source = sources.load_source(spec, split, data_dir=data_dir)
    if source.num_classes is None:
        raise ValueError(f"--knn_source={spec!r} split {split!r} has no labels")
    subset, _ = sources.spread_subset(source.dataset, source.num_examples, limit)
    resized = subset.map(
        lambda e: (tf.cast(tf.clip_by_value(tf.image.resize(e["image"], (size, size)), 0, 255), tf.uint8),
                   e["label"]),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    images, labels = zip(*resized.as_numpy_iterator())
    return np.stack(images), np.asarray(labels, np.int64)


def embed(encoder, head, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """L2-normalised embeddings float32 [n,D] of uint8 images [n,H,W,3] (head output, or the representation
    when the head is a classifier)."""
    out = []
    for start in range(0, len(images), batch_size):
        x = tf.cast(images[start:start + batch_size], tf.float32) / 255.0
        rep = encoder(x, training=False)
        v = head(rep, training=False) if head is not None else rep
        out.append(tf.math.l2_normalize(v, axis=-1).numpy())
    return np.concatenate(out)


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
