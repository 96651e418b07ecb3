"""flags/imagenet_npid.cfg cannot rot: its settings (ResNet-50 with the ImageNet stem, NPID augmentation, NCE)
build the input pipeline from a tiny image folder and train two steps, scaled down in size, batch and m."""
import os

import numpy as np
import tensorflow as tf
import pytest
from absl import flags
from absl.testing import flagsaver
from PIL import Image

from exemplar_tf import train
from exemplar_tf.training import distribute, inputs, summaries
from exemplar_tf.training.step import build_state, make_train_step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGFILE = os.path.join(REPO, "flags", "imagenet_npid.cfg")


def _tiny_imagenet_folder(root, classes=("n01440764", "n01443537"), per_class=6):
    rng = np.random.default_rng(0)
    for name in classes:
        for split in ("train", "val"):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, size=(rng.integers(100, 140), rng.integers(100, 140), 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.JPEG")


def test_the_recipe_holds_the_papers_numbers():
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["train", f"--flagfile={FLAGFILE}"])
        config = train.config_from_flags()
    assert (config.arch, config.image_size, config.method, config.objective) == ("resnet50", 224, "npid", "nce")
    assert (config.nce_m, config.tau, config.batch_size, config.lr, config.weight_decay) == (4096, 0.07, 256, 0.03,
                                                                                             1e-4)
    steps_per_epoch = 1_281_167 / config.batch_size
    assert round(config.steps / steps_per_epoch) == 200
    decay_epochs = [round(f * config.steps / steps_per_epoch) for f in config.lr_decay_at]
    assert decay_epochs == [120, 160] and config.lr_decay_factor == 0.1
    assert config.source == "imagenet2012"


@pytest.mark.slow  # ResNet-50: ~50 s of CPU time (2 cores), mostly tracing the step; minutes on a busy machine
@pytest.mark.timeout(1200)
def test_the_recipe_trains_two_steps_on_a_tiny_folder(tmp_path):
    _tiny_imagenet_folder(tmp_path / "imagenet")
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["train", f"--flagfile={FLAGFILE}", f"--source=folder:{tmp_path / 'imagenet'}",
                     f"--run_dir={tmp_path / 'run'}", "--image_size=96", "--batch_size=4", "--nce_m=8",
                     f"--knn_source=folder:{tmp_path / 'imagenet'}", "--knn_split=val"])  # as the cfg's header
        config = train.config_from_flags()  # says; --steps stays the recipe's: two steps are run by hand
    for split in (config.knn_train_split, config.knn_split):  # the kNN monitor reads the folder's train and val
        images = summaries.labelled_images(config.knn_source, split, config.input_size, config.knn_max_examples)
        assert images[0].shape == (12, 96, 96, 3) and sorted(set(images[1])) == [0, 1]
    strategy = distribute.make_strategy(config.strategy)
    data = inputs.training_data(config)
    assert data.num_instances == 12
    with strategy.scope():
        state = build_state(config, data.num_instances, data.mean_rgb, data.views)
    assert state.encoder.imagenet_stem  # the 224-px recipe's 7x7 stride-2 stem + max-pool, kept at 96 px
    bank_before = state.objective.bank().numpy()
    step = make_train_step(config, strategy, state)
    iterator = iter(strategy.distribute_datasets_from_function(data.dataset_fn))
    batch = next(iterator)
    assert batch["image"].shape == (4, 96, 96, 3)
    losses = [float(step(iterator, tf.constant(1))["loss"]) for _ in range(2)]
    assert state.step == 2 and all(np.isfinite(losses))
    assert float(state.optimizer.learning_rate) == pytest.approx(config.lr)  # float32 schedule value
    assert np.count_nonzero(np.abs(state.objective.bank().numpy() - bank_before).max(axis=1) > 0) >= 4
