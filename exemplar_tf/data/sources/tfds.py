"""tensorflow-datasets sources (stl10, cifar10, caltech101, imagenet2012), read in file order."""
from __future__ import annotations

import tensorflow as tf

from exemplar_tf.data.sources.base import Source, SourceError, check_split, indexed

TFDS_SPLITS = {"stl10": ("unlabelled", "train", "test"), "cifar10": ("train", "test"), "caltech101": ("train", "test"),
               "imagenet2012": ("train", "validation")}


def tfds_source(name: str, split: str, data_dir: str | None, title: str) -> Source:
    """A tensorflow-datasets split read in file order (shuffle_files=False); tfds prepares it if needed."""
    import tensorflow_datasets as tfds  # slow to import: only the tfds names need it

    check_split(name, split, TFDS_SPLITS[name])
    try:
        dataset, info = tfds.load(name, split=split, data_dir=data_dir, shuffle_files=False, with_info=True)
    except Exception as error:  # tfds raises many types (download, missing files, corrupt records)
        raise SourceError(f"tensorflow-datasets could not load {name!r} split {split!r} "
                          f"(data_dir={data_dir or tfds.core.constants.DATA_DIR}): {error}") from error
    num_examples = int(dataset.cardinality())
    if name == "stl10" and split == "unlabelled":  # tfds gives these label -1
        return Source(indexed(dataset.map(lambda e: e["image"]), num_examples, None), num_examples, None, title)
    label_feature = info.features["label"]
    elements = dataset.enumerate().map(
        lambda index, e: {"image": e["image"], "index": index, "label": tf.cast(e["label"], tf.int64)})
    return Source(elements, num_examples, label_feature.num_classes, title, tuple(label_feature.names))
