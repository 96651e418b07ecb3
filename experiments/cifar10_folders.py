"""Writes CIFAR-10 from tensorflow-datasets as the JPEG class folders `experiments/run_cifar10.sh` reads:

    python experiments/cifar10_folders.py --out=/tmp/cifar10 [--data_dir=~/tensorflow_datasets]
        [--test_per_class=0] [--quality=75]

<out>/train/<class>/NNNNN.jpg (50 000 images) and <out>/test/<class>/NNNNN.jpg (10 000, or the first
--test_per_class of each class in tfds order), numbered in tfds order. tfds downloads cifar10 (~160 MB) into
--data_dir the first time. The folders are written under <out>.partial and renamed into place at the end, so
<out> is whole or absent; an existing <out> is refused, never overwritten.

RESULTS.md's rows read a JPEG copy of CIFAR-10 from a public mirror: baseline JPEG, quality 75, 4:2:0 chroma
(read off its files: ~920 bytes per image, which these settings reproduce), with half of the test set (500 per
class) held back. Figures measured on these folders are comparable with them, not equal to the digit: the files
are numbered in another order and the test set is whole unless --test_per_class=500.
"""
from __future__ import annotations

import os
import shutil
import sys

import numpy as np
from absl import flags
from PIL import Image

from exemplar_tf import errors
from exemplar_tf.data import sources



def kept_positions(labels: np.ndarray, per_class: int) -> np.ndarray:
    """int64 [n]: the positions of the first `per_class` examples of each class, in order (all for 0)."""
    if per_class <= 0:
        return np.arange(len(labels), dtype=np.int64)
    seen = np.zeros(int(labels.max()) + 1, np.int64)
    kept = []
    for position, label in enumerate(labels):
        if seen[label] < per_class:
            kept.append(position)
            seen[label] += 1
    return np.asarray(kept, np.int64)


def write_split(source: sources.Source, folder: str, per_class: int, quality: int) -> int:
    """Writes the split's images as <folder>/<class>/<index>.jpg; returns how many."""
    examples = [(int(e["index"]), int(e["label"]), e["image"]) for e in source.dataset.as_numpy_iterator()]
    labels = np.array([label for _, label, _ in examples], np.int64)
    for name in source.class_names:
        os.makedirs(os.path.join(folder, name), exist_ok=True)
    kept = kept_positions(labels, per_class)
    for position in kept:
        index, label, image = examples[position]
        Image.fromarray(image).save(os.path.join(folder, source.class_names[label], f"{index:05d}.jpg"), "JPEG",
                                    quality=quality, subsampling="4:2:0")
    return len(kept)


def write_folders(out: str, data_dir: str | None, test_per_class: int, quality: int) -> str:
    """Writes <out>/train and <out>/test (see the module docstring) and returns `out` as an absolute path."""
    out = os.path.abspath(out)
    if os.path.exists(out):
        raise errors.InputError(f"{out} already exists; give another --out (nothing is overwritten)")
    partial = f"{out}.partial"
    shutil.rmtree(partial, ignore_errors=True)  # an interrupted earlier call's
    for split, per_class in (("train", 0), ("test", test_per_class)):
        source = sources.load_source("cifar10", split, data_dir=data_dir)
        print(f"writing {split} to {os.path.join(out, split)} ...", file=sys.stderr, flush=True)
        count = write_split(source, os.path.join(partial, split), per_class, quality)
        print(f"{split}: {count} images", file=sys.stderr)
    os.replace(partial, out)
    return out


def main(argv) -> None:
    del argv  # errors.run refuses positional arguments
    values = flags.FLAGS
    print(write_folders(values.out, values.data_dir, values.test_per_class, values.quality))


if __name__ == "__main__":  # the flags only here: tests import the functions beside other programs' flags
    flags.DEFINE_string("out", "/tmp/cifar10", "Folder to write (train/ and test/ with one sub-folder per class).")
    flags.DEFINE_string("data_dir", None, "tensorflow-datasets data_dir (default ~/tensorflow_datasets).")
    flags.DEFINE_integer("test_per_class", 0, "Test images kept per class, the first in tfds order (0: all).")
    flags.DEFINE_integer("quality", 75, "JPEG quality (the mirror RESULTS.md used: 75).")
    errors.run(main)
