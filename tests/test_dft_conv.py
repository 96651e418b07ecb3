"""DFT convolutions (models/dft_conv.py) against tf.nn.conv2d, and the Exemplar-CNN maps they give the export."""
import numpy as np
import pytest
import tensorflow as tf

from exemplar_tf.models import build_encoder, dft_conv, features

MEAN_RGB = (0.45, 0.42, 0.39)


def _inputs(seed, batch, height, width, cin, cout, kh, kw):
    rng = np.random.default_rng(seed)
    x = np.maximum(rng.normal(size=(batch, height, width, cin)), 0).astype(np.float32)
    kernel = (rng.normal(size=(kh, kw, cin, cout)) / np.sqrt(kh * kw * cin)).astype(np.float32)
    return tf.constant(x), tf.constant(kernel)


def _close(got, want):
    """Equal up to float32 round-off: 5e-6 of the largest output (DFT errors spread over the whole map)."""
    want = np.asarray(want)
    np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=5e-6 * np.abs(want).max())


@pytest.mark.parametrize("height, width, kh, kw", [(9, 11, 3, 5), (24, 24, 8, 8), (13, 8, 8, 8), (7, 10, 1, 1)])
def test_valid_dft_conv_equals_tf_conv2d(height, width, kh, kw):
    x, kernel = _inputs(0, 2, height, width, 6, 5, kh, kw)
    got = dft_conv.conv2d_dft(x, kernel, "valid")
    want = tf.nn.conv2d(x, kernel, 1, "VALID")
    assert got.shape == want.shape
    _close(got, want)


@pytest.mark.parametrize("height, width, kh, kw", [(10, 7, 5, 5), (6, 6, 3, 1), (5, 9, 5, 3)])
def test_same_dft_conv_equals_tf_conv2d(height, width, kh, kw):
    x, kernel = _inputs(1, 3, height, width, 4, 7, kh, kw)
    _close(dft_conv.conv2d_dft(x, kernel, "same"), tf.nn.conv2d(x, kernel, 1, "SAME"))


def test_one_trace_serves_every_map_size():
    _, kernel = _inputs(2, 1, 1, 1, 3, 4, 5, 5)
    conv = tf.function(lambda x: dft_conv.conv2d_dft(x, kernel, "valid"),
                       input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    for shape in [(2, 5, 5), (1, 12, 9), (3, 6, 17)]:
        x, _ = _inputs(3, *shape, 3, 4, 5, 5)
        _close(conv(x), tf.nn.conv2d(x, kernel, 1, "VALID"))
    assert len(conv._list_all_concrete_functions()) == 1


def test_even_same_kernels_are_refused():
    x, kernel = _inputs(4, 1, 6, 6, 2, 2, 4, 4)
    with pytest.raises(ValueError, match="odd kernels"):
        dft_conv.conv2d_dft(x, kernel, "same")


def test_the_dft_is_chosen_for_the_96_px_fc_conv2_conv3_and_never_at_32_px():
    # medium net: (map side, kernel, cin, cout, padding) of conv1, conv2, conv3, fc at 32 and 96 px
    layers = {32: [(32, 5, 3, 64, "same"), (16, 5, 64, 128, "same"), (8, 5, 128, 256, "same"),
                   (8, 8, 256, 512, "valid")],
              96: [(96, 5, 3, 64, "same"), (48, 5, 64, 128, "same"), (24, 5, 128, 256, "same"),
                   (24, 8, 256, 512, "valid")]}
    chosen = {size: [bool(dft_conv.dft_pays_off(side, side, k, k, cin, cout, padding))
                     for side, k, cin, cout, padding in specs] for size, specs in layers.items()}
    assert chosen == {32: [False, False, False, False], 96: [False, True, True, True]}


def test_multiply_adds_of_the_96_px_fc():
    dft, direct = dft_conv.dft_multiply_adds(24, 24, 8, 8, 256, 512, "valid")
    assert int(direct) == 17 * 17 * 64 * 256 * 512
    products = 3 * 24 * 13 * 256 * 512
    forward = (2 * 13 * 24 * 24 + 4 * 24 * 24 * 13) * 256
    inverse = (4 * 17 * 24 * 13 + 2 * 17 * 13 * 17) * 512
    assert int(dft) == products + forward + inverse


@pytest.mark.parametrize("batch_norm", [False, True])
def test_evaluation_maps_equal_feature_maps_at_96_px_and_are_identical_at_32(batch_norm):
    tf.keras.utils.set_random_seed(0)
    encoder = build_encoder("medium", input_size=32, mean_rgb=MEAN_RGB, batch_norm=batch_norm)
    images = tf.constant(np.random.default_rng(5).uniform(size=(2, 96, 96, 3)), tf.float32)
    direct, by_dft = encoder.feature_maps(images), encoder.evaluation_maps(images)
    assert [m.shape for m in by_dft] == [m.shape for m in direct]
    for got, want in zip(by_dft, direct):
        _close(got, want)
    scales = [float(np.abs(m).max()) for m in direct]
    _close(features.evaluation_features(by_dft, scales), features.evaluation_features(direct, scales))
    small = images[:, :32, :32]
    for got, want in zip(encoder.evaluation_maps(small), encoder.feature_maps(small)):
        np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_exports_before_and_after_the_dft_read_the_same_features(tmp_path, monkeypatch):
    from exemplar_tf.evaluation.savedmodel import SavedModelFeatures
    from exemplar_tf.models.exemplar_cnn import ExemplarCNN
    from exemplar_tf.serving import export

    assert bool(dft_conv.dft_pays_off(24, 24, 8, 8, 64, 128, "valid"))  # the small net's fc at 96 px
    tf.keras.utils.set_random_seed(0)
    encoder = build_encoder("small", input_size=32, mean_rgb=MEAN_RGB)
    images = np.random.default_rng(6).integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)
    percentiles = export.measure_percentiles(encoder, images)
    new = export.export_encoder(encoder, export_dir_base=str(tmp_path), name="small", percentiles=percentiles)
    with monkeypatch.context() as patch:  # the export as written before the DFT: direct convs
        patch.setattr(ExemplarCNN, "evaluation_maps", lambda self, x: self.feature_maps(x, training=False))
        old = export.export_encoder(encoder, export_dir_base=str(tmp_path), name="small", percentiles=percentiles)
    old_reader, new_reader = SavedModelFeatures(old), SavedModelFeatures(new)
    assert new_reader(images, "features").shape == (3, 4 * (64 + 64 + 128))
    for key in ("features", "quadrants", "pyramid", "embedding"):
        _close(new_reader(images, key), old_reader(images, key))
