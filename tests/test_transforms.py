"""Batched transformations: neutral parameters are the identity; known moves land where expected."""
import math

import numpy as np
import pytest
import tensorflow as tf

from exemplar_tf.augment import transforms as ops

import colour_reference  # the two colour steps as RGB -> RGB functions (tests/colour_reference.py)

P, S = 32, 64
PATCH_CENTRE, WINDOW_CENTRE = (P - 1) / 2, (S - 1) / 2


def one_bright_pixel(y, x):
    window = np.zeros((1, S, S, 3), np.float32)
    window[0, y, x] = 1.0
    return window


def brightness_centroid(image):
    """(y, x) centroid of the first channel of image [H,W,3]."""
    weight = np.asarray(image)[..., 0]
    ys, xs = np.mgrid[: weight.shape[0], : weight.shape[1]]
    return np.array([(weight * ys).sum(), (weight * xs).sum()]) / weight.sum()


def moved(dx=0.0, dy=0.0, scale=1.0, degrees=0.0, window=None):
    return ops.geometric(window, tf.constant([dx]), tf.constant([dy]), tf.constant([scale]),
                         tf.constant([math.radians(degrees)]), patch_size=P)[0].numpy()


def test_neutral_geometry_is_the_central_patch(rng):
    windows = rng.random((3, S, S, 3)).astype(np.float32)
    out = ops.geometric(windows, tf.zeros([3]), tf.zeros([3]), tf.ones([3]), tf.zeros([3]), patch_size=P)
    np.testing.assert_allclose(out, windows[:, 16:48, 16:48], atol=1e-6)
    np.testing.assert_array_equal(ops.central_crop(windows, P), windows[:, 16:48, 16:48])


def test_translation_moves_the_content_the_other_way():
    out = moved(dx=5.0, dy=-3.0, window=one_bright_pixel(30, 40))
    assert out.shape == (P, P, 3)
    assert np.unravel_index(out[..., 0].argmax(), (P, P)) == (30 - 16 + 3, 40 - 16 - 5)
    assert out.max() == pytest.approx(1.0, abs=1e-6)


def test_rotation_by_90_degrees_turns_right_into_up():
    # A pixel 8.5 right of and 11.5 above the window centre ends 8.5 above and 11.5 left of the patch centre.
    out = moved(degrees=90.0, window=one_bright_pixel(20, 40))
    assert np.unravel_index(out[..., 0].argmax(), (P, P)) == (7, 4)
    assert out.max() == pytest.approx(1.0, abs=1e-5)


def test_rotation_by_20_degrees_moves_the_centroid_on_the_circle():
    offset_y, offset_x = 31 - WINDOW_CENTRE, 41 - WINDOW_CENTRE  # (-0.5, 9.5)
    angle = math.radians(20.0)
    # Counter-clockwise on screen (y down): (x, y) -> (x cos + y sin, -x sin + y cos).
    expected_x = offset_x * math.cos(angle) + offset_y * math.sin(angle)
    expected_y = -offset_x * math.sin(angle) + offset_y * math.cos(angle)
    centroid = brightness_centroid(moved(degrees=20.0, window=one_bright_pixel(31, 41)))
    np.testing.assert_allclose(centroid, [PATCH_CENTRE + expected_y, PATCH_CENTRE + expected_x], atol=0.05)


def test_scale_two_doubles_distances_from_the_centre():
    window = one_bright_pixel(36, 26)  # offset (4.5, -5.5) from the window centre
    centroid = brightness_centroid(moved(scale=2.0, window=window))
    np.testing.assert_allclose(centroid, [PATCH_CENTRE + 9.0, PATCH_CENTRE - 11.0], atol=0.05)


def test_sampling_beyond_the_window_reflects_instead_of_padding():
    far = moved(dx=-25.0, dy=20.0, scale=0.7, degrees=20.0, window=np.ones((1, S, S, 3), np.float32))
    np.testing.assert_allclose(far, 1.0, atol=1e-6)


def fitted_pca(rng):
    pixels = rng.random((5000, 3)) @ np.array([[0.5, 0.3, 0.1], [0.1, 0.3, 0.1], [0.0, 0.1, 0.2]]) + 0.2
    return ops.ColorPCA.fit(pixels)


def test_color_pca_fit_is_orthonormal_and_sorted(rng):
    pca = fitted_pca(rng)
    np.testing.assert_allclose(pca.eigvecs.T @ pca.eigvecs, np.eye(3), atol=1e-5)
    assert pca.eigvals[0] >= pca.eigvals[1] >= pca.eigvals[2] > 0


def test_pca_color_unit_factors_are_identity_and_factors_scale_projections(rng):
    pca = fitted_pca(rng)
    images = (pca.mean + 0.05 * (rng.random((2, 8, 8, 3)) - 0.5)).astype(np.float32)  # near the mean: no clipping
    np.testing.assert_allclose(ops.pca_color(images, tf.ones([2, 3]), pca), images, atol=1e-5)
    factors = np.array([[2.0, 1.0, 0.5], [0.5, 1.5, 1.0]], np.float32)
    out = ops.pca_color(images, factors, pca).numpy()
    before = (images - pca.mean) @ pca.eigvecs
    after = (out - pca.mean) @ pca.eigvecs
    np.testing.assert_allclose(after, before * factors[:, None, None, :], atol=1e-5)


def test_saturation_value_neutral_is_identity_and_power_acts_on_value(rng):
    images = rng.random((2, 6, 6, 3)).astype(np.float32)
    neutral = colour_reference.saturation_value(images, tf.ones([2, 2]), tf.ones([2, 2]), tf.zeros([2, 2]))
    np.testing.assert_allclose(neutral, images, atol=1e-5)
    pixel = np.array([[[[0.5, 0.25, 0.25]]]], np.float32)  # H 0, S 0.5, V 0.5
    squared_value = colour_reference.saturation_value(pixel, tf.constant([[1.0, 2.0]]), tf.ones([1, 2]), tf.zeros([1, 2]))
    np.testing.assert_allclose(squared_value[0, 0, 0], [0.25, 0.125, 0.125], atol=1e-6)
    shifted = colour_reference.saturation_value(pixel, tf.ones([1, 2]), tf.constant([[1.0, 1.4]]), tf.constant([[-0.1, 0.1]]))
    np.testing.assert_allclose(shifted[0, 0, 0], [0.8, 0.48, 0.48], atol=1e-6)  # S 0.4, V 0.8


def test_saturation_value_clips_and_minmax_normalises(rng):
    images = (0.3 + 0.2 * rng.random((2, 6, 6, 3))).astype(np.float32)
    out = colour_reference.saturation_value(images, tf.ones([2, 2]), tf.fill([2, 2], 1.4), tf.fill([2, 2], 0.1)).numpy()
    assert out.min() >= 0 and out.max() <= 1
    stretched = colour_reference.saturation_value(images, tf.ones([2, 2]), tf.ones([2, 2]), tf.zeros([2, 2]),
                                     minmax_normalise_first=True).numpy()
    np.testing.assert_allclose(stretched.min(axis=(1, 2, 3)), 0, atol=1e-6)
    np.testing.assert_allclose(stretched.max(axis=(1, 2, 3)), 1, atol=1e-6)


def test_hue_shift_of_zero_or_a_full_turn_is_identity_and_wraps(rng):
    images = rng.random((2, 6, 6, 3)).astype(np.float32)
    np.testing.assert_allclose(colour_reference.hue_shift(images, tf.zeros([2])), images, atol=1e-5)
    np.testing.assert_allclose(colour_reference.hue_shift(images, tf.ones([2])), images, atol=1e-5)
    np.testing.assert_allclose(colour_reference.hue_shift(images, tf.fill([2], 0.9)), colour_reference.hue_shift(images, tf.fill([2], -0.1)),
                               atol=1e-5)
    red = np.array([[[[1.0, 0.0, 0.0]]]], np.float32)
    np.testing.assert_allclose(colour_reference.hue_shift(red, tf.constant([1 / 3]))[0, 0, 0], [0, 1, 0], atol=1e-5)
    np.testing.assert_allclose(colour_reference.hue_shift(red, tf.constant([-1 / 3]))[0, 0, 0], [0, 0, 1], atol=1e-5)


def test_mirror_reverses_the_columns_of_the_flagged_images_only(rng):
    images = rng.random((3, 4, 5, 3)).astype(np.float32)
    flip = tf.constant([True, False, True])
    expected = np.stack([images[0, :, ::-1], images[1], images[2, :, ::-1]])
    np.testing.assert_array_equal(ops.mirror(images, flip), expected)
    mapped = next(iter(tf.data.Dataset.from_tensors((images, flip)).map(ops.mirror)))
    np.testing.assert_array_equal(mapped, expected)


def test_to_grayscale_puts_the_luma_in_every_channel_of_the_flagged_images_only(rng):
    images = rng.random((2, 4, 4, 3)).astype(np.float32)
    gray = tf.constant([False, True])
    luma = images[1] @ np.array([0.2989, 0.587, 0.114], np.float32)
    expected = np.stack([images[0], np.repeat(luma[..., None], 3, axis=-1)])
    np.testing.assert_allclose(ops.to_grayscale(images, gray), expected, atol=1e-6)
    mapped = next(iter(tf.data.Dataset.from_tensors((images, gray)).map(ops.to_grayscale)))
    np.testing.assert_allclose(mapped, expected, atol=1e-6)
