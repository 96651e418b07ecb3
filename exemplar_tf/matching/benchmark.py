"""The descriptor-matching benchmark of Exemplar-CNN (Fischer, Dosovitskiy & Brox 2014): MSER ellipses in two
images related by a known transformation, nearest-neighbour matching, area under the precision-recall curve.

For one pair (image 1, image 2 = T(image 1) or a real pair with a known homography):
  1. MSER ellipses in both images (the most stable: at most `max_regions` each, or exactly that many with
     region_mode "fixed"; image 2's among those in its common part with image 1).
  2. Only the common part counts: image-2 ellipses must lie on pixels of image 2 that show image 1, and
     image-1 ellipses, mapped by T, must land there too (T's local affine map at the centre: c -> T(c),
     S -> J S J^T with J = dT/dx(c)).
  3. IoU of every mapped image-1 ellipse with every image-2 ellipse; region i of image 1 has a ground-truth
     correspondence when some IoU > iou_threshold (0.5).
  4. Per orientation (upright patches, or turned to each region's dominant gradient orientation) and
     descriptor: each image-1 region's nearest image-2 region by Euclidean distance; the match is correct
     when their IoU > iou_threshold. Matches ranked by distance give the precision-recall curve (recall =
     correct matches / regions with a correspondence); its area is the pair's average precision (AP).
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import numpy as np
from tqdm import tqdm

from exemplar_tf.matching import images as image_sources
from exemplar_tf.matching.descriptors import Descriptor, describe_regions
from exemplar_tf.matching.ellipses import (Ellipses, MserParameters, detect_mser_ellipses, inside_mask, map_ellipses,
                                           pairwise_iou)
from exemplar_tf.matching.orientation import ORIENTATIONS, dominant_orientations
from exemplar_tf.matching.warps import FAMILIES, Homography, Transformation


@dataclasses.dataclass(frozen=True)
class Settings:
    """max_regions per image (region_mode "cap": at most, "fixed": exactly, see `detect_mser_regions`); mser:
    the detector's parameters; context: patch = ellipse enlarged this many times; iou_threshold for a
    correspondence; max_side: base images are shrunk to this longer side (None keeps them); orientations:
    which patch orientations are scored ("upright", "dominant"; each pair is scored once per entry)."""

    max_regions: int = 300
    context: float = 3.0
    iou_threshold: float = 0.5
    max_side: int | None = 480
    region_mode: str = "cap"
    mser: MserParameters = MserParameters()
    orientations: tuple[str, ...] = ("upright",)

    def __post_init__(self):
        unknown = set(self.orientations) - set(ORIENTATIONS)
        if unknown or not self.orientations:
            raise ValueError(f"orientations {list(self.orientations)}: each must be one of {ORIENTATIONS}")


@dataclasses.dataclass(frozen=True)
class PairResult:
    """One descriptor on one image pair. benchmark: "synthetic" or "oxford"; image: base-image index or
    sequence name; family: transformation family (oxford: "oxford:<sequence>"); level: 1-based strength
    index (oxford: the K of img1 -> imgK); strength: the family's parameter (oxford: K)."""

    benchmark: str
    image: str
    family: str
    level: int
    strength: float
    descriptor: str
    orientation: str  # "upright" or "dominant"
    average_precision: float  # nan when no region has a correspondence
    regions1: int  # image-1 regions in the common part
    regions2: int
    correspondences: int  # image-1 regions with a ground-truth correspondence (the recall denominator)
    correct: int  # nearest-neighbour matches that are correct


def nearest_neighbours(queries: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """queries [N,D], candidates [M,D] (M >= 1) -> (indices int [N], Euclidean distances float [N])."""
    queries, candidates = np.asarray(queries, np.float64), np.asarray(candidates, np.float64)
    squared = (np.sum(queries**2, axis=1)[:, None] - 2 * queries @ candidates.T
               + np.sum(candidates**2, axis=1)[None, :])
    indices = np.argmin(squared, axis=1)
    return indices, np.sqrt(np.maximum(squared[np.arange(len(queries)), indices], 0.0))


def precision_recall(distances: np.ndarray, correct: np.ndarray, num_positives: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Matches ranked by increasing distance -> (precision [N], recall [N]) after each of the first 1..N
    matches. distances float [N], correct bool [N], num_positives >= 1 (the recall denominator)."""
    order = np.argsort(distances, kind="stable")
    hits = np.cumsum(np.asarray(correct, bool)[order])
    return hits / np.arange(1, len(order) + 1), hits / num_positives


def average_precision(distances: np.ndarray, correct: np.ndarray, num_positives: int) -> float:
    """Area under the precision-recall curve, sum_k (recall_k - recall_k-1) * precision_k (precision taken at
    each correct match; recall short of 1 contributes nothing). nan when num_positives is 0."""
    if num_positives == 0:
        return float("nan")
    if len(distances) == 0:
        return 0.0
    precision, recall = precision_recall(distances, correct, num_positives)
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


@dataclasses.dataclass(frozen=True)
class View:
    """An image with its MSER ellipses and their descriptors {orientation: {name: [N,D]}}."""

    image: np.ndarray
    ellipses: Ellipses
    described: dict[str, dict[str, np.ndarray]]


def region_angles(image: np.ndarray, ellipses: Ellipses, orientation: str, context: float) -> np.ndarray | None:
    """None for upright patches, else [N] radians: each region's dominant gradient orientation."""
    return None if orientation == "upright" else dominant_orientations(image, ellipses, context)


def make_view(image: np.ndarray, descriptors: Sequence[Descriptor], settings: Settings,
              keep_mask: np.ndarray | None = None) -> View:
    """Detects the most stable ellipses lying inside keep_mask (bool [H,W]; None: anywhere) and describes them
    in every orientation of settings.orientations."""
    ellipses = detect_mser_ellipses(image, max_regions=settings.max_regions, parameters=settings.mser,
                                    mode=settings.region_mode, keep_mask=keep_mask)
    described = {orientation: describe_regions(image, ellipses, descriptors, settings.context,
                                                region_angles(image, ellipses, orientation, settings.context))
                 for orientation in settings.orientations}
    return View(image, ellipses, described)


def score_pair(first: View, second: View, transformation: Transformation, common: np.ndarray,
               descriptors: Sequence[Descriptor], settings: Settings) -> dict[tuple[str, str], dict]:
    """{(orientation, descriptor name): {average_precision, regions1, regions2, correspondences, correct}} for
    one pair.

    first: image 1's view (all its regions); second: image 2's view, already restricted to the common part;
    transformation: image 1 -> image 2; common: bool [H2,W2], the pixels of image 2 that show image 1.
    """
    centres = first.ellipses.centres
    mapped = map_ellipses(first.ellipses, transformation.map_points(centres), transformation.jacobians(centres))
    keep = inside_mask(mapped, common)
    iou = pairwise_iou(mapped.select(keep), second.ellipses, min_iou=settings.iou_threshold)
    matched = iou > settings.iou_threshold
    positives = int(np.count_nonzero(matched.any(axis=1))) if matched.size else 0
    scores = {}
    for orientation in settings.orientations:
        for descriptor in descriptors:
            scores[orientation, descriptor.name] = _descriptor_score(
                first.described[orientation][descriptor.name][keep], second.described[orientation][descriptor.name],
                matched, positives)
    return scores


def _descriptor_score(queries: np.ndarray, candidates: np.ndarray, matched: np.ndarray, positives: int) -> dict:
    """One descriptor's nearest-neighbour matches scored against the correspondences matched bool [N,M]."""
    if len(queries) and len(candidates):
        nearest, distances = nearest_neighbours(queries, candidates)
        correct = matched[np.arange(len(queries)), nearest]
    else:
        distances, correct = np.zeros(0), np.zeros(0, bool)
    return {
        "average_precision": average_precision(distances, correct, positives),
        "regions1": len(queries),
        "regions2": len(candidates),
        "correspondences": positives,
        "correct": int(np.count_nonzero(correct)),
    }


def evaluate_pair(first: View, image2: np.ndarray, transformation: Transformation,
                  descriptors: Sequence[Descriptor], settings: Settings) -> dict[tuple[str, str], dict]:
    """score_pair after detecting and describing image 2's regions in its common part with image 1."""
    common = transformation.valid_mask(first.image.shape, image2.shape)
    second = make_view(image2, descriptors, settings, keep_mask=common)
    return score_pair(first, second, transformation, common, descriptors, settings)


def family_levels(families: Iterable[str], levels: Iterable[int]) -> list[tuple[str, int, float]]:
    """[(family, level, strength)] for the chosen families and 1-based levels of their default strengths."""
    chosen = []
    for family in families:
        strengths = FAMILIES[family].strengths
        for level in levels:
            if not 1 <= level <= len(strengths):
                raise ValueError(f"{family}: level {level} is not in 1..{len(strengths)}")
            chosen.append((family, level, strengths[level - 1]))
    return chosen


def run_synthetic(base_images: Sequence[np.ndarray], descriptors: Sequence[Descriptor], *,
                  families: Sequence[str] = tuple(FAMILIES), levels: Sequence[int] = (1, 2, 3, 4),
                  settings: Settings = Settings(), seed: int = 0, progress: bool = True) -> list[PairResult]:
    """Every base image under every (family, level): len(images) * len(families) * len(levels) pairs.

    Image 1 is the base image shrunk to settings.max_side; image 2 its transformation. Random parameters
    (perspective directions, warp fields) come from a generator seeded by (seed, image, family, level).
    """
    chosen = family_levels(families, levels)
    results = []
    with tqdm(total=len(base_images) * len(chosen), desc="synthetic pairs", disable=not progress) as bar:
        for image_index, base in enumerate(base_images):
            image1, _ = image_sources.shrink(np.asarray(base), settings.max_side)
            first = make_view(image1, descriptors, settings)
            for family, level, strength in chosen:
                rng = np.random.default_rng([seed, image_index, list(FAMILIES).index(family), level])
                transformation = FAMILIES[family].build(strength, image1.shape[:2], rng)
                scores = evaluate_pair(first, transformation.warp(image1), transformation, descriptors, settings)
                results += [PairResult("synthetic", str(image_index), family, level, strength, name, orientation,
                                       **score) for (orientation, name), score in scores.items()]
                bar.update()
    return results


def run_oxford(sequences: Sequence[image_sources.Sequence], descriptors: Sequence[Descriptor], *,
               settings: Settings = Settings(), progress: bool = True) -> list[PairResult]:
    """img1 against each imgK of every sequence, with the given homographies (images shrunk to max_side)."""
    shrunk = [image_sources.shrink_sequence(sequence, settings.max_side) for sequence in sequences]
    results = []
    with tqdm(total=sum(len(s.homographies) for s in shrunk), desc="oxford pairs", disable=not progress) as bar:
        for sequence in shrunk:
            first = make_view(sequence.images[0], descriptors, settings)
            for k, (image2, matrix) in enumerate(zip(sequence.images[1:], sequence.homographies), start=2):
                scores = evaluate_pair(first, image2, Homography(matrix), descriptors, settings)
                results += [PairResult("oxford", sequence.name, f"oxford:{sequence.name}", k, float(k), name,
                                       orientation, **score) for (orientation, name), score in scores.items()]
                bar.update()
    return results
