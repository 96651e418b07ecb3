"""Normalised patches cut from ellipses, and the descriptors computed on them.

A descriptor is a function patches uint8 [B,P,P,3] (RGB) -> float32 [B,D], compared by Euclidean distance. It is
wrapped in a `Descriptor` with its name and the patch size P it is fed (the paper: 113 px for CNNs, 157 px
for SIFT).

Patch normalisation: the ellipse (c, S) enlarged `context` times is mapped affinely onto the disc inscribed in
the P x P patch by x = c + context * sqrt(S) (q - q0) / (P / 2), with sqrt(S) the symmetric square root. That
removes scale and anisotropy but **not rotation** (as in the paper: the descriptors themselves must cope with
rotation, which is what the rotation family measures). Large ellipses are sampled from a Gaussian pyramid
level so that the sampling step stays below 2 pixels (no aliasing).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import cv2
import numpy as np

from exemplar_tf.matching.ellipses import Ellipses, symmetric_sqrt

# OpenCV's SIFT: the 4 x 4 histogram grid spans 4 * 3 * (size / 2) = 6 * size pixels for a keypoint of `size`.
SIFT_GRID_WIDTH_PER_SIZE = 6.0
PIXELS_SIZE = 16  # the raw-pixel floor describes a 16 x 16 thumbnail of the patch


@dataclasses.dataclass(frozen=True)
class Descriptor:
    """name, the patch side P it reads, and compute: uint8 [B,P,P,3] -> float32 [B,D]."""

    name: str
    patch_size: int
    compute: Callable[[np.ndarray], np.ndarray]


def gaussian_pyramid(image: np.ndarray, levels: int) -> list[np.ndarray]:
    """[image, pyrDown(image), ...] with `levels` entries; level l has coordinates x / 2^l."""
    pyramid = [image]
    while len(pyramid) < levels and min(pyramid[-1].shape[:2]) >= 2:
        pyramid.append(cv2.pyrDown(pyramid[-1]))
    return pyramid


def patch_affines(ellipses: Ellipses, patch_size: int, context: float) -> np.ndarray:
    """float64 [N,2,2] A with x = c + A (q - q0): the map from patch offsets to image offsets."""
    return context * symmetric_sqrt(ellipses.shapes) / (patch_size / 2.0)


def normalised_patches(image: np.ndarray, ellipses: Ellipses, patch_size: int, context: float = 3.0) -> np.ndarray:
    """image uint8 [H,W,3], N ellipses -> uint8 [N,P,P,3], P = patch_size (borders replicated)."""
    affines = patch_affines(ellipses, patch_size, context)
    steps = np.sqrt(np.abs(np.linalg.det(affines)))  # image pixels per patch pixel (geometric mean)
    levels = np.maximum(np.floor(np.log2(np.maximum(steps, 1e-12))), 0).astype(int)
    pyramid = gaussian_pyramid(image, int(levels.max(initial=0)) + 1)
    middle = (patch_size - 1) / 2.0
    patches = np.zeros((len(ellipses), patch_size, patch_size, image.shape[2]), np.uint8)
    for index, (centre, affine, level) in enumerate(zip(ellipses.centres, affines, levels)):
        level = min(level, len(pyramid) - 1)
        linear = affine / 2**level
        offset = centre / 2**level - linear @ np.array([middle, middle])
        patch_to_image = np.concatenate([linear, offset[:, None]], axis=1)
        patches[index] = cv2.warpAffine(pyramid[level], patch_to_image, (patch_size, patch_size),
                                        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                        borderMode=cv2.BORDER_REPLICATE)
    return patches


def sift_descriptors(patches: np.ndarray) -> np.ndarray:
    """uint8 [B,P,P,3] -> float32 [B,128]: OpenCV SIFT of one upright keypoint (angle 0) at the patch centre,
    its 4 x 4 grid spanning the whole patch."""
    patch_size = patches.shape[1]
    centre = (patch_size - 1) / 2.0
    keypoint = cv2.KeyPoint(centre, centre, patch_size / SIFT_GRID_WIDTH_PER_SIZE, 0.0)
    sift = cv2.SIFT_create()
    described = np.zeros((len(patches), 128), np.float32)
    for index, patch in enumerate(patches):
        _, values = sift.compute(cv2.cvtColor(patch, cv2.COLOR_RGB2GRAY), [keypoint])
        described[index] = values[0]
    return described


def pixel_descriptors(patches: np.ndarray, size: int = PIXELS_SIZE) -> np.ndarray:
    """uint8 [B,P,P,3] -> float32 [B, size*size*3]: the patch shrunk to size x size (area averaging), each
    descriptor shifted to zero mean and scaled to unit standard deviation (the floor every descriptor should beat)."""
    thumbnails = np.stack([cv2.resize(patch.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
                           for patch in patches])
    flat = thumbnails.reshape(len(patches), -1)
    flat -= flat.mean(axis=1, keepdims=True)
    return flat / np.maximum(flat.std(axis=1, keepdims=True), 1e-6)


class SavedModelDescriptors:
    """Descriptor function from a SavedModel whose `serving_default` signature takes `images` uint8 [B,H,W,3]
    and returns a dict holding `output` float [B,D] (this project's exports: `features`, the pooled evaluation
    features, or `embedding`). TensorFlow is imported here, so SIFT-only runs never load it."""

    def __init__(self, path: str, *, output: str = "features", batch_size: int = 64):
        import tensorflow as tf

        from exemplar_tf.errors import check_savedmodel_folder

        check_savedmodel_folder(path)
        self._tf = tf
        self._loaded = tf.saved_model.load(path)  # owns the variables the signature reads: keep it alive
        self._serve = self._loaded.signatures["serving_default"]
        self.output = output
        self.batch_size = batch_size

    def __call__(self, patches: np.ndarray) -> np.ndarray:
        """uint8 [B,P,P,3] -> float32 [B,D], `batch_size` patches per call."""
        batches = [self._serve(images=self._tf.constant(patches[start:start + self.batch_size]))[self.output]
                   for start in range(0, len(patches), self.batch_size)]
        return np.concatenate([batch.numpy() for batch in batches]).astype(np.float32)


def standard_descriptors(*, savedmodel: str | None = None, cnn_patch_size: int = 113,
                         sift_patch_size: int = 157, cnn_output: str = "features") -> list[Descriptor]:
    """The benchmark's descriptors: cnn (the SavedModel's `cnn_output`, when a path is given), sift, and
    pixels (raw pixels of the CNN-sized patch)."""
    described = [Descriptor("sift", sift_patch_size, sift_descriptors),
                 Descriptor("pixels", cnn_patch_size, pixel_descriptors)]
    if savedmodel:
        described.insert(0, Descriptor("cnn", cnn_patch_size, SavedModelDescriptors(savedmodel, output=cnn_output)))
    return described


def describe_regions(image: np.ndarray, ellipses: Ellipses, descriptors: list[Descriptor],
                     context: float) -> dict[str, np.ndarray]:
    """{descriptor name: float32 [N,D]} for the regions of one image; patches are cut once per patch size.
    With no regions the arrays are [0,0]."""
    if len(ellipses) == 0:
        return {descriptor.name: np.zeros((0, 0), np.float32) for descriptor in descriptors}
    patches = {size: normalised_patches(image, ellipses, size, context)
               for size in {descriptor.patch_size for descriptor in descriptors}}
    return {descriptor.name: descriptor.compute(patches[descriptor.patch_size]) for descriptor in descriptors}
