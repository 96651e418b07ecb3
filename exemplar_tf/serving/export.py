"""Export an encoder (and its projection head) as a SavedModel for TF Serving: <base>/<name>/<version>/.

The writer of the format `exemplar_tf.evaluation.savedmodel` reads; `serving.runs` exports training runs with it
(the program is `exemplar_tf.export`).

Two signatures over uint8 images of any size: `serving_default` (the `embedding` at the training size: projection
head or normalised representation; and the Exemplar-CNN evaluation `features` with the stored pooling, scaled by
per-layer activation percentiles) and `pooled_features` (both poolings); their shapes and the fields of
`assets.extra/export_info.json` are listed in the program's docstring (`exemplar_tf/export.py`) and in
BUILD_NOTES.md. The encoder and the head only: no bank, no optimizer. The version folder appears by a rename,
never half-written.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from typing import Callable, Sequence

import keras
import tensorflow as tf

from exemplar_tf.models import features
from exemplar_tf.models.heads import ProjectionHead


SERVING_SIGNATURE = "serving_default"
POOLED_SIGNATURE = "pooled_features"
INFO_PATH = os.path.join("assets.extra", "export_info.json")
PERCENTILE = 99.99


# The training loop's name for measuring the per-layer scales on training images.
measure_percentiles = features.activation_percentiles


def next_version(model_dir: str) -> int:
    """1 + the largest integer-named entry of `model_dir` (1 when there is none or the folder is missing)."""
    if not os.path.isdir(model_dir):
        return 1
    versions = [int(entry) for entry in os.listdir(model_dir) if entry.isdigit()]
    return max(versions, default=0) + 1


def _serving_functions(encoder, head, percentiles: Sequence[float], pooling: str):
    """(serve, pooled): the two endpoint functions of uint8 images [B,H,W,3]."""
    scales = tf.Variable(list(percentiles), dtype=tf.float32, trainable=False, name="feature_percentiles")
    input_size = int(encoder.input_size)

    def embedding(images):
        small = tf.image.resize(images, (input_size, input_size), method="bilinear", antialias=True)
        representation = encoder(small, training=False)
        projected = head(representation, training=False) if head is not None else representation
        return tf.math.l2_normalize(tf.cast(projected, tf.float32), axis=-1)

    def maps(images):
        return encoder.evaluation_maps(features.at_least_size(images, input_size))

    def as_float(images):
        # Loaded signatures check the dtype but not the shape; without this a 1-channel batch would broadcast
        # against the 3-channel mean and pass silently.
        return tf.cast(tf.ensure_shape(images, [None, None, None, 3]), tf.float32) / 255.0

    def serve(images):
        x = as_float(images)
        layer_scales = tf.unstack(scales)
        return {"embedding": embedding(x), "features": features.evaluation_features(maps(x), layer_scales, pooling)}

    def pooled(images):
        layer_maps = maps(as_float(images))
        layer_scales = tf.unstack(scales)
        return {pool: features.evaluation_features(layer_maps, layer_scales, pool) for pool in features.POOLINGS}

    return serve, pooled, scales


def _write_archive(encoder, head, percentiles: Sequence[float], pooling: str, path: str) -> None:
    serve, pooled, scales = _serving_functions(encoder, head, percentiles, pooling)
    archive = keras.export.ExportArchive()
    archive.track(encoder)
    if head is not None:
        archive.track(head)
    signature = [tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")]
    archive.add_endpoint(SERVING_SIGNATURE, serve, input_signature=signature)
    archive.add_endpoint(POOLED_SIGNATURE, pooled, input_signature=signature)
    archive.add_variable_collection("feature_percentiles", [scales])
    archive.write_out(path, verbose=False)


def _export_info(encoder, head, percentiles: Sequence[float], pooling: str, channels: Sequence[int], name: str,
                 origin: dict | None) -> dict:
    return {
        "name": name,
        "run_dir": os.path.abspath(origin["run_dir"]) if origin and origin.get("run_dir") else None,
        "step": int(origin["step"]) if origin and origin.get("step") is not None else None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "arch": getattr(encoder, "arch", type(encoder).__name__),
        "input_size": int(encoder.input_size),
        "representation_dim": int(encoder.representation_dim),
        "embedding": "projection_head" if head is not None else "representation",
        "embedding_dim": int(head.dim) if head is not None else int(encoder.representation_dim),
        "pooling": pooling,
        "percentile": PERCENTILE,
        "percentiles": [float(p) for p in percentiles],
        "feature_channels": [int(c) for c in channels],
        # The encoder's options (`Encoder.options()`), read back by `models.recorded_options`.
        **(encoder.options() if hasattr(encoder, "options") else {}),
    }


def export_encoder(encoder, head=None, *, export_dir_base: str = "savedmodels", name: str,
                   version: int | None = None, percentiles: Sequence[float], pooling: str = "quadrants",
                   origin: dict | None = None) -> str:
    """Writes encoder (+ projection head) to `<export_dir_base>/<name>/<version>` and returns that path.

    encoder: the `Encoder` contract (input_size, representation_dim, feature_maps, call).
    head: a `ProjectionHead`, or None for models trained without one (softmax over surrogate classes; the
      classifier is not part of the representation and is not exported).
    percentiles: one scale per `encoder.feature_maps` layer (see `measure_percentiles`).
    version: None picks the next integer; an existing explicit version raises FileExistsError.
    origin: {"run_dir", "step"} of the training run the weights come from, recorded in export_info.json (with
      the name and the creation time) so that `evaluate` pairs a trained export with its own run's baseline.
    The SavedModel is written to a hidden temporary folder next to the target and renamed into place, so
    TF Serving never sees a half-written version.
    """
    if head is not None and not isinstance(head, ProjectionHead):
        raise TypeError(f"head must be a ProjectionHead or None, got {type(head).__name__}")
    if pooling not in features.POOLINGS:
        raise ValueError(f"pooling={pooling!r} is not one of {features.POOLINGS}")
    probe = encoder.feature_maps(tf.zeros([1, encoder.input_size, encoder.input_size, 3]), training=False)
    if len(percentiles) != len(probe):
        raise ValueError(f"{len(percentiles)} percentiles for {len(probe)} feature maps")

    def write(path: str) -> None:
        _write_archive(encoder, head, percentiles, pooling, path)
        info_path = os.path.join(path, INFO_PATH)
        os.makedirs(os.path.dirname(info_path), exist_ok=True)
        with open(info_path, "w") as f:
            json.dump(_export_info(encoder, head, percentiles, pooling, [int(m.shape[-1]) for m in probe], name,
                                   origin), f, indent=2)

    return write_version(os.path.join(export_dir_base, name), write, version)


def write_version(model_dir: str, write: Callable[[str], None], version: int | None = None) -> str:
    """Writes a version folder `<model_dir>/<version>` and returns its path: `write(path)` fills a folder that
    does not exist yet inside a hidden temporary folder in `model_dir`, which is then renamed into place, so TF
    Serving never sees a half-written version. version: None takes the next integer (`next_version`, taken
    again if another writer renames that one first); an explicit version that exists raises FileExistsError."""
    os.makedirs(model_dir, exist_ok=True)
    if version is not None and os.path.exists(os.path.join(model_dir, str(version))):
        raise FileExistsError(f"{os.path.join(model_dir, str(version))} already exists")
    tmp = tempfile.mkdtemp(prefix=".tmp-export-", dir=model_dir)
    try:
        staged = os.path.join(tmp, "model")
        write(staged)
        while True:
            chosen = version if version is not None else next_version(model_dir)
            target = os.path.join(model_dir, str(chosen))
            try:
                os.rename(staged, target)
                return target
            except OSError:
                if version is not None or not os.path.exists(target):
                    raise  # explicit version taken meanwhile, or a real error
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
