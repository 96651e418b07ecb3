"""The input contract between a training pipeline and the step: how many views of each instance a batch holds
and where they are augmented. The pipeline that makes the batches also hands the step the function that turns
one into its views (`TrainingData.views`); the step calls it and never looks inside the batch.

    host, one view:     {"image": float32 [b,P,P,3], "label": int64 [b]}                 -> `one_host_view`
    host, V views:      {"views": float32 [V,b,P,P,3], "label"}                           -> `stacked_views`
    device, V views:    {<raw inputs>, "label", "aug_seed": int32 [2] (or [b,2])}         -> `device_views`

View 0 is augmented from the batch's own seed, so a one-view run draws exactly what it always drew; view v > 0
from the seed with v folded in.
"""
from __future__ import annotations

from typing import Callable

import tensorflow as tf

Views = Callable[[dict], list]  # a per-replica batch -> its views, each float32 [b,P,P,3] in [0,1]
Augment = Callable[[dict, tf.Tensor], tf.Tensor]  # (device batch, seed) -> one view float32 [b,P,P,3]


def one_host_view(batch: dict) -> list:
    """A batch augmented in tf.data with one view: [batch["image"]]."""
    return [batch["image"]]


def stacked_views(batch: dict) -> list:
    """A batch augmented in tf.data with several views: batch["views"] [V,b,P,P,3] as V tensors."""
    return tf.unstack(batch["views"])


def view_seed(seed: tf.Tensor, view: int) -> tf.Tensor:
    """The seed of view `view` (int32 [2]): the batch's seed for view 0, else that seed with the view folded in."""
    return seed if view == 0 else tf.random.experimental.stateless_fold_in(seed, view)


def device_views(augment: Augment, count: int) -> Views:
    """A batch of raw inputs and an "aug_seed": `count` views, view v = augment(batch, view_seed(aug_seed, v))."""
    def views(batch: dict) -> list:
        return [augment(batch, view_seed(batch["aug_seed"], view)) for view in range(count)]

    return views


def resize_matrix(size_in: int, size_out: int) -> tf.Tensor:
    """float32 [size_out, size_in]: the weights of a 1-D bilinear resize with antialiasing (the rows of
    `tf.image.resize(..., antialias=True)` applied to each basis vector), computed eagerly once per trace."""
    with tf.init_scope():
        basis = tf.eye(size_in)[:, :, None, None]  # [in, in, 1, 1]: image j is the j-th basis column
        resized = tf.image.resize(basis, (size_out, 1), method="bilinear", antialias=True)  # [in, out, 1, 1]
        return tf.constant(tf.transpose(resized[:, :, 0, 0]).numpy())


def at_side(views: list, side: int) -> list:
    """The views [b,P,P,3] downsampled to [b,side,side,3]: the export's resize (bilinear with antialiasing) as two
    matrix products, which run on every device and under XLA (the resize op itself has a CPU kernel only).
    Unchanged when they already have that side."""
    if side == views[0].shape[1]:
        return views
    weights = resize_matrix(views[0].shape[1], side)
    return [tf.einsum("sp,bpqc,tq->bstc", tf.cast(weights, view.dtype), view, tf.cast(weights, view.dtype))
            for view in views]


def views_on_host(dataset: tf.data.Dataset, views: Views) -> tf.data.Dataset:
    """Runs `views` on a raw-input dataset inside tf.data: {"views": [V,b,P,P,3], "label"} (`stacked_views`)."""
    return (dataset.map(lambda batch: {"views": tf.stack(views(batch)), "label": batch["label"]},
                        num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE))
