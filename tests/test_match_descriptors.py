"""Normalised patches and the matching descriptors (SIFT, raw pixels, any SavedModel with the export signature)."""
import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

from exemplar_tf.matching import benchmark, images, warps
from exemplar_tf.matching.descriptors import (PATCH_MEAN, PATCH_STD, SIFT_CLIP, Descriptor, SavedModelDescriptors,
                                              feature_layer_blocks, normalise_descriptors, normalised_patches,
                                              pixel_descriptors, sift_descriptors, standard_descriptors,
                                              standardise_patch_contrast)
from exemplar_tf.matching.ellipses import Ellipses, map_ellipses


def one(centre, shape) -> Ellipses:
    return Ellipses(np.array([centre], float), np.array([shape], float))


def bright_fraction(patch: np.ndarray) -> float:
    return float(np.mean(patch[..., 0] > 127))


def test_an_ellipse_becomes_the_inscribed_disc_whatever_its_shape():
    tilt = np.deg2rad(30)
    turn = np.array([[np.cos(tilt), -np.sin(tilt)], [np.sin(tilt), np.cos(tilt)]])
    shape = turn @ np.diag([30.0**2, 10.0**2]) @ turn.T
    rows, columns = np.mgrid[0:120, 0:160]
    offsets = np.stack([columns - 80.0, rows - 60.0], axis=-1)
    inside = np.einsum("hwi,ij,hwj->hw", offsets, np.linalg.inv(shape), offsets) <= 1.0
    image = np.repeat((inside * 255).astype(np.uint8)[..., None], 3, axis=2)
    patch = normalised_patches(image, one([80, 60], shape), patch_size=65, context=1.0)[0]
    assert patch.shape == (65, 65, 3)
    assert bright_fraction(patch) == pytest.approx(np.pi / 4, abs=0.03)
    assert patch[32, 32, 0] == 255 and patch[0, 0, 0] == 0 and patch[64, 64, 0] == 0
    wider = normalised_patches(image, one([80, 60], shape), patch_size=65, context=2.0)[0]
    assert bright_fraction(wider) == pytest.approx(np.pi / 16, abs=0.02)


def test_rotation_is_not_normalised_the_patch_turns_with_the_image(rng):
    texture = cv2.GaussianBlur(rng.integers(0, 256, (101, 101, 3), dtype=np.uint8), (0, 0), 2.0)
    circle = one([50, 50], np.eye(2) * 15.0**2)
    rotation = warps.rotation(90.0, texture.shape[:2], None)
    turned = map_ellipses(circle, rotation.map_points(circle.centres), rotation.jacobians(circle.centres))
    before = normalised_patches(texture, circle, 33, context=2.0)[0].astype(float)
    after = normalised_patches(rotation.warp(texture), turned, 33, context=2.0)[0].astype(float)
    # positive angles turn +x towards +y (y down): the content moves clockwise on screen
    assert np.abs(after - np.rot90(before, k=-1)).mean() < 2.0
    assert np.abs(after - before).mean() > 10.0


def test_large_ellipses_are_sampled_from_the_pyramid_without_aliasing():
    rows, columns = np.mgrid[0:200, 0:200]
    checkerboard = np.repeat((((rows + columns) % 2) * 255).astype(np.uint8)[..., None], 3, axis=2)
    patch = normalised_patches(checkerboard, one([100, 100], np.eye(2) * 60.0**2), 21, context=1.0)[0]
    assert patch.std() < 20.0  # a 1-pixel checkerboard seen from 6 pixels per sample is flat grey
    assert abs(patch.mean() - 127.5) < 20.0


def test_sift_describes_the_patch_centre_and_ignores_a_brightness_offset(rng):
    patches = np.stack([cv2.GaussianBlur(rng.integers(0, 200, (157, 157, 3), dtype=np.uint8), (0, 0), 2.0)
                        for _ in range(4)])
    described = sift_descriptors(patches)
    assert described.shape == (4, 128) and described.dtype == np.float32
    assert np.all(np.linalg.norm(described, axis=1) > 100)
    brighter = sift_descriptors(patches + 30)
    cosine = np.sum(described * brighter, axis=1) / np.linalg.norm(described, axis=1) / np.linalg.norm(brighter, axis=1)
    assert np.all(cosine > 0.99)
    assert np.linalg.norm(described[0] - described[1]) > 100  # different patches, different descriptors


def test_raw_pixels_are_a_normalised_thumbnail_invariant_to_gain_and_offset(rng):
    patches = rng.integers(0, 100, (3, 113, 113, 3), dtype=np.uint8)
    described = pixel_descriptors(patches)
    assert described.shape == (3, 16 * 16 * 3)
    np.testing.assert_allclose(described.mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(described.std(axis=1), 1.0, atol=1e-4)
    np.testing.assert_allclose(pixel_descriptors(patches * 2 + 20), described, atol=1e-4)


def export_tiny_model(path: str) -> keras.Model:
    """A 2-layer conv net exported with the project's serving signature: images uint8 [B,H,W,3] ->
    {"embedding": [B,2], "features": [B,4]}."""
    inputs = keras.Input((None, None, 3))
    maps = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    pooled = keras.layers.GlobalMaxPooling2D()(maps)
    model = keras.Model(inputs, [pooled, keras.layers.Dense(2, name="head")(pooled)])

    def serve(images):
        features, projected = model(tf.cast(images, tf.float32) / 255.0)
        return {"embedding": tf.math.l2_normalize(projected, axis=-1), "features": features}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve,
                         input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    archive.write_out(path, verbose=False)
    return model


def test_any_export_with_the_serving_signature_is_a_descriptor(tmp_path, rng):
    path = str(tmp_path / "tiny" / "1")
    model = export_tiny_model(path)
    patches = rng.integers(0, 256, (5, 33, 33, 3), dtype=np.uint8)
    described = SavedModelDescriptors(path, batch_size=2)(patches)  # 3 batches
    expected = model(patches.astype(np.float32) / 255.0)[0].numpy()
    assert described.shape == (5, 4) and described.dtype == np.float32
    np.testing.assert_allclose(described, expected, rtol=1e-5, atol=1e-6)
    embedding = SavedModelDescriptors(path, output="embedding")(patches)
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, rtol=1e-5)

    names = [(d.name, d.patch_size) for d in standard_descriptors(savedmodel=path, cnn_patch_size=49,
                                                                    sift_patch_size=65)]
    assert names == [("cnn", 49), ("sift", 65), ("pixels", 49)]
    assert [d.name for d in standard_descriptors()] == ["sift", "pixels"]


def test_the_benchmark_runs_the_cnn_descriptor_from_an_export(tmp_path):
    path = str(tmp_path / "tiny" / "1")
    export_tiny_model(path)
    described = standard_descriptors(savedmodel=path, cnn_patch_size=49, sift_patch_size=65)
    settings = benchmark.Settings(max_regions=60, max_side=200)
    results = benchmark.run_synthetic(images.demo_images(1), described, families=("zoom",), levels=(1,),
                                      settings=settings, progress=False)
    assert [r.descriptor for r in results] == ["cnn", "sift", "pixels"]
    cnn = results[0]
    assert cnn.correspondences > 10 and 0.0 < cnn.average_precision <= 1.0


def test_clip_and_renormalise_gives_unit_rows_with_no_component_above_the_clip(rng):
    values = rng.exponential(size=(50, 64)) ** 3 * rng.choice([-1.0, 1.0], size=(50, 64))  # heavy-tailed
    values[0] = 0.0
    values[1] = 1e-3
    values[1, 0] = 1.0  # one huge component: a single clip-and-renormalise pass would put it back near 1
    clipped = normalise_descriptors(values, "clip")
    assert np.all(clipped[0] == 0.0)
    np.testing.assert_allclose(np.linalg.norm(clipped[1:], axis=1), 1.0, rtol=1e-5)
    assert np.abs(clipped).max() <= SIFT_CLIP + 1e-6
    assert np.mean(np.isclose(np.abs(clipped[2:]), SIFT_CLIP, atol=1e-6).any(axis=1)) > 0.9  # the clip acts
    assert clipped[1, 0] == pytest.approx(SIFT_CLIP)
    np.testing.assert_array_equal(np.sign(clipped[1:]), np.sign(values[1:]))
    small = np.abs(values[2]) * (np.abs(clipped[2]) < SIFT_CLIP - 1e-6)  # unclipped components keep their ratios
    kept = np.nonzero(small)[0]
    np.testing.assert_allclose(np.abs(clipped[2, kept]) / small[kept], np.abs(clipped[2, kept[0]]) / small[kept[0]],
                               rtol=1e-4)
    with pytest.raises(ValueError, match="cannot give unit norm"):
        normalise_descriptors(values[:, :20], "clip")


def test_l2_and_per_layer_l2_normalise_the_whole_row_or_each_block(rng):
    values = rng.normal(size=(6, 10)) * np.array([1.0] * 4 + [100.0] * 6)
    np.testing.assert_allclose(np.linalg.norm(normalise_descriptors(values, "l2"), axis=1), 1.0, rtol=1e-6)
    layered = normalise_descriptors(values, "l2_layer", blocks=[4, 6])
    np.testing.assert_allclose(np.linalg.norm(layered[:, :4], axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(layered[:, 4:], axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(normalise_descriptors(values, "none"), values.astype(np.float32))
    with pytest.raises(ValueError, match="summing to the descriptor size 10"):
        normalise_descriptors(values, "l2_layer", blocks=[4, 5])


def test_patch_contrast_standardisation_undoes_gain_and_offset(rng):
    patches = cv2.GaussianBlur(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), (0, 0), 1.5)[None]
    standard = standardise_patch_contrast(patches).astype(float)
    assert standard.mean() == pytest.approx(PATCH_MEAN, abs=0.5) and standard.std() == pytest.approx(PATCH_STD, abs=0.5)
    dimmed = np.round(patches * 0.5 + 10).astype(np.uint8)  # (rounding to uint8 keeps a ~1 level error)
    assert np.abs(standardise_patch_contrast(dimmed).astype(float) - standard).mean() < 2.0


@pytest.fixture(scope="module")
def encoder_export(tmp_path_factory):
    """The project's small Exemplar-CNN at initialisation (mean subtraction inside), exported as training does."""
    from exemplar_tf.models import build_encoder
    from exemplar_tf.serving import export

    keras.utils.set_random_seed(0)
    encoder = build_encoder("small", input_size=32, mean_rgb=(120.0, 115.0, 105.0))
    calibration = np.random.default_rng(4).integers(0, 256, (12, 64, 64, 3), dtype=np.uint8)
    base = str(tmp_path_factory.mktemp("savedmodels"))
    return export.export_encoder(encoder, export_dir_base=base, name="small",
                                 percentiles=export.measure_percentiles(encoder, calibration))


def test_per_layer_blocks_come_from_the_export_info(encoder_export, rng):
    blocks = feature_layer_blocks(encoder_export)
    described = SavedModelDescriptors(encoder_export, normalisation="l2_layer")(
        rng.integers(0, 256, (3, 49, 49, 3), dtype=np.uint8))
    assert described.shape[1] == sum(blocks) and len(blocks) == 3
    edges = np.cumsum([0, *blocks])
    for start, end in zip(edges[:-1], edges[1:]):
        np.testing.assert_allclose(np.linalg.norm(described[:, start:end], axis=1), 1.0, rtol=1e-5)


def test_a_pair_that_only_differs_by_contrast_keeps_its_cnn_ap_with_normalisation(encoder_export):
    image, _ = images.shrink(images.demo_images(1)[0], 240)
    settings = benchmark.Settings(max_regions=80, max_side=240)

    def cnn(patch_contrast, normalisation):
        return Descriptor(f"{patch_contrast}/{normalisation}", 65, SavedModelDescriptors(
            encoder_export, normalisation=normalisation, patch_contrast=patch_contrast))

    described = [cnn("none", "none"), cnn("none", "l2"), cnn("standardise", "l2")]
    dimmer = warps.Photometric(lambda frame: np.round(frame * 0.35).astype(np.uint8))
    first = benchmark.make_view(image, described, settings)
    same = benchmark.evaluate_pair(first, image, warps.lighting(1.0, image.shape[:2], None), described, settings)
    dim = benchmark.evaluate_pair(first, dimmer.warp(image), dimmer, described, settings)
    ap = {name: dim["upright", name]["average_precision"] for _, name in dim}
    assert dim["upright", "standardise/l2"]["correspondences"] > 15
    assert same["upright", "standardise/l2"]["average_precision"] > 0.95
    assert ap["standardise/l2"] > 0.9  # kept
    # raw features scale with contrast, and output normalisation alone cannot undo a gain the network's own mean
    # subtraction has mixed in: both stay far below the standardised patches
    assert ap["standardise/l2"] > max(ap["none/none"], ap["none/l2"]) + 0.3
