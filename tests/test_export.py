"""Evaluation-feature pooling and the SavedModel export (signatures, numbers in a fresh process, versions, one run
per model name, exports of a moved project)."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from exemplar_tf import errors
from exemplar_tf.evaluation import savedmodel
from exemplar_tf.models import features
from exemplar_tf.models import ProjectionHead, build_encoder
from exemplar_tf.objectives.memory_bank import MemoryBank
from exemplar_tf.serving import export

MEAN_RGB = (0.45, 0.42, 0.39)
SMALL_CHANNELS = (64, 64, 128)  # conv1, conv2, fc of the small Exemplar-CNN


# ---------------------------------------------------------------- pooling


def test_quadrant_max_pool_takes_the_max_of_each_quadrant():
    fmap = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)  # row-major 0..15
    pooled = features.quadrant_max_pool(tf.constant(fmap)).numpy()
    np.testing.assert_array_equal(pooled, [[5, 7, 13, 15]])


def test_quadrants_of_odd_and_single_pixel_maps_overlap_in_the_middle():
    fmap = np.array([[1, 2, 3], [4, 9, 5], [6, 7, 8]], np.float32).reshape(1, 3, 3, 1)
    np.testing.assert_array_equal(features.quadrant_max_pool(tf.constant(fmap)).numpy(), [[9, 9, 9, 9]])
    corner = np.array([[9, 2, 3], [4, 1, 5], [6, 7, 8]], np.float32).reshape(1, 3, 3, 1)
    np.testing.assert_array_equal(features.quadrant_max_pool(tf.constant(corner)).numpy(), [[9, 5, 7, 8]])
    one = tf.constant([[[[3.0, -1.0]]]])  # [1,1,1,2]
    np.testing.assert_array_equal(features.quadrant_max_pool(one).numpy(), [[3, -1] * 4])


def test_pyramid_is_global_then_quadrants_then_4x4_cells_channel_interleaved():
    rng = np.random.default_rng(1)
    fmap = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
    pooled = features.pyramid_max_pool(tf.constant(fmap)).numpy()
    assert pooled.shape == (2, 21 * 3)
    np.testing.assert_array_equal(pooled[:, :3], fmap.max(axis=(1, 2)))
    np.testing.assert_array_equal(pooled[:, 3:6], fmap[:, :4, :4].max(axis=(1, 2)))  # top-left quadrant
    cell_2_3 = fmap[:, 4:6, 6:8].max(axis=(1, 2))  # level 4: row 2, column 3 = cell 11
    np.testing.assert_array_equal(pooled[:, 15 + 11 * 3:15 + 12 * 3], cell_2_3)


def test_pooling_works_on_unknown_spatial_shape():
    pool = tf.function(features.pyramid_max_pool, input_signature=[tf.TensorSpec([None, None, None, 2])])
    fmap = np.random.default_rng(2).normal(size=(1, 5, 7, 2)).astype(np.float32)
    np.testing.assert_array_equal(pool(tf.constant(fmap)).numpy(), features.pyramid_max_pool(fmap).numpy())


def test_evaluation_features_divide_each_layer_by_its_scale_and_concatenate():
    first = tf.fill([1, 4, 4, 1], 6.0)
    second = tf.fill([1, 2, 2, 2], 8.0)
    out = features.evaluation_features([first, second], [2.0, 4.0], "quadrants").numpy()
    np.testing.assert_array_equal(out, [[3.0] * 4 + [2.0] * 8])
    with pytest.raises(ValueError, match="scales"):
        features.evaluation_features([first, second], [2.0], "quadrants")


def test_at_least_size_upsamples_only_short_sides():
    images = tf.zeros([2, 20, 50, 3])
    assert features.at_least_size(images, 32).shape == (2, 32, 50, 3)
    np.testing.assert_array_equal(features.at_least_size(images + 0.5, 16).numpy(), images.numpy() + 0.5)


class _FixedMaps:
    """Stand-in encoder whose feature maps are the image itself and its square (known activations)."""

    input_size = 4

    def feature_maps(self, images, training=False):
        return [images, tf.square(images) * 7.0]


def test_activation_percentiles_equal_numpy_over_all_activations():
    images = np.random.default_rng(3).integers(0, 256, (13, 9, 9, 3), dtype=np.uint8)
    got = features.activation_percentiles(_FixedMaps(), images, q=99.99, batch_size=5)
    x = images.astype(np.float32) / 255.0
    expected = [np.percentile(x, 99.99), np.percentile(np.square(x) * 7.0, 99.99)]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_allclose(features.activation_percentiles(_FixedMaps(), images, q=50.0, batch_size=4),
                               [np.percentile(x, 50.0), np.percentile(np.square(x) * 7.0, 50.0)], rtol=1e-6)


def test_dead_layer_gets_scale_one():
    assert features.activation_percentiles(_FixedMaps(), np.zeros((2, 4, 4, 3), np.uint8)) == [1.0, 1.0]


# ---------------------------------------------------------------- export


@pytest.fixture(scope="module")
def model():
    tf.keras.utils.set_random_seed(0)
    encoder = build_encoder("small", input_size=32, mean_rgb=MEAN_RGB)
    head = ProjectionHead(128)
    head.build((None, encoder.representation_dim))
    train_images = np.random.default_rng(4).integers(0, 256, (12, 64, 64, 3), dtype=np.uint8)
    return encoder, head, export.measure_percentiles(encoder, train_images)


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    encoder, head, percentiles = model
    base = tmp_path_factory.mktemp("savedmodels")
    return export.export_encoder(encoder, head, export_dir_base=str(base), name="tiny", percentiles=percentiles)


def _cli(*args):
    result = subprocess.run(["saved_model_cli", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_saved_model_cli_shows_uint8_images_and_float_outputs(exported):
    shown = _cli("show", "--dir", exported, "--tag_set", "serve", "--signature_def", "serving_default")
    inputs, outputs = shown.split("output(s):")
    assert "inputs['images']" in inputs and "DT_UINT8" in inputs and "shape: (-1, -1, -1, 3)" in inputs
    for key in ("embedding", "features"):
        block = outputs.split(f"outputs['{key}']")[1].split("outputs[")[0]
        assert "DT_FLOAT" in block
    assert "outputs['embedding']" in outputs and "outputs['features']" in outputs


def test_saved_model_cli_run_returns_the_right_shapes(exported, tmp_path):
    # TF 2.21's --input_exprs accepts Python literals only (no np.zeros), so the batch goes in as a .npy file.
    np.save(tmp_path / "zeros.npy", np.zeros((2, 64, 64, 3), dtype=np.uint8))
    _cli("run", "--dir", exported, "--tag_set", "serve", "--signature_def", "serving_default",
         "--inputs", f"images={tmp_path / 'zeros.npy'}", "--outdir", str(tmp_path))
    assert np.load(tmp_path / "embedding.npy").shape == (2, 128)
    assert np.load(tmp_path / "features.npy").shape == (2, 4 * sum(SMALL_CHANNELS))


def _reference(encoder, head, percentiles, images):
    """What the export must compute, written out directly (numpy quadrants, no tf resize of the features)."""
    x = tf.constant(images, tf.float32) / 255.0
    small = tf.image.resize(x, (32, 32), method="bilinear", antialias=True)
    embedding = tf.math.l2_normalize(head(encoder(small, training=False)), axis=-1).numpy()
    pooled = []
    for fmap, scale in zip(encoder.feature_maps(x), percentiles):
        fmap = fmap.numpy()
        h, w = fmap.shape[1:3]
        rows = [(0, -(-h // 2)), (h // 2, h)]
        cols = [(0, -(-w // 2)), (w // 2, w)]
        pooled += [fmap[:, r0:r1, c0:c1].max(axis=(1, 2)) / scale for r0, r1 in rows for c0, c1 in cols]
    return embedding, np.concatenate(pooled, axis=-1)


FRESH_PROCESS = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    model = tf.saved_model.load(sys.argv[1])
    out = model.signatures["serving_default"](images=tf.constant(np.load(sys.argv[2])))
    assert not any(name.startswith("exemplar_tf") for name in sys.modules), "imported exemplar_tf"
    np.save(sys.argv[3], out["embedding"].numpy())
    np.save(sys.argv[4], out["features"].numpy())
""")


def test_fresh_process_without_exemplar_tf_gets_the_in_process_numbers(model, exported, tmp_path):
    encoder, head, percentiles = model
    images = np.random.default_rng(5).integers(0, 256, (3, 45, 70, 3), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    (tmp_path / "load.py").write_text(FRESH_PROCESS)
    result = subprocess.run([sys.executable, str(tmp_path / "load.py"), exported, str(tmp_path / "images.npy"),
                             str(tmp_path / "embedding.npy"), str(tmp_path / "features.npy")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": ""})
    assert result.returncode == 0, result.stderr
    embedding, feats = _reference(encoder, head, percentiles, images)
    np.testing.assert_allclose(np.load(tmp_path / "embedding.npy"), embedding, atol=1e-5)
    np.testing.assert_allclose(np.load(tmp_path / "features.npy"), feats, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, atol=1e-5)


def test_signature_rejects_float_images_and_one_channel(exported):
    serve = tf.saved_model.load(exported).signatures["serving_default"]
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError)):
        serve(images=tf.zeros([1, 32, 32, 3], tf.float32))
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError)):
        serve(images=tf.zeros([1, 32, 32, 1], tf.uint8))


def test_pooled_features_signature_gives_both_poolings_and_small_images_are_upsampled(exported):
    loaded = tf.saved_model.load(exported)
    tiny = tf.constant(np.random.default_rng(6).integers(0, 256, (2, 20, 24, 3), dtype=np.uint8))
    pooled = loaded.signatures["pooled_features"](images=tiny)
    assert pooled["quadrants"].shape == (2, 4 * sum(SMALL_CHANNELS))
    assert pooled["pyramid"].shape == (2, 21 * sum(SMALL_CHANNELS))
    served = loaded.signatures["serving_default"](images=tiny)
    np.testing.assert_allclose(served["features"].numpy(), pooled["quadrants"].numpy(), atol=1e-6)
    assert savedmodel.read_export_info(exported)["pooling"] == "quadrants"


def test_memory_bank_is_not_exported(model, tmp_path):
    encoder, head, percentiles = model
    bank = MemoryBank(77, 128)  # lives next to the model in training; must not leak into the export
    path = export.export_encoder(encoder, head, export_dir_base=str(tmp_path), name="nobank",
                                 percentiles=percentiles)
    loaded = tf.saved_model.load(path)
    names = [v.name for v in loaded.variables] + [key for key, _ in tf.train.list_variables(
        os.path.join(path, "variables", "variables"))]
    assert not [n for n in names if "bank" in n.lower() or "memory" in n.lower()]
    assert (77, 128) not in [tuple(shape) for _, shape in tf.train.list_variables(
        os.path.join(path, "variables", "variables"))]
    assert bank.num_instances == 77


def test_headless_export_embeds_with_the_normalised_representation_and_stores_pyramid(model, tmp_path):
    encoder, _, percentiles = model
    path = export.export_encoder(encoder, None, export_dir_base=str(tmp_path), name="softmax",
                                 percentiles=percentiles, pooling="pyramid")
    images = np.random.default_rng(7).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    out = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(images))
    representation = encoder(tf.constant(images, tf.float32) / 255.0, training=False).numpy()
    expected = representation / np.linalg.norm(representation, axis=1, keepdims=True)
    np.testing.assert_allclose(out["embedding"].numpy(), expected, atol=1e-5)
    assert out["features"].shape == (2, 21 * sum(SMALL_CHANNELS))
    info = savedmodel.read_export_info(path)
    assert info["embedding"] == "representation" and info["embedding_dim"] == 128 and info["input_size"] == 32


def test_representation_output_is_the_normalised_encoder_output_below_an_mlp_head(model, tmp_path):
    """serving_default's `representation` is normalise(encoder(images)) and `embedding` the MLP head on it."""
    encoder, _, percentiles = model
    head = ProjectionHead(128, hidden_dim=64)
    head.build((None, encoder.representation_dim))
    path = export.export_encoder(encoder, head, export_dir_base=str(tmp_path), name="mlp", percentiles=percentiles)
    images = np.random.default_rng(8).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    out = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(images))
    representation = encoder(tf.constant(images, tf.float32) / 255.0, training=False)
    np.testing.assert_allclose(out["representation"].numpy(), tf.math.l2_normalize(representation, -1).numpy(),
                               atol=1e-5)
    np.testing.assert_allclose(out["embedding"].numpy(), head(representation).numpy(), atol=1e-5)
    assert not np.allclose(out["embedding"].numpy()[:, :8], out["representation"].numpy()[:, :8], atol=1e-2)
    info = savedmodel.read_export_info(path)
    assert info["head_hidden_dim"] == 64 and info["embedding"] == "projection_head" and info["embedding_dim"] == 128
    features = savedmodel.SavedModelFeatures(path)
    np.testing.assert_allclose(features(images, "representation"), out["representation"].numpy(), atol=1e-6)


def test_versions_are_integers_and_auto_increment(model, tmp_path):
    encoder, head, percentiles = model
    kwargs = dict(export_dir_base=str(tmp_path), name="v", percentiles=percentiles)
    assert export.export_encoder(encoder, head, **kwargs) == os.path.join(str(tmp_path), "v", "1")
    assert export.export_encoder(encoder, head, **kwargs).endswith(os.sep + "2")
    assert export.export_encoder(encoder, head, version=7, **kwargs).endswith(os.sep + "7")
    assert export.export_encoder(encoder, head, **kwargs).endswith(os.sep + "8")
    with pytest.raises(errors.InputError, match="v/2 already exists"):
        export.export_encoder(encoder, head, version=2, **kwargs)
    assert sorted(os.listdir(tmp_path / "v"), key=int) == ["1", "2", "7", "8"]  # no temporary folders left
    assert export.version_path(str(tmp_path / "v")) == os.path.join(str(tmp_path), "v", "9")
    assert export.version_path(str(tmp_path / "v"), 3) == os.path.join(str(tmp_path), "v", "3")
    assert export.next_version(str(tmp_path / "missing")) == 1


def test_wrong_arguments_are_refused(model, tmp_path):
    encoder, head, percentiles = model
    with pytest.raises(ValueError, match="percentiles"):
        export.export_encoder(encoder, head, export_dir_base=str(tmp_path), name="x", percentiles=[1.0])
    with pytest.raises(ValueError, match="pooling"):
        export.export_encoder(encoder, head, export_dir_base=str(tmp_path), name="x", percentiles=percentiles,
                              pooling="average")


def test_program_exports_the_latest_checkpoint_of_a_run(tmp_path):
    run_dir = tmp_path / "run"
    tf.keras.utils.set_random_seed(11)
    encoder = build_encoder("small", input_size=32, mean_rgb=(0.3, 0.2, 0.1))
    head = ProjectionHead(128)
    head.build((None, encoder.representation_dim))
    bank = MemoryBank(30, 128)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(encoder=encoder, head=head, bank=bank),
                                         str(run_dir / "checkpoints"), max_to_keep=2)
    manager.save(checkpoint_number=5)
    encoder.convs[0].kernel.assign(encoder.convs[0].kernel * 2.0)  # the newest checkpoint is the one to export
    manager.save(checkpoint_number=9)
    (run_dir / "flags.cfg").write_text(
        f"--name=myrun\n--source=demo\n--split=train\n--method=exemplar\n--arch=small\n--patch_size=32\n"
        f"--image_size=32\n--objective=nce\n--embedding_dim=128\n--export_base={tmp_path / 'sm'}\n")
    result = subprocess.run([sys.executable, "-m", "exemplar_tf.export", f"--run_dir={run_dir}", "--version=3"],
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    path = result.stdout.strip().splitlines()[-1]
    assert path == str(tmp_path / "sm" / "myrun" / "3")
    # the status line before the export, on stderr: stdout stays the path alone (issue 32 item 8)
    assert result.stdout.strip() == path
    assert f"Writing the SavedModel of the newest checkpoint of {run_dir} to {path} ..." in result.stderr.splitlines()
    images = np.random.default_rng(8).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    served = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(images))
    expected, _ = _reference(encoder, head, [1.0, 1.0, 1.0], images)
    np.testing.assert_allclose(served["embedding"].numpy(), expected, atol=1e-5)
    assert len(savedmodel.read_export_info(path)["percentiles"]) == 3
    again = subprocess.run([sys.executable, "-m", "exemplar_tf.export", f"--run_dir={run_dir}", "--version=3"],
                           cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           capture_output=True, text=True, timeout=180)
    assert again.returncode == 2 and again.stdout == "", again.stderr
    assert again.stderr.strip().splitlines()[-1].startswith(f"Error: {path} already exists (a version is never ")
    assert "Writing the SavedModel" not in again.stderr  # refused before the checkpoint is read


def test_export_info_records_name_origin_and_creation_time(model, tmp_path):
    encoder, head, percentiles = model
    path = export.export_encoder(encoder, head, export_dir_base=str(tmp_path), name="run7", percentiles=percentiles,
                                 origin={"run_dir": "runs/r7", "step": 1234})
    info = savedmodel.read_export_info(path)
    assert info["name"] == "run7" and info["run_dir"] == os.path.abspath("runs/r7") and info["step"] == 1234
    assert info["run_dir_relative"] == os.path.relpath(os.path.abspath("runs/r7"), str(tmp_path))
    assert info["arch"] == "small" and info["input_size"] == 32 and info["created"][:2] == "20"
    plain = savedmodel.read_export_info(export.export_encoder(encoder, head, export_dir_base=str(tmp_path), name="p",
                                                          percentiles=percentiles))
    assert plain["run_dir"] is None and plain["step"] is None


# ---------------------------------------------------------------- a model name is one run's (issue 32.2)


def _fake_version(path, **info):
    """A version folder with only assets.extra/export_info.json: all the name check and the reader look at."""
    os.makedirs(os.path.join(path, "assets.extra"))
    with open(os.path.join(path, export.INFO_PATH), "w") as f:
        json.dump(info, f)
    return str(path)


def test_a_model_name_takes_versions_from_one_run_and_one_network(model, tmp_path):
    encoder, head, percentiles = model
    kwargs = dict(export_dir_base=str(tmp_path), name="m", percentiles=percentiles)
    export.export_encoder(encoder, head, origin={"run_dir": str(tmp_path / "runs" / "a"), "step": 0}, **kwargs)
    assert export.export_encoder(encoder, head, origin={"run_dir": str(tmp_path / "runs" / "a"), "step": 9},
                                 **kwargs).endswith(os.sep + "2")  # the same run: a new version
    with pytest.raises(export.ExportNameTaken) as refused:
        export.export_encoder(encoder, head, origin={"run_dir": str(tmp_path / "runs" / "b"), "step": 9}, **kwargs)
    message = str(refused.value)
    assert "\n" not in message and f"exported from run {tmp_path / 'runs' / 'a'}" in message
    assert f"this export is from run {tmp_path / 'runs' / 'b'}" in message and "own --name" in message
    assert sorted(os.listdir(tmp_path / "m")) == ["1", "2"]  # nothing written, no staging folder left
    with pytest.raises(export.ExportNameTaken, match="no recorded run"):
        export.export_encoder(encoder, head, **kwargs)  # a library export without a run does not join either
    narrow = ProjectionHead(64)  # the same run directory started over with another embedding size
    narrow.build((None, encoder.representation_dim))
    with pytest.raises(export.ExportNameTaken, match="with embedding_dim=128, and this export has embedding_dim=64"):
        export.export_encoder(encoder, narrow, origin={"run_dir": str(tmp_path / "runs" / "a"), "step": 0}, **kwargs)
    assert sorted(os.listdir(tmp_path / "m")) == ["1", "2"]

    # Exports written before run_dir_relative (absolute run_dir only); the same run directory started over with
    # another network (--overwrite): arch or input size differ.
    run_x = str(tmp_path / "runs" / "x")
    os.makedirs(run_x)
    _fake_version(tmp_path / "n" / "1", run_dir=run_x, arch="small", input_size=32)
    export.check_model_name(str(tmp_path), "n", run_x, {"arch": "small", "input_size": 32})
    with pytest.raises(export.ExportNameTaken, match="arch=small, and this export has arch=resnet18"):
        export.check_model_name(str(tmp_path), "n", run_x, {"arch": "resnet18", "input_size": 32})
    _fake_version(tmp_path / "w" / "1", run_dir=run_x, arch="resnet18", input_size=32, resnet_width=64)
    with pytest.raises(export.ExportNameTaken, match="resnet_width=64, and this export has resnet_width=32"):
        export.check_model_name(str(tmp_path), "w", run_x, {"arch": "resnet18", "input_size": 32, "resnet_width": 32})
    with pytest.raises(export.ExportNameTaken, match=f"exported from run {run_x}, and this export is from run /r/y"):
        export.check_model_name(str(tmp_path), "n", "/r/y")
    os.makedirs(tmp_path / "n" / "2")  # no export_info.json (not an exemplar_tf export): not compared
    export.check_model_name(str(tmp_path), "n", run_x)
    export.check_model_name(str(tmp_path), "missing", "/r/y")
    # An old export whose absolute run directory is gone (the project moved) cannot be placed: only the network
    # is compared.
    _fake_version(tmp_path / "moved" / "1", run_dir="/gone/runs/x", arch="small", input_size=32)
    export.check_model_name(str(tmp_path), "moved", "/new/runs/x", {"arch": "small", "input_size": 32})
    with pytest.raises(export.ExportNameTaken, match="input_size=32, and this export has input_size=64"):
        export.check_model_name(str(tmp_path), "moved", "/new/runs/x", {"arch": "small", "input_size": 64})


def test_program_refuses_a_name_whose_versions_come_from_another_run(tmp_path):
    """`--flagfile=flags/demo.cfg --run_dir=elsewhere`: the name's versions are the README's demo run's."""
    run_dir = tmp_path / "elsewhere"
    encoder = build_encoder("small", input_size=32, mean_rgb=MEAN_RGB)  # a run the program could export
    tf.train.CheckpointManager(tf.train.Checkpoint(encoder=encoder), str(run_dir / "checkpoints"),
                               max_to_keep=1).save(checkpoint_number=3)
    (run_dir / "flags.cfg").write_text(
        f"--name=demo\n--source=demo\n--split=train\n--method=exemplar\n--arch=small\n--patch_size=32\n"
        f"--image_size=32\n--objective=softmax\n--export_base={tmp_path / 'sm'}\n")
    _fake_version(tmp_path / "sm" / "demo" / "1", name="demo", run_dir=str(tmp_path / "runs" / "demo"),
                  run_dir_relative=os.path.join("..", "runs", "demo"), arch="small", input_size=32)
    result = subprocess.run([sys.executable, "-m", "exemplar_tf.export", f"--run_dir={run_dir}"],
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line == (f"Error: {tmp_path / 'sm' / 'demo'} holds version 1 exported from run {tmp_path / 'runs' / 'demo'}"
                    f", and this export is from run {run_dir}: every version of a model name must come from one run "
                    f"(TF Serving serves the newest); give this one its own --name")
    assert os.listdir(tmp_path / "sm" / "demo") == ["1"]


def test_pre_check_refuses_before_training_for_both_export_names(tiny_config, tmp_path):
    from exemplar_tf.serving import runs

    config = tiny_config(tmp_path / "runs" / "tiny")
    runs.check_export_name(config)  # nothing exported yet
    _fake_version(os.path.join(config.export_base, "tiny_random", "1"),
                  **export.origin_fields(config.run_dir, config.export_base), arch="small", input_size=config.input_size)
    runs.check_export_name(config)  # its own run's baseline
    with pytest.raises(export.ExportNameTaken, match=r"tiny_random holds version 1 exported from run"):
        runs.check_export_name(tiny_config(tmp_path / "runs" / "other"))
    with pytest.raises(export.ExportNameTaken, match="arch=small, and this export has arch=resnet18"):
        runs.check_export_name(tiny_config(tmp_path / "runs" / "tiny", arch="resnet18"))
    runs.check_export_name(tiny_config(tmp_path / "runs" / "other"), name="other_name")
    # Dropout changes training, not the network served: a restart with another rate keeps the name.
    _fake_version(os.path.join(config.export_base, "tiny_random", "2"),
                  **export.origin_fields(config.run_dir, config.export_base), arch="small", input_size=config.input_size,
                  dropout=0.5, batch_norm=False)
    runs.check_export_name(tiny_config(tmp_path / "runs" / "tiny", dropout=0.3))
    with pytest.raises(export.ExportNameTaken, match="batch_norm=False, and this export has batch_norm=True"):
        runs.check_export_name(tiny_config(tmp_path / "runs" / "tiny", batch_norm=True))
    # A ResNet's options: its width, and its stem as "auto" will resolve it (cifar at 32 px).
    resnet = tiny_config(tmp_path / "runs" / "r", name="r", arch="resnet18", resnet_width=32)
    _fake_version(os.path.join(resnet.export_base, "r", "1"), **export.origin_fields(resnet.run_dir, resnet.export_base),
                  arch="resnet18", input_size=resnet.input_size, resnet_stem="cifar", resnet_width=32)
    runs.check_export_name(resnet)
    with pytest.raises(export.ExportNameTaken, match="resnet_width=32, and this export has resnet_width=64"):
        runs.check_export_name(tiny_config(tmp_path / "runs" / "r", name="r", arch="resnet18", resnet_width=64))
    runs.check_export_name(tiny_config(tmp_path / "runs" / "r", name="r", arch="resnet18", resnet_width=32,
                                       resnet_stem="cifar"))
    with pytest.raises(export.ExportNameTaken, match="resnet_stem=cifar, and this export has resnet_stem=imagenet"):
        runs.check_export_name(tiny_config(tmp_path / "runs" / "r", name="r", arch="resnet18", resnet_width=32,
                                           resnet_stem="imagenet"))
    imagenet = tiny_config(tmp_path / "runs" / "i", name="i", arch="resnet18", resnet_width=32)
    _fake_version(os.path.join(imagenet.export_base, "i", "1"),
                  **export.origin_fields(imagenet.run_dir, imagenet.export_base), arch="resnet18",
                  input_size=imagenet.input_size, resnet_stem="imagenet", resnet_width=32)
    with pytest.raises(export.ExportNameTaken, match="resnet_stem=imagenet, and this export has resnet_stem=cifar"):
        runs.check_export_name(imagenet)  # "auto" at 32 px builds the CIFAR stem


@pytest.mark.slow  # ~16 s
def test_a_moved_project_keeps_pairing_exports_with_their_run_and_baseline(model, tmp_path):
    """export_info.json records the run relative to the export base too: after the project moves, a new export
    from the moved run joins its name and finds the baseline written before the move."""
    from exemplar_tf.evaluation import protocols

    encoder, head, percentiles = model
    old, new = tmp_path / "old", tmp_path / "new"
    for name, step in (("tiny_random", 0), ("tiny", 4)):
        export.export_encoder(encoder, head, export_dir_base=str(old / "savedmodels"), name=name,
                              percentiles=percentiles, origin={"run_dir": str(old / "runs" / "tiny"), "step": step})
    os.rename(old, new)
    info = savedmodel.read_export_info(str(new / "savedmodels" / "tiny" / "1"))
    assert info["run_dir"] == str(new / "runs" / "tiny") and info["run_dir_at_export"] == str(old / "runs" / "tiny")
    again = export.export_encoder(encoder, head, export_dir_base=str(new / "savedmodels"), name="tiny",
                                  percentiles=percentiles, origin={"run_dir": str(new / "runs" / "tiny"), "step": 8})
    assert protocols.random_baseline_path(again) == str(new / "savedmodels" / "tiny_random" / "1")
    # Exports written before the relative path was recorded still read as they are.
    legacy = _fake_version(tmp_path / "legacy" / "m" / "1", run_dir="/somewhere/runs/m", arch="small", input_size=32)
    assert savedmodel.read_export_info(legacy)["run_dir"] == "/somewhere/runs/m"
