"""Export an encoder (and its projection head) as a SavedModel for TF Serving: <base>/<name>/<version>/.

The writer of the format `exemplar_tf.evaluation.savedmodel` reads; `serving.runs` exports training runs with it
(the program is `exemplar_tf.export`).

Two signatures over uint8 images of any size: `serving_default` (the `embedding` at the training size: projection
head or normalised representation; the normalised `representation` below the head; and the Exemplar-CNN
evaluation `features` with the stored pooling, scaled by per-layer activation percentiles) and `pooled_features`
(both poolings); their shapes and the fields of `assets.extra/export_info.json` are listed in the program's
docstring (`exemplar_tf/export.py`) and in BUILD_NOTES.md. The encoder and the head only: no bank, no optimizer. The version folder appears by a rename,
never half-written.

A model name belongs to one run: every version of `<base>/<name>/` comes from the same origin (a training run
directory; for fine-tuned classifiers the fine-tuning directory), so TF Serving, which serves a name's newest
version, never switches to another run's network. `check_model_name` refuses an export whose origin (or
architecture) differs from the versions already there. export_info.json records the origin both absolute
("run_dir", as before) and relative to the export base ("run_dir_relative"), so a project moved or copied with its
runs and exports keeps finding the run (`resolved_run_dir`).
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

from exemplar_tf import errors
from exemplar_tf.models import features
from exemplar_tf.models.heads import ProjectionHead


SERVING_SIGNATURE = "serving_default"
POOLED_SIGNATURE = "pooled_features"
INFO_PATH = os.path.join("assets.extra", "export_info.json")
CREATED_FORMAT = "%Y-%m-%dT%H:%M:%S%z"  # export_info.json's "created": local time with its UTC offset
PERCENTILE = 99.99


# The training loop's name for measuring the per-layer scales on training images.
measure_percentiles = features.activation_percentiles


def next_version(model_dir: str) -> int:
    """1 + the largest integer-named entry of `model_dir` (1 when there is none or the folder is missing)."""
    if not os.path.isdir(model_dir):
        return 1
    versions = [int(entry) for entry in os.listdir(model_dir) if entry.isdigit()]
    return max(versions, default=0) + 1


def version_path(model_dir: str, version: int | None = None) -> str:
    """`<model_dir>/<version>`: the folder `write_version` writes, the next free version when `version` is None
    (another writer may take that one first: the folder written is what `write_version` returns)."""
    return os.path.join(model_dir, str(version if version is not None else next_version(model_dir)))


def _serving_functions(encoder, head, percentiles: Sequence[float], pooling: str):
    """(serve, pooled): the two endpoint functions of uint8 images [B,H,W,3]."""
    scales = tf.Variable(list(percentiles), dtype=tf.float32, trainable=False, name="feature_percentiles")
    input_size = int(encoder.input_size)

    def embedding_and_representation(images):
        small = tf.image.resize(images, (input_size, input_size), method="bilinear", antialias=True)
        representation = encoder(small, training=False)
        projected = head(representation, training=False) if head is not None else representation
        return (tf.math.l2_normalize(tf.cast(projected, tf.float32), axis=-1),
                tf.math.l2_normalize(tf.cast(representation, tf.float32), axis=-1))

    def maps(images):
        return encoder.evaluation_maps(features.at_least_size(images, input_size))

    def as_float(images):
        # Loaded signatures check the dtype but not the shape; without this a 1-channel batch would broadcast
        # against the 3-channel mean and pass silently.
        return tf.cast(tf.ensure_shape(images, [None, None, None, 3]), tf.float32) / 255.0

    def serve(images):
        x = as_float(images)
        layer_scales = tf.unstack(scales)
        embedding, representation = embedding_and_representation(x)
        return {"embedding": embedding, "representation": representation,
                "features": features.evaluation_features(maps(x), layer_scales, pooling)}

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


class ExportNameTaken(errors.InputError):
    """`<base>/<name>/` holds versions from another run (or of another architecture): a model name is one run's."""


def origin_fields(run_dir: str | None, export_dir_base: str) -> dict:
    """export_info.json's record of the run (or fine-tuning) directory a version comes from: "run_dir" absolute at
    export time and "run_dir_relative" relative to the export base (both None without one)."""
    if not run_dir:
        return {"run_dir": None, "run_dir_relative": None}
    absolute = os.path.abspath(run_dir)
    return {"run_dir": absolute, "run_dir_relative": os.path.relpath(absolute, os.path.abspath(export_dir_base))}


def export_base_of(version_path: str) -> str:
    """The absolute export base of `<base>/<name>/<version>`."""
    return os.path.dirname(os.path.dirname(os.path.abspath(version_path)))


def resolved_run_dir(info: dict, version_path: str) -> str | None:
    """Where the run an export records is now: its "run_dir_relative" taken from the export's own base (so a moved
    or copied project still finds it), else (exports written before it was recorded) the absolute "run_dir"."""
    relative = info.get("run_dir_relative")
    if relative:
        return os.path.normpath(os.path.join(export_base_of(version_path), relative))
    return info.get("run_dir")


def _read_info(version_path: str) -> dict | None:
    try:
        with open(os.path.join(version_path, INFO_PATH)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None  # not an exemplar_tf export, or unreadable: nothing to compare with


def check_model_name(export_dir_base: str, name: str, run_dir: str | None, identity: dict | None = None, *,
                     flag: str = "--name") -> None:
    """Raises ExportNameTaken (one line, naming the other run and suggesting `flag`) when `<export_dir_base>/<name>/`
    already has a version exported from another origin than `run_dir`, or from the same one with another value of
    an `identity` field (e.g. arch, input_size: the run directory was started over with another network).

    Two records are the same origin when the absolute paths agree or the paths relative to the export base do
    (a moved or copied project). Versions without export_info.json, or with no "run_dir" entry at all, are not
    compared; a version recording no run (a library export, run_dir null) differs from one that records a run. A
    version written before "run_dir_relative" was recorded whose absolute run directory no longer exists (a moved
    project) cannot be placed: only its identity fields are compared."""
    model_dir = os.path.join(export_dir_base, name)
    if not os.path.isdir(model_dir):
        return
    ours = os.path.abspath(run_dir) if run_dir else None
    for version in sorted((int(v) for v in os.listdir(model_dir) if v.isdigit()), reverse=True):
        path = os.path.join(model_dir, str(version))
        info = _read_info(path)
        if info is None or "run_dir" not in info:
            continue
        theirs = resolved_run_dir(info, path)
        placed = bool(info.get("run_dir_relative")) or not info["run_dir"] or os.path.exists(info["run_dir"])
        if placed and ours not in {info.get("run_dir"), theirs}:
            raise ExportNameTaken(
                f"{model_dir} holds version {version} exported from {_origin_text(theirs)}, and this export is from "
                f"{_origin_text(ours)}: every version of a model name must come from one run (TF Serving serves the "
                f"newest); give this one its own {flag}")
        for key, value in (identity or {}).items():
            if key in info and info[key] != value:
                raise ExportNameTaken(
                    f"{model_dir} holds version {version} of {_origin_text(theirs)} with {key}={info[key]}, and this "
                    f"export has {key}={value} (the directory was started over with another network): every "
                    f"version of a model name must be the same network; give this one its own {flag}")


def _origin_text(run_dir: str | None) -> str:
    return f"run {run_dir}" if run_dir else "no recorded run"


def _export_info(encoder, head, percentiles: Sequence[float], pooling: str, channels: Sequence[int], name: str,
                 origin: dict | None, export_dir_base: str) -> dict:
    return {
        "name": name,
        **origin_fields(origin.get("run_dir") if origin else None, export_dir_base),
        "step": int(origin["step"]) if origin and origin.get("step") is not None else None,
        "run_id": origin.get("run_id") if origin else None,
        "created": time.strftime(CREATED_FORMAT),
        "arch": getattr(encoder, "arch", type(encoder).__name__),
        "input_size": int(encoder.input_size),
        "representation_dim": int(encoder.representation_dim),
        "embedding": "projection_head" if head is not None else "representation",
        "embedding_dim": int(head.dim) if head is not None else int(encoder.representation_dim),
        "head_hidden_dim": int(head.hidden_dim) if head is not None else 0,
        "pooling": pooling,
        "percentile": PERCENTILE,
        "percentiles": [float(p) for p in percentiles],
        "feature_channels": [int(c) for c in channels],
        # The encoder's options (`Encoder.options()`), read back by `models.recorded_options`.
        **(encoder.options() if hasattr(encoder, "options") else {}),
    }


TRAINING_ONLY_OPTIONS = frozenset({"dropout"})  # encoder options that change training, not the network served


def served_options(options: dict) -> dict:
    """An encoder's options (`Encoder.options()` form) less TRAINING_ONLY_OPTIONS, as JSON values (lists, not
    tuples): what decides the network TF Serving runs."""
    return json.loads(json.dumps({key: value for key, value in options.items() if key not in TRAINING_ONLY_OPTIONS}))


def encoder_identity(encoder, head=None) -> dict:
    """The export_info.json fields every version of one model name must share: the network TF Serving runs (arch,
    input size and the arch's options that shape it, e.g. a ResNet's width and stem: `served_options`) and the
    size of the embedding it serves."""
    options = (encoder.options() if hasattr(encoder, "options") else
               {"arch": getattr(encoder, "arch", type(encoder).__name__), "input_size": int(encoder.input_size)})
    embedding_dim = int(head.dim) if head is not None else int(encoder.representation_dim)
    return {**served_options(options), "embedding_dim": embedding_dim}


def export_encoder(encoder, head=None, *, export_dir_base: str = "savedmodels", name: str,
                   version: int | None = None, percentiles: Sequence[float], pooling: str = "quadrants",
                   origin: dict | None = None) -> str:
    """Writes encoder (+ projection head) to `<export_dir_base>/<name>/<version>` and returns that path.

    encoder: the `Encoder` contract (input_size, representation_dim, feature_maps, call).
    head: a `ProjectionHead`, or None for models trained without one (softmax over surrogate classes; the
      classifier is not part of the representation and is not exported).
    percentiles: one scale per `encoder.feature_maps` layer (see `measure_percentiles`).
    version: None picks the next integer; an existing explicit version raises errors.InputError.
    origin: {"run_dir", "step", "run_id"} of the training run the weights come from, recorded in export_info.json
      (with the name and the creation time) so that `evaluate` pairs a trained export with its own run's baseline
      and `knn --checkpoint` a bank with its export. Versions of another origin, or of another network (arch,
      input size, the arch's options, embedding size: `encoder_identity`), already under
      `<export_dir_base>/<name>/` refuse the export (`check_model_name`, ExportNameTaken) before anything is
      written.
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
    check_model_name(export_dir_base, name, origin.get("run_dir") if origin else None, encoder_identity(encoder, head))

    def write(path: str) -> None:
        _write_archive(encoder, head, percentiles, pooling, path)
        info_path = os.path.join(path, INFO_PATH)
        os.makedirs(os.path.dirname(info_path), exist_ok=True)
        with open(info_path, "w") as f:
            json.dump(_export_info(encoder, head, percentiles, pooling, [int(m.shape[-1]) for m in probe], name,
                                   origin, export_dir_base), f, indent=2)

    return write_version(os.path.join(export_dir_base, name), write, version)


STAGING_PREFIX = ".tmp-export-"  # + "<pid>-<random>": the writer's staging folder inside the model folder


def remove_abandoned_staging(model_dir: str) -> None:
    """Removes staging folders whose writer process is gone (killed mid-export); live writers' are left alone."""
    for entry in os.listdir(model_dir):
        pid = entry[len(STAGING_PREFIX):].split("-", 1)[0]
        if not entry.startswith(STAGING_PREFIX) or not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(model_dir, entry), ignore_errors=True)
        except PermissionError:
            pass  # another user's live process


def check_free_version(model_dir: str, version: int | None) -> None:
    """Raises errors.InputError when an explicit `version` already exists under `model_dir` (versions are never
    overwritten: TF Serving may be serving it)."""
    if version is not None and os.path.exists(os.path.join(model_dir, str(version))):
        raise errors.InputError(f"{os.path.join(model_dir, str(version))} already exists (a version is never "
                                f"overwritten); give another --version, or leave it out for the next free one")


def write_version(model_dir: str, write: Callable[[str], None], version: int | None = None) -> str:
    """Writes a version folder `<model_dir>/<version>` and returns its path: `write(path)` fills a folder that
    does not exist yet inside a hidden temporary folder in `model_dir`, which is then renamed into place, so TF
    Serving never sees a half-written version. version: None takes the next integer (`next_version`, taken
    again if another writer renames that one first); an explicit version that exists raises errors.InputError."""
    check_free_version(model_dir, version)
    os.makedirs(model_dir, exist_ok=True)
    remove_abandoned_staging(model_dir)
    tmp = tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=model_dir)
    try:
        staged = os.path.join(tmp, "model")
        write(staged)
        while True:
            target = version_path(model_dir, version)
            try:
                os.rename(staged, target)
                return target
            except OSError:
                if version is not None or not os.path.exists(target):
                    raise  # explicit version taken meanwhile, or a real error
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
