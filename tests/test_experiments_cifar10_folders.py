"""experiments/cifar10_folders.py: CIFAR-10 from tensorflow-datasets (mocked here) as the JPEG class folders the
folder source and experiments/run_cifar10.sh read."""
import importlib
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from exemplar_tf import errors
from exemplar_tf.data.sources import load_source

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def script(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(REPO, "experiments"))
    return importlib.import_module("cifar10_folders")


def test_kept_positions_take_the_first_of_each_class_in_order(script):
    labels = np.array([2, 0, 2, 1, 0, 2, 1])
    np.testing.assert_array_equal(script.kept_positions(labels, 1), [0, 1, 3])
    np.testing.assert_array_equal(script.kept_positions(labels, 2), [0, 1, 2, 3, 4, 6])
    np.testing.assert_array_equal(script.kept_positions(labels, 0), np.arange(7))


def test_the_folders_hold_each_tfds_image_under_its_class_and_are_read_back(script, tmp_path):
    data_dir = str(tmp_path / "tfds")
    with tfds.testing.mock_data(num_examples=24):
        out = script.write_folders(str(tmp_path / "cifar10"), data_dir, test_per_class=1, quality=75)
        originals = {split: list(tfds.load("cifar10", split=split, data_dir=data_dir, shuffle_files=False)
                                 .as_numpy_iterator()) for split in ("train", "test")}
        names = load_source("cifar10", "train", data_dir=data_dir).class_names
    assert sorted(os.listdir(out)) == ["test", "train"] and not os.path.exists(f"{out}.partial")
    assert sorted(os.listdir(os.path.join(out, "train"))) == sorted(names)
    train = originals["train"]
    for index, example in enumerate(train):  # each image in its class folder, numbered by its tfds position
        path = os.path.join(out, "train", names[example["label"]], f"{index:05d}.jpg")
        decoded = np.asarray(Image.open(path).convert("RGB"), np.float32)
        errors_to_all = [np.abs(decoded - other["image"].astype(np.float32)).mean() for other in train]
        assert int(np.argmin(errors_to_all)) == index  # JPEG-close to its own image, not another one
    read_back = load_source(f"folder:{out}", "train")
    assert read_back.num_examples == 24 and list(read_back.class_names) == sorted(names)
    test_labels = {int(example["label"]) for example in originals["test"]}
    written = [name for name in os.listdir(os.path.join(out, "test")) if os.listdir(os.path.join(out, "test", name))]
    assert sorted(written) == sorted(names[label] for label in test_labels)  # one image of each class present
    assert sum(len(os.listdir(os.path.join(out, "test", name))) for name in written) == len(test_labels)
    with pytest.raises(errors.InputError, match="already exists"):
        script.write_folders(out, data_dir, test_per_class=0, quality=75)


def test_the_program_refuses_an_existing_folder_in_one_line(tmp_path):
    (tmp_path / "cifar10").mkdir()
    done = subprocess.run([sys.executable, "experiments/cifar10_folders.py", f"--out={tmp_path / 'cifar10'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stdout == "", done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"Error: {tmp_path / 'cifar10'} already exists; give another --out (nothing is overwritten)")
