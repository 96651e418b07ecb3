"""The one reader of this project's exports (`exemplar_tf.serving.export`): a SavedModel used only through its
signatures, its `export_info.json`, and features of whole datasets through it.

Evaluation (probe protocols, kNN), retrieval, the matching benchmark's CNN descriptors and fine-tuning all read
exports here, so nothing that reads an export can change the encoder. The loaded object is kept alive: it owns the
variables the signatures read.

Image sizes: with an eval size every image is resized (bilinear, antialiased) to that square. Without one each
image keeps its own size; consecutive images of one size share a batch and a size change starts a new batch, so
mixed-size sources are exact but slower.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Iterable, Iterator

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from exemplar_tf import errors
from exemplar_tf.data import sources
from exemplar_tf.data.images import resize_uint8
from exemplar_tf.serving.export import INFO_PATH, POOLED_SIGNATURE, SERVING_SIGNATURE, resolved_run_dir

FEATURE_SIGNATURES = {  # output -> the signature that computes it
    "features": SERVING_SIGNATURE,
    "embedding": SERVING_SIGNATURE,
    "representation": SERVING_SIGNATURE,
    "quadrants": POOLED_SIGNATURE,
    "pyramid": POOLED_SIGNATURE,
}


def read_export_info(path: str) -> dict:
    """The export's `export_info.json`, or {} for a SavedModel written by something else.

    "run_dir" is where the run the export came from is now: recorded relative to the export base too, it is
    resolved from the export's own location, so a project moved or copied with its runs and exports still pairs an
    export with its run and its `<name>_random` baseline; "run_dir_at_export" keeps the absolute path as written.
    Exports written before the relative path was recorded give their absolute "run_dir" as it is."""
    info_path = os.path.join(path, INFO_PATH)
    if not os.path.exists(info_path):
        return {}
    with open(info_path) as f:
        info = json.load(f)
    if info.get("run_dir_relative"):
        info["run_dir_at_export"] = info.get("run_dir")
        info["run_dir"] = resolved_run_dir(info, path)
    return info


@dataclasses.dataclass
class Extracted:
    """Features of a labelled split: features float32 [n,D], labels int64 [n], indices int64 [n]."""

    features: np.ndarray
    labels: np.ndarray
    indices: np.ndarray

    def subset(self, rows: np.ndarray) -> "Extracted":
        return Extracted(self.features[rows], self.labels[rows], self.indices[rows])


def resize_images(dataset: tf.data.Dataset, size: int | None) -> tf.data.Dataset:
    """Dataset of {"image": uint8 [H,W,3], ...} with every image resized to size x size (None or 0: unchanged)."""
    if not size:
        return dataset
    return dataset.map(lambda example: {**example, "image": resize_uint8(example["image"], size)},
                       num_parallel_calls=tf.data.AUTOTUNE)


def same_size_batches(examples: Iterable[dict], batch_size: int) -> Iterator[dict]:
    """Groups consecutive examples {"image": [H,W,3], "label", "index"} into stacked batches of at most
    `batch_size` whose images all have one size; a size change closes the current batch."""
    pending: list[dict] = []
    for example in examples:
        if pending and (len(pending) == batch_size or example["image"].shape != pending[0]["image"].shape):
            yield {key: np.stack([e[key] for e in pending]) for key in pending[0]}
            pending = []
        pending.append(example)
    if pending:
        yield {key: np.stack([e[key] for e in pending]) for key in pending[0]}


class SavedModelFeatures:
    """An exported encoder used only through its signatures: images uint8 [B,H,W,3] -> float32 [B,D].

    `info` is the export's export_info.json ({} for a SavedModel written by something else); `variables` the
    loaded variables in the order the export stored them (the encoder's first, in `encoder.variables` order).
    """

    def __init__(self, path: str, batch_size: int = 128):
        self.path = path
        self.batch_size = batch_size
        errors.check_savedmodel_folder(path)
        self.info = read_export_info(path)
        self._loaded = tf.saved_model.load(path)  # owns the variables the signatures read: kept alive
        self._signatures = self._loaded.signatures

    @property
    def variables(self) -> list[tf.Variable]:
        return list(self._loaded.variables)

    def __call__(self, images: np.ndarray, key: str) -> np.ndarray:
        signature = FEATURE_SIGNATURES.get(key)
        if signature is None:
            raise errors.InputError(f"feature {key!r} is not one of {sorted(FEATURE_SIGNATURES)}")
        if signature not in self._signatures:
            raise errors.InputError(f"{self.path} has no {signature!r} signature (needed for feature {key!r})")
        return self._signatures[signature](images=tf.constant(images, tf.uint8))[key].numpy()

    def extract_dataset(self, dataset: tf.data.Dataset, total: int, key: str, *, eval_size: int | None = None,
                        desc: str = "") -> Extracted:
        """Features `key` of every example {"image": uint8 [H,W,3], "index", "label" (optional)} of `dataset`
        (`total` examples, for the progress bar). Unlabelled examples get label -1. Labels are carried along,
        never looked at."""
        examples = resize_images(dataset, eval_size).prefetch(tf.data.AUTOTUNE).as_numpy_iterator()
        parts = []
        with tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True, file=sys.stderr) as progress:
            for batch in same_size_batches(examples, self.batch_size):
                labels = batch.get("label", np.full(len(batch["index"]), -1))
                parts.append((self(batch["image"], key), labels, batch["index"]))
                progress.update(len(batch["index"]))
        if not parts:
            raise ValueError(f"no images to extract features from ({desc})")
        feats, labels, indices = zip(*parts)
        return Extracted(np.concatenate(feats).astype(np.float32), np.concatenate(labels).astype(np.int64),
                         np.concatenate(indices).astype(np.int64))

    def extract(self, spec: str, split: str, key: str, *, eval_size: int | None = None, fold: int | None = None,
                data_dir: str | None = None, max_examples: int = 0, desc: str = "") -> Extracted:
        """`extract_dataset` over the labelled `load_source(spec, split, fold=fold)` (at most `max_examples`
        if > 0, evenly spread over the split: `sources.spread_subset`)."""
        source = sources.load_source(spec, split, data_dir=data_dir, fold=fold)
        if source.num_classes is None:
            raise errors.InputError(f"{spec} split {split!r} has no labels")
        dataset, total = sources.spread_subset(source.dataset, source.num_examples, max_examples)
        return self.extract_dataset(dataset, total, key, eval_size=eval_size, desc=desc or f"{spec} {split}")
