"""Dominant gradient orientation of regions: known rotations are recovered, the oriented patch puts the
direction on +x, and a strongly rotated pair matches only with oriented patches."""
import numpy as np
import pytest

from exemplar_tf.matching import benchmark, images, warps
from exemplar_tf.matching.descriptors import normalised_patches, standard_descriptors
from exemplar_tf.matching.ellipses import Ellipses, map_ellipses
from exemplar_tf.matching.orientation import (ORIENTATION_BINS, dominant_orientations, histogram_peaks,
                                              orientation_histograms)

BIN = 2 * np.pi / ORIENTATION_BINS


def angle_error(measured, expected) -> np.ndarray:
    """|measured - expected| wrapped to [0, pi]."""
    return np.abs(np.angle(np.exp(1j * (np.asarray(measured) - np.asarray(expected)))))


def ramp_image(degrees: float, size: int = 201) -> np.ndarray:
    """A smooth step (tanh, 8 px wide) rising along the direction `degrees` (x right, y down), uint8 RGB, with
    a small blob off its axis so the patch is not symmetric."""
    rows, columns = np.mgrid[0:size, 0:size] - (size - 1) / 2.0
    direction = np.deg2rad(degrees)
    along = columns * np.cos(direction) + rows * np.sin(direction)
    gray = 128 + 90 * np.tanh(along / 8.0)
    gray -= 30 * np.exp(-((columns + 12) ** 2 + (rows - 10) ** 2) / 20.0)
    return np.repeat(np.round(gray).astype(np.uint8)[..., None], 3, axis=2)


def test_parabolic_peak_of_a_histogram_is_exact_for_a_parabola():
    centre = 7.3  # in bins: the peak sits 0.3 bins right of bin 7's centre (bin centres are k + 0.5)
    bins = np.arange(ORIENTATION_BINS) + 0.5
    # a periodic bump broad enough that the [1,4,6,4,1] smoothing leaves its peak where it is
    histogram = np.exp(np.cos((bins - (centre + 0.5)) * BIN) * 8.0)
    assert histogram_peaks(histogram[None])[0] == pytest.approx((centre + 0.5) * BIN, abs=0.05 * BIN)


@pytest.mark.parametrize("turn", [0.0, 35.0, 90.0, 160.0, -120.0])
def test_dominant_orientation_recovers_a_known_rotation_within_a_bin(turn):
    image = ramp_image(20.0)
    circle = Ellipses(np.array([[100.0, 100.0]]), np.array([np.eye(2) * 20.0**2]))
    (upright,) = dominant_orientations(image, circle)
    assert angle_error(upright, np.deg2rad(20.0)) < BIN / 2
    rotation = warps.rotation(turn, image.shape[:2], None)
    turned = map_ellipses(circle, rotation.map_points(circle.centres), rotation.jacobians(circle.centres))
    (measured,) = dominant_orientations(rotation.warp(image), turned)
    assert angle_error(measured, np.deg2rad(20.0 + turn)) < BIN


def test_the_oriented_patch_puts_the_dominant_direction_on_the_x_axis():
    image = ramp_image(-65.0)
    ellipse = Ellipses(np.array([[100.0, 100.0]]), np.array([[[400.0, 120.0], [120.0, 200.0]]]))
    angles = dominant_orientations(image, ellipse)
    oriented = normalised_patches(image, ellipse, 41, context=3.0, angles=angles)[..., 0]
    assert angle_error(histogram_peaks(orientation_histograms(oriented))[0], 0.0) < BIN / 2
    upright = normalised_patches(image, ellipse, 41, context=3.0)[..., 0]
    assert angle_error(histogram_peaks(orientation_histograms(upright))[0], 0.0) > 4 * BIN


def test_a_pair_rotated_by_60_degrees_matches_with_dominant_orientation_and_not_upright():
    image, _ = images.shrink(images.demo_images(1)[0], 320)
    settings = benchmark.Settings(max_regions=150, max_side=320, orientations=("upright", "dominant"))
    descriptors = standard_descriptors()
    rotation = warps.rotation(60.0, image.shape[:2], None)
    first = benchmark.make_view(image, descriptors, settings)
    scores = benchmark.evaluate_pair(first, rotation.warp(image), rotation, descriptors, settings)
    assert scores["dominant", "sift"]["correspondences"] > 50
    assert scores["dominant", "sift"]["average_precision"] > 0.5
    assert scores["upright", "sift"]["average_precision"] < 0.1
    assert scores["dominant", "pixels"]["average_precision"] > 0.5  # the same turned patch feeds every descriptor
