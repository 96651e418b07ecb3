"""Image sources: every dataset the project reads, in one element format.

`load_source(name, split, *, data_dir=None, fold=None) -> Source`, where `Source.dataset` is a `tf.data.Dataset` of

    {"image": uint8 [H, W, 3], "index": int64 [], "label": int64 []}

`index` is a stable instance id in `[0, num_examples)`: the same image has the same id on every pass (the NPID
memory-bank row). `label`, in `[0, num_classes)`, is present only in labelled splits. Images may differ in size.

Names and splits:
  demo                    the natural photographs that scikit-image ships (offline), unlabelled; split `train`
                          (`unlabelled` is the same set). Longer side scaled down to `DEMO_MAX_SIDE`.
  demo_labelled           64×64 crops of the same photographs, labelled by photograph; `train` crops lie in the left
                          half of each photograph, `test` crops in the right half (no shared pixels).
  stl10, cifar10, caltech101, imagenet2012
                          tensorflow-datasets, `data_dir` as in `tfds.load`; index = reading order (files unshuffled).
                          stl10 splits `unlabelled|train|test`; imagenet2012 `train|validation` (tfds prepares it
                          from the manually downloaded archives in `<data_dir>/downloads/manual`); the others
                          `train|test`.
  stl10_binary:<dir>      the original STL-10 binary files in <dir>; splits `unlabelled|train|test`.
  folder:<dir>            image files (PNG, JPEG, BMP, GIF) under <dir>/<split> if that folder exists, else <dir>.
                          Class sub-folders give labels (class names sorted); a flat folder is unlabelled.
                          `min_size`: every image must be at least that many pixels on each side (read from the
                          file headers up front). `skip_bad_images`: decode every file once up front and leave out
                          those that fail or are too small (`Source.skipped`); `index` stays 0..n-1 over the rest.

`fold=k` (0..9) selects the k-th predefined 1000-image fold of the STL-10 `train` split (listed in the original
`fold_indices.txt`); indices are then positions within the fold. Problems are reported as `SourceError` naming the
file and what is wrong.

One module per kind: `tfds` (tensorflow-datasets), `stl10_binary`, `folder`, `demo` (both demo sets); `base` holds
`Source`, `SourceError` and what works on any source (`indexed`, size checks, `spread_*` subsets). The names
callers use are re-exported here: `from exemplar_tf.data import sources; sources.load_source(...)`.
"""
from __future__ import annotations

import os

from exemplar_tf.data.sources.base import (Source, SourceError, check_min_size, check_split, indexed, size_problem,
                                           spread_positions, spread_source, spread_subset)
from exemplar_tf.data.sources.demo import DEMO_PHOTOGRAPHS, demo_crops, demo_photographs
from exemplar_tf.choices import IMAGE_EXTENSIONS
from exemplar_tf.data.sources import demo, folder, stl10_binary, tfds
from exemplar_tf.data.sources.folder import decoded_image_files, header_problems, image_files_under
from exemplar_tf.data.sources.stl10_binary import STL10_CLASS_NAMES
from exemplar_tf.data.sources.tfds import TFDS_SPLITS


def load_source(name: str, split: str, *, data_dir: str | None = None, fold: int | None = None, min_size: int = 0,
                skip_bad_images: bool = False) -> Source:
    """The `split` of source `name` (see the module docstring); `fold` only for the STL-10 train split;
    `min_size` and `skip_bad_images` only for folder sources (the others are decoded by their own readers)."""
    kind, _, location = name.partition(":")
    if fold is not None and not (kind in ("stl10", "stl10_binary") and split == "train"):
        raise SourceError(f"fold={fold} exists only for the STL-10 train split, not {name!r} split {split!r}")
    title = f"{name} {split}" + ("" if fold is None else f" fold {fold}")
    if kind in ("stl10_binary", "folder"):
        if not location:
            raise SourceError(f"{name!r}: expected {kind}:<dir>")
        directory = os.path.expanduser(location)
        if not os.path.isdir(directory):
            raise SourceError(f"{name!r}: {directory} is not a folder")
        if kind == "stl10_binary":
            return stl10_binary.stl10_binary_source(directory, split, fold, title)
        return folder.folder_source(directory, split, title, min_size=min_size, skip_bad_images=skip_bad_images)
    if location or kind not in (*TFDS_SPLITS, "demo", "demo_labelled"):
        raise SourceError(f"unknown source {name!r}; expected demo, demo_labelled, {', '.join(TFDS_SPLITS)}, "
                          "stl10_binary:<dir> or folder:<dir>")
    if kind == "demo":
        return demo.demo_source(split, title)
    if kind == "demo_labelled":
        return demo.demo_labelled_source(split, title)
    if fold is not None:
        return stl10_binary.stl10_binary_source(stl10_binary.find_stl10_binary(data_dir), split, fold, title)
    return tfds.tfds_source(kind, split, data_dir, title)


def spec_parts(name: str) -> tuple[str, str]:
    """(kind, location) of a source spec, the location as a real path (user expanded, links resolved; "" when the
    spec has none): two specs name the same source exactly when their parts are equal.
    `folder:~/data` -> ("folder", "/home/me/data"), `cifar10` -> ("cifar10", "")."""
    kind, _, location = name.partition(":")
    return kind, os.path.realpath(os.path.expanduser(location)) if location else ""


def _folder_split_root(name: str, split: str) -> str | None:
    """The real path a `folder:<dir>` source reads `split` from; None for other sources, a missing folder or split
    (their loading says what is wrong)."""
    kind, directory = spec_parts(name)
    if kind != "folder" or not os.path.isdir(directory):
        return None
    try:
        return os.path.realpath(folder.split_root_and_class_names(directory, split)[0])
    except SourceError:
        return None


def same_images_problem(train: str, train_split: str, test: str, test_split: str) -> str | None:
    """One line when a training split and a test split read the same image files (a `folder:<dir>` without split
    folders is one set of images whatever the split asked for), else None: a score on them would be a score on
    the training images themselves."""
    root = _folder_split_root(train, train_split)
    if root is None or root != _folder_split_root(test, test_split):
        return None
    return (f"{train} split {train_split!r} and {test} split {test_split!r} are the same images ({root} has no "
            f"{train_split}/ and {test_split}/ folders), so the test would score the training images themselves; "
            f"give a folder with {train_split}/ and {test_split}/ sub-folders")


def class_names_problem(train: str, train_split: str, test: str, test_split: str, *,
                        data_dir: str | None = None) -> str | None:
    """One line when two labelled sources number their classes differently, else None: a test image's label i
    must name the class of the training images' label i. Folder labels number the sorted class folders, so a test
    folder without one of the training classes shifts the labels after it; one that only lacks the last ones, or
    has extra ones after all the training classes (no training image can be their neighbour), numbers the rest
    the same. Two splits of one source share their numbering (a folder's split folders are numbered over the
    classes of all of them), and a source without class names is not compared."""
    if spec_parts(train) == spec_parts(test):
        return None
    train_names, test_names = (load_source(name, split, data_dir=data_dir).class_names
                               for name, split in ((train, train_split), (test, test_split)))
    if train_names is None or test_names is None:
        return None
    differ = [label for label, (ours, theirs) in enumerate(zip(train_names, test_names)) if ours != theirs]
    if not differ:
        return None
    label = differ[0]
    return (f"{train} split {train_split!r} and {test} split {test_split!r} number their classes differently "
            f"(label {label} is {train_names[label]!r} in the training images and {test_names[label]!r} in the test "
            f"images), so a test image would be scored against another class; give one folder with "
            f"{train_split}/ and {test_split}/ sub-folders (numbered over the classes of both)")
