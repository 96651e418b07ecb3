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


# The batched augmentation (--augment_on=device): one seed per batch, each image its own draws.

BATCH = np.random.default_rng(1).integers(0, 256, (8, 40, 48, 3), dtype=np.uint8)


def test_batched_output_is_float_in_unit_range_at_the_requested_size():
    for images, size in ((BATCH, 32), (BATCH[:, :20, :24], 32), (BATCH, 16)):  # enlarging and shrinking crops
        out = npid.npid_augment_batch(tf.constant(images), size, tf.constant([3, 4], tf.int32))
        assert out.shape == (len(images), size, size, 3) and out.dtype == tf.float32
        assert 0.0 <= float(tf.reduce_min(out)) and float(tf.reduce_max(out)) <= 1.0


def test_batched_same_seed_same_result_eagerly_in_dataset_map_and_tf_function():
    seeds = np.array([[0, 1], [0, 2]], np.int32)
    eager = np.stack([npid.npid_augment_batch(tf.constant(BATCH), 32, tf.constant(s)).numpy() for s in seeds])
    in_map = mapped(lambda images, seed: npid.npid_augment_batch(images, 32, seed), BATCH, seeds)
    in_function = tf.function(lambda images, seed: npid.npid_augment_batch(images, 32, seed))
    np.testing.assert_allclose(eager, in_map, atol=1e-4)  # graph rewrites may change the last float bits
    np.testing.assert_allclose(eager[1], in_function(tf.constant(BATCH), tf.constant(seeds[1])).numpy(), atol=1e-4)
    assert np.abs(eager[0] - eager[1]).max() > 0.1  # another seed, another batch of views
    assert np.abs(eager[0, 0] - eager[0, 1]).max() > 0.1  # and every image its own draws


def _host_and_batched_views(image, size, draws=512):
    """(host views [draws,...] from `draws` per-image seeds, batched views of `draws` copies from one seed)."""
    host = mapped(lambda x, seed: npid.npid_augment(x, size, seed), image, SEEDS[:draws])
    batched = npid.npid_augment_batch(tf.constant(np.stack([image] * draws)), size, tf.constant([9, 9])).numpy()
    return host, batched


def test_batched_grayscale_rate_matches_the_host_op():
    host, batched = _host_and_batched_views(COLOURFUL, 16, 500)
    rates = [(np.abs(v - v[..., :1]).max(axis=(1, 2, 3)) < 1e-5).mean() for v in (host, batched)]
    assert 0.16 <= rates[1] <= 0.24 and abs(rates[0] - rates[1]) < 0.07  # p = 0.2; binomial sd 0.018 each


def test_batched_flip_rate_and_exactness():
    images = tf.constant(np.stack([COLOURFUL] * 400), tf.float32)
    flips = npid.random_horizontal_flip_batch(images, 0.5, tf.constant([2, 3])).numpy()
    flipped = np.array([np.array_equal(f, COLOURFUL[:, ::-1]) for f in flips])
    unchanged = np.array([np.array_equal(f, COLOURFUL) for f in flips])
    assert np.all(flipped ^ unchanged) and 0.43 <= flipped.mean() <= 0.57  # binomial sd 0.025


def test_batched_pipeline_flips_half_of_the_views():
    ramp = np.broadcast_to(np.linspace(0, 255, 64).astype(np.uint8)[None, :, None], (64, 64, 3))  # brighter rightwards
    _, views = _host_and_batched_views(ramp, 16, 500)
    left, right = views[:, :, 0].mean(axis=(1, 2)), views[:, :, -1].mean(axis=(1, 2))
    assert np.all(left != right) and 0.44 <= (left > right).mean() <= 0.56


def test_batched_crop_boxes_follow_the_host_samplers_area_and_aspect():
    boxes = npid.sample_crop_boxes(2000, 100, 120, tf.constant([5, 6])).numpy()
    top, left, height, width = boxes.T
    assert np.all(top >= 0) and np.all(left >= 0) and np.all(top + height <= 100 + 1e-3)
    assert np.all(left + width <= 120 + 1e-3)
    area, aspect = height * width / (100 * 120), width / height
    assert area.min() >= 0.2 - 1e-4 and area.max() <= 1.0 + 1e-4
    assert np.all((aspect >= 0.75 - 1e-4) & (aspect <= 4 / 3 + 1e-4) | (area > 1 - 1e-4))
    host = [npid.sample_crop_box(tf.constant([100, 120, 3]), tf.constant(seed))[1].numpy() for seed in SEEDS]
    host_area = np.array([h * w for h, w, _ in host]) / (100 * 120)
    # Host: mean 0.489, sd 0.2 over its 500 draws (standard error of the mean 0.009).
    assert abs(area.mean() - host_area.mean()) < 0.03 and abs(area.std() - host_area.std()) < 0.03
    assert abs(np.median(area) - np.median(host_area)) < 0.05


def test_batched_crop_of_a_flat_image_is_flat_and_a_whole_image_box_is_resize():
    flat = npid.random_resized_crop_batch(tf.fill([3, 40, 60, 3], tf.constant(51, tf.uint8)), 24, tf.constant([1, 1]))
    np.testing.assert_allclose(flat.numpy(), np.full((3, 24, 24, 3), 0.2), atol=1e-6)
    whole = npid.crop_and_resize_boxes(tf.constant([[0.0, 0.0, 40.0, 48.0]]), 40, 48, 20)
    crop = tf.image.crop_and_resize(tf.constant(BATCH[:1], tf.float32), whole, [0], [20, 20])
    resized = tf.image.resize(tf.constant(BATCH[:1], tf.float32), [20, 20], method="bilinear")  # 2x down, no AA
    np.testing.assert_allclose(crop.numpy(), resized.numpy(), atol=0.02)  # of 255: float rounding of the grid


def test_batched_colour_adjustments_match_the_per_image_ones():
    images = tf.constant(BATCH[:4, :6, :6], tf.float32) / 255.0
    factors, shifts = tf.constant([0.6, 0.9, 1.2, 1.4]), tf.constant([-0.4, -0.1, 0.2, 0.35])
    contrast = npid.adjust_contrast_batch(images, factors)
    hue = npid.adjust_hue_batch(images, shifts)
    for i in range(4):
        np.testing.assert_allclose(contrast[i], npid.adjust_contrast(images[i], factors[i]), atol=1e-6)
        np.testing.assert_allclose(hue[i], npid.adjust_hue(images[i], shifts[i]), atol=1e-5)


def test_batched_jitter_applies_each_images_own_order():
    images = tf.constant(np.stack([COLOURFUL[:8, :8]] * 3), tf.float32) / 255.0
    factors = tf.constant([[1.4, 0.6, 1.3]] * 3)
    shifts = tf.constant([0.3] * 3)
    orders = [[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2]]
    out = npid.apply_jitter_batch(images, factors, shifts, tf.constant(orders, tf.int32)).numpy()
    steps = [lambda x: npid.adjust_brightness(x, 1.4), lambda x: npid.adjust_contrast(x, 0.6),
             lambda x: npid.adjust_saturation(x, 1.3), lambda x: npid.adjust_hue(x, 0.3)]
    for i, order in enumerate(orders):
        expected = images[i]
        for k in order:
            expected = steps[k](expected)
        np.testing.assert_allclose(out[i], expected, atol=1e-5)
    assert np.abs(out[0] - out[1]).max() > 0.05  # the order matters for these factors


def test_batched_jitter_of_strength_zero_is_the_identity():
    images = tf.constant(BATCH[:, :8, :8], tf.float32) / 255.0
    np.testing.assert_allclose(npid.color_jitter_batch(images, 0.0, 0.0, tf.constant([4, 4])), images, atol=1e-5)
