"""Fine-tuning: the class-balanced labelled subset, encoders read back from exports, and the whole comparison
on the demo's labelled crops in a few steps (checkpoints, resume, the `classify` export)."""
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from exemplar_tf import models
from exemplar_tf.data import sources
from exemplar_tf.evaluation import savedmodel
from exemplar_tf.finetuning import encoders, labels, loop, run
from exemplar_tf.serving import export

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_labelled_rows_are_class_balanced_seeded_and_exclusive():
    y = np.repeat(np.arange(3), [10, 20, 40])
    rows = labels.labelled_rows(y, per_class=4, seed=1)
    assert np.bincount(y[rows]).tolist() == [4, 4, 4]
    np.testing.assert_array_equal(rows, labels.labelled_rows(y, per_class=4, seed=1))
    assert not np.array_equal(rows, labels.labelled_rows(y, per_class=4, seed=2))
    assert np.bincount(y[labels.labelled_rows(y, fraction=0.1, seed=0)]).tolist() == [1, 2, 4]
    with pytest.raises(ValueError, match="exactly one"):
        labels.labelled_rows(y, per_class=2, fraction=0.1)


def _export_pair(base, batch_norm=True):
    """<base>/tiny/1 (an encoder with perturbed weights) and <base>/tiny_random/1; returns (trained, path)."""
    tf.keras.utils.set_random_seed(0)
    encoder = models.build_encoder("small", input_size=32, mean_rgb=(0.4, 0.5, 0.6), batch_norm=batch_norm)
    head = models.ProjectionHead(128)
    head.build((None, encoder.representation_dim))
    scales = [1.0] * len(encoder.feature_maps(tf.zeros([1, 32, 32, 3])))
    export.export_encoder(encoder, head, export_dir_base=str(base), name="tiny_random", percentiles=scales)
    for variable in encoder.trainable_variables:
        variable.assign(variable * 1.5 + 0.01)
    return encoder, export.export_encoder(encoder, head, export_dir_base=str(base), name="tiny", percentiles=scales)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_encoder_comes_back_from_its_export_with_its_weights(tmp_path, batch_norm):
    encoder, path = _export_pair(tmp_path, batch_norm)
    loaded, options = encoders.from_savedmodel(path)
    assert options == {"arch": "small", "input_size": 32, "dropout": 0.5, "batch_norm": batch_norm}
    assert options == encoder.options() == loaded.options()
    x = tf.random.uniform([2, 32, 32, 3], seed=1)
    np.testing.assert_allclose(loaded(x).numpy(), encoder(x).numpy(), rtol=1e-5, atol=1e-5)
    assert encoders.random_export(path, None) == os.path.join(str(tmp_path), "tiny_random", "1")


def _drop_from_export_info(path, *keys):
    """Rewrites the export's export_info.json without `keys`, as exports written before they were recorded."""
    info_path = os.path.join(path, export.INFO_PATH)
    info = json.load(open(info_path))
    with open(info_path, "w") as f:
        json.dump({key: value for key, value in info.items() if key not in keys}, f)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_exports_without_recorded_options_still_load(tmp_path, batch_norm):
    """Older exports recorded arch and input_size only: batch norm is told by the variables, dropout is 0.5."""
    encoder, path = _export_pair(tmp_path, batch_norm)
    _drop_from_export_info(path, "dropout", "batch_norm")
    loaded, options = encoders.from_savedmodel(path)
    assert options == {"arch": "small", "input_size": 32, "dropout": 0.5, "batch_norm": batch_norm}
    x = tf.random.uniform([2, 32, 32, 3], seed=1)
    np.testing.assert_allclose(loaded(x).numpy(), encoder(x).numpy(), rtol=1e-5, atol=1e-5)


def test_an_export_whose_variables_contradict_its_options_is_refused(tmp_path):
    _, path = _export_pair(tmp_path, batch_norm=True)
    info_path = os.path.join(path, export.INFO_PATH)
    info = json.load(open(info_path))
    with open(info_path, "w") as f:
        json.dump({**info, "batch_norm": False}, f)
    with pytest.raises(ValueError, match="do not match"):
        encoders.from_savedmodel(path)


def test_comparison_trains_resumes_and_exports_a_classifier(tmp_path, capsys):
    _, path = _export_pair(tmp_path / "savedmodels")
    options = run.Options(dataset="demo_labelled", out_dir=str(tmp_path / "ft"), export_name="tiny_finetuned",
                          labels_per_class=2, recipe=loop.Recipe(steps=6, batch_size=16, checkpoint_every=3),
                          export_base=str(tmp_path / "savedmodels"))
    report = run.compare(options, savedmodel=path)
    assert set(report["runs"]) == {"pretrained", "random", "scratch"} and report["num_labelled"] == 30
    assert report["runs"]["scratch"]["encoder_lr"] == options.scratch_lr
    for kind in report["runs"]:
        assert tf.train.latest_checkpoint(str(tmp_path / "ft" / kind / "checkpoints")).endswith("-6")
    assert json.load(open(tmp_path / "ft" / "results.json")) == report

    exported = tf.saved_model.load(report["runs"]["pretrained"]["export"]).signatures["classify"]
    test = sources.load_source("demo_labelled", "test")
    images = np.stack([e["image"] for e in test.dataset.as_numpy_iterator()])
    truth = np.array([e["label"] for e in test.dataset.as_numpy_iterator()])
    probabilities = exported(images=tf.constant(images, tf.uint8))["probabilities"].numpy()
    assert probabilities.shape == (300, 15)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    accuracy = float(np.mean(probabilities.argmax(axis=1) == truth))
    assert accuracy == pytest.approx(report["runs"]["pretrained"]["test_accuracy"], abs=1 / 300 + 1e-9)

    capsys.readouterr()
    resumed = run.compare(dataclasses.replace(options, recipe=dataclasses.replace(options.recipe, steps=8),
                                              baselines=()), savedmodel=path)
    assert "Resuming" in capsys.readouterr().out and set(resumed["runs"]) == {"pretrained"}
    assert tf.train.latest_checkpoint(str(tmp_path / "ft" / "pretrained" / "checkpoints")).endswith("-8")


def test_program_refuses_both_sources_and_both_label_counts():
    for args in (["--savedmodel=a", "--run_dir=b", "--labels_per_class=1"],
                 ["--savedmodel=a", "--labels_per_class=1", "--label_fraction=0.1"]):
        done = subprocess.run([sys.executable, "-m", "exemplar_tf.finetune", "--dataset=demo_labelled", *args],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and "exactly one" in done.stderr


def test_narrow_resnet_comes_back_from_its_export_and_as_a_float32_copy(tmp_path):
    """A ResNet of --resnet_width 16 with a forced ImageNet stem: the export records both, and the rebuilt encoder
    (fine-tuning, float32 copies) has the same shape and outputs."""
    encoder = models.build_encoder("resnet18", input_size=32, mean_rgb=(0.4, 0.5, 0.6), resnet_stem="imagenet",
                                   resnet_width=16)
    scales = [1.0] * len(encoder.feature_maps(tf.zeros([1, 32, 32, 3])))
    path = export.export_encoder(encoder, export_dir_base=str(tmp_path), name="narrow", percentiles=scales)
    info = savedmodel.read_export_info(path)
    assert (info["resnet_width"], info["resnet_stem"], info["representation_dim"]) == (16, "imagenet", 128)
    loaded, options = encoders.from_savedmodel(path)
    assert options == {"arch": "resnet18", "input_size": 32, "resnet_stem": "imagenet", "resnet_width": 16}
    x = tf.random.uniform([2, 32, 32, 3], seed=2)
    np.testing.assert_allclose(loaded(x).numpy(), encoder(x).numpy(), rtol=1e-5, atol=1e-5)
    assert encoders.fresh(options, (0.4, 0.5, 0.6), seed=0).representation_dim == 128
    bf16 = models.build_encoder("resnet18", input_size=32, mean_rgb=(0.4, 0.5, 0.6), resnet_stem="imagenet",
                                resnet_width=16, precision="mixed_bfloat16")
    copy = models.float32_copy(bf16)
    assert (copy.width, copy.imagenet_stem, copy.compute_dtype) == (16, True, "float32")
