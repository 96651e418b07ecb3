"""The original STL-10 binary files (`stl10_binary:<dir>`, and the `stl10` folds), streamed record by record."""
from __future__ import annotations

import glob
import os

import numpy as np
import tensorflow as tf

from exemplar_tf.data.sources.base import Source, SourceError, check_split, indexed

STL10_SIDE = 96
STL10_IMAGE_BYTES = 3 * STL10_SIDE * STL10_SIDE  # 27648: uint8 planes R, G, B, each column-major
STL10_FILES = {  # split -> (images file, labels file or None)
    "unlabelled": ("unlabeled_X.bin", None),
    "train": ("train_X.bin", "train_y.bin"),
    "test": ("test_X.bin", "test_y.bin"),
}
STL10_FOLDS_FILE = "fold_indices.txt"
STL10_CLASS_NAMES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")


def find_stl10_binary(data_dir: str | None) -> str:
    """Folder with the original STL-10 files for a `stl10` fold: <data_dir>/stl10_binary, or the archive that tfds
    keeps extracted under <data_dir>/downloads/extracted/*/stl10_binary.

    The folds need the original files: tfds's prepared stl10 has no fold list and stores the train split in
    hashed (not train_X.bin) order, so fold_indices.txt cannot be applied to it.
    """
    import tensorflow_datasets as tfds

    root = os.path.expanduser(data_dir or tfds.core.constants.DATA_DIR)
    candidates = [os.path.join(root, "stl10_binary"),
                  *sorted(glob.glob(os.path.join(root, "downloads", "extracted", "*", "stl10_binary")))]
    for candidate in candidates:
        if os.path.isfile(os.path.join(candidate, STL10_FOLDS_FILE)):
            return candidate
    raise SourceError(
        f"stl10 folds need the original {STL10_FOLDS_FILE} and train_X.bin/train_y.bin (tfds's prepared stl10 has "
        f"no folds and a hashed order); none found in {candidates[0]} or {root}/downloads/extracted/*/stl10_binary. "
        "Extract stl10_binary.tar.gz there, or give the source stl10_binary:<dir> in place of stl10")



def stl10_binary_source(directory: str, split: str, fold: int | None, title: str) -> Source:
    """The original STL-10 files, streamed record by record (nothing is loaded whole but the labels)."""
    check_split(f"stl10_binary:{directory}", split, STL10_FILES)
    images_file, labels_file = STL10_FILES[split]
    images_path = required_file(directory, images_file)
    count = stl10_image_count(images_path)
    labels = read_stl10_labels(required_file(directory, labels_file), count) if labels_file else None
    records = tf.data.FixedLengthRecordDataset(images_path, STL10_IMAGE_BYTES)
    if fold is not None:
        keep = read_stl10_fold(required_file(directory, STL10_FOLDS_FILE), fold, count)
        membership = tf.constant(np.isin(np.arange(count), keep))
        records = records.enumerate().filter(lambda position, _: membership[position]).map(lambda _, record: record)
        labels, count = labels[keep], len(keep)
    images = records.map(decode_stl10_record, num_parallel_calls=tf.data.AUTOTUNE)
    num_classes, class_names = (None, None) if labels is None else (len(STL10_CLASS_NAMES), STL10_CLASS_NAMES)
    return Source(indexed(images, count, labels), count, num_classes, title, class_names)


def decode_stl10_record(record: tf.Tensor) -> tf.Tensor:
    """uint8 [96,96,3] from one 27648-byte record: three planes (R, G, B), each stored column by column."""
    planes = tf.reshape(tf.io.decode_raw(record, tf.uint8), [3, STL10_SIDE, STL10_SIDE])  # [channel, x, y]
    return tf.transpose(planes, [2, 1, 0])


def required_file(directory: str, filename: str) -> str:
    path = os.path.join(directory, filename)
    if not os.path.isfile(path):
        raise SourceError(f"{path}: missing")
    return path


def stl10_image_count(path: str) -> int:
    size = os.path.getsize(path)
    if size == 0 or size % STL10_IMAGE_BYTES:
        raise SourceError(f"{path}: {size} bytes is not a positive multiple of {STL10_IMAGE_BYTES} "
                          f"(3×{STL10_SIDE}×{STL10_SIDE} bytes per image); truncated or not an STL-10 file")
    return size // STL10_IMAGE_BYTES


def read_stl10_labels(path: str, count: int) -> np.ndarray:
    """int64 [count] in 0..9 from a labels file of bytes 1..10."""
    labels = np.fromfile(path, np.uint8)
    if len(labels) != count:
        raise SourceError(f"{path}: {len(labels)} labels for {count} images")
    if labels.min() < 1 or labels.max() > len(STL10_CLASS_NAMES):
        raise SourceError(f"{path}: labels must lie in 1..{len(STL10_CLASS_NAMES)}, "
                          f"found {labels.min()}..{labels.max()}")
    return labels.astype(np.int64) - 1


def read_stl10_fold(path: str, fold: int, num_train: int) -> np.ndarray:
    """Sorted int64 train indices of fold `fold` (line `fold` of fold_indices.txt: 0-based indices)."""
    with open(path) as file:
        lines = [line.split() for line in file if line.strip()]
    if not 0 <= fold < len(lines):
        raise SourceError(f"{path}: no fold {fold}; the file lists folds 0..{len(lines) - 1}")
    try:
        indices = np.array([int(token) for token in lines[fold]], np.int64)
    except ValueError as error:
        raise SourceError(f"{path}: fold {fold} is not a list of integers ({error})") from None
    if indices.min() < 0 or indices.max() >= num_train or len(np.unique(indices)) != len(indices):
        raise SourceError(f"{path}: fold {fold} must list distinct indices in [0, {num_train})")
    return np.sort(indices)
