"""Normalised patches cut from ellipses, and the descriptors computed on them.

A descriptor is a function patches uint8 [B,P,P,3] (RGB) -> float32 [B,D], compared by Euclidean distance. It is
wrapped in a `Descriptor` with its name and the patch size P it is fed (the paper: 113 px for CNNs, 157 px
for SIFT).

Patch normalisation: the ellipse (c, S) enlarged `context` times is mapped affinely onto the disc inscribed in
the P x P patch by x = c + context * sqrt(S) R(theta) (q - q0) / (P / 2), with sqrt(S) the symmetric square root
and R(theta) a rotation by the region's orientation theta. The affine part removes scale and anisotropy; with
theta = 0 ("upright", the paper's synthetic protocol) rotation is left for the descriptors themselves to cope
with, which is what the rotation family measures; theta = the region's dominant gradient orientation
(`orientation.dominant_orientations`, the Oxford protocol) turns that direction onto the patch's +x axis.
Large ellipses are sampled from a Gaussian pyramid level so that the sampling step stays below 2 pixels.

CNN input: optionally each patch's contrast standardised (`standardise_patch_contrast`).
Descriptor normalisation (`normalise_descriptors`, used on the CNN's features): none, l2 (whole descriptor),
l2_layer (each layer's block to unit norm) or clip (SIFT's: unit norm with no component above 0.2).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import cv2
import numpy as np

from exemplar_tf.matching.ellipses import Ellipses, symmetric_sqrt

# OpenCV's SIFT: the 4 x 4 histogram grid spans 4 * 3 * (size / 2) = 6 * size pixels for a keypoint of `size`.
SIFT_GRID_WIDTH_PER_SIZE = 6.0
PIXELS_SIZE = 16  # the raw-pixel floor describes a 16 x 16 thumbnail of the patch
DEFAULT_CNN_NORMALISATION = "l2"  # chosen on the synthetic suite (benchmarks/match_cnn_normalisation.py, BUILD_NOTES.md)
DEFAULT_CNN_PATCH_CONTRAST = "standardise"


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


def rotations(angles: np.ndarray) -> np.ndarray:
    """angles [N] (radians) -> [N,2,2] R = [[cos, -sin], [sin, cos]]: turns +x towards +y (clockwise on screen)."""
    cos, sin = np.cos(angles), np.sin(angles)
    return np.stack([np.stack([cos, -sin], axis=-1), np.stack([sin, cos], axis=-1)], axis=-2)


def patch_affines(ellipses: Ellipses, patch_size: int, context: float, angles: np.ndarray | None = None
                  ) -> np.ndarray:
    """float64 [N,2,2] A with x = c + A (q - q0): the map from patch offsets to image offsets. angles [N]
    (radians, None = upright): the patch's +x axis points along direction angle of the upright patch."""
    affines = context * symmetric_sqrt(ellipses.shapes) / (patch_size / 2.0)
    return affines if angles is None else affines @ rotations(np.asarray(angles, np.float64))


def normalised_patches(image: np.ndarray, ellipses: Ellipses, patch_size: int, context: float = 3.0,
                       angles: np.ndarray | None = None) -> np.ndarray:
    """image uint8 [H,W,3], N ellipses, angles [N] or None (upright) -> uint8 [N,P,P,3], P = patch_size
    (borders replicated)."""
    affines = patch_affines(ellipses, patch_size, context, angles)
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


NORMALISATIONS = ("none", "l2", "l2_layer", "clip")
PATCH_CONTRASTS = ("none", "standardise")
PATCH_MEAN, PATCH_STD = 127.5, 48.0  # what `standardise_patch_contrast` brings every patch to


def standardise_patch_contrast(patches: np.ndarray, mean: float = PATCH_MEAN, std: float = PATCH_STD) -> np.ndarray:
    """uint8 [B,P,P,3] -> uint8: each patch shifted and scaled (over all its pixels and channels) to the given
    mean and standard deviation, then rounded and clipped to 0..255 (flat patches: std taken as 1). A CNN that
    subtracts a mean image inside is not made gain-invariant by normalising its output; this is done on its
    input, as learned patch descriptors do."""
    values = patches.astype(np.float32)
    centre = values.mean(axis=(1, 2, 3), keepdims=True)
    spread = np.maximum(values.std(axis=(1, 2, 3), keepdims=True), 1.0)
    return np.clip(np.round(mean + (values - centre) * (std / spread)), 0, 255).astype(np.uint8)

SIFT_CLIP = 0.2  # Lowe 2004: no component of the unit descriptor above 0.2, then renormalised


def _unit_rows(values: np.ndarray) -> np.ndarray:
    return values / np.maximum(np.linalg.norm(values, axis=-1, keepdims=True), 1e-12)


def clip_to_unit_rows(values: np.ndarray, clip: float) -> np.ndarray:
    """float [B,D] -> the unit rows closest in direction to `values` with no |component| above `clip`:
    sign(v) min(s |v|, clip), the scale s per row chosen so the norm is 1 (water-filling: the k largest
    components sit at the clip, the rest share 1 - k clip^2). Lowe's single clip-then-renormalise pass can leave
    components above the clip; this is its fixed point. All-zero rows stay zero; needs D clip^2 >= 1."""
    values = np.asarray(values, np.float64)
    dim = values.shape[1]
    if dim * clip**2 < 1.0:
        raise ValueError(f"clip {clip} cannot give unit norm in {dim} dimensions (needs D clip^2 >= 1)")
    magnitudes = -np.sort(-np.abs(values), axis=1)  # [B,D] descending
    tails = np.cumsum((magnitudes**2)[:, ::-1], axis=1)[:, ::-1]  # tails[:, k] = sum of squares from k on
    clipped = np.arange(dim)[None, :]  # k components at the clip
    with np.errstate(divide="ignore", invalid="ignore"):
        scales = np.sqrt(np.maximum(1.0 - clipped * clip**2, 0.0) / tails)
        valid = (tails > 0) & (magnitudes * scales <= clip * (1 + 1e-12))
    first_valid = np.argmax(valid, axis=1)
    scale = np.where(valid.any(axis=1), scales[np.arange(len(values)), first_valid], 0.0)
    return np.sign(values) * np.minimum(np.abs(values) * scale[:, None], clip)


def normalise_descriptors(values: np.ndarray, mode: str, *, blocks: Sequence[int] | None = None,
                          clip: float = SIFT_CLIP) -> np.ndarray:
    """values float [B,D] -> float32 [B,D].

    none: unchanged; l2: each row to unit norm; l2_layer: each consecutive block of `blocks` (sizes summing to
    D, one per layer) to unit norm, so every layer weighs the same; clip: SIFT's clip-and-renormalise, unit norm
    with no |component| above `clip` (`clip_to_unit_rows`). All-zero rows stay zero."""
    values = np.asarray(values, np.float32)
    if mode == "none":
        return values
    if mode == "l2":
        return _unit_rows(values)
    if mode == "clip":
        return clip_to_unit_rows(values, clip).astype(np.float32)
    if mode == "l2_layer":
        if blocks is None or sum(blocks) != values.shape[1]:
            raise ValueError(f"l2_layer needs layer blocks summing to the descriptor size {values.shape[1]}, "
                             f"got {blocks}")
        edges = np.cumsum([0, *blocks])
        return np.concatenate([_unit_rows(values[:, start:end]) for start, end in zip(edges[:-1], edges[1:])],
                              axis=1)
    raise ValueError(f"normalisation {mode!r} is not one of {NORMALISATIONS}")


def feature_layer_blocks(path: str) -> list[int]:
    """The sizes of the per-layer blocks of an export's `features` output (cells * C_l per layer) from its
    export_info.json (pooling "quadrants": 4 cells, "pyramid": 21)."""
    from exemplar_tf.evaluation.savedmodel import read_export_info

    info = read_export_info(path)
    if "feature_channels" not in info:
        raise ValueError(f"{path}: export_info.json has no feature_channels (export written before they were "
                         "recorded: re-export it with `python -m exemplar_tf.export`), so l2_layer cannot split "
                         "the features into layers")
    cells = {"quadrants": 4, "pyramid": 21}[info.get("pooling", "quadrants")]
    return [cells * channels for channels in info["feature_channels"]]


class SavedModelDescriptors:
    """Descriptor function from an export read by `evaluation.savedmodel` (images uint8 [B,H,W,3] -> its `output`
    float [B,D]: `features`, the pooled evaluation features, or `embedding`). TensorFlow is imported here, so
    SIFT-only runs never load it."""

    def __init__(self, path: str, *, output: str = "features", batch_size: int = 64, normalisation: str = "none",
                 patch_contrast: str = "none"):
        from exemplar_tf.evaluation.savedmodel import SavedModelFeatures

        if patch_contrast not in PATCH_CONTRASTS:
            raise ValueError(f"patch contrast {patch_contrast!r} is not one of {PATCH_CONTRASTS}")
        self.patch_contrast = patch_contrast
        if normalisation not in NORMALISATIONS:
            raise ValueError(f"normalisation {normalisation!r} is not one of {NORMALISATIONS}")
        if normalisation == "l2_layer" and output != "features":
            raise ValueError(f"l2_layer splits the `features` output into layers; {output!r} has no layers")
        self.normalisation = normalisation
        self._model = SavedModelFeatures(path, batch_size)
        self._blocks = feature_layer_blocks(path) if normalisation == "l2_layer" else None
        self.output = output
        self.batch_size = batch_size

    def raw(self, patches: np.ndarray) -> np.ndarray:
        """uint8 [B,P,P,3] -> float32 [B,D] the export's output as it is, `batch_size` patches per call."""
        batches = [self._model(patches[start:start + self.batch_size], self.output)
                   for start in range(0, len(patches), self.batch_size)]
        return np.concatenate(batches).astype(np.float32)

    def __call__(self, patches: np.ndarray) -> np.ndarray:
        """uint8 [B,P,P,3] -> float32 [B,D]: the patches' contrast standardised (patch_contrast "standardise"),
        `raw`, then `normalise_descriptors` with the chosen mode."""
        if self.patch_contrast == "standardise":
            patches = standardise_patch_contrast(patches)
        return normalise_descriptors(self.raw(patches), self.normalisation, blocks=self._blocks)


def standard_descriptors(*, savedmodel: str | None = None, cnn_patch_size: int = 113,
                         sift_patch_size: int = 157, cnn_output: str = "features",
                         cnn_normalisation: str = DEFAULT_CNN_NORMALISATION,
                         cnn_patch_contrast: str = DEFAULT_CNN_PATCH_CONTRAST) -> list[Descriptor]:
    """The benchmark's descriptors: cnn (the SavedModel's `cnn_output` on patches with `cnn_patch_contrast`,
    normalised by `cnn_normalisation`, when a path is given), sift, and pixels (raw pixels of the CNN-sized
    patch)."""
    described = [Descriptor("sift", sift_patch_size, sift_descriptors),
                 Descriptor("pixels", cnn_patch_size, pixel_descriptors)]
    if savedmodel:
        described.insert(0, Descriptor("cnn", cnn_patch_size, SavedModelDescriptors(
            savedmodel, output=cnn_output, normalisation=cnn_normalisation, patch_contrast=cnn_patch_contrast)))
    return described


def describe_regions(image: np.ndarray, ellipses: Ellipses, descriptors: list[Descriptor],
                     context: float, angles: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """{descriptor name: float32 [N,D]} for the regions of one image, their patches turned by angles [N] (None:
    upright); patches are cut once per patch size, so every descriptor sees the same rotated region. With no
    regions the arrays are [0,0]."""
    if len(ellipses) == 0:
        return {descriptor.name: np.zeros((0, 0), np.float32) for descriptor in descriptors}
    patches = {size: normalised_patches(image, ellipses, size, context, angles)
               for size in {descriptor.patch_size for descriptor in descriptors}}
    return {descriptor.name: descriptor.compute(patches[descriptor.patch_size]) for descriptor in descriptors}
