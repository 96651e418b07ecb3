"""tensorflow-datasets sources (stl10, cifar10, caltech101, imagenet2012), read in file order. A dataset that
`data_dir` does not hold yet is downloaded and prepared there once, after a status line on stdout; without a
network that is one `SourceError` within seconds, and a failed attempt leaves `data_dir` as it was (`download`)."""
from __future__ import annotations

import os

import tensorflow as tf

from exemplar_tf.data.sources import download
from exemplar_tf.data.sources.base import Source, SourceError, check_split, indexed

TFDS_SPLITS = {"stl10": ("unlabelled", "train", "test"), "cifar10": ("train", "test"), "caltech101": ("train", "test"),
               "imagenet2012": ("train", "validation")}


def tfds_source(name: str, split: str, data_dir: str | None, title: str) -> Source:
    """A tensorflow-datasets split read in file order (shuffle_files=False); downloaded and prepared first when
    `data_dir` does not hold it (`prepare`)."""
    import tensorflow_datasets as tfds  # slow to import: only the tfds names need it

    check_split(name, split, TFDS_SPLITS[name])
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        dataset = prepared_split(builder, split)
        if dataset is None:
            prepare(builder)
            dataset = builder.as_dataset(split=split, shuffle_files=False)
        label_feature = builder.info.features["label"]
    except SourceError:
        raise
    except Exception as error:  # tfds raises many types (download, missing files, corrupt records)
        raise SourceError(f"tensorflow-datasets could not load {name!r} split {split!r} "
                          f"(data_dir={data_dir or tfds.core.constants.DATA_DIR}): {error}") from error
    num_examples = int(dataset.cardinality())
    if name == "stl10" and split == "unlabelled":  # tfds gives these label -1
        return Source(indexed(dataset.map(lambda e: e["image"]), num_examples, None), num_examples, None, title)
    elements = dataset.enumerate().map(
        lambda index, e: {"image": e["image"], "index": index, "label": tf.cast(e["label"], tf.int64)})
    return Source(elements, num_examples, label_feature.num_classes, title, tuple(label_feature.names))


def prepared_split(builder, split: str) -> tf.data.Dataset | None:
    """`split` of `builder`'s dataset read in file order, or None when its data_dir has no folder for the dataset's
    version (tfds has not prepared it there). Reading is tried first, rather than asking `builder.is_prepared()`,
    because `tfds.testing.mock_data` fakes the reading but not the prepared files (and is_prepared logs a warning
    about the missing folder)."""
    try:
        return builder.as_dataset(split=split, shuffle_files=False)
    except AssertionError:  # tfds: "could not find data in <data_dir>" (or another check that failed)
        if builder.data_path.exists():
            raise
        return None


def prepare(builder) -> None:
    """Download and prepare `builder`'s dataset in its data_dir, after one status line on stdout. Raises
    SourceError within seconds when none of the hosts it downloads from answers (`download.network_reaches`). A
    dataset with manual download instructions (imagenet2012) is prepared from the archives in
    `<data_dir>/downloads/manual` and needs no network. A failed or interrupted attempt removes what it created
    in data_dir (`download.removed_on_failure`)."""
    data_dir = os.fspath(builder.data_dir_root)
    if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
        line = download.manual_prepare_line(builder.name, os.path.join(data_dir, "downloads", "manual"), data_dir)
    else:
        known_url, known_size = download.KNOWN_DOWNLOADS[builder.name]
        addresses = [download.probe_address(url) for url in (builder.url_infos or {known_url: None})]
        if not download.network_reaches(addresses):
            raise SourceError(download.offline_message(builder.name, data_dir, addresses))
        line = download.download_line(builder.name, int(builder.info.download_size) or known_size, data_dir)
    print(line, flush=True)
    with download.removed_on_failure(download.download_folders(data_dir, builder.data_dir)):
        builder.download_and_prepare()
