"""The embedded demo: scikit-image's bundled photographs (`demo`) and labelled crops of them (`demo_labelled`)."""
from __future__ import annotations

import functools

import cv2
import numpy as np
import tensorflow as tf

from exemplar_tf.data.sources.base import Source, check_split, indexed


# skimage.data photographs that load without downloading (files bundled with scikit-image).
DEMO_PHOTOGRAPHS = ("astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
                    "hubble_deep_field", "immunohistochemistry", "moon", "motorcycle", "retina", "rocket")
DEMO_MAX_SIDE = 320
DEMO_CROP_SIZE = 64
DEMO_CROP_SIDE_RANGE = (0.3, 0.9)  # crop side as a fraction of the shorter side of the half photograph
DEMO_CROPS_PER_PHOTO = {"train": 40, "test": 20}
DEMO_CROP_SEED = {"train": 0, "test": 1}


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
