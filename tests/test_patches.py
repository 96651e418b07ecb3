"""Energy-weighted seed sampling (TF): where seeds fall, the uniform case, the OpenCV energy map, stateless
reproducibility, windows, inputs and errors."""
import numpy as np
import pytest
import tensorflow as tf

from exemplar_tf.data import patches

import numpy_seeds  # the NumPy/OpenCV oracle (tests/numpy_seeds.py)

# Chi-square critical value for 10 degrees of freedom at significance 0.001 (statistical tables).
CHI2_CRITICAL_DF10_P001 = 29.588


def half_textured(rng, size=256):
    """uint8 [size,size,3]: noise in the left half, flat gray (the noise's mean) in the right half."""
    image = np.full((size, size, 3), 128, np.uint8)
    image[:, : size // 2] = rng.integers(0, 256, (size, size // 2, 3))
    return image


def test_seeds_follow_energy_into_the_textured_half(rng):
    images = [(i, half_textured(rng)) for i in range(5)]
    seeds = patches.sample_seeds(images, num_seeds=500, seeds_per_image=100, rng_seed=1)
    in_textured_half = seeds.centre_yx[:, 1] < 128
    assert in_textured_half.mean() >= 0.95
    assert set(np.unique(seeds.scale)) == set(np.float32(patches.DEFAULT_SCALES))  # all scales drawn


def test_flat_image_spreads_seeds_uniformly_over_cells_and_scales():
    # A flat image has the same energy (the floor) at every valid cell: 69×69 at scale 0.5, 169×169 at scale 1.
    flat = np.full((1, 200, 200, 3), 77, np.uint8)
    draws = patches.sample_windows(flat, 6000, tf.constant([0, 5]), patch_size=32, window_size=64, scales=(0.5, 1.0))
    assert int(draws.positions) == 69 * 69 + 169 * 169
    scale, centre = draws.scale.numpy()[0], draws.centre_yx.numpy()[0]
    left = np.round(centre[scale == 1.0, 1] - 15.5).astype(int)  # the patch's left column at scale 1
    assert left.min() >= 0 and left.max() <= 168  # never a zeroed border cell
    cells = np.round(centre - 15.5 * np.where(scale == 1.0, 1, 2)[:, None]).astype(int)
    assert len({tuple(c) for c in np.concatenate([cells, scale[:, None].astype(int)], axis=1)}) == 6000  # distinct
    assert flat_image_chi_square(scale, left) < CHI2_CRITICAL_DF10_P001


def flat_image_chi_square(scale: np.ndarray, left: np.ndarray) -> float:
    """Chi-square of draws on the flat 200×200 image at scales (0.5, 1.0) against uniform over its valid cells:
    bins are the small level as a whole, then ten column ranges of the large one (left: the scale-1 draws' left
    patch columns); expected counts ∝ valid cells."""
    column_ranges = np.array_split(np.arange(169), 10)
    column_bin = np.concatenate([np.full(len(columns), b) for b, columns in enumerate(column_ranges)])
    observed = np.concatenate([[np.sum(scale == 0.5)], np.bincount(column_bin[left], minlength=10)])
    cells_per_bin = np.concatenate([[69 * 69], 169 * np.bincount(column_bin, minlength=10)])
    expected = len(scale) * cells_per_bin / cells_per_bin.sum()
    return float(np.sum((observed - expected) ** 2 / expected))


def online_draws(image: np.ndarray, count: int, seed, scales=patches.DEFAULT_SCALES):
    """(scale float32 [count], centre_yx float32 [count,2]): `count` independent online draws
    (`draw_cells_by_cdf`) of a cell of image [H,W,3], located by `locate_cells` (no windows cut)."""
    scores, levels = patches.energy_scores(image[None], patch_size=32, scales=scales)
    picks = patches.draw_cells_by_cdf(patches.cell_cdf(scores), count, tf.constant(seed))
    assert picks.shape == (1, count)
    level, _, _, centre_yx = patches.locate_cells(picks, levels, image.shape[0], image.shape[1], patch_size=32)
    return np.asarray(scales, np.float32)[level.numpy()[0]], centre_yx.numpy()[0]


def test_online_draws_follow_energy_into_the_textured_half(rng):
    scale, centre = online_draws(half_textured(rng), 2000, [3, 1])
    assert (centre[:, 1] < 128).mean() >= 0.95
    assert set(np.unique(scale)) == set(np.float32(patches.DEFAULT_SCALES))


def test_online_draws_on_a_flat_image_are_uniform_over_cells_and_scales():
    scale, centre = online_draws(np.full((200, 200, 3), 77, np.uint8), 6000, [0, 5], scales=(0.5, 1.0))
    left = np.round(centre[scale == 1.0, 1] - 15.5).astype(int)
    assert left.min() >= 0 and left.max() <= 168
    assert flat_image_chi_square(scale, left) < CHI2_CRITICAL_DF10_P001


def test_cdf_draws_pick_cells_in_proportion_to_exp_score():
    probabilities = np.array([0.1, 0.0, 0.2, 0.3, 0.4])  # cell 1: probability 0 (its cdf step is empty)
    scores = tf.constant(np.log(np.maximum(probabilities, 1e-30))[None], tf.float32)
    cdf = patches.cell_cdf(scores)
    np.testing.assert_allclose(cdf[0], np.cumsum(probabilities) / 0.4, rtol=1e-6)
    picks = patches.draw_cells_by_cdf(cdf, 40000, tf.constant([8, 8])).numpy()[0]
    counts = np.bincount(picks, minlength=5)
    assert counts[1] == 0 and len(counts) == 5
    expected = 40000 * probabilities[probabilities > 0]
    chi_square = np.sum((counts[probabilities > 0] - expected) ** 2 / expected)
    assert chi_square < 16.266  # chi-square, 3 degrees of freedom, significance 0.001
    assert not np.array_equal(picks, patches.draw_cells_by_cdf(cdf, 40000, tf.constant([8, 9])).numpy()[0])


def test_cells_with_empty_steps_are_never_chosen_even_at_the_ends_of_the_unit_interval():
    cdf = tf.constant([[0.0, 0.0, 0.25, 1.0, 1.0]])  # cells 0, 1 and 4 have probability 0
    largest_uniform = 1 - 2.0**-23  # the largest float32 stateless_uniform returns
    fractions = tf.constant([[0.0, 0.25 - 1e-7, 0.25, largest_uniform]])
    np.testing.assert_array_equal(patches.cells_at(cdf, fractions), [[2, 2, 3, 3]])


def test_online_windows_same_seed_same_window_eagerly_in_dataset_map_and_in_tf_function(rng):
    images = rng.integers(0, 256, (3, 60, 80, 3), dtype=np.uint8)
    draw = lambda batch: patches.online_windows(batch, tf.constant([4, 9]), patch_size=16, window_size=32)  # noqa
    eager = draw(images).numpy()
    np.testing.assert_array_equal(eager, tf.function(draw)(tf.constant(images)).numpy())
    np.testing.assert_array_equal(eager, next(iter(tf.data.Dataset.from_tensors(images).map(draw))).numpy())
    scores, levels = patches.energy_scores(images, patch_size=16)
    kept = patches.online_windows(images, tf.constant([4, 9]), patch_size=16, window_size=32,
                                  energy=(patches.cell_cdf(scores), levels))
    np.testing.assert_array_equal(eager, kept.numpy())
    assert eager.shape == (3, 32, 32, 3)


def tf_energy_map(image: np.ndarray, scale: float, patch_size: int) -> np.ndarray:
    """float32 [h,w]: the sampler's `valid_energy` of the gray level of `scale`, at the cells whose patch lies
    inside the level (0 elsewhere), laid out as the OpenCV oracle's map."""
    level = patches.resize(image[None], patches.level_size(image.shape[0], image.shape[1], scale), scale)
    half = patch_size // 2
    energy = patches.valid_energy(patches.gray(level), patch_size)
    return tf.pad(energy, [[0, 0], [half, patch_size - half - 1], [half, patch_size - half - 1]])[0].numpy()


@pytest.mark.parametrize("scale", patches.DEFAULT_SCALES)
def test_energy_map_matches_the_opencv_one(rng, scale):
    image = rng.integers(0, 256, (70, 100, 3), dtype=np.uint8)
    image[:, 60:] = 90  # a flat part: energy at the floor
    expected = numpy_seeds.energy_map(numpy_seeds.resize_by(image.astype(np.float32), scale), 32)
    energy = tf_energy_map(image, scale, 32)
    assert energy.shape == expected.shape == (max(1, round(70 * scale)), max(1, round(100 * scale)))
    np.testing.assert_allclose(energy, expected, rtol=1e-5, atol=1e-3 + 1e-6 * expected.max())
    assert np.array_equal(energy > 0, expected > 0)


def test_same_seed_same_windows_eagerly_in_dataset_map_and_in_tf_function(rng):
    images = rng.integers(0, 256, (3, 60, 80, 3), dtype=np.uint8)
    seed = tf.constant([4, 9], tf.int64)
    draw = lambda batch: patches.sample_windows(batch, 2, seed, patch_size=16, window_size=32).windows  # noqa: E731
    eager = draw(images).numpy()
    in_function = tf.function(draw)(tf.constant(images)).numpy()
    in_map = next(iter(tf.data.Dataset.from_tensors(images).map(draw, num_parallel_calls=2))).numpy()
    np.testing.assert_array_equal(eager, in_function)
    np.testing.assert_array_equal(eager, in_map)
    other = patches.sample_windows(images, 2, tf.constant([4, 10], tf.int64), patch_size=16, window_size=32)
    assert not np.array_equal(eager, other.windows.numpy())
    assert eager.shape == (3, 2, 32, 32, 3)


def test_scores_computed_image_by_image_and_kept_give_the_same_draws(rng):
    images = rng.integers(0, 256, (3, 60, 80, 3), dtype=np.uint8)
    seed = tf.constant([2, 7], tf.int64)
    fresh = patches.sample_windows(images, 3, seed, patch_size=16, window_size=32)
    parts = [patches.energy_scores(image[None], patch_size=16) for image in images]
    scores = tf.concat([part[0] for part in parts], axis=0)
    assert scores.shape == (3, sum((max(1, round(60 * s)) - 15) * (max(1, round(80 * s)) - 15)
                                   for s in patches.DEFAULT_SCALES))
    kept = patches.cut_cells(images, patches.draw_cells(scores, 3, seed), parts[0][1], patch_size=16,
                             window_size=32)
    for name in ("windows", "scale", "centre_yx", "positions"):
        np.testing.assert_array_equal(getattr(kept, name).numpy(), getattr(fresh, name).numpy())


def test_reproducible_from_rng_seed(rng):
    images = [(i, rng.integers(0, 256, (80, 90, 3), dtype=np.uint8)) for i in range(6)]
    first = patches.sample_seeds(images, num_seeds=7, seeds_per_image=2, rng_seed=3)
    again = patches.sample_seeds(images, num_seeds=7, seeds_per_image=2, rng_seed=3)
    other = patches.sample_seeds(images, num_seeds=7, seeds_per_image=2, rng_seed=4)
    for field in ("windows", "source_index", "scale", "centre_yx"):
        np.testing.assert_array_equal(getattr(first, field), getattr(again, field))
    assert not np.array_equal(first.centre_yx, other.centre_yx)
    assert first.windows.shape == (7, 64, 64, 3) and first.windows.dtype == np.uint8
    assert np.bincount(first.source_index).max() == 2 and len(np.unique(first.source_index)) == 4  # ceil(7/2)


def test_central_patch_is_the_image_at_the_seed_centre(rng):
    image = rng.integers(0, 256, (70, 100, 3), dtype=np.uint8)
    seeds = patches.sample_seeds([(5, image)], num_seeds=20, seeds_per_image=20, scales=(1.0,))
    for patch, (cy, cx) in zip(seeds.central_patches(), seeds.centre_yx):
        top, left = round(cy + 0.5) - 16, round(cx + 0.5) - 16
        np.testing.assert_array_equal(patch, image[top:top + 32, left:left + 32])
    assert (seeds.source_index == 5).all()


def test_window_is_reflected_where_it_leaves_the_image():
    image = np.arange(32 * 32 * 3, dtype=np.int64).reshape(32, 32, 3).astype(np.uint8)  # one cell at scale 1
    draws = patches.sample_windows(image[None], 1, tf.constant([0, 0]), patch_size=32, window_size=64, scales=(1.0,))
    window = draws.windows.numpy()[0, 0]
    np.testing.assert_array_equal(window[16:48, 16:48], image)
    np.testing.assert_array_equal(window, np.pad(image, ((16, 16), (16, 16), (0, 0)), mode="reflect"))


def test_windows_match_the_numpy_cut_at_every_scale(rng):
    image = rng.integers(0, 256, (90, 70, 3), dtype=np.uint8)
    draws = patches.sample_windows(image[None].astype(np.float32), 40, tf.constant([1, 1]), patch_size=32,
                                   window_size=64)
    for window, scale, (cy, cx) in zip(draws.windows.numpy()[0], draws.scale.numpy()[0], draws.centre_yx.numpy()[0]):
        level = numpy_seeds.resize_by(image.astype(np.float32), float(scale))
        factor_y, factor_x = level.shape[0] / 90, level.shape[1] / 70
        y, x = round((cy + 0.5) * factor_y - 16) + 16, round((cx + 0.5) * factor_x - 16) + 16  # the cell
        np.testing.assert_allclose(window, numpy_seeds.cut_window(level, y, x, 32, 64), atol=2e-3)


def test_settings_the_sampler_cannot_serve_are_refused():
    with pytest.raises(ValueError, match="window_factor must be in"):
        patches.sample_seeds([np.zeros((40, 40, 3), np.uint8)], num_seeds=1, window_factor=3.0)
    with pytest.raises(ValueError, match="scales must be positive"):
        patches.sample_seeds([np.zeros((40, 40, 3), np.uint8)], num_seeds=1, scales=(0.0, 1.0))


def test_scaled_seed_window_has_the_resized_content():
    gradient = np.tile(np.linspace(0, 255, 200)[None, :, None], (200, 1, 3)).astype(np.uint8)
    seeds = patches.sample_seeds([gradient], num_seeds=4, seeds_per_image=4, scales=(0.5,))
    patch = seeds.central_patches().astype(float)
    # The horizontal gradient is twice as steep at half size: ~2.56 gray levels per pixel across the patch.
    slope = (patch[:, :, -1] - patch[:, :, 0]).mean() / 31
    assert slope == pytest.approx(2 * 255 / 199, rel=0.03)
    np.testing.assert_allclose(seeds.scale, 0.5)


def test_dataset_of_dicts_and_list_of_pairs_choose_the_same_images(rng):
    images = [rng.integers(0, 256, (48, 48 + i, 3), dtype=np.uint8) for i in range(10)]
    dataset = tf.data.Dataset.from_generator(
        lambda: ({"image": image, "index": np.int64(100 + i)} for i, image in enumerate(images)),
        output_signature={"image": tf.TensorSpec([None, None, 3], tf.uint8), "index": tf.TensorSpec([], tf.int64)},
    ).apply(tf.data.experimental.assert_cardinality(10))
    from_dataset = patches.sample_seeds(dataset, num_seeds=4, rng_seed=2)
    from_list = patches.sample_seeds([(100 + i, image) for i, image in enumerate(images)], num_seeds=4, rng_seed=2)
    np.testing.assert_array_equal(from_dataset.windows, from_list.windows)
    np.testing.assert_array_equal(from_dataset.source_index, from_list.source_index)
    assert len(set(from_dataset.source_index.tolist())) == 4 and from_dataset.source_index.min() >= 100


def test_stream_of_unknown_length_is_reservoir_sampled():
    flat_images = [np.full((40, 40, 3), 10 * i, np.uint8) for i in range(12)]  # image i has value 10 i
    seeds = patches.sample_seeds(iter(flat_images), num_seeds=5, rng_seed=0)
    assert sorted(set(seeds.source_index.tolist())) == seeds.source_index.tolist()  # distinct, in reading order
    for window, position in zip(seeds.windows, seeds.source_index):  # each window comes from the image it names
        assert (window == 10 * position).all()


def test_image_too_small_at_every_scale_names_its_index(rng):
    images = [(3, rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)),
              (7, rng.integers(0, 256, (20, 60, 3), dtype=np.uint8))]
    with pytest.raises(ValueError, match="source index 7.*smaller than the 32×32 patch"):
        patches.sample_seeds(images, num_seeds=2)


def test_too_few_images_is_an_error(rng):
    images = [rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for _ in range(3)]
    with pytest.raises(ValueError, match="4 images are needed.*only 3"):
        patches.sample_seeds(images, num_seeds=8, seeds_per_image=2)


def test_save_and_load_round_trip(tmp_path, rng):
    seeds = patches.sample_seeds([rng.integers(0, 256, (50, 50, 3), dtype=np.uint8)], num_seeds=3,
                                 seeds_per_image=3, patch_size=16)
    path = str(tmp_path / "seeds.npz")
    seeds.save(path)
    loaded = patches.Seeds.load(path)
    for field in ("windows", "source_index", "scale", "centre_yx"):
        np.testing.assert_array_equal(getattr(seeds, field), getattr(loaded, field))
        assert getattr(seeds, field).dtype == getattr(loaded, field).dtype
    assert loaded.patch_size == 16 and loaded.windows.shape == (3, 32, 32, 3)
