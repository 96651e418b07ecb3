"""Surrogate batches: shapes, dtypes and labels; host = device + chain; the fixed pool recurs, online does not."""
import numpy as np
import pytest
import tensorflow as tf

from exemplar_tf.augment.chain import TransformChain
from exemplar_tf.augment.presets import ALL_TRANSFORMS
from exemplar_tf.augment import surrogate
from exemplar_tf.data import patches

P = 16
NUM_SEEDS = 8


@pytest.fixture(scope="module")
def seeds():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 50, 3), dtype=np.uint8) for _ in range(4)]
    return patches.sample_seeds(images, num_seeds=NUM_SEEDS, seeds_per_image=2, patch_size=P, rng_seed=0)


@pytest.fixture(scope="module")
def chain(seeds):
    return TransformChain("paper", ALL_TRANSFORMS, surrogate.fit_color_pca(seeds), P)


def take(dataset, count):
    return [{k: v.numpy() for k, v in batch.items()} for batch in dataset.take(count)]


def test_host_batches_have_images_and_seed_labels(seeds, chain):
    (batch,) = take(surrogate.surrogate_dataset(seeds, chain, batch_size=4, rng_seed=0), 1)
    assert batch["image"].shape == (4, P, P, 3) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (4,) and batch["label"].dtype == np.int64
    assert 0 <= batch["image"].min() and batch["image"].max() <= 1


def test_one_pass_visits_every_seed_once(seeds, chain):
    batches = take(surrogate.surrogate_dataset(seeds, chain, batch_size=3, rng_seed=1, repeat=False), 10)
    assert [len(b["label"]) for b in batches] == [3, 3, 2]
    labels = np.concatenate([b["label"] for b in batches])
    assert sorted(labels) == list(range(NUM_SEEDS)) and list(labels) != list(range(NUM_SEEDS))  # shuffled
    in_order = take(surrogate.surrogate_dataset(seeds, chain, batch_size=8, rng_seed=1, shuffle=False,
                                                repeat=False), 2)
    assert list(in_order[0]["label"]) == list(range(NUM_SEEDS))


def test_device_batches_carry_windows_and_a_seed_that_reproduce_the_host_images(seeds, chain):
    host = take(surrogate.surrogate_dataset(seeds, chain, batch_size=4, rng_seed=3), 3)
    device = take(surrogate.surrogate_dataset(seeds, chain, batch_size=4, rng_seed=3, augment_on="device"), 3)
    for host_batch, device_batch in zip(host, device):
        assert device_batch["window"].shape == (4, 2 * P, 2 * P, 3) and device_batch["window"].dtype == np.uint8
        assert device_batch["aug_seed"].shape == (2,) and device_batch["aug_seed"].dtype == np.int32
        np.testing.assert_array_equal(device_batch["label"], host_batch["label"])
        np.testing.assert_array_equal(device_batch["window"], seeds.windows[device_batch["label"]])
        images = chain(tf.cast(device_batch["window"], tf.float32) / 255.0, device_batch["aug_seed"])
        np.testing.assert_allclose(images, host_batch["image"], atol=1e-6)


def copies_by_label(batch):
    """{label: sorted list of the bytes of its images (rounded)} for one batch."""
    found = {}
    for label, image in zip(batch["label"], batch["image"]):
        found.setdefault(int(label), []).append(np.round(image, 4).tobytes())
    return {label: sorted(images) for label, images in found.items()}


def test_fixed_copies_recur_every_epoch(seeds, chain):
    # Batch = one epoch of the pool (8 seeds x 2 copies), so consecutive batches are consecutive epochs.
    epochs = take(surrogate.surrogate_dataset(seeds, chain, batch_size=16, rng_seed=0, fixed_copies=2), 3)
    first = copies_by_label(epochs[0])
    assert sorted(first) == list(range(NUM_SEEDS)) and all(len(set(c)) == 2 for c in first.values())
    assert copies_by_label(epochs[1]) == first and copies_by_label(epochs[2]) == first
    assert list(epochs[1]["label"]) != list(epochs[0]["label"])  # the order is reshuffled
    other_run = take(surrogate.surrogate_dataset(seeds, chain, batch_size=16, rng_seed=9, fixed_copies=2), 1)
    assert copies_by_label(other_run[0]) == first  # the pool depends on the seeds only


def test_online_copies_are_fresh_every_epoch(seeds, chain):
    # Unshuffled, so only the transformations can differ between the two epochs.
    epochs = take(surrogate.surrogate_dataset(seeds, chain, batch_size=8, rng_seed=0, shuffle=False), 2)
    first, second = copies_by_label(epochs[0]), copies_by_label(epochs[1])
    assert sorted(first) == sorted(second) == list(range(NUM_SEEDS))
    assert all(first[label] != second[label] for label in first)


def test_fixed_copies_on_the_device_carry_one_seed_per_sample(seeds, chain):
    (batch,) = take(surrogate.surrogate_dataset(seeds, chain, batch_size=16, rng_seed=0, fixed_copies=2,
                                                augment_on="device"), 1)
    assert batch["aug_seed"].shape == (16, 2) and batch["aug_seed"].dtype == np.int32
    np.testing.assert_array_equal(batch["aug_seed"][:, 0], batch["label"])
    assert sorted(map(tuple, batch["aug_seed"])) == [(s, c) for s in range(NUM_SEEDS) for c in range(2)]


def test_fit_color_pca_uses_the_seed_patches(seeds):
    pca = surrogate.fit_color_pca(seeds)
    np.testing.assert_allclose(pca.mean, seeds.central_patches().reshape(-1, 3).mean(axis=0) / 255, atol=1e-5)
    np.testing.assert_allclose(pca.eigvecs.T @ pca.eigvecs, np.eye(3), atol=1e-5)


def test_bad_arguments_are_rejected(seeds, chain):
    with pytest.raises(ValueError, match="augment_on"):
        surrogate.surrogate_dataset(seeds, chain, batch_size=4, rng_seed=0, augment_on="tpu")
    with pytest.raises(ValueError, match="fixed_copies"):
        surrogate.surrogate_dataset(seeds, chain, batch_size=4, rng_seed=0, fixed_copies=0)


# --- online seed sampling: one class per image, a fresh patch every visit ------------------------------------------

def flat_colour_images(sizes):
    """{"image": uint8 [H,W,3] flat, of colour 20 * (i + 1) in every channel, "index": i} for each size."""
    images = [np.full((h, w, 3), 20 * (i + 1), np.uint8) for i, (h, w) in enumerate(sizes)]
    return tf.data.Dataset.from_generator(
        lambda: ({"image": image, "index": np.int64(i)} for i, image in enumerate(images)),
        output_signature={"image": tf.TensorSpec([None, None, 3], tf.uint8), "index": tf.TensorSpec([], tf.int64)})


@pytest.mark.parametrize("one_size, sizes", [(True, [(40, 50)] * 6), (False, [(40 + 3 * i, 50 - i) for i in range(6)])])
def test_online_patches_come_from_the_image_they_are_labelled_with(seeds, one_size, sizes):
    geometric = TransformChain("paper", ("translate", "scale", "rotate"), surrogate.fit_color_pca(seeds), P)
    dataset = surrogate.online_dataset(flat_colour_images(sizes).repeat(), geometric, batch_size=4, rng_seed=0,
                                       window_size=2 * P, one_size=one_size)
    batches = take(dataset, 3)
    labels = np.concatenate([b["label"] for b in batches])
    np.testing.assert_array_equal(labels, np.arange(12) % 6)
    for batch in batches:
        assert batch["image"].shape == (4, P, P, 3) and batch["image"].dtype == np.float32
        colours = 20 * (batch["label"] + 1) / 255.0
        np.testing.assert_allclose(batch["image"], np.broadcast_to(colours[:, None, None, None], (4, P, P, 3)),
                                   atol=1e-5)


def test_online_draws_a_fresh_patch_at_every_visit(seeds):
    textured = np.random.default_rng(3).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    elements = tf.data.Dataset.from_tensor_slices({"image": textured, "index": np.zeros(1, np.int64)}).repeat()
    identity = TransformChain("paper", (), surrogate.fit_color_pca(seeds), P)  # no transform: the seed patch itself
    (batch,) = take(surrogate.online_dataset(elements, identity, batch_size=8, rng_seed=0, window_size=2 * P,
                                             one_size=True), 1)
    assert len({patch.tobytes() for patch in batch["image"]}) == 8  # eight visits, eight different patches
    assert (batch["label"] == 0).all()


def test_online_device_batches_carry_images_that_reproduce_the_host_patches(seeds, chain):
    images = np.random.default_rng(4).integers(0, 256, (6, 40, 50, 3), dtype=np.uint8)
    elements = tf.data.Dataset.from_tensor_slices({"image": images, "index": np.arange(6)}).repeat()
    kwargs = dict(batch_size=4, rng_seed=5, window_size=2 * P, one_size=True)
    host = take(surrogate.online_dataset(elements, chain, **kwargs), 2)
    device = take(surrogate.online_dataset(elements, chain, augment_on="device", **kwargs), 2)
    source_image_augment = surrogate.source_image_augment(chain, window_size=2 * P)

    def augment(batch):
        return source_image_augment(batch, batch["aug_seed"])

    in_step = tf.function(augment)
    for host_batch, device_batch in zip(host, device):
        assert device_batch["source_image"].shape == (4, 40, 50, 3) and device_batch["aug_seed"].shape == (2,)
        np.testing.assert_array_equal(device_batch["label"], host_batch["label"])
        batch = {k: tf.constant(v) for k, v in device_batch.items()}
        np.testing.assert_allclose(augment(batch), host_batch["image"], atol=1e-5)
        np.testing.assert_allclose(in_step(batch), host_batch["image"], atol=1e-5)


def test_online_batches_from_an_energy_cache_equal_the_recomputed_ones(seeds, chain):
    images = np.random.default_rng(6).integers(0, 256, (10, 40, 50, 3), dtype=np.uint8)
    order = np.concatenate([np.random.default_rng(1).permutation(10), np.arange(10)])  # scores gathered by index
    elements = tf.data.Dataset.from_tensor_slices({"image": images[order], "index": order})
    cache = surrogate.energy_cache(images, patch_size=P)
    assert cache.cdf.shape[0] == 10
    kwargs = dict(batch_size=4, rng_seed=3, window_size=2 * P, one_size=True)
    cached = take(surrogate.online_dataset(elements, chain, energy=cache, **kwargs), 5)
    recomputed = take(surrogate.online_dataset(elements, chain, **kwargs), 5)
    for cached_batch, recomputed_batch in zip(cached, recomputed):
        np.testing.assert_array_equal(cached_batch["label"], recomputed_batch["label"])
        np.testing.assert_array_equal(cached_batch["image"], recomputed_batch["image"])


def test_energy_cache_is_refused_when_too_large_or_not_for_host_batches_of_one_size(seeds, chain):
    images = np.zeros((3, 40, 50, 3), np.uint8)
    cells = sum((max(1, round(40 * s)) - P + 1) * (max(1, round(50 * s)) - P + 1) for s in patches.DEFAULT_SCALES)
    assert surrogate.energy_cache(images, patch_size=P, max_bytes=3 * cells * 4 - 1) is None
    cache = surrogate.energy_cache(images, patch_size=P, max_bytes=3 * cells * 4)
    assert cache.cdf.shape == (3, cells)
    for one_size, augment_on in [(False, "host"), (True, "device")]:
        with pytest.raises(ValueError, match="energy cache"):
            surrogate.online_dataset(flat_colour_images([(40, 50)]), chain, batch_size=2, rng_seed=0,
                                     window_size=2 * P, one_size=one_size, augment_on=augment_on, energy=cache)


def test_online_on_the_device_needs_one_image_size(seeds, chain):
    with pytest.raises(ValueError, match="needs images of one size"):
        surrogate.online_dataset(flat_colour_images([(40, 50)]), chain, batch_size=2, rng_seed=0, window_size=2 * P,
                                 one_size=False, augment_on="device")
