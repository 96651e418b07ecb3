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
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import glob
import os
from collections.abc import Callable, Collection

import cv2
import numpy as np
import tensorflow as tf

from exemplar_tf.errors import DECODE_FAILURE, InputError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
# File signatures of the formats above; tf.io.decode_image picks the decoder from the content.
IMAGE_SIGNATURES = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF87a": "GIF", b"GIF89a": "GIF",
                    b"BM": "BMP"}
# A folder <dir> that has one of these sub-folders is read per split (<dir>/<split>).
SPLIT_FOLDER_NAMES = ("train", "test", "unlabelled", "val", "validation")
HEADER_THREADS = 8  # image-header reads (min_size) are mostly waiting on the file system

TFDS_SPLITS = {"stl10": ("unlabelled", "train", "test"), "cifar10": ("train", "test"), "caltech101": ("train", "test"),
               "imagenet2012": ("train", "validation")}

STL10_SIDE = 96
STL10_IMAGE_BYTES = 3 * STL10_SIDE * STL10_SIDE  # 27648: uint8 planes R, G, B, each column-major
STL10_FILES = {  # split -> (images file, labels file or None)
    "unlabelled": ("unlabeled_X.bin", None),
    "train": ("train_X.bin", "train_y.bin"),
    "test": ("test_X.bin", "test_y.bin"),
}
STL10_FOLDS_FILE = "fold_indices.txt"
STL10_CLASS_NAMES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")

# skimage.data photographs that load without downloading (files bundled with scikit-image).
DEMO_PHOTOGRAPHS = ("astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
                    "hubble_deep_field", "immunohistochemistry", "moon", "motorcycle", "retina", "rocket")
DEMO_MAX_SIDE = 320
DEMO_CROP_SIZE = 64
DEMO_CROP_SIDE_RANGE = (0.3, 0.9)  # crop side as a fraction of the shorter side of the half photograph
DEMO_CROPS_PER_PHOTO = {"train": 40, "test": 20}
DEMO_CROP_SEED = {"train": 0, "test": 1}


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
            return stl10_binary_source(directory, split, fold, title)
        return folder_source(directory, split, title, min_size=min_size, skip_bad_images=skip_bad_images)
    if location or kind not in (*TFDS_SPLITS, "demo", "demo_labelled"):
        raise SourceError(f"unknown source {name!r}; expected demo, demo_labelled, {', '.join(TFDS_SPLITS)}, "
                          "stl10_binary:<dir> or folder:<dir>")
    if kind == "demo":
        return demo_source(split, title)
    if kind == "demo_labelled":
        return demo_labelled_source(split, title)
    if fold is not None:
        return stl10_binary_source(find_stl10_binary(data_dir), split, fold, title)
    return tfds_source(kind, split, data_dir, title)


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


# --- tensorflow-datasets -------------------------------------------------------------------------------------------

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
        "Extract stl10_binary.tar.gz there, or use --source=stl10_binary:<dir>")


# --- STL-10 binary files -------------------------------------------------------------------------------------------

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


# --- image folders -------------------------------------------------------------------------------------------------

def folder_source(directory: str, split: str, title: str, *, min_size: int = 0,
                  skip_bad_images: bool = False) -> Source:
    """Image files under <directory>/<split> (or <directory>); class sub-folders give labels.

    With split sub-folders, class names are the union over all splits, so labels agree between splits.
    Without `skip_bad_images`, a file that is not an image by its header, or (min_size > 0) is smaller than
    `min_size` by its header, raises SourceError naming it (and counting the others); one that fails to decode later
    stops the iteration naming it (`decoded_image_files`). With `skip_bad_images`, every file is decoded once here
    and those that fail or are too small are left out (listed in `Source.skipped`), so `index` is 0..n-1 over the
    files kept.
    """
    root, class_names = split_root_and_class_names(directory, split)
    paths, labels = list_image_files(root, class_names)
    problems = decode_problems(paths, min_size) if skip_bad_images else header_problems(paths, min_size)
    if problems and not skip_bad_images:
        first = min(problems)
        others = f" (and {len(problems) - 1} more bad image files)" if len(problems) > 1 else ""
        raise SourceError(f"{paths[first]}: {problems[first]}{others}")
    skipped = tuple((paths[position], problems[position]) for position in sorted(problems))
    if skipped:
        if len(skipped) == len(paths):
            raise SourceError(f"{root}: none of its {len(paths)} image files can be used "
                              f"(first: {skipped[0][0]}: {skipped[0][1]})")
        keep = [position for position in range(len(paths)) if position not in problems]
        paths, labels = [paths[position] for position in keep], None if labels is None else labels[keep]
    return Source(decoded_image_files(paths, labels), len(paths), None if labels is None else len(class_names), title,
                  None if labels is None else class_names, read=image_file_reader(paths, labels), skipped=skipped)


def image_file_reader(paths: list[str], labels: np.ndarray | None) -> Callable[[tf.Tensor], dict]:
    """index int64 [] -> {"image": uint8 [H,W,3] decoded from paths[index], "index", "label"?}."""
    path_table = tf.constant(paths)
    label_table = None if labels is None else tf.constant(labels, tf.int64)

    def read(index):
        element = {"image": decode_image_file(tf.gather(path_table, index)), "index": index}
        if label_table is not None:
            element["label"] = tf.gather(label_table, index)
        return element

    return read


def visible_subfolders(directory: str) -> list[str]:
    return sorted(entry.name for entry in os.scandir(directory) if entry.is_dir() and not entry.name.startswith("."))


def split_root_and_class_names(directory: str, split: str) -> tuple[str, tuple[str, ...]]:
    """(folder to read, sorted class names — empty for a flat folder)."""
    subfolders = visible_subfolders(directory)
    split_folders = [name for name in subfolders if name in SPLIT_FOLDER_NAMES]
    if not split_folders:
        return directory, tuple(subfolders)
    if split not in split_folders:
        raise SourceError(f"{directory}: has split folders {', '.join(split_folders)} but no {split!r}")
    classes = set()
    for name in split_folders:
        classes.update(visible_subfolders(os.path.join(directory, name)))
    return os.path.join(directory, split), tuple(sorted(classes))


def is_image_name(filename: str) -> bool:
    return not filename.startswith(".") and filename.lower().endswith(IMAGE_EXTENSIONS)


def image_files_under(directory: str) -> list[str]:
    """Sorted paths of the image files anywhere under `directory` (hidden files and folders skipped)."""
    found = []
    for parent, folders, filenames in os.walk(directory):
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        found.extend(os.path.join(parent, name) for name in sorted(filenames) if is_image_name(name))
    return found


def list_image_files(root: str, class_names: tuple[str, ...]) -> tuple[list[str], np.ndarray | None]:
    """(paths, labels int64 [n] or None) of `root`: files of class sub-folders, or the files of a flat folder."""
    top_level = sorted(entry.path for entry in os.scandir(root) if entry.is_file() and is_image_name(entry.name))
    present = set(visible_subfolders(root))
    if present and top_level:
        raise SourceError(f"{root}: has both image files ({os.path.basename(top_level[0])}, ...) and class "
                          f"sub-folders ({', '.join(sorted(present))}); use one layout")
    paths, labels = top_level, None
    if present:
        per_class = [(label, image_files_under(os.path.join(root, name)))
                     for label, name in enumerate(class_names) if name in present]
        paths = [path for _, files in per_class for path in files]
        labels = np.array([label for label, files in per_class for _ in files], np.int64)
    if not paths:
        raise SourceError(f"{root}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return paths, labels


def signature_problem(path: str) -> str | None:
    """None if the file starts like a PNG, JPEG, GIF or BMP; else what is wrong with it."""
    try:
        with open(path, "rb") as file:
            head = file.read(8)
    except OSError as error:
        return f"cannot be read ({error.strerror})"
    if not head:
        return "empty file"
    if not any(head.startswith(signature) for signature in IMAGE_SIGNATURES):
        return f"not a PNG, JPEG, GIF or BMP image (unrecognised file header {head[:4]!r})"
    return None


def header_size(path: str) -> tuple[int, int] | None:
    """(height, width) from the image file's header (Pillow reads no pixels), or None if Pillow cannot parse it
    (the decoder then decides)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            width, height = image.size
    except Exception:  # noqa: BLE001 -- Pillow raises many types for odd headers; the decoder reports them
        return None
    return height, width


def header_problems(paths: list[str], min_size: int) -> dict[int, str]:
    """{position: problem} of the files that are not images by their first bytes or, if min_size > 0, whose header
    gives a side below min_size (headers read in parallel threads)."""
    problems = {position: problem for position, path in enumerate(paths) if (problem := signature_problem(path))}
    if min_size > 0:
        readable = [position for position in range(len(paths)) if position not in problems]
        with concurrent.futures.ThreadPoolExecutor(HEADER_THREADS) as pool:
            sizes = pool.map(header_size, [paths[position] for position in readable], chunksize=64)
            for position, size in zip(readable, sizes):
                if size is not None and (problem := size_problem(size, min_size)):
                    problems[position] = problem
    return problems


def decode_problems(paths: list[str], min_size: int) -> dict[int, str]:
    """{position: problem} of the files that are not images by their first bytes, fail to decode (decoded once, in
    parallel, with the decoder the dataset uses) or have a side below min_size."""
    problems = {position: problem for position, path in enumerate(paths) if (problem := signature_problem(path))}
    candidates = [position for position in range(len(paths)) if position not in problems]
    path_table = tf.constant([paths[position] for position in candidates] or [""])
    shapes = (tf.data.Dataset.range(len(candidates))
              .map(lambda i: (i, tf.shape(decode_image_file(tf.gather(path_table, i)))[:2]),
                   num_parallel_calls=tf.data.AUTOTUNE)
              .ignore_errors())
    decoded = {int(i): size for i, size in shapes.as_numpy_iterator()}
    for i, position in enumerate(candidates):
        if i not in decoded:
            problems[position] = "cannot be read or decoded (corrupt, truncated or unsupported image file)"
        elif problem := size_problem(decoded[i], min_size):
            problems[position] = problem
    return problems


def decode_image_file(path: tf.Tensor) -> tf.Tensor:
    """uint8 [H,W,3]: gray -> RGB, alpha dropped, 16-bit -> 8-bit, first frame of a GIF."""
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, dtype=tf.uint8, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def decoded_image_files(paths: list[str], labels: np.ndarray | None) -> tf.data.Dataset:
    """Dataset of {"image", "index", "label"?} decoding `paths` in parallel (index = position in `paths`).

    A file that passes the header check but fails to decode (truncated, corrupt, an unsupported variant) stops the
    iteration with tf.errors.InvalidArgumentError naming that file: decode errors are dropped with ignore_errors()
    and the first gap in the positions is reported (a sentinel at position n catches a gap at the end).
    """
    count = len(paths)
    path_table = tf.constant(paths)
    label_table = None if labels is None else tf.constant(labels, tf.int64)
    sentinel = tf.data.Dataset.from_tensors((tf.constant(count, tf.int64), tf.zeros([0, 0, 3], tf.uint8)))
    decoded = (tf.data.Dataset.range(count)
               .map(lambda position: (position, decode_image_file(tf.gather(path_table, position))),
                    num_parallel_calls=tf.data.AUTOTUNE)
               .ignore_errors()
               .concatenate(sentinel))

    def checked_element(expected, decoded_pair):
        position, image = decoded_pair
        missing = tf.gather(path_table, tf.minimum(expected, count - 1))
        check = tf.debugging.Assert(tf.equal(position, expected),
                                    [DECODE_FAILURE, missing])
        with tf.control_dependencies([check]):
            element = {"image": tf.identity(image), "index": tf.identity(position)}
        if label_table is not None:
            element["label"] = tf.gather(label_table, tf.minimum(position, count - 1))
        return element

    return (decoded.enumerate().map(checked_element, num_parallel_calls=tf.data.AUTOTUNE)
            .filter(lambda element: element["index"] < count)
            .apply(tf.data.experimental.assert_cardinality(count)))


# --- embedded demo -------------------------------------------------------------------------------------------------

def load_demo_photograph(name: str) -> np.ndarray:
    """uint8 [H,W,3] photograph `name` of skimage.data, longer side scaled down to at most DEMO_MAX_SIDE."""
    from skimage import data

    image = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    height, width = image.shape[:2]
    factor = DEMO_MAX_SIDE / max(height, width)
    if factor < 1:
        image = cv2.resize(image, (round(width * factor), round(height * factor)), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(image, np.uint8)


@functools.cache
def demo_photographs() -> tuple[np.ndarray, ...]:
    """The DEMO_PHOTOGRAPHS in that order (read-only arrays)."""
    photos = tuple(load_demo_photograph(name) for name in DEMO_PHOTOGRAPHS)
    for photo in photos:
        photo.setflags(write=False)
    return photos


def demo_source(split: str, title: str) -> Source:
    check_split("demo", split, ("train", "unlabelled"))
    photos = demo_photographs()
    images = functools.reduce(tf.data.Dataset.concatenate, [tf.data.Dataset.from_tensors(p) for p in photos])
    return Source(indexed(images, len(photos), None), len(photos), None, title)


def demo_crops(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(crops uint8 [n,64,64,3], labels int64 [n]) for demo_labelled `split`, deterministic.

    Label = photograph. Each crop is a random square (side DEMO_CROP_SIDE_RANGE × the half's shorter side, random
    position) of the photograph's left half (`train`) or right half (`test`), resized to 64×64. Ordered round-robin
    over the photographs, so any prefix is class-balanced.
    """
    rng = np.random.default_rng(DEMO_CROP_SEED[split])
    halves = []
    for photo in demo_photographs():
        middle = photo.shape[1] // 2
        halves.append(photo[:, :middle] if split == "train" else photo[:, middle:])
    crops, labels = [], []
    for _ in range(DEMO_CROPS_PER_PHOTO[split]):
        for label, half in enumerate(halves):
            height, width = half.shape[:2]
            side = round(rng.uniform(*DEMO_CROP_SIDE_RANGE) * min(height, width))
            top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
            crops.append(cv2.resize(half[top:top + side, left:left + side], (DEMO_CROP_SIZE, DEMO_CROP_SIZE),
                                    interpolation=cv2.INTER_AREA))
            labels.append(label)
    return np.stack(crops), np.array(labels, np.int64)


def demo_labelled_source(split: str, title: str) -> Source:
    check_split("demo_labelled", split, tuple(DEMO_CROPS_PER_PHOTO))
    crops, labels = demo_crops(split)
    images = tf.data.Dataset.from_tensor_slices(crops)
    return Source(indexed(images, len(crops), labels), len(crops), len(DEMO_PHOTOGRAPHS), title, DEMO_PHOTOGRAPHS)
