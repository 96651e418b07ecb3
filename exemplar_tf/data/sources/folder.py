"""Image-file folders (`folder:<dir>`): class sub-folders, split sub-folders, header checks, checked decoding."""
from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from exemplar_tf.choices import IMAGE_EXTENSIONS
from exemplar_tf.data.sources.base import Source, SourceError, size_problem
from exemplar_tf.errors import DECODE_FAILURE

# File signatures of the formats above; tf.io.decode_image picks the decoder from the content.
IMAGE_SIGNATURES = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF87a": "GIF", b"GIF89a": "GIF",
                    b"BM": "BMP"}
# A folder <dir> that has one of these sub-folders is read per split (<dir>/<split>).
SPLIT_FOLDER_NAMES = ("train", "test", "unlabelled", "val", "validation")
HEADER_THREADS = 8  # image-header reads (min_size) are mostly waiting on the file system


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
