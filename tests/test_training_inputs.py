"""training.inputs: the NPID instance subset chosen by --max_instances."""
import numpy as np
import tensorflow as tf
from PIL import Image

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
