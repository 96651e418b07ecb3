"""What every source shares: the `Source` record, `SourceError`, the element layout (`indexed`), size
checks, and evenly spread subsets of any source."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection

import numpy as np
import tensorflow as tf

from exemplar_tf.errors import InputError


class SourceError(InputError):
    """A source cannot be read; the message names the file or folder and the problem."""


@dataclasses.dataclass
class Source:
    """A dataset of `{"image": uint8 [H,W,3], "index": int64, "label": int64 (labelled only)}` and its facts."""

    dataset: tf.data.Dataset
    num_examples: int
    num_classes: int | None  # None: unlabelled
    name: str
    class_names: tuple[str, ...] | None = None
    # Random access, when the source has it cheaply (an image folder): index int64 [] -> the element of that index.
    read: Callable[[tf.Tensor], dict] | None = None
    skipped: tuple[tuple[str, str], ...] = ()  # (path, reason) of image files left out (folder, skip_bad_images)



def check_min_size(image_hw: tuple[int, int], min_size: int, where: str) -> None:
    """Raise SourceError if an image of (height, width) `image_hw` is smaller than `min_size` on either side.

    For consumers that cut fixed-size windows (the seed-patch sampler calls it with its window side); `where` names
    the image (a path or `"<source> index <i>"`).
    """
    problem = size_problem(image_hw, min_size)
    if problem:
        raise SourceError(f"{where}: {problem}")


def size_problem(image_hw: tuple[int, int], min_size: int) -> str | None:
    """None if an image of (height, width) `image_hw` is at least `min_size` on both sides; else what is wrong."""
    height, width = (int(v) for v in image_hw)
    if min(height, width) < min_size:
        return f"image is {height}×{width}, smaller than the {min_size}×{min_size} needed"
    return None


def check_split(name: str, split: str, splits: Collection[str]) -> None:
    if split not in splits:
        raise SourceError(f"{name} has no split {split!r}; expected one of {', '.join(splits)}")


def indexed(images: tf.data.Dataset, num_examples: int, labels: np.ndarray | None) -> tf.data.Dataset:
    """Elements {"image", "index", "label"} from images in order (index = position) and their labels (or None)."""
    if labels is None:
        dataset = images.enumerate().map(lambda index, image: {"image": image, "index": index})
    else:
        label_table = tf.constant(np.asarray(labels, np.int64))
        dataset = images.enumerate().map(
            lambda index, image: {"image": image, "index": index, "label": tf.gather(label_table, index)})
    return dataset.apply(tf.data.experimental.assert_cardinality(num_examples))


def spread_positions(total: int, limit: int) -> np.ndarray:
    """int64 [min(limit, total)]: exactly `limit` of the positions 0..total-1, evenly spread (floor(i * total /
    limit)), or all of them when `limit` <= 0 or >= total."""
    if limit <= 0 or limit >= total:
        return np.arange(total, dtype=np.int64)
    return (np.arange(limit, dtype=np.int64) * total) // limit


def spread_subset(dataset: tf.data.Dataset, total: int, limit: int) -> tuple[tf.data.Dataset, int]:
    """Exactly `limit` examples of a `total`-long dataset (all when `limit` <= 0 or >= total), evenly spread:
    the `spread_positions`, in order.

    Sources are often sorted by class (image folders), so the first `limit` examples would miss most classes.
    Returns (dataset, its length).
    """
    positions = spread_positions(total, limit)
    if len(positions) == total:
        return dataset, total
    keep = tf.constant(np.isin(np.arange(total), positions))
    subset = dataset.take(positions[-1] + 1).enumerate().filter(lambda position, _: keep[position]).map(lambda _, element: element)
    return subset.apply(tf.data.experimental.assert_cardinality(len(positions))), len(positions)


def spread_source(source: Source, limit: int) -> Source:
    """The source cut to exactly `limit` images evenly spread over it (`spread_positions`; all when `limit` <= 0
    or >= its size), `index` renumbered 0..n-1 so that it still names bank rows; `read` follows."""
    positions = spread_positions(source.num_examples, limit)
    if len(positions) == source.num_examples:
        return source
    subset, count = spread_subset(source.dataset, source.num_examples, limit)
    renumbered = subset.enumerate().map(lambda position, element: {**element, "index": position})
    read = None
    if source.read is not None:
        original_index, read_original = tf.constant(positions), source.read
        read = lambda index: {**read_original(tf.gather(original_index, index)), "index": index}  # noqa: E731
    return dataclasses.replace(source, dataset=renumbered, num_examples=count, read=read)
