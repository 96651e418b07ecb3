"""The Python API for notebooks and scripts: train a run from a config object, load an export as a Keras model,
embed image arrays, score features with the weighted kNN and the linear probe. `exemplar_tf` re-exports every
name in `__all__` lazily (`exemplar_tf.load_encoder`, ...): `import exemplar_tf` stays free of TensorFlow, and so
does `exemplar_tf.TrainConfig` (taken from `training.config`); this module imports it.

    import exemplar_tf
    result = exemplar_tf.train_encoder(exemplar_tf.TrainConfig(run_dir="runs/demo", name="demo", steps=200))
    encoder = exemplar_tf.load_encoder(result.export_dir)       # keras.Model: uint8 [B,H,W,3] -> float32 [B,128]
    train_x = exemplar_tf.embed(encoder, train_images)           # np.ndarray float32 [N,128]
    exemplar_tf.knn_accuracy(train_x, train_y, exemplar_tf.embed(encoder, test_images), test_y)

Everything here is a thin layer over what the programs use: `serving.runs.train` (the run directory rules of
`python -m exemplar_tf.train`), the export's signatures (`serving.export`; read here through
`keras.layers.TFSMLayer`), `metrics.knn` and `evaluation.probe`. Training's name is `train_encoder`, not `train`:
`exemplar_tf.train` is the training program's module, and a package attribute of that name would hide it.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Iterable, Sequence

import keras
import numpy as np

from exemplar_tf import errors
from exemplar_tf.evaluation import probe
from exemplar_tf.evaluation.savedmodel import FEATURE_SIGNATURES, Extracted, same_size_batches
from exemplar_tf.metrics import knn
from exemplar_tf.serving import runs
from exemplar_tf.training.config import TrainConfig, validate, with_settings

__all__ = ["TrainConfig", "train_encoder", "load_encoder", "embed", "knn_accuracy", "linear_probe"]

# load_encoder / embed outputs -> the export's signature that computes it (`serving.export`): "embedding" and
# "features" (as stored, quadrants by default) from serving_default, "quadrants" and "pyramid" from pooled_features.
OUTPUTS = FEATURE_SIGNATURES


def train_encoder(config: TrainConfig | None = None, **settings):
    """Trains (or resumes) a run with the rules of `python -m exemplar_tf.train` and exports it.

    `config` is a `TrainConfig` (every flag of the program is a field of the same name, docs/flags.md);
    keyword `settings` build one (`train_encoder(name="demo", steps=200)`) or change fields of `config` as if it
    had been built with them (`training.config.with_settings`: the defaults it filled in from its source and
    method follow the new ones, so `method="npid"` brings NPID's objective). An empty `run_dir` becomes
    `runs/<name>`, as with the program. The config is validated first (`errors.InputError` listing every bad
    value); then the run directory decides: a fresh one starts at step 0, one holding the same run resumes
    from its newest checkpoint, one holding another run's checkpoints is refused (`training.rundir.RunDirMismatch`,
    naming each changed setting) unless `overwrite=True`, and one another trainer holds raises
    `io.lock.DirectoryLocked`. A NaN loss raises `training.loop.TrainingDiverged`.

    Returns `training.loop.RunResult`: `step`, `loss`, `export_dir` (`<export_base>/<name>/<version>`, for
    `load_encoder`), `log_dir` (TensorBoard), `checkpoint_dir`, `steps_run`. The random baseline is exported
    beside it as `<export_base>/<name>_random/<version>`.
    """
    if config is None:
        config = TrainConfig(**{"run_dir": "", **settings})
    elif settings:
        config = with_settings(config, **settings)
    if not config.run_dir:
        config = dataclasses.replace(config, run_dir=os.path.join("runs", config.name))
    return runs.train(validate(config))


def _version_folder(path: str | os.PathLike) -> str:
    """`path` itself when it is a SavedModel folder, else (a model folder `<export_base>/<name>`) its
    highest integer version that is one; raises `errors.InputError` when neither."""
    path = os.fspath(path)
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "saved_model.pb")):
        versions = [int(entry) for entry in os.listdir(path)
                    if entry.isdigit() and os.path.isfile(os.path.join(path, entry, "saved_model.pb"))]
        if versions:
            return os.path.join(path, str(max(versions)))
    errors.check_savedmodel_folder(path)
    return path


def load_encoder(path: str | os.PathLike, output: str = "embedding"):
    """An export as a frozen `keras.Model`: images uint8 [B,H,W,3] (any height and width) -> float32 [B,D].

    `path` is a version folder `<export_base>/<name>/<version>` (`RunResult.export_dir`) or a model folder
    `<export_base>/<name>` (its newest version). `output` is one of `OUTPUTS`: "embedding" (the 128-d unit
    vectors kNN uses), "representation" (the encoder's output below the head, L2-normalised), "features" (the
    linear probe's percentile-scaled evaluation features, as stored),
    "quadrants" or "pyramid" (those features with that pooling). Images are scaled and resized inside (the
    export's own preprocessing): pass raw uint8 pixels.

    The model wraps the export's signature in a `keras.layers.TFSMLayer` (so it is the SavedModel's own graph,
    the one TF Serving runs) and composes like any Keras model: `keras.Sequential([keras.Input((None, None, 3),
    dtype="uint8"), encoder, keras.layers.Dense(10)])`, `encoder.predict(images)`. It is not trainable (its
    weights are listed as non-trainable; fine-tune with `python -m exemplar_tf.finetune`) and not meant for
    `.keras` saving (Keras refuses to reload a TFSMLayer in safe mode). Raises `errors.InputError` for a folder
    that is no export or an unknown output.
    """
    if output not in OUTPUTS:
        raise errors.InputError(f"output {output!r} is not one of {sorted(OUTPUTS)}")
    path = _version_folder(path)
    signature = keras.layers.TFSMLayer(path, call_endpoint=OUTPUTS[output], trainable=False,
                                       name=f"savedmodel_{OUTPUTS[output]}")
    images = keras.Input(shape=(None, None, 3), dtype="uint8", name="images")
    return keras.Model(images, signature(images)[output], name=f"exemplar_{output}")


def _image_batches(images, batch_size: int) -> Iterable[np.ndarray]:
    """uint8 [N,H,W,3] in slices of `batch_size`, or a sequence of uint8 [H,W,3] images (sizes may differ) stacked
    into batches of consecutive same-size images."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        _check_uint8(images, images.shape)
        for start in range(0, len(images), batch_size):
            yield images[start:start + batch_size]
        return
    arrays = [np.asarray(image) for image in images]
    for array in arrays:
        _check_uint8(array[None], array.shape)
    examples = ({"image": array, "index": i} for i, array in enumerate(arrays))
    for batch in same_size_batches(examples, batch_size):
        yield batch["image"]


def _check_uint8(batch: np.ndarray, shape) -> None:
    if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[-1] != 3:
        raise errors.InputError(f"images must be uint8 [N,H,W,3] or uint8 [H,W,3] each, not {batch.dtype} "
                                f"{list(shape)}; scale float images in [0, 1] with "
                                "(x * 255).round().astype(np.uint8)")


def embed(encoder, images, batch_size: int = 128, output: str = "embedding") -> np.ndarray:
    """float32 [N,D]: `encoder` applied to `images` `batch_size` at a time, in order.

    `encoder` is an export's path (loaded with `load_encoder(path, output)`) or a Keras model or layer already
    loaded (`load_encoder`'s model, a `keras.layers.TFSMLayer` of the export: of its dict of outputs, `output`
    is taken). `images` is uint8 [N,H,W,3] or a sequence of uint8 [H,W,3] images of any sizes (consecutive images
    of one size share a batch). Float images are refused, not guessed at.
    """
    if isinstance(encoder, (str, os.PathLike)):
        encoder = load_encoder(encoder, output)
    parts = []
    for batch in _image_batches(images, batch_size):
        result = encoder(batch, training=False)
        if isinstance(result, dict):
            result = result[output]
        parts.append(np.asarray(result, np.float32))
    if not parts:
        raise errors.InputError("no images to embed")
    return np.concatenate(parts)


def _labelled(features, labels, what: str):
    """features float32 [n,D], labels int64 [n] in [0, classes): checked, as `evaluation.savedmodel.Extracted`."""
    features, labels = np.asarray(features, np.float32), np.asarray(labels)
    if features.ndim != 2 or labels.ndim != 1 or len(features) != len(labels):
        raise errors.InputError(f"{what}: features must be [n,D] with labels [n], not {list(features.shape)} with "
                                f"{list(labels.shape)}")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min(initial=0) < 0:
        raise errors.InputError(f"{what}: labels must be class numbers 0, 1, ... (integers >= 0)")
    return Extracted(features, labels.astype(np.int64), np.arange(len(labels), dtype=np.int64))


def knn_accuracy(train_features, train_labels, test_features, test_labels, *, k: int = knn.DEFAULT_K,
                 tau: float = knn.DEFAULT_TAU, num_classes: int | None = None) -> dict[str, float]:
    """{"top1", "top5"} of NPID's weighted kNN (the training monitor's and `python -m exemplar_tf.knn`'s): each
    test row's k most cosine-similar training rows vote for their label with weight exp(similarity / tau).

    Features float [n,D] (normalised or not; use the "embedding" output), labels int in [0, num_classes)
    (default: max label + 1). k is capped at the number of training rows. `metrics.knn.weighted_knn` gives the
    top-5 predicted classes themselves.
    """
    train = _labelled(train_features, train_labels, "train")
    test = _labelled(test_features, test_labels, "test")
    return knn.knn_accuracy(train.features, train.labels, test.features, test.labels, k=k, tau=tau,
                            num_classes=num_classes)


def linear_probe(train_features, train_labels, test_features, test_labels, *,
                 c_values: Sequence[float] = probe.C_GRID, standardize: bool = False, seed: int = 0):
    """The paper's linear probe (`python -m exemplar_tf.evaluate`'s): a one-vs-rest squared-hinge linear SVM
    fitted on the training rows, C chosen on a held-out 20 % of them (per class, `seed`) from `c_values`
    (default: 5 values log-uniform in [2e-4, 0.2], extended beyond a winning edge), refit on all of them and
    scored on the test rows. Every fit logs one line on stderr.

    Features float [n,D] as they come (the export's percentile-scaled "features" output, as in the paper;
    `standardize` rescales each column to zero mean and unit variance first); labels int 0, 1, .... Returns
    `evaluation.probe.ProbeResult`: `accuracy` (test), `c`, `validation` (C -> held-out accuracy), `fits`,
    `converged`, `edge`.
    """
    train = _labelled(train_features, train_labels, "train")
    test = _labelled(test_features, test_labels, "test")
    return probe.linear_probe(train, test, c_values, seed, standardize=standardize)
