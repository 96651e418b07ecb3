"""data.instances: decoded-in-memory images, folder random access and full per-epoch permutations."""
import numpy as np
import tensorflow as tf
from PIL import Image

from exemplar_tf.data import instances, sources


def _class_sorted_source(num_classes=10, per_class=3000):
    """An in-memory source sorted by class: image i is 1×1 with value label, like a class-sorted folder."""
    labels = np.repeat(np.arange(num_classes), per_class).astype(np.int64)
    images = np.broadcast_to(labels.astype(np.uint8)[:, None, None, None], (len(labels), 1, 1, 3)).copy()
    dataset = sources.indexed(tf.data.Dataset.from_tensor_slices(images), len(labels), labels)
    return sources.Source(dataset, len(labels), num_classes, "sorted")


def test_every_epoch_is_a_full_permutation_and_epochs_differ():
    indices = list(instances.epoch_permutations(1000, seed=3).take(3000).as_numpy_iterator())
    epochs = [indices[i * 1000:(i + 1) * 1000] for i in range(3)]
    for epoch in epochs:
        assert sorted(epoch) == list(range(1000))
    assert epochs[0] != epochs[1] != epochs[2]
    again = list(instances.epoch_permutations(1000, seed=3).take(1000).as_numpy_iterator())
    assert again == epochs[0]


def test_batches_of_a_class_sorted_source_mix_the_classes():
    """30 000 images sorted by 10 classes (3× a 10 000-image shuffle buffer): a batch of 128 drawn from a full
    permutation has every class and its largest class near 10 % (binomial: max of 10 classes ≈ 17 %); a buffer
    shuffle of the sorted stream would give the first batches from classes 0..3 only."""
    source = _class_sorted_source()
    decoded = instances.in_memory(source)
    batches = instances.shuffled_epochs(source, seed=0, decoded=decoded).batch(128).take(20)
    largest = []
    for batch in batches.as_numpy_iterator():
        counts = np.bincount(batch["label"], minlength=10)
        assert np.count_nonzero(counts) == 10
        largest.append(counts.max() / 128)
    assert np.mean(largest) < 0.2
    # The label travels with the image: image value == label for every element.
    assert (batch["image"][:, 0, 0, 0] == batch["label"]).all()


def test_shards_of_one_epoch_are_disjoint_and_cover_the_source():
    source = _class_sorted_source(num_classes=2, per_class=50)
    decoded = instances.in_memory(source)
    shards = [list(instances.shuffled_epochs(source, seed=1, num_shards=2, shard=k, decoded=decoded)
                   .take(50).map(lambda e: e["index"]).as_numpy_iterator()) for k in (0, 1)]
    assert sorted(shards[0] + shards[1]) == list(range(100))


def test_in_memory_keeps_images_of_different_sizes_and_respects_the_budget():
    images = [np.full((h, w, 3), i, np.uint8) for i, (h, w) in enumerate([(2, 3), (5, 1), (4, 4)])]
    dataset = tf.data.Dataset.from_generator(lambda: iter(images), output_signature=tf.TensorSpec([None, None, 3],
                                                                                                  tf.uint8))
    source = sources.Source(sources.indexed(dataset, 3, None), 3, None, "sizes")
    decoded = instances.in_memory(source)
    read = decoded.reader()
    for i, image in enumerate(images):
        np.testing.assert_array_equal(read(tf.constant(i, tf.int64))["image"].numpy(), image)
    mapped = tf.data.Dataset.range(3).map(read)
    assert [e["image"].shape for e in mapped.as_numpy_iterator()] == [im.shape for im in images]
    assert instances.in_memory(source, max_bytes=10) is None


def test_folder_reader_and_spread_subset_read_the_same_images(tmp_path):
    for label, name in enumerate(("a", "b")):
        (tmp_path / name).mkdir()
        for i in range(5):
            Image.fromarray(np.full((6, 6, 3), 10 * (5 * label + i), np.uint8)).save(tmp_path / name / f"{i}.png")
    source = sources.load_source(f"folder:{tmp_path}", "train")
    streamed = list(source.dataset.as_numpy_iterator())
    for i in (0, 4, 7):
        element = source.read(tf.constant(i, tf.int64))
        np.testing.assert_array_equal(element["image"].numpy(), streamed[i]["image"])
        assert int(element["label"]) == streamed[i]["label"]
    subset = sources.spread_source(source, 4)  # positions 0, 2, 5, 7 renumbered 0..3
    assert subset.num_examples == 4
    by_stream = [int(e["image"][0, 0, 0]) for e in subset.dataset.as_numpy_iterator()]
    by_read = [int(subset.read(tf.constant(i, tf.int64))["image"][0, 0, 0]) for i in range(4)]
    assert by_stream == by_read == [0, 20, 50, 70]
    assert [int(subset.read(tf.constant(i, tf.int64))["index"]) for i in range(4)] == [0, 1, 2, 3]
    # Without the in-memory copy, the folder is read by index in a full permutation.
    epoch = instances.shuffled_epochs(source, seed=0).take(10).map(lambda e: e["index"])
    assert sorted(epoch.as_numpy_iterator()) == list(range(10))


def test_estimated_decoded_bytes():
    source = _class_sorted_source(num_classes=2, per_class=10)
    assert instances.estimated_decoded_bytes(source) == 20 * 3
