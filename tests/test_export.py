"""Evaluation-feature pooling and the SavedModel export (signatures, numbers in a fresh process, versions)."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

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


def test_versions_are_integers_and_auto_increment(model, tmp_path):
    encoder, head, percentiles = model
    kwargs = dict(export_dir_base=str(tmp_path), name="v", percentiles=percentiles)
    assert export.export_encoder(encoder, head, **kwargs) == os.path.join(str(tmp_path), "v", "1")
    assert export.export_encoder(encoder, head, **kwargs).endswith(os.sep + "2")
    assert export.export_encoder(encoder, head, version=7, **kwargs).endswith(os.sep + "7")
    assert export.export_encoder(encoder, head, **kwargs).endswith(os.sep + "8")
    with pytest.raises(FileExistsError):
        export.export_encoder(encoder, head, version=2, **kwargs)
    assert sorted(os.listdir(tmp_path / "v"), key=int) == ["1", "2", "7", "8"]  # no temporary folders left
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
    images = np.random.default_rng(8).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    served = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(images))
    expected, _ = _reference(encoder, head, [1.0, 1.0, 1.0], images)
    np.testing.assert_allclose(served["embedding"].numpy(), expected, atol=1e-5)
    assert len(savedmodel.read_export_info(path)["percentiles"]) == 3


def test_export_info_records_name_origin_and_creation_time(model, tmp_path):
    encoder, head, percentiles = model
    path = export.export_encoder(encoder, head, export_dir_base=str(tmp_path), name="run7", percentiles=percentiles,
                                 origin={"run_dir": "runs/r7", "step": 1234})
    info = savedmodel.read_export_info(path)
    assert info["name"] == "run7" and info["run_dir"] == os.path.abspath("runs/r7") and info["step"] == 1234
    assert info["arch"] == "small" and info["input_size"] == 32 and info["created"][:2] == "20"
    plain = savedmodel.read_export_info(export.export_encoder(encoder, head, export_dir_base=str(tmp_path), name="p",
                                                          percentiles=percentiles))
    assert plain["run_dir"] is None and plain["step"] is None
