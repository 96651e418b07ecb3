"""The transformation chain: parameter ranges per preset, stateless determinism everywhere, skipping, errors."""
import math

import numpy as np
import pytest
import tensorflow as tf

from exemplar_tf import choices
from exemplar_tf.augment import transforms as ops

import colour_reference  # the two colour steps as RGB -> RGB functions (tests/colour_reference.py)
from exemplar_tf.augment.chain import TransformChain
from exemplar_tf.augment.npid import FLIP_PROBABILITY, GRAYSCALE_PROBABILITY
from exemplar_tf.augment.presets import ALL_TRANSFORMS, PRESETS, Log2NormalFactor, UniformFactor

P = 32
DRAWS = 20000


@pytest.fixture
def pca(rng):
    return ops.ColorPCA.fit(rng.random((2000, 3)))


@pytest.fixture
def windows(rng):
    return rng.random((6, 2 * P, 2 * P, 3)).astype(np.float32)


def assert_spans(values, low, high, tolerance):
    """All values inside [low, high], and both ends reached to within `tolerance` of the range."""
    values = np.asarray(values)
    assert values.min() >= low - 1e-6 and values.max() <= high + 1e-6
    assert values.min() < low + tolerance * (high - low) and values.max() > high - tolerance * (high - low)


@pytest.mark.parametrize("preset_name", sorted(PRESETS))
def test_parameters_stay_inside_and_span_the_preset_ranges(preset_name, pca):
    preset = PRESETS[preset_name]
    params = {k: v.numpy() for k, v in TransformChain(preset_name, ALL_TRANSFORMS, pca, P).sample_params(
        DRAWS, tf.constant([1, 2])).items()}
    limit = preset.translate * P
    assert_spans(params["translate"], -limit, limit, 0.01)
    assert_spans(params["scale"], *preset.scale, 0.01)
    log_scale = np.log(params["scale"])  # log-uniform: mean of the log at the middle of the log range
    assert log_scale.mean() == pytest.approx(np.mean(np.log(preset.scale)), abs=0.01)
    assert_spans(params["rotate"], -preset.rotate_degrees, preset.rotate_degrees, 0.01)
    if isinstance(preset.pca_factor, UniformFactor):
        assert_spans(params["pca_color"], preset.pca_factor.low, preset.pca_factor.high, 0.01)
        assert params["pca_color"].mean() == pytest.approx(
            (preset.pca_factor.low + preset.pca_factor.high) / 2, abs=0.02)
    else:
        log2_factors = np.log2(params["pca_color"])
        np.testing.assert_allclose(log2_factors.mean(axis=0), 0, atol=0.03)
        np.testing.assert_allclose(log2_factors.std(axis=0), preset.pca_factor.std, rtol=0.03)
    assert_spans(params["sv_power"], *preset.sv_power, 0.01)
    assert_spans(params["sv_multiplier"], *preset.sv_multiplier, 0.01)
    assert_spans(params["sv_offset"], *preset.sv_offset, 0.01)
    assert_spans(params["hue"], -preset.hue_shift, preset.hue_shift, 0.01)
    for name, probability in (("flip", FLIP_PROBABILITY), ("grayscale", GRAYSCALE_PROBABILITY)):
        assert set(np.unique(params[name])) == {0.0, 1.0}
        assert params[name].mean() == pytest.approx(probability, abs=4 * math.sqrt(probability / DRAWS))
    independent = [params["translate"][:, 0], params["translate"][:, 1], np.log(params["scale"]), params["rotate"],
                   params["pca_color"][:, 0], params["sv_power"][:, 0], params["sv_multiplier"][:, 1],
                   params["sv_offset"][:, 0], params["hue"], params["flip"], params["grayscale"]]
    correlations = np.corrcoef(np.stack(independent)) - np.eye(len(independent))
    assert np.abs(correlations).max() < 0.05  # every parameter drawn from its own stream
    # ... and no two transforms share a stream: the first DRAWS values of each, in draw order, are uncorrelated
    # (a [B] draw reusing a [B,2] draw's seed repeats its flattened values, which the columns above do not see)
    streams = np.stack([np.log(np.abs(value)).reshape(-1)[:DRAWS] if name in ("scale", "sv_power", "sv_multiplier")
                        else value.reshape(-1)[:DRAWS] for name, value in params.items()])
    assert np.abs(np.corrcoef(streams) - np.eye(len(streams))).max() < 0.05
    assert {k: v.shape for k, v in params.items()} == {
        "translate": (DRAWS, 2), "scale": (DRAWS,), "rotate": (DRAWS,), "pca_color": (DRAWS, 3),
        "sv_power": (DRAWS, 2), "sv_multiplier": (DRAWS, 2), "sv_offset": (DRAWS, 2), "hue": (DRAWS,),
        "flip": (DRAWS,), "grayscale": (DRAWS,)}


def test_presets_hold_the_method_numbers():
    paper, release = PRESETS["paper"], PRESETS["release_code"]
    assert (paper.translate, paper.scale, paper.rotate_degrees) == (0.2, (0.7, 1.4), 20.0)
    assert paper.pca_factor == UniformFactor(0.5, 2.0) and not paper.sv_minmax_normalise
    assert (release.translate, release.rotate_degrees) == (0.25, 20.0)
    np.testing.assert_allclose(release.scale, (2**-0.5, 2**0.5))
    assert release.pca_factor == Log2NormalFactor((1.0, 1.0, 0.5)) and release.sv_minmax_normalise
    for preset in (paper, release):
        assert preset.sv_power == (0.25, 4.0) and preset.sv_offset == (-0.1, 0.1) and preset.hue_shift == 0.1


def test_same_seed_same_output_eagerly_in_tf_function_and_in_dataset_map(windows, pca):
    chain = TransformChain("release_code", ALL_TRANSFORMS, pca, P)
    seed = tf.constant([7, 11], tf.int32)
    eager = chain(windows, seed).numpy()
    assert eager.shape == (6, P, P, 3) and eager.dtype == np.float32
    assert eager.min() >= 0 and eager.max() <= 1
    compiled = tf.function(chain)(tf.constant(windows), seed).numpy()
    mapped = next(iter(tf.data.Dataset.from_tensors((windows, seed)).map(chain))).numpy()
    np.testing.assert_array_equal(compiled, eager)
    np.testing.assert_array_equal(mapped, eager)
    assert np.abs(chain(windows, tf.constant([7, 12])).numpy() - eager).max() > 0.1


def test_per_sample_seeds_make_each_sample_independent_of_the_batch(windows, pca):
    chain = TransformChain("paper", ALL_TRANSFORMS, pca, P)
    seeds = tf.constant([[1, 0], [1, 1], [2, 0], [2, 1], [3, 0], [3, 1]], tf.int32)
    whole = chain(windows, seeds).numpy()
    np.testing.assert_allclose(chain(windows[3:5], seeds[3:5]).numpy(), whole[3:5], atol=1e-6)
    reordered = chain(windows[::-1], seeds[::-1]).numpy()
    np.testing.assert_allclose(reordered[::-1], whole, atol=1e-6)
    mapped = next(iter(tf.data.Dataset.from_tensors((windows, seeds)).map(chain))).numpy()
    np.testing.assert_allclose(mapped, whole, atol=1e-6)


def test_no_transform_gives_the_central_patch_exactly(windows, pca):
    out = TransformChain("paper", (), pca, P)(windows, tf.constant([0, 0]))
    np.testing.assert_array_equal(out, windows[:, 16:48, 16:48])


def test_a_disabled_transform_is_skipped_and_leaves_the_others_unchanged(windows, pca):
    seed = tf.constant([5, 5])
    everything = TransformChain("paper", ALL_TRANSFORMS, pca, P)
    without_rotation = TransformChain("paper", [t for t in ALL_TRANSFORMS if t != "rotate"], pca, P)
    params = everything.sample_params(6, seed)
    reduced = without_rotation.sample_params(6, seed)
    assert "rotate" not in reduced
    for key, value in reduced.items():
        np.testing.assert_array_equal(value, params[key])
    np.testing.assert_allclose(without_rotation(windows, seed),
                               everything.apply(windows, {**params, "rotate": tf.zeros([6])}), atol=1e-5)
    hue_only = TransformChain("paper", ["hue"], pca, P)
    expected = colour_reference.hue_shift(windows[:, 16:48, 16:48], hue_only.sample_params(6, seed)["hue"])
    np.testing.assert_allclose(hue_only(windows, seed), expected, atol=1e-6)


@pytest.mark.parametrize("preset", ["paper", "release_code"])  # release_code min-max normalises before S/V
def test_saturation_value_then_hue_in_one_hsv_round_trip_equals_the_two_ops_in_turn(windows, pca, preset):
    colour = TransformChain(preset, ["saturation_value", "hue"], pca, P)
    seed = tf.constant([7, 1])
    params = colour.sample_params(6, seed)
    patches = windows[:, 16:48, 16:48]
    in_turn = colour_reference.hue_shift(colour_reference.saturation_value(
        patches, params["sv_power"], params["sv_multiplier"], params["sv_offset"],
        minmax_normalise_first=colour.preset.sv_minmax_normalise), params["hue"])
    fused = colour(windows, seed).numpy()
    np.testing.assert_allclose(fused, in_turn, atol=2e-5)
    assert np.abs(fused - patches).max() > 0.05  # the colours did change


def test_geometry_only_is_one_resampling_with_the_drawn_parameters(windows, pca):
    geometry = TransformChain("paper", ["translate", "scale", "rotate"], pca, P)
    params = geometry.sample_params(6, tf.constant([3, 4]))
    expected = ops.geometric(windows, params["translate"][:, 1], params["translate"][:, 0], params["scale"],
                             params["rotate"] * math.pi / 180, patch_size=P)
    np.testing.assert_allclose(geometry(windows, tf.constant([3, 4])), expected, atol=1e-5)


def test_flip_mirrors_exactly_the_drawn_samples_and_is_off_in_the_paper_chain(windows, pca):
    flip_only = TransformChain("paper", ["flip"], pca, P)
    seed = tf.constant([2, 9])
    flips = flip_only.sample_params(6, seed)["flip"].numpy()
    assert 0 < flips.sum() < 6  # this seed mirrors some samples and not others
    centre = windows[:, 16:48, 16:48]
    expected = np.where(flips[:, None, None, None] > 0.5, centre[:, :, ::-1], centre)
    np.testing.assert_array_equal(flip_only(windows, seed), expected)
    assert "flip" not in TransformChain("paper", choices.PAPER_TRANSFORMS, pca, P).sample_params(6, seed)


def test_flip_mirrors_the_geometric_resampling(windows, pca):
    geometry = TransformChain("paper", ["translate", "scale", "rotate"], pca, P)
    geometry_then_flip = TransformChain("paper", ["translate", "scale", "rotate", "flip"], pca, P)
    seed = tf.constant([2, 9])
    params = geometry_then_flip.sample_params(6, seed)
    expected = ops.mirror(geometry.apply(windows, params), params["flip"] > 0.5)
    np.testing.assert_allclose(geometry_then_flip(windows, seed), expected, atol=1e-6)


def test_grayscale_comes_after_the_colour_changes(windows, pca):
    colour = TransformChain("paper", ["pca_color", "hue"], pca, P)
    colour_then_gray = TransformChain("paper", ["pca_color", "hue", "grayscale"], pca, P)
    seed = tf.constant([4, 4])
    params = colour_then_gray.sample_params(6, seed)
    gray = params["grayscale"].numpy() > 0.5
    assert 0 < gray.sum() < 6
    out = colour_then_gray(windows, seed).numpy()
    coloured = colour.apply(windows, params).numpy()  # the same colour draws (each step has its own sub-seed)
    luma = coloured @ np.array([0.2989, 0.587, 0.114], np.float32)
    np.testing.assert_allclose(out[gray], np.repeat(luma[gray][..., None], 3, axis=-1), atol=1e-5)
    np.testing.assert_array_equal(out[~gray], coloured[~gray])


def test_scale_max_widens_only_the_top_of_the_scale_range(pca):
    seed = tf.constant([1, 2])
    paper = TransformChain("paper", ALL_TRANSFORMS, pca, P).sample_params(DRAWS, seed)
    wide = {k: v.numpy() for k, v in TransformChain("paper", ALL_TRANSFORMS, pca, P, scale_max=2.24).sample_params(
        DRAWS, seed).items()}
    assert_spans(wide["scale"], 0.7, 2.24, 0.01)
    log_scale = np.log(wide["scale"])  # log-uniform over [log 0.7, log 2.24]: uniform in log space
    assert log_scale.mean() == pytest.approx((math.log(0.7) + math.log(2.24)) / 2, abs=0.01)
    assert np.mean(wide["scale"] > 1.4) == pytest.approx(math.log(2.24 / 1.4) / math.log(2.24 / 0.7), abs=0.01)
    for name in paper:  # every other step draws exactly what the preset's chain draws
        if name != "scale":
            np.testing.assert_array_equal(wide[name], paper[name].numpy())


def test_scale_max_zooms_the_image_by_the_drawn_factor(pca):
    """A 2x zoom about the centre shows the central half of the window: the checkerboard of 8-px squares comes
    out as 16-px squares."""
    board = ((np.arange(4 * P)[:, None] // 8 + np.arange(4 * P)[None, :] // 8) % 2).astype(np.float32)
    windows = np.repeat(board[None, :, :, None], 3, axis=-1)
    chain = TransformChain("paper", ["scale"], pca, P, scale_max=2.24)
    out = chain.apply(tf.constant(windows), {"scale": tf.constant([2.0])}).numpy()[0, :, :, 0]
    central = board[2 * P - P // 4:2 * P + P // 4, 2 * P - P // 4:2 * P + P // 4]  # P/2 x P/2 around the centre
    expected = np.kron(central, np.ones((2, 2), np.float32))
    assert np.mean(np.abs(out - expected) < 0.5) > 0.9


def test_scale_max_must_be_above_the_smallest_scale(pca):
    with pytest.raises(ValueError, match=r"scale_max=0.6 must be 0 \(the preset's\) or above the paper preset's smallest scale 0.7"):
        TransformChain("paper", ALL_TRANSFORMS, pca, P, scale_max=0.6)


def test_unknown_names_are_rejected_with_the_valid_ones(pca):
    with pytest.raises(ValueError, match="unknown transforms \\['blur'\\].*translate, scale, rotate, pca_color"):
        TransformChain("paper", ["rotate", "blur"], pca, P)
    with pytest.raises(ValueError, match="unknown preset 'nope'.*paper, release_code"):
        TransformChain("nope", ALL_TRANSFORMS, pca, P)


def test_the_presets_are_the_valid_preset_choices():
    assert tuple(PRESETS) == choices.PRESETS and ALL_TRANSFORMS == choices.TRANSFORMS
