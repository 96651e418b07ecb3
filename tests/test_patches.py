"""Energy-weighted seed sampling: where seeds fall, the uniform case, reproducibility, inputs and errors."""
import numpy as np
import pytest
import tensorflow as tf

from exemplar_tf.data import patches

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


def test_constant_energy_gives_a_uniform_spread_over_cells_and_scales():
    small = patches.zero_borders(np.ones((100, 100)), 32)  # 69×69 valid cells
    large = patches.zero_borders(np.ones((200, 200)), 32)  # 169×169 valid cells
    cells = np.array(patches.draw_cells([small, large], 6000, np.random.default_rng(0)))
    assert small[cells[cells[:, 0] == 0, 1], cells[cells[:, 0] == 0, 2]].all()  # never a zeroed border cell
    assert large[cells[cells[:, 0] == 1, 1], cells[cells[:, 0] == 1, 2]].all()
    # Bins: the small map as a whole, then ten column ranges of the large map; expected counts ∝ valid cells.
    column_ranges = np.array_split(np.arange(169), 10)
    column_bin = np.concatenate([np.full(len(columns), b) for b, columns in enumerate(column_ranges)])
    observed = np.zeros(11)
    observed[0] = np.sum(cells[:, 0] == 0)
    for x in cells[cells[:, 0] == 1, 2]:
        observed[1 + column_bin[x - 16]] += 1
    cells_per_bin = np.concatenate([[69 * 69], 169 * np.bincount(column_bin, minlength=10)])
    expected = len(cells) * cells_per_bin / cells_per_bin.sum()
    chi_square = np.sum((observed - expected) ** 2 / expected)
    assert chi_square < CHI2_CRITICAL_DF10_P001


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
    image = np.arange(32 * 32 * 3, dtype=np.int64).reshape(32, 32, 3).astype(np.uint8)
    window = patches.cut_window(image, 16, 16, patch_size=32, window_size=64)
    np.testing.assert_array_equal(window[16:48, 16:48], image)
    np.testing.assert_array_equal(window, np.pad(image, ((16, 16), (16, 16), (0, 0)), mode="reflect"))


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
