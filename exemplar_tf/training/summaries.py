"""TensorBoard content beyond scalars: sample grids, kNN monitoring and collapse signs, the projector (the bank's
statistics are its objective's: `objectives.bank.bank_statistics`)."""
from __future__ import annotations

import dataclasses
import os
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from exemplar_tf.data import sources
from exemplar_tf.data.images import resize_uint8, rows_of, tile
from exemplar_tf.errors import InputError
from exemplar_tf.objectives.bank import distinct_pair_cosines
from exemplar_tf.training import config as cfg


def image_grid(images: np.ndarray, columns: int = 8) -> np.ndarray:
    """Tiles float images [n,P,P,3] in [0,1] into one float32 image [1, rows*P, columns*P, 3] (empty cells
    black)."""
    return tile(rows_of(np.asarray(images, np.float32), columns), num_columns=columns)[None]


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


class LabelledImages(NamedTuple):
    """A labelled monitoring set: images uint8 [n,size,size,3], labels int64 [n], the source's class names."""

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...] | None


def labelled_images(spec: str, split: str, size: int, limit: int, data_dir: str | None = None) -> LabelledImages:
    """At most `limit` examples of a labelled source, evenly spread over it (`sources.spread_subset`)."""
    source = sources.load_source(spec, split, data_dir=data_dir)
    if source.num_classes is None:
        raise InputError(f"--knn_source={spec!r} split {split!r} has no labels")
    subset, _ = sources.spread_subset(source.dataset, source.num_examples, limit)
    resized = subset.map(lambda e: (resize_uint8(e["image"], size, antialias=False), e["label"]),
                         num_parallel_calls=tf.data.AUTOTUNE)
    images, labels = zip(*resized.as_numpy_iterator())
    return LabelledImages(np.stack(images), np.asarray(labels, np.int64), source.class_names)


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


PROJECTOR_CHECKPOINT = "projector_embedding"  # prefix of the projector's checkpoint inside the log dir
MAX_SPRITE_SIDE = 8192  # the projector's limit on the sprite image


def sprite_thumb_side(n: int, side: int) -> int:
    """Side of each of n thumbnails in the sprite: the image side, smaller where ceil(sqrt(n)) of them would pass
    the projector's 8192 px."""
    return min(side, MAX_SPRITE_SIDE // int(np.ceil(np.sqrt(n))))


def sprite(images: np.ndarray) -> np.ndarray:
    """uint8 images [n,s,s,3] tiled row-major into the projector's square sprite [k*t, k*t, 3], k = ceil(sqrt(n)),
    t = `sprite_thumb_side`; empty cells black."""
    n, side = images.shape[0], images.shape[1]
    columns = int(np.ceil(np.sqrt(n)))
    thumb = sprite_thumb_side(n, side)
    if thumb != side:
        images = resize_uint8(images, thumb).numpy()
    return tile(rows_of(images, columns), num_rows=columns, num_columns=columns)


def write_projector(log_dir: str, name: str, embeddings: np.ndarray, labelled: LabelledImages | None = None) -> None:
    """A TensorBoard projector view of `embeddings` [n,D] in the run folder `log_dir` (where the event file is,
    so TensorBoard lists it under --logdir of that folder or of any folder above it).

    With `labelled` (n images, labels, class names) the points get a sprite of the images as thumbnails and
    tab-separated metadata with columns label and class. Files: projector_config.pbtxt, a checkpoint
    `projector_embedding-*` holding the variable `name`, projector_metadata.tsv, projector_sprite.png.
    """
    from tensorboard.plugins import projector

    os.makedirs(log_dir, exist_ok=True)
    variable = tf.Variable(np.asarray(embeddings, np.float32), name=name)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(**{name: variable}), log_dir, max_to_keep=1,
                                         checkpoint_name=PROJECTOR_CHECKPOINT)
    manager.save()
    config = projector.ProjectorConfig()
    entry = config.embeddings.add()
    entry.tensor_name = f"{name}/.ATTRIBUTES/VARIABLE_VALUE"
    if labelled is not None:
        if len(labelled.labels) != len(embeddings):
            raise ValueError(f"{len(labelled.labels)} labels for {len(embeddings)} embeddings")
        names = labelled.class_names or ()
        with open(os.path.join(log_dir, "projector_metadata.tsv"), "w") as f:
            f.write("label\tclass\n")
            f.writelines(f"{label}\t{names[label] if label < len(names) else label}\n" for label in labelled.labels)
        entry.metadata_path = "projector_metadata.tsv"
        tf.io.write_file(os.path.join(log_dir, "projector_sprite.png"), tf.io.encode_png(sprite(labelled.images)))
        entry.sprite.image_path = "projector_sprite.png"
        thumb = sprite_thumb_side(*labelled.images.shape[:2])
        entry.sprite.single_image_dim.extend([thumb, thumb])
    projector.visualize_embeddings(log_dir, config)


def _hparam_value(value) -> bool | int | float | str:
    """A TrainConfig value as an HParams value: sequences comma-joined, None as ""."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return value


def config_hparams(config: cfg.TrainConfig) -> dict[str, bool | int | float | str]:
    """Every field of the resolved TrainConfig as an HParams value, by field name."""
    return {field.name: _hparam_value(getattr(config, field.name)) for field in dataclasses.fields(config)}


_CHOICES = {"method": cfg.METHODS, "objective": cfg.OBJECTIVES, "arch": cfg.ARCHS, "strategy": cfg.STRATEGIES,
            "preset": cfg.PRESETS, "augment_on": cfg.AUGMENT_ON, "nce_noise": cfg.NCE_NOISE,
            "bank_init": cfg.BANK_INITS, "resnet_stem": cfg.RESNET_STEMS}


def run_name(config: cfg.TrainConfig) -> str:
    """The run's label in TensorBoard's HParams table: its run directory's folder name (`runs/<name>` by default,
    so runs side by side under `--logdir runs/` have names of their own; runs with one label would share a row)."""
    return os.path.basename(os.path.normpath(config.run_dir))


def write_config(writer, config: cfg.TrainConfig, step: int = 0, hparams: bool = True) -> None:
    """Writes the resolved config as a text table `config` at `step` and, with `hparams`, as TensorBoard hparams
    (an experiment listing every field, choice fields with their domains, and the metrics knn_top1 = the last kNN
    top-1 and loss; the run's row labelled `run_name`, not a hash of its values). TensorBoard keeps the first
    hparams a run wrote, so a run writes them once its values are final (--train_minutes: after its last fit)."""
    from tensorboard.plugins.hparams import api as hp

    values = config_hparams(config)
    table = "| flag | value |\n|---|---|\n" + "".join(f"| {key} | {value} |\n" for key, value in values.items())
    with writer.as_default(step=step):
        tf.summary.text("config", table, step=step)
        if not hparams:
            return
        domains = []
        for key, value in values.items():
            if key in _CHOICES:
                domain = hp.Discrete(list(_CHOICES[key]))
            elif isinstance(value, bool):
                domain = hp.Discrete([False, True])
            else:
                domain = None
            domains.append(hp.HParam(key, domain))
        metrics = [hp.Metric("knn_top1", display_name="kNN top-1 (last reading)"), hp.Metric("loss")]
        hp.hparams_config(hparams=domains, metrics=metrics)
        hp.hparams(values, trial_id=run_name(config))
