"""training.inputs: the NPID instance subset chosen by --max_instances, NPID's --augment_on=device batches."""
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from exemplar_tf.errors import InputError
from exemplar_tf.training import inputs
from exemplar_tf.training.config import TrainConfig


def _class_sorted_folder(root, classes=("a", "b"), per_class=4, size=40):
    for label, name in enumerate(classes):
        (root / "train" / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.full((size, size, 3), 10 * (label * per_class + i), np.uint8)
            Image.fromarray(pixels).save(root / "train" / name / f"{i}.png")


def test_max_instances_spreads_over_classes_and_renumbers_the_bank_rows(tmp_path):
    _class_sorted_folder(tmp_path)
    config = TrainConfig(run_dir=str(tmp_path / "run"), source=f"folder:{tmp_path}", method="npid",
                         max_instances=4, image_size=32)
    subset = list(inputs._limited_source(config).dataset.as_numpy_iterator())
    # Every second image of the class-sorted 8: both classes, renumbered 0..3 (bank rows), pixels 0,20,40,60.
    assert [int(e["index"]) for e in subset] == [0, 1, 2, 3]
    assert [int(e["label"]) for e in subset] == [0, 0, 1, 1]
    assert [int(e["image"][0, 0, 0]) for e in subset] == [0, 20, 40, 60]
    data = inputs.npid_data(config)
    assert data.num_instances == 4
    labels = next(iter(data.dataset_fn(tf.distribute.InputContext(1, 0, 1))))["label"]
    assert set(labels.numpy().tolist()) <= {0, 1, 2, 3}


def test_npid_device_batches_carry_whole_uint8_images_and_a_seed_per_batch(tmp_path):
    _class_sorted_folder(tmp_path)
    config = TrainConfig(run_dir=str(tmp_path / "run"), source=f"folder:{tmp_path}", method="npid", image_size=24,
                         batch_size=4, augment_on="device")
    data = inputs.npid_data(config)
    batches = data.dataset_fn(tf.distribute.InputContext(1, 0, 1)).take(2)
    first, second = list(batches.as_numpy_iterator())
    assert first["source_image"].shape == (4, 40, 40, 3) and first["source_image"].dtype == np.uint8
    assert first["label"].dtype == np.int64 and first["aug_seed"].dtype == np.int32
    # Pixel value 10 * instance: each image is its label's.
    np.testing.assert_array_equal(first["source_image"][:, 0, 0, 0], 10 * first["label"])
    assert first["aug_seed"].shape == (2,) and not np.array_equal(first["aug_seed"], second["aug_seed"])
    (views,) = data.views(first)
    assert views.shape == (4, 24, 24, 3) and views.dtype == tf.float32
    assert data.preview_images.shape[1:] == (24, 24, 3)  # the preview shows host-augmented views


def test_npid_device_augmentation_refuses_images_of_several_sizes(tmp_path):
    _class_sorted_folder(tmp_path, classes=("a",), size=40)
    _class_sorted_folder(tmp_path, classes=("b",), size=48)
    config = TrainConfig(run_dir=str(tmp_path / "run"), source=f"folder:{tmp_path}", method="npid",
                         augment_on="device")
    with pytest.raises(InputError, match="--method=npid --augment_on=device needs images of one size"):
        inputs.npid_data(config)


@pytest.mark.parametrize("sampling", ["online", "fixed"])
def test_scale_max_reaches_the_exemplar_chain(tmp_path, monkeypatch, sampling):
    _class_sorted_folder(tmp_path)
    built = []

    class RecordingChain(inputs.TransformChain):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(inputs, "TransformChain", RecordingChain)
    for scale_max, expected in ((2.24, (0.7, 2.24)), (0.0, (0.7, 1.4))):
        built.clear()
        (tmp_path / f"run_{scale_max}").mkdir()
        config = TrainConfig(run_dir=str(tmp_path / f"run_{scale_max}"), source=f"folder:{tmp_path}",
                             seed_sampling=sampling, num_seeds=8, batch_size=4, scale_max=scale_max)
        inputs.exemplar_data(config)
        assert built and all(chain.preset.scale == expected for chain in built)
