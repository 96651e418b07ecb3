"""NPID augmentation: shapes and range, seeded determinism (eager == Dataset.map == tf.function), each component's
exact effect and the rates of its random choices."""
import numpy as np
import pytest
import tensorflow as tf

from exemplar_tf.augment import npid

COLOURFUL = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
SEEDS = np.stack([np.arange(500), np.full(500, 7)], axis=1).astype(np.int64)


def mapped(fn, image, seeds):
    """fn(image, seed) for every seed, through Dataset.map, as a NumPy array."""
    dataset = tf.data.Dataset.from_tensor_slices(seeds).map(lambda seed: fn(tf.constant(image), seed))
    return np.stack(list(dataset.as_numpy_iterator()))


def test_output_is_float_in_unit_range_at_the_requested_size():
    for image in (COLOURFUL, COLOURFUL[:20, :24]):  # shrinking and enlarging crops
        out = npid.npid_augment(tf.constant(image), 32, tf.constant([3, 4], tf.int64))
        assert out.shape == (32, 32, 3) and out.dtype == tf.float32
        assert 0.0 <= float(tf.reduce_min(out)) and float(tf.reduce_max(out)) <= 1.0


def test_same_seed_same_result_eagerly_in_dataset_map_and_tf_function():
    seeds = SEEDS[:6]
    eager = np.stack([npid.npid_augment(tf.constant(COLOURFUL), 32, tf.constant(seed)).numpy() for seed in seeds])
    in_map = mapped(lambda image, seed: npid.npid_augment(image, 32, seed), COLOURFUL, seeds)
    in_function = tf.function(lambda seed: npid.npid_augment(tf.constant(COLOURFUL), 32, seed))
    np.testing.assert_allclose(eager, in_map, atol=1e-6)  # graph rewrites may change the last float bit
    np.testing.assert_allclose(eager[2], in_function(tf.constant(seeds[2])).numpy(), atol=1e-6)
    assert np.abs(eager[0] - eager[1]).max() > 0.1  # another seed, another view


def test_grayscale_rate_over_500_draws():
    views = mapped(lambda image, seed: npid.npid_augment(image, 16, seed), COLOURFUL, SEEDS)
    gray = np.abs(views - views[..., :1]).max(axis=(1, 2, 3)) < 1e-5  # jitter keeps a gray view gray
    assert 0.16 <= gray.mean() <= 0.24  # p = 0.2; binomial sd over 500 draws is 0.018


def test_flip_rate_and_exactness():
    image = tf.constant(COLOURFUL, tf.float32)
    flips = mapped(lambda x, seed: npid.random_horizontal_flip(tf.cast(x, tf.float32), 0.5, seed), COLOURFUL, SEEDS)
    flipped = np.array([np.array_equal(f, COLOURFUL[:, ::-1]) for f in flips])
    unchanged = np.array([np.array_equal(f, COLOURFUL) for f in flips])
    assert np.all(flipped ^ unchanged)
    assert 0.44 <= flipped.mean() <= 0.56
    assert np.array_equal(npid.random_horizontal_flip(image, 1.0, tf.constant([0, 0])), COLOURFUL[:, ::-1])


def test_pipeline_flips_half_of_the_views():
    ramp = np.broadcast_to(np.linspace(0, 255, 64).astype(np.uint8)[None, :, None], (64, 64, 3))  # brighter rightwards
    views = mapped(lambda image, seed: npid.npid_augment(image, 16, seed), ramp, SEEDS)
    left, right = views[:, :, 0].mean(axis=(1, 2)), views[:, :, -1].mean(axis=(1, 2))  # crop and jitter keep the order
    assert np.all(left != right)
    assert 0.45 <= (left > right).mean() <= 0.55


def test_crop_boxes_cover_the_area_and_aspect_ranges():
    boxes = [npid.sample_crop_box(tf.constant([100, 120, 3]), tf.constant(seed)) for seed in SEEDS[:200]]
    begins, sizes = (np.stack([b[i].numpy() for b in boxes]) for i in (0, 1))
    assert np.all(begins >= 0) and np.all(begins[:, :2] + sizes[:, :2] <= (100, 120)) and np.all(sizes[:, 2] == -1)
    area = sizes[:, 0] * sizes[:, 1] / (100 * 120)
    aspect = sizes[:, 1] / sizes[:, 0]
    assert area.min() >= 0.19 and area.min() < 0.3 and area.max() > 0.9
    assert np.all((aspect >= 0.72) & (aspect <= 1.39) | (area == 1.0))  # the whole image when no box fits


def test_resized_crop_of_a_flat_image_is_flat():
    out = npid.random_resized_crop(tf.fill([40, 60, 3], tf.constant(51, tf.uint8)), 24, tf.constant([1, 1]))
    np.testing.assert_allclose(out.numpy(), np.full((24, 24, 3), 0.2), atol=1e-6)


def test_colour_adjustments_match_torchvision_definitions():
    pixels = tf.constant([[[0.4, 0.2, 0.8], [1.0, 0.5, 0.0]]])
    luma = 0.299 * pixels[..., 0] + 0.587 * pixels[..., 1] + 0.114 * pixels[..., 2]
    np.testing.assert_allclose(npid.adjust_brightness(pixels, 0.5), pixels * 0.5, atol=1e-6)
    np.testing.assert_allclose(npid.adjust_brightness(pixels, 1.5)[0, 1], [1.0, 0.75, 0.0], atol=1e-6)
    np.testing.assert_allclose(npid.adjust_contrast(pixels, 0.0), tf.fill([1, 2, 3], tf.reduce_mean(luma)), atol=1e-3)
    np.testing.assert_allclose(npid.adjust_saturation(pixels, 0.0), tf.repeat(luma[..., None], 3, -1), atol=1e-3)
    np.testing.assert_allclose(npid.adjust_saturation(pixels, 1.0), pixels, atol=1e-6)
    np.testing.assert_allclose(npid.adjust_hue(tf.constant([[[1.0, 0.0, 0.0]]]), 1 / 3), [[[0.0, 1.0, 0.0]]],
                               atol=1e-5)


def test_jitter_of_strength_zero_is_the_identity_in_any_order():
    pixels = tf.constant(COLOURFUL[:8, :8], tf.float32) / 255.0
    for seed in SEEDS[:5]:
        np.testing.assert_allclose(npid.color_jitter(pixels, 0.0, 0.0, tf.constant(seed)), pixels, atol=1e-5)


@pytest.mark.parametrize("probability, expected", [(0.0, False), (1.0, True)])
def test_random_grayscale_extremes(probability, expected):
    pixels = tf.constant(COLOURFUL[:4, :4], tf.float32) / 255.0
    out = npid.random_grayscale(pixels, probability, tf.constant([5, 5])).numpy()
    assert np.all(out[..., 0] == out[..., 2]) == expected
