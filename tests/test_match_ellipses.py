"""Ellipses of the matching benchmark: IoU against closed forms, fitting, mapping, MSER detection."""
import cv2
import numpy as np
import pytest

from exemplar_tf.matching.ellipses import (Ellipses, boundary_contrast, detect_mser_ellipses, ellipses_from_regions,
                                           inside_mask, map_ellipses, pairwise_iou)


def one(centre, shape) -> Ellipses:
    return Ellipses(np.array([centre], float), np.array([shape], float))


def iou(first: Ellipses, second: Ellipses) -> float:
    return float(pairwise_iou(first, second)[0, 0])


def rotation(degrees: float) -> np.ndarray:
    angle = np.deg2rad(degrees)
    return np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])


def test_identical_ellipses_have_iou_one_and_disjoint_ones_zero():
    tilted = rotation(30) @ np.diag([400.0, 25.0]) @ rotation(30).T
    assert iou(one([50, 60], tilted), one([50, 60], tilted)) == pytest.approx(1.0, abs=1e-12)
    assert iou(one([0, 0], np.eye(2) * 100), one([25, 0], np.eye(2) * 100)) == 0.0  # radii 10, 25 apart
    # bounding boxes overlap but the thin ellipses do not (parallel, 4 apart, semi-minor axis 1)
    assert iou(one([0, 0], np.diag([400.0, 1.0])), one([3, 4], np.diag([400.0, 1.0]))) == 0.0


def test_concentric_circles_give_the_area_ratio():
    for small, large in [(10.0, 20.0), (7.0, 8.0), (3.0, 30.0)]:
        expected = small**2 / large**2
        assert iou(one([5, 5], np.eye(2) * small**2), one([5, 5], np.eye(2) * large**2)) == pytest.approx(expected,
                                                                                                          rel=1e-9)


def circle_ellipse_intersection(r: float, a: float, b: float) -> float:
    """Closed form: area of the circle of radius r ∩ the axis-aligned ellipse with semi-axes a > r > b, same
    centre. In each quadrant the ellipse bounds the region up to the crossing x*, the circle after it."""
    crossing = a * np.sqrt((r**2 - b**2) / (a**2 - b**2))

    def under_circle(x):  # ∫ sqrt(r² - x²) dx
        return 0.5 * (x * np.sqrt(r**2 - x**2) + r**2 * np.arcsin(x / r))

    def under_ellipse(x):  # ∫ b sqrt(1 - x²/a²) dx
        return 0.5 * b / a * (x * np.sqrt(a**2 - x**2) + a**2 * np.arcsin(x / a))

    return 4 * (under_ellipse(crossing) + under_circle(r) - under_circle(crossing))


@pytest.mark.parametrize("r,a,b", [(10.0, 20.0, 5.0), (6.0, 7.0, 5.5), (12.0, 40.0, 2.0)])
def test_circle_against_axis_aligned_ellipse_matches_the_closed_form(r, a, b):
    intersection = circle_ellipse_intersection(r, a, b)
    expected = intersection / (np.pi * r**2 + np.pi * a * b - intersection)
    assert iou(one([0, 0], np.eye(2) * r**2), one([0, 0], np.diag([a**2, b**2]))) == pytest.approx(expected, rel=5e-3)


def test_two_shifted_circles_match_the_lens_area_and_iou_is_rotation_invariant():
    r, d = 10.0, 5.0
    lens = 2 * r**2 * np.arccos(d / (2 * r)) - d / 2 * np.sqrt(4 * r**2 - d**2)
    expected = lens / (2 * np.pi * r**2 - lens)
    assert iou(one([0, 0], np.eye(2) * r**2), one([d, 0], np.eye(2) * r**2)) == pytest.approx(expected, rel=5e-3)

    first, second = np.diag([100.0, 16.0]), np.diag([64.0, 36.0])
    offset = np.array([4.0, 1.0])
    turned = rotation(37)
    straight = iou(one([0, 0], first), one(offset, second))
    rotated = iou(one([0, 0], turned @ first @ turned.T), one(turned @ offset, turned @ second @ turned.T))
    assert rotated == pytest.approx(straight, abs=0.005)


def test_pairwise_iou_is_symmetric_and_pruning_keeps_every_value_above_the_threshold(rng):
    centres = rng.uniform(0, 60, (40, 2))
    factors = rng.normal(size=(40, 2, 2)) * 3
    shapes = factors @ np.swapaxes(factors, 1, 2) + 4 * np.eye(2)
    ellipses = Ellipses(centres, shapes)
    full = pairwise_iou(ellipses, ellipses)
    np.testing.assert_allclose(full, full.T, atol=1e-12)
    np.testing.assert_allclose(np.diag(full), 1.0)
    assert ((full > 0.05) & (full < 0.95)).sum() > 10  # the test exercises partial overlaps
    pruned = pairwise_iou(ellipses, ellipses, min_iou=0.5)
    np.testing.assert_array_equal(pruned[full > 0.5], full[full > 0.5])
    assert np.all(pruned[full <= 0.5] <= 0.5)


def test_ellipse_from_the_pixels_of_a_rasterised_ellipse_recovers_it():
    truth = one([100, 90], rotation(30) @ np.diag([40.0**2, 15.0**2]) @ rotation(30).T)
    rows, columns = np.mgrid[0:200, 0:200]
    offsets = np.stack([columns - 100.0, rows - 90.0], axis=-1)
    inside = np.einsum("hwi,ij,hwj->hw", offsets, np.linalg.inv(truth.shapes[0]), offsets) <= 1.0
    rows, columns = np.nonzero(inside)
    fitted = ellipses_from_regions([np.stack([columns, rows], axis=-1)])
    np.testing.assert_allclose(fitted.centres[0], [100, 90], atol=0.05)
    assert iou(fitted, truth) > 0.99


def test_mapped_ellipse_is_the_image_of_the_original_under_the_affine_map():
    original = one([10, 20], np.array([[50.0, 10.0], [10.0, 20.0]]))
    linear, moved_centre = np.array([[1.5, 0.4], [-0.3, 0.8]]), np.array([[100.0, -5.0]])
    mapped = map_ellipses(original, moved_centre, linear[None])
    boundary = original.boundary_points(16)[0]  # [16,2]
    images = moved_centre[0] + (boundary - original.centres[0]) @ linear.T
    offsets = images - mapped.centres[0]
    quadratic = np.einsum("ki,ij,kj->k", offsets, np.linalg.inv(mapped.shapes[0]), offsets)
    np.testing.assert_allclose(quadratic, 1.0, rtol=1e-9)


def test_inside_mask_needs_the_centre_and_the_boundary_on_true_pixels():
    mask = np.zeros((50, 50), bool)
    mask[10:40, 10:40] = True
    ellipses = Ellipses(np.array([[25.0, 25.0], [12.0, 25.0], [25.0, 25.0]]),
                        np.array([np.eye(2) * 25, np.eye(2) * 25, np.eye(2) * 400]))
    np.testing.assert_array_equal(inside_mask(ellipses, mask), [True, False, False])


def test_boundary_contrast_is_the_step_between_a_region_and_its_ring():
    gray = np.full((40, 40), 255, np.uint8)
    gray[10:20, 10:20] = 0
    gray[25:35, 25:35] = 200
    square = lambda start: np.stack(np.meshgrid(np.arange(start, start + 10), np.arange(start, start + 10)),
                                    axis=-1).reshape(-1, 2)
    np.testing.assert_allclose(boundary_contrast(gray, [square(10), square(25)]), [255.0, 55.0])


def test_mser_finds_blurred_discs_and_caps_the_count():
    image = np.full((160, 240, 3), 255, np.uint8)
    discs = [((50, 50), 12, 0), ((130, 60), 18, 120), ((190, 110), 9, 200)]  # centre, radius, gray level
    for centre, radius, level in discs:
        cv2.circle(image, centre, radius, (level, level, level), -1)
    image = cv2.GaussianBlur(image, (0, 0), 2.0)  # MSER needs graded edges: a flat step has no extremum
    found = detect_mser_ellipses(image, max_regions=20)
    for centre, radius, _ in discs:
        distances = np.linalg.norm(found.centres - np.array(centre), axis=1)
        assert distances.min() < 0.5
        radii = np.sqrt(found.areas()[distances < 0.5] / np.pi)
        assert np.all((radii > 0.4 * radius) & (radii < 1.3 * radius))
    assert len(detect_mser_ellipses(image, max_regions=2)) == 2


def test_the_fixed_count_mode_returns_exactly_k_regions_sorted_by_stability():
    from exemplar_tf.matching import images
    from exemplar_tf.matching.ellipses import MserParameters, detect_mser_regions

    image, _ = images.shrink(images.demo_images(1)[0], 240)
    faint = np.round(120 + (image.astype(float) - 120) * 0.12).astype(np.uint8)  # low contrast: few MSERs
    k = 80  # the faint image has 5 MSERs at the default parameters and 100 at the last rung of the ladder
    capped, _ = detect_mser_regions(faint, max_regions=k, mode="cap")
    assert len(capped) < k  # the case the mode exists for
    fixed, stability = detect_mser_regions(faint, max_regions=k, mode="fixed")
    assert len(fixed) == k and len(stability) == k
    assert np.all(np.diff(stability) <= 0) and stability[-1] > 0
    # where the detector already finds k, both modes keep the same k most stable regions
    rich_cap, rich_stability = detect_mser_regions(image, max_regions=40, mode="cap")
    rich_fixed, _ = detect_mser_regions(image, max_regions=40, mode="fixed")
    np.testing.assert_array_equal(rich_cap.centres, rich_fixed.centres)
    assert np.all(np.diff(rich_stability) <= 0)
    # regions are counted inside the mask only
    mask = np.zeros(image.shape[:2], bool)
    mask[:, :120] = True
    inside, _ = detect_mser_regions(faint, max_regions=40, mode="fixed", keep_mask=mask)  # 55 there at most
    assert len(inside) == 40 and np.all(inside.centres[:, 0] < 120)
    assert MserParameters().relaxed(9).delta == 1
