"""Ground truth of the benchmark's transformations: where points go, Jacobians, and what the warped image shows."""
import cv2
import numpy as np
import pytest

from exemplar_tf.matching import warps
from exemplar_tf.matching.ellipses import Ellipses, ellipses_from_regions, map_ellipses, pairwise_iou

SHAPE = (120, 160)  # H, W
CENTRE = np.array([(SHAPE[1] - 1) / 2, (SHAPE[0] - 1) / 2])


def build(family: str, strength: float, seed: int = 0):
    return warps.FAMILIES[family].build(strength, SHAPE, np.random.default_rng(seed))


def bright_centroid(image: np.ndarray) -> np.ndarray:
    weights = image.astype(np.float64)
    rows, columns = np.mgrid[0:image.shape[0], 0:image.shape[1]]
    return np.array([(weights * columns).sum(), (weights * rows).sum()]) / weights.sum()


def dot_image(point) -> np.ndarray:
    """A smooth bright dot (Gaussian, sigma 1.5 px) centred exactly at the sub-pixel point (x, y)."""
    rows, columns = np.mgrid[0:SHAPE[0], 0:SHAPE[1]]
    dot = np.exp(-((columns - point[0]) ** 2 + (rows - point[1]) ** 2) / (2 * 1.5**2))
    return np.round(255 * dot).astype(np.uint8)


def test_rotation_by_90_degrees_turns_x_into_y_about_the_centre():
    rotation = warps.rotation(90.0, SHAPE, None)
    mapped = rotation.map_points(np.array([CENTRE + [10, 0], CENTRE + [0, 10], CENTRE]))
    np.testing.assert_allclose(mapped, [CENTRE + [0, 10], CENTRE + [-10, 0], CENTRE], atol=1e-9)
    np.testing.assert_allclose(rotation.jacobians(np.zeros((1, 2)))[0], [[0, -1], [1, 0]], atol=1e-12)


def test_zoom_scales_distances_from_the_centre():
    mapped = warps.zoom(2.0, SHAPE, None).map_points(np.array([CENTRE + [10, -5]]))
    np.testing.assert_allclose(mapped, [CENTRE + [20, -10]], atol=1e-9)


def test_perspective_moves_every_corner_by_the_shift_in_both_coordinates():
    height, width = SHAPE
    corners = np.array([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], float)
    moved = build("perspective", 0.1).map_points(corners) - corners
    np.testing.assert_allclose(np.abs(moved), np.tile([0.1 * width, 0.1 * height], (4, 1)), atol=1e-3)
    assert not np.allclose(moved, moved[0])  # directions are random, not one translation


@pytest.mark.parametrize("family", ["rotation", "zoom", "perspective", "nonlinear"])
def test_a_dot_drawn_at_p_appears_at_the_mapped_point(family):
    transformation = build(family, warps.FAMILIES[family].strengths[-1])
    for point in ([61.3, 52.8], [90.0, 70.5]):
        warped = transformation.warp(dot_image(point))
        expected = transformation.map_points(np.array([point]))[0]
        np.testing.assert_allclose(bright_centroid(warped), expected, atol=0.15)


@pytest.mark.parametrize("family", ["rotation", "zoom", "perspective", "nonlinear"])
def test_jacobians_match_finite_differences(family, rng):
    transformation = build(family, warps.FAMILIES[family].strengths[-1])
    points = rng.uniform(0, 120, (6, 2))
    step = 1e-5
    columns = [(transformation.map_points(points + offset) - transformation.map_points(points - offset)) / (2 * step)
               for offset in (np.array([step, 0.0]), np.array([0.0, step]))]
    np.testing.assert_allclose(transformation.jacobians(points), np.stack(columns, axis=-1), atol=1e-6)


def test_nonlinear_field_is_invertible_and_bounded_at_every_default_strength():
    for strength in warps.FAMILIES["nonlinear"].strengths:
        for seed in range(5):
            field = build("nonlinear", strength, seed)
            assert field.lipschitz_bound() < 0.5
            points = np.random.default_rng(seed).uniform(0, 160, (50, 2))
            displacement = np.linalg.norm(field.map_points(points) - points, axis=1)
            assert displacement.max() <= strength * max(SHAPE) + 1e-9
            np.testing.assert_allclose(field.inverse_points(field.map_points(points)), points, atol=1e-5)
    with pytest.raises(ValueError, match="not invertible"):
        warps.SmoothWarp(np.array([[50.0, 0.0]]), np.array([[0.01, 0.0]]), np.zeros(1)).inverse_points(np.zeros((1, 2)))


@pytest.mark.parametrize("family", ["rotation", "perspective", "nonlinear"])
def test_an_ellipse_mapped_by_the_local_jacobian_matches_the_warped_region(family):
    """The benchmark's ground truth: the drawn region's ellipse after warping ~ the ellipse mapped through
    (T(c), J S J^T)."""
    transformation = build(family, warps.FAMILIES[family].strengths[-1], seed=3)
    canvas = np.zeros(SHAPE, np.uint8)
    cv2.ellipse(canvas, (80, 60), (14, 7), 25, 0, 360, 255, -1)

    def region_ellipse(image):
        rows, columns = np.nonzero(image > 127)
        return ellipses_from_regions([np.stack([columns, rows], axis=-1)])

    before = region_ellipse(canvas)
    predicted = map_ellipses(before, transformation.map_points(before.centres), transformation.jacobians(before.centres))
    assert pairwise_iou(predicted, region_ellipse(transformation.warp(canvas)))[0, 0] > 0.95


def test_photometric_changes_leave_points_and_the_visible_area_alone(rng):
    image = rng.integers(0, 256, (*SHAPE, 3), dtype=np.uint8)
    points = rng.uniform(0, 100, (5, 2))
    for family in ("lighting", "blur"):
        transformation = build(family, warps.FAMILIES[family].strengths[1])
        np.testing.assert_array_equal(transformation.map_points(points), points)
        np.testing.assert_array_equal(transformation.jacobians(points), np.broadcast_to(np.eye(2), (5, 2, 2)))
        assert transformation.valid_mask(SHAPE, SHAPE).all()
        assert transformation.warp(image).shape == image.shape
    darker = build("lighting", 2.0).warp(image)
    assert np.all(darker <= image) and darker.mean() < 0.8 * image.mean()
    blurred = build("blur", 2.0).warp(image)
    assert blurred.std() < 0.5 * image.std() and abs(blurred.mean() - image.mean()) < 2


def test_valid_mask_marks_the_pixels_that_show_image_one():
    mask = warps.rotation(45.0, SHAPE, None).valid_mask(SHAPE, SHAPE)
    assert mask[60, 80] and not mask[0, 0] and not mask[SHAPE[0] - 1, SHAPE[1] - 1]
    assert warps.zoom(1.5, SHAPE, None).valid_mask(SHAPE, SHAPE).all()
    field_mask = build("nonlinear", 0.05).valid_mask(SHAPE, SHAPE)
    assert field_mask[30:90, 40:120].all() and 0.8 < field_mask.mean() < 1.0
