"""The Python API at the package top (`exemplar_tf.api`, README "Python API"): training from a config object with the
program's run directory rules, an export as a Keras model (and as `keras.layers.TFSMLayer`), embeddings of arrays,
kNN and the linear probe on arrays. One tiny demo run (conftest.TINY_RUN) is trained for the module."""
import os
import pathlib
import re
import subprocess
import sys
import types

import keras
import numpy as np
import pytest

import exemplar_tf
from conftest import TINY_RUN
from exemplar_tf import api, errors
from exemplar_tf.evaluation.savedmodel import SavedModelFeatures

ROOT = pathlib.Path(__file__).resolve().parents[1]
API_NAMES = {"TrainConfig", "train_encoder", "load_encoder", "embed", "knn_accuracy", "linear_probe"}


def _images(seed: int, n: int, height: int, width: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(TrainConfig, RunResult) of a tiny demo run trained through the API."""
    base = tmp_path_factory.mktemp("api")
    # The rate drops at 90 %: step 3 of 4 and 5 of 6, past every trained step either way, so the run may grow to 6
    # (a --steps that moves a drop the run has trained past is refused).
    config = exemplar_tf.TrainConfig(run_dir=str(base / "run"), export_base=str(base / "savedmodels"), **TINY_RUN,
                                     lr_decay_at=(0.9,))
    return config, exemplar_tf.train_encoder(config)


def test_import_exemplar_tf_stays_free_of_tensorflow():
    """The programs import the package before parsing flags: neither the package nor its TrainConfig loads
    TensorFlow; the API's names are listed without being imported."""
    code = ("import sys, exemplar_tf; assert 'tensorflow' not in sys.modules; "
            "assert {'load_encoder', 'train_encoder'} <= set(dir(exemplar_tf)); "
            "config = exemplar_tf.TrainConfig(run_dir='r'); assert config.arch == 'small'; "
            "print('tensorflow' in sys.modules, sorted(exemplar_tf.__all__))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split(" ", 1) == ["False", f"{sorted(API_NAMES)}\n"]


def test_api_names_leave_the_programs_importable():
    """No API name is a program's module name, so `from exemplar_tf import train` is still the training program
    (which tests and users import) and unknown names still raise AttributeError."""
    programs = {path.stem for path in (ROOT / "exemplar_tf").glob("*.py")} - {"__init__"}
    assert set(exemplar_tf.__all__) == set(api.__all__) == API_NAMES and not API_NAMES & programs
    assert callable(exemplar_tf.train_encoder) and callable(exemplar_tf.load_encoder)
    from exemplar_tf import train as program

    assert isinstance(program, types.ModuleType) and program.__name__ == "exemplar_tf.train"
    assert exemplar_tf.train_encoder is api.train_encoder
    with pytest.raises(AttributeError):
        exemplar_tf.no_such_name  # noqa: B018


def test_train_encoder_builds_validates_and_defaults_the_run_dir_like_the_program(monkeypatch, tiny_config, tmp_path):
    """Keyword settings build the config (run_dir empty -> runs/<name>) or replace fields of one; a bad value is
    refused before anything runs."""
    seen = []
    monkeypatch.setattr(api.runs, "train", lambda config: seen.append(config) or "result")
    assert exemplar_tf.train_encoder(name="notebook", steps=3) == "result"
    assert seen[-1] == exemplar_tf.TrainConfig(run_dir=os.path.join("runs", "notebook"), name="notebook", steps=3)
    config = tiny_config(tmp_path / "run")
    exemplar_tf.train_encoder(config, steps=9)
    assert seen[-1].steps == 9 and seen[-1].run_dir == config.run_dir and seen[-1].num_seeds == config.num_seeds
    with pytest.raises(errors.InputError, match="knn_every"):
        exemplar_tf.train_encoder(config, knn_every=5, knn_source="")
    assert len(seen) == 2
    demo = exemplar_tf.TrainConfig(run_dir=str(tmp_path / "demo"))  # exemplar on the demo: softmax, demo_labelled
    exemplar_tf.train_encoder(demo, method="npid", source="folder:/photos", knn_every=0)  # the defaults follow
    assert seen[-1] == exemplar_tf.TrainConfig(run_dir=demo.run_dir, method="npid", source="folder:/photos")
    assert (seen[-1].objective, seen[-1].knn_source) == ("nce", "")


def test_train_encoder_trains_exports_and_resumes(trained):
    config, result = trained
    assert (result.step, result.steps_run) == (4, 4) and np.isfinite(result.loss)
    assert result.export_dir == os.path.join(config.export_base, "tiny", "1")
    assert os.path.isfile(os.path.join(config.run_dir, "flags.cfg"))
    assert os.path.isdir(os.path.join(config.export_base, "tiny_random", "1"))
    resumed = exemplar_tf.train_encoder(config, steps=6)  # the same run directory: resumes at step 4
    assert (resumed.step, resumed.steps_run) == (6, 2)
    assert resumed.export_dir == os.path.join(config.export_base, "tiny", "2")


@pytest.mark.parametrize("output", ["embedding", "representation", "features", "quadrants", "pyramid"])
def test_load_encoder_is_the_exports_signature_as_a_keras_model(trained, output):
    _, result = trained
    encoder = exemplar_tf.load_encoder(result.export_dir, output)
    assert isinstance(encoder, keras.Model) and encoder.trainable_weights == [] and encoder.non_trainable_weights
    reader = SavedModelFeatures(result.export_dir)
    for images in (_images(0, 3, 32, 32), _images(1, 2, 45, 61)):  # any height and width
        got = np.asarray(encoder(images))
        assert got.dtype == np.float32 and got.shape[0] == len(images)
        np.testing.assert_allclose(got, reader(images, output), atol=1e-5)


def test_load_encoder_takes_a_model_folder_and_refuses_what_is_no_export(trained, tmp_path):
    config, result = trained
    model_dir = os.path.dirname(result.export_dir)
    newest = max((entry for entry in os.listdir(model_dir) if entry.isdigit()), key=int)
    images = _images(2, 2, 32, 32)
    np.testing.assert_allclose(exemplar_tf.load_encoder(model_dir)(images),
                               SavedModelFeatures(os.path.join(model_dir, newest))(images, "embedding"), atol=1e-5)
    with pytest.raises(errors.InputError, match="no such SavedModel folder"):
        exemplar_tf.load_encoder(tmp_path / "missing")
    with pytest.raises(errors.InputError, match="not a SavedModel folder"):
        exemplar_tf.load_encoder(config.run_dir)
    with pytest.raises(errors.InputError, match="'logits' is not one of"):
        exemplar_tf.load_encoder(result.export_dir, "logits")


def test_keras_tfsmlayer_reads_the_export(trained):
    """Plain Keras reads the export too: `keras.layers.TFSMLayer` on serving_default (and pooled_features) gives
    load_encoder's outputs, called on arrays or inside a functional model."""
    _, result = trained
    images = _images(3, 4, 40, 48)
    layer = keras.layers.TFSMLayer(result.export_dir, call_endpoint="serving_default")
    outputs = layer(images)
    assert set(outputs) == {"embedding", "representation", "features"}
    np.testing.assert_allclose(outputs["embedding"], exemplar_tf.load_encoder(result.export_dir)(images), atol=1e-6)
    np.testing.assert_allclose(exemplar_tf.embed(layer, images, output="features"),
                               exemplar_tf.embed(result.export_dir, images, output="features"), atol=1e-5)
    pooled = keras.layers.TFSMLayer(result.export_dir, call_endpoint="pooled_features")
    inputs = keras.Input((None, None, 3), dtype="uint8")
    pyramid = keras.Model(inputs, pooled(inputs)["pyramid"])
    np.testing.assert_allclose(pyramid(images), SavedModelFeatures(result.export_dir)(images, "pyramid"), atol=1e-5)


def test_load_encoder_composes_and_stays_frozen(trained):
    """The encoder inside Sequential and functional models; fitting a head on top leaves its weights alone."""
    _, result = trained
    encoder = exemplar_tf.load_encoder(result.export_dir)
    images = _images(4, 8, 32, 32)
    sequential = keras.Sequential([keras.Input((None, None, 3), dtype="uint8"), encoder, keras.layers.Dense(3)])
    assert sequential.predict(images, verbose=0).shape == (8, 3)
    inputs = keras.Input((32, 32, 3), dtype="uint8")
    classifier = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(encoder(inputs)))
    classifier.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    before = exemplar_tf.embed(encoder, images)
    classifier.fit(images, np.arange(8) % 3, batch_size=4, epochs=1, verbose=0)
    np.testing.assert_array_equal(exemplar_tf.embed(encoder, images), before)


def test_embed_batches_arrays_and_lists_of_mixed_sizes(trained):
    _, result = trained
    encoder = exemplar_tf.load_encoder(result.export_dir)
    images = _images(5, 5, 32, 40)
    whole = np.asarray(encoder(images))
    by_path = exemplar_tf.embed(result.export_dir, images, batch_size=2)
    assert by_path.dtype == np.float32 and by_path.shape == (5, whole.shape[1])
    np.testing.assert_allclose(by_path, whole, atol=1e-5)
    other = _images(6, 1, 50, 30)[0]
    mixed = exemplar_tf.embed(encoder, [images[0], images[1], other, images[2]], batch_size=8)
    np.testing.assert_allclose(mixed[[0, 1, 3]], whole[:3], atol=1e-5)
    np.testing.assert_allclose(mixed[2], np.asarray(encoder(other[None]))[0], atol=1e-5)
    with pytest.raises(errors.InputError, match="must be uint8"):
        exemplar_tf.embed(encoder, images.astype(np.float32) / 255)


def _clusters(seed: int, per_class: int, classes: int = 3, dim: int = 16):
    """Features of `classes` well-separated Gaussian clusters, labels 0..classes-1."""
    rng = np.random.default_rng(seed)
    centres = np.eye(classes, dim) * 5
    labels = np.repeat(np.arange(classes), per_class)
    return (centres[labels] + rng.normal(size=(len(labels), dim))).astype(np.float32), labels


def test_knn_accuracy_and_linear_probe_on_arrays():
    from exemplar_tf.metrics import knn

    train_x, train_y = _clusters(0, 20)
    test_x, test_y = _clusters(1, 10)
    scores = exemplar_tf.knn_accuracy(train_x, train_y, test_x, test_y, k=10)
    assert scores == knn.knn_accuracy(train_x, train_y, test_x, test_y, k=10) and scores["top1"] == 1.0
    wrong = exemplar_tf.knn_accuracy(train_x, train_y, test_x, (test_y + 1) % 3, k=10)
    assert wrong["top1"] == 0.0
    probe = exemplar_tf.linear_probe(train_x, train_y, test_x, test_y, c_values=[0.01, 0.1])
    assert probe.accuracy == 1.0 and probe.c in probe.validation and probe.converged
    with pytest.raises(errors.InputError, match="labels must be class numbers"):
        exemplar_tf.linear_probe(train_x, train_y.astype(np.float32), test_x, test_y)
    with pytest.raises(errors.InputError, match="features must be"):
        exemplar_tf.knn_accuracy(train_x, train_y[:-1], test_x, test_y)


def test_readme_documents_the_api():
    """README's "Python API" section (before the results) names every API name, and every `exemplar_tf.<name>` it
    uses exists."""
    readme = (ROOT / "README.md").read_text()
    assert readme.index("## Python API") < readme.index("## Results on CIFAR-10")
    section = readme.split("## Python API", 1)[1].split("\n## ", 1)[0]
    used = set(re.findall(r"exemplar_tf\.(\w+)", section))
    assert API_NAMES <= used, f"undocumented: {API_NAMES - used}"
    assert "TFSMLayer" in section
    missing = {name for name in used if not hasattr(exemplar_tf, name)
               and not (ROOT / "exemplar_tf" / f"{name}.py").exists() and not (ROOT / "exemplar_tf" / name).is_dir()}
    assert not missing, f"README names exemplar_tf.{missing}, which does not exist"


def test_readme_example_runs(trained, monkeypatch, tmp_path, capsys):
    """The README's example as written, on the demo crops, with its 200-step training replaced by this module's
    tiny run (its config is still built and validated)."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Python API", 1)[1].split("\n## ", 1)[0]
    (example,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    configs = []

    def tiny_training(config):
        configs.append(api.validate(config))
        return trained[1]

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(exemplar_tf, "train_encoder", tiny_training)
    exec(compile(example, "README.md (Python API)", "exec"), {})
    assert [config.run_dir for config in configs] == ["runs/notebook"]
    printed = capsys.readouterr().out
    assert re.search(r"\{'top1': [\d.]+, 'top5': [\d.]+\}\nlinear probe [\d.]+ at C=", printed), printed
