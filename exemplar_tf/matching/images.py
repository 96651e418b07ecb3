"""Base images for the synthetic benchmark, and real image sequences with known homographies (Oxford format).

Oxford / Mikolajczyk format: a folder with img1.ppm ... imgN.ppm (or .pgm, .png, .jpg) and the text files
H1to2p ... H1toNp, each a 3 x 3 homography taking pixel coordinates of img1 to those of imgK.
"""
from __future__ import annotations

import dataclasses
import os
import re

import cv2
import numpy as np

from exemplar_tf import choices
from exemplar_tf.errors import InputError

IMAGE_EXTENSIONS = (".ppm", ".pgm", *choices.IMAGE_EXTENSIONS, ".tif", ".tiff")  # what OpenCV reads here


@dataclasses.dataclass(frozen=True)
class Sequence:
    """name; images: [img1, img2, ...] uint8 [H,W,3] RGB; homographies: [H1to2, H1to3, ...] float64 [3,3]."""

    name: str
    images: list[np.ndarray]
    homographies: list[np.ndarray]


def read_image(path: str) -> np.ndarray:
    """Any image file OpenCV reads -> uint8 [H,W,3] RGB (gray images are repeated over the 3 channels)."""
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise InputError(f"{path}: not an image OpenCV can read")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def shrink(image: np.ndarray, max_side: int | None) -> tuple[np.ndarray, np.ndarray]:
    """image [H,W,3] -> (the image with its longer side brought down to max_side by area averaging, float64
    [3,3] the homography taking old pixel coordinates to new ones). Images are never enlarged; max_side None
    keeps the image."""
    height, width = image.shape[:2]
    if not max_side or max(height, width) <= max_side:
        return image, np.eye(3)
    factor = max_side / max(height, width)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    scale_x, scale_y = size[0] / width, size[1] / height  # cv2.resize: x -> (x + 0.5) * scale - 0.5
    matrix = np.array([[scale_x, 0.0, 0.5 * scale_x - 0.5], [0.0, scale_y, 0.5 * scale_y - 0.5], [0.0, 0.0, 1.0]])
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), matrix


def demo_images(num_images: int | None = None) -> list[np.ndarray]:
    """The project's embedded natural photographs (`load_source("demo", "train")`), uint8 [H,W,3] each."""
    from exemplar_tf.data.sources import load_source  # imports TensorFlow: only when the demo set is used

    dataset = load_source("demo", "train").dataset
    if num_images is not None:
        dataset = dataset.take(num_images)
    return [example["image"] for example in dataset.as_numpy_iterator()]


def folder_images(folder: str, num_images: int | None = None) -> list[np.ndarray]:
    """The image files directly in `folder`, in name order, uint8 [H,W,3] RGB."""
    names = sorted(name for name in os.listdir(folder) if name.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise InputError(f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return [read_image(os.path.join(folder, name)) for name in names[:num_images]]


def read_homography(path: str) -> np.ndarray:
    """A 3 x 3 matrix written as whitespace-separated numbers -> float64 [3,3]."""
    with open(path) as f:
        values = np.array(f.read().split(), np.float64)
    if values.size != 9:
        raise InputError(f"{path}: expected 9 numbers for a 3x3 homography, found {values.size}")
    return values.reshape(3, 3)


def _numbered_images(folder: str) -> dict[int, str]:
    """{k: path of imgK.<ext>} for the image files of an Oxford-format folder."""
    found = {}
    for name in os.listdir(folder):
        match = re.fullmatch(r"img(\d+)(\.\w+)", name)
        if match and match.group(2).lower() in IMAGE_EXTENSIONS:
            found[int(match.group(1))] = os.path.join(folder, name)
    return found


def is_oxford_folder(folder: str) -> bool:
    return 1 in _numbered_images(folder) and os.path.exists(os.path.join(folder, "H1to2p"))


def load_sequence(folder: str) -> Sequence:
    """img1, img2, ... imgN and H1to2p ... H1toNp of one Oxford-format folder (N = the largest K present with
    both imgK and H1toKp, K = 2, 3, ... without gaps)."""
    images = _numbered_images(folder)
    if 1 not in images:
        raise InputError(f"{folder}: no img1.<{'|'.join(ext[1:] for ext in IMAGE_EXTENSIONS)}>")
    count = 1
    while count + 1 in images and os.path.exists(os.path.join(folder, f"H1to{count + 1}p")):
        count += 1
    if count == 1:
        raise InputError(f"{folder}: needs img2 and H1to2p next to img1")
    return Sequence(name=os.path.basename(os.path.normpath(folder)),
                    images=[read_image(images[k]) for k in range(1, count + 1)],
                    homographies=[read_homography(os.path.join(folder, f"H1to{k}p")) for k in range(2, count + 1)])


def load_sequences(root: str) -> list[Sequence]:
    """One sequence when `root` itself is an Oxford-format folder, else every such subfolder in name order
    (e.g. the dataset's bark/, bikes/, boat/, graf/, ...)."""
    if is_oxford_folder(root):
        return [load_sequence(root)]
    folders = sorted(os.path.join(root, name) for name in os.listdir(root)
                     if os.path.isdir(os.path.join(root, name)) and is_oxford_folder(os.path.join(root, name)))
    if not folders:
        raise InputError(f"{root}: neither an Oxford-format folder (img1.*, H1to2p, ...) nor a folder of them")
    return [load_sequence(folder) for folder in folders]


def shrink_sequence(sequence: Sequence, max_side: int | None) -> Sequence:
    """Every image shrunk to max_side (if larger) and the homographies rewritten for the new pixel grids:
    H1toK' = S_K H1toK S_1^-1."""
    shrunk = [shrink(image, max_side) for image in sequence.images]
    first = np.linalg.inv(shrunk[0][1])
    return Sequence(name=sequence.name, images=[image for image, _ in shrunk],
                    homographies=[scaling @ matrix @ first
                                  for (_, scaling), matrix in zip(shrunk[1:], sequence.homographies)])
