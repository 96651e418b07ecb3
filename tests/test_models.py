"""Encoders, heads and the weight-decay loss: shapes, fully convolutional behaviour, multipliers."""
import numpy as np
import pytest
import tensorflow as tf

from exemplar_tf import models
from exemplar_tf.choices import ARCHS
from exemplar_tf.models import (
    MeanSubtraction,
    ProjectionHead,
    SurrogateClassifier,
    build_encoder,
    weight_decay_loss,
)

MEAN = (0.45, 0.5, 0.55)
EXPECTED = {  # arch -> (representation dim, channels of each feature map)
    "small": (128, [64, 64, 128]),
    "medium": (512, [64, 128, 256, 512]),
    "large": (1024, [92, 256, 512, 1024]),
    "resnet18": (512, [64, 128, 256, 512]),
    "resnet50": (2048, [256, 512, 1024, 2048]),
}


@pytest.fixture(scope="module")
def encoders():
    return {arch: build_encoder(arch, input_size=32, mean_rgb=MEAN) for arch in EXPECTED}


def images(rng, size, batch=2):
    return tf.constant(rng.uniform(size=(batch, size, size, 3)), tf.float32)


def test_mean_subtraction(rng):
    layer = MeanSubtraction(MEAN)
    x = images(rng, 4)
    np.testing.assert_allclose(layer(x).numpy(), x.numpy() - np.array(MEAN), atol=1e-7)
    assert layer.trainable_weights == [] and len(layer.non_trainable_weights) == 1


@pytest.mark.parametrize("arch", list(EXPECTED))
def test_encoder_shapes(encoders, arch, rng):
    encoder = encoders[arch]
    dim, channels = EXPECTED[arch]
    assert encoder.representation_dim == dim and encoder.input_size == 32 and encoder.arch == arch
    assert encoder(images(rng, 32)).shape == (2, dim)
    assert encoder(images(rng, 80)).shape == (2, dim)
    maps = encoder.feature_maps(images(rng, 96))
    assert [m.shape[-1] for m in maps] == channels
    assert all(m.shape[0] == 2 for m in maps)


@pytest.mark.parametrize("arch", ["small", "medium", "large"])
def test_exemplar_cnn_is_fully_convolutional(encoders, arch, rng):
    encoder = encoders[arch]
    assert [layer.name for layer in encoder.convs] + [encoder.fc.name] == (
        ["conv1", "conv2", "fc"] if arch == "small" else ["conv1", "conv2", "conv3", "fc"]
    )
    at_training_size = encoder.feature_maps(images(rng, 32))
    assert [m.shape[1] for m in at_training_size] == ([32, 16, 1] if arch == "small" else [32, 16, 8, 1])
    big = images(rng, 96)
    maps = encoder.feature_maps(big)
    assert [m.shape[1] for m in maps] == ([96, 48, 17] if arch == "small" else [96, 48, 24, 17])
    assert all(np.all(m.numpy() >= 0) for m in maps)  # post-ReLU
    np.testing.assert_allclose(encoder(big).numpy(), maps[-1].numpy().max(axis=(1, 2)), rtol=1e-6)


def test_exemplar_cnn_call_at_training_size_is_the_fc_vector(encoders, rng):
    encoder = encoders["medium"]
    x = images(rng, 32)
    np.testing.assert_allclose(encoder(x).numpy(), encoder.feature_maps(x)[-1].numpy()[:, 0, 0], rtol=1e-6)


def test_exemplar_cnn_dropout_only_in_training(encoders, rng):
    encoder, x = encoders["small"], images(rng, 32, batch=4)
    np.testing.assert_array_equal(encoder(x).numpy(), encoder(x, training=False).numpy())
    dropped = encoder(x, training=True).numpy()
    assert np.mean(dropped == 0) > np.mean(encoder(x).numpy() == 0)


def test_dropout_rate_is_a_parameter(rng):
    x = images(rng, 32, batch=4)
    no_dropout = build_encoder("small", input_size=32, mean_rgb=MEAN, dropout=0.0)
    np.testing.assert_array_equal(no_dropout(x, training=True).numpy(), no_dropout(x).numpy())
    with pytest.raises(ValueError, match="dropout"):
        build_encoder("small", input_size=32, mean_rgb=MEAN, dropout=1.0)


def test_exemplar_cnn_batch_norm_option(rng, tmp_path):
    encoder = build_encoder("small", input_size=32, mean_rgb=MEAN, batch_norm=True)
    paths = sorted(v.path for v in encoder.weights)
    assert paths == sorted(["mean_subtraction/mean_rgb", "small/conv1/kernel", "small/conv2/kernel",
                            "small/fc/kernel"] + [f"small/{layer}_bn/{name}" for layer in ("conv1", "conv2", "fc")
                                                  for name in ("gamma", "beta", "moving_mean", "moving_variance")])
    multipliers = encoder.weight_decay_multipliers()
    assert multipliers["small/fc/kernel"] == 1.0 and multipliers["small/fc_bn/gamma"] == 0.0
    assert sorted(multipliers) == sorted(v.path for v in encoder.trainable_variables)
    # Training-mode batch statistics: every fc unit fires for about half of a batch, none is dead.
    fc = encoder.feature_maps(images(rng, 32, batch=64), training=True)[-1]
    firing = np.mean(fc.numpy()[:, 0, 0, :] > 0, axis=0)
    assert np.all(firing > 0.1) and abs(np.mean(firing) - 0.5) < 0.1
    assert [m.shape[-1] for m in encoder.feature_maps(images(rng, 48))] == [64, 64, 128]
    path = tf.train.Checkpoint(encoder=encoder).save(str(tmp_path / "ckpt"))
    fresh = build_encoder("small", input_size=32, mean_rgb=MEAN, batch_norm=True)
    tf.train.Checkpoint(encoder=fresh).restore(path).assert_consumed()
    x = images(rng, 40)
    np.testing.assert_allclose(fresh(x).numpy(), encoder(x).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", list(EXPECTED))
def test_checkpoint_saves_and_restores_every_encoder_variable(encoders, arch, rng, tmp_path):
    encoder = encoders[arch]
    path = tf.train.Checkpoint(encoder=encoder).save(str(tmp_path / "ckpt"))
    saved = {name for name, _ in tf.train.list_variables(path) if name.startswith("encoder/")}
    assert len(saved) == len(encoder.weights)  # every weight; dropout's RNG state is not a weight
    fresh = build_encoder(arch, input_size=32, mean_rgb=(0.0, 0.0, 0.0))
    tf.train.Checkpoint(encoder=fresh).restore(path).assert_consumed()
    x = images(rng, 40)
    np.testing.assert_allclose(fresh(x).numpy(), encoder(x).numpy(), rtol=1e-5, atol=1e-6)


def test_resnet_stages_and_stems(encoders, rng):
    assert [m.shape[1] for m in encoders["resnet18"].feature_maps(images(rng, 32))] == [32, 16, 8, 4]
    assert [m.shape[1] for m in encoders["resnet50"].feature_maps(images(rng, 32))] == [32, 16, 8, 4]
    imagenet_stem = build_encoder("resnet50", input_size=96, mean_rgb=MEAN)
    assert [m.shape[1] for m in imagenet_stem.feature_maps(images(rng, 96, batch=1))] == [24, 12, 6, 3]


@pytest.mark.parametrize("input_size, stem, first_stage_side", [
    (224, "auto", 56), (96, "auto", 24), (64, "auto", 64), (32, "auto", 32), (96, "cifar", 96), (64, "imagenet", 16)])
def test_resnet18_stem_follows_the_input_size_unless_forced(input_size, stem, first_stage_side, rng):
    """NPID's ImageNet ResNet-18 at 224 px has the 7x7/2 + max-pool stem (56x56 after it); the CIFAR stem there
    would cost ~16x the compute."""
    encoder = build_encoder("resnet18", input_size=input_size, mean_rgb=MEAN, resnet_stem=stem)
    assert encoder.feature_maps(images(rng, input_size, batch=1))[0].shape[1] == first_stage_side
    unbuilt = {"arch": "resnet18", "input_size": input_size, "resnet_stem": stem, "resnet_width": 64}
    assert models.resolved_options(unbuilt) == encoder.options()  # what it chose, known without building it


@pytest.mark.parametrize("arch, width, channels", [("resnet18", 16, [16, 32, 64, 128]),
                                                   ("resnet50", 8, [32, 64, 128, 256])])
def test_resnet_width_scales_every_stage(arch, width, channels, rng):
    encoder = build_encoder(arch, input_size=32, mean_rgb=MEAN, resnet_width=width)
    assert [m.shape[-1] for m in encoder.feature_maps(images(rng, 32))] == channels
    assert encoder.representation_dim == channels[-1] == encoder(images(rng, 32)).shape[-1]
    assert encoder.stem_conv.filters == width
    with pytest.raises(ValueError, match="width"):
        build_encoder(arch, input_size=32, mean_rgb=MEAN, resnet_width=0)


def test_resnet_batch_norm_updates_statistics_only_in_training(rng):
    encoder = build_encoder("resnet18", input_size=32, mean_rgb=MEAN)
    moving_mean = next(v for v in encoder.non_trainable_variables if v.path.endswith("stem_bn/moving_mean"))
    before = moving_mean.numpy().copy()
    encoder(images(rng, 32))
    np.testing.assert_array_equal(moving_mean.numpy(), before)
    encoder(images(rng, 32), training=True)
    assert not np.array_equal(moving_mean.numpy(), before)


def test_encoder_traces_with_unknown_image_size(encoders):
    encoder = encoders["medium"]
    signature = tf.TensorSpec([None, None, None, 3], tf.float32)
    concrete = tf.function(lambda x: encoder(x, training=False)).get_concrete_function(signature)
    assert concrete(tf.zeros([3, 40, 48, 3])).shape == (3, 512)


def test_exemplar_cnn_weight_decay_multipliers(encoders):
    medium = encoders["medium"].weight_decay_multipliers()
    assert medium == {
        "medium/conv1/kernel": 0.0, "medium/conv1/bias": 0.0,
        "medium/conv2/kernel": 0.0, "medium/conv2/bias": 0.0,
        "medium/conv3/kernel": 0.25, "medium/conv3/bias": 0.0,
        "medium/fc/kernel": 1.0, "medium/fc/bias": 0.0,
    }
    small = encoders["small"].weight_decay_multipliers()
    assert small["small/conv2/kernel"] == 0.0 and small["small/fc/kernel"] == 1.0


@pytest.mark.parametrize("arch", list(EXPECTED))
def test_every_trainable_variable_has_a_multiplier(encoders, arch):
    encoder = encoders[arch]
    multipliers = encoder.weight_decay_multipliers()
    assert sorted(multipliers) == sorted(v.path for v in encoder.trainable_variables)
    if arch.startswith("resnet"):
        assert all((m == 1.0) == path.endswith("kernel") for path, m in multipliers.items())


def test_heads(rng):
    features = tf.constant(rng.normal(size=(5, 16)), tf.float32)
    projection, classifier = ProjectionHead(8), SurrogateClassifier(11)
    v = projection(features)
    assert v.shape == (5, 8) and v.dtype == tf.float32
    np.testing.assert_allclose(np.linalg.norm(v.numpy(), axis=1), 1.0, atol=1e-6)
    assert classifier(features).shape == (5, 11)
    assert projection.linear.use_bias
    assert sorted(projection.weight_decay_multipliers().values()) == [0.0, 1.0]
    assert sorted(classifier.weight_decay_multipliers().values()) == [0.0, 4.0]


def test_mlp_projection_head_is_dense_relu_dense_then_unit_rows(rng):
    """--head_hidden_dim: v = normalise(W2 relu(W1 f + b1) + b2), every kernel decayed, no bias."""
    features = rng.normal(size=(5, 16)).astype(np.float32)
    head = ProjectionHead(8, hidden_dim=12)
    head.build((None, 16))
    w1, b1, w2, b2 = (rng.normal(size=shape).astype(np.float32) for shape in [(16, 12), (12,), (12, 8), (8,)])
    for variable, value in zip([head.hidden.kernel, head.hidden.bias, head.linear.kernel, head.linear.bias],
                               [w1, b1, w2, b2]):
        variable.assign(value)
    expected = np.maximum(features @ w1 + b1, 0.0) @ w2 + b2
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(head(tf.constant(features)).numpy(), expected, rtol=1e-5, atol=1e-6)
    multipliers = head.weight_decay_multipliers()
    assert sorted(multipliers) == sorted(v.path for v in head.trainable_variables)
    assert all((rate == 1.0) == path.endswith("kernel") for path, rate in multipliers.items())
    assert ProjectionHead.from_config(head.get_config()).hidden_dim == 12
    assert ProjectionHead(8).hidden is None  # the default stays NPID's linear head


def test_weight_decay_loss_is_caffe_l2(encoders):
    encoder, classifier = encoders["small"], SurrogateClassifier(7)
    classifier.build((None, encoder.representation_dim))
    base = 0.004
    with tf.GradientTape() as tape:
        loss = weight_decay_loss([encoder, classifier], base)
    parts = [(encoder, encoder.weight_decay_multipliers()), (classifier, classifier.weight_decay_multipliers())]
    want = sum(base * m[v.path] * 0.5 * np.sum(v.numpy() ** 2) for part, m in parts for v in part.trainable_variables)
    np.testing.assert_allclose(loss.numpy(), want, rtol=1e-5)
    variables = encoder.trainable_variables + classifier.trainable_variables
    multipliers = {**parts[0][1], **parts[1][1]}
    for variable, gradient in zip(variables, tape.gradient(loss, variables)):
        want_gradient = base * multipliers[variable.path] * variable.numpy()
        got = np.zeros_like(want_gradient) if gradient is None else tf.convert_to_tensor(gradient).numpy()
        np.testing.assert_allclose(got, want_gradient, rtol=1e-5, atol=1e-9)


def test_build_encoder_under_mirrored_strategy(two_cpus, rng):
    strategy = two_cpus
    with strategy.scope():
        encoder = build_encoder("small", input_size=32, mean_rgb=MEAN)
    assert all(isinstance(v.value, tf.distribute.DistributedValues) for v in encoder.variables)
    out = strategy.run(tf.function(lambda x: encoder(x)), args=(images(rng, 32),))
    assert all(t.shape == (2, 128) for t in strategy.experimental_local_results(out))


def test_unknown_arch():
    with pytest.raises(ValueError, match="unknown arch"):
        build_encoder("vgg", input_size=32, mean_rgb=MEAN)


# ---------------------------------------------------------------- the registry and encoder options


def test_every_arch_is_registered():
    assert sorted(models.ENCODERS) == sorted(ARCHS)
    assert {models.ENCODERS[arch] for arch in ("small", "medium", "large")} == {models.ExemplarCNN}
    assert {models.ENCODERS[arch] for arch in ("resnet18", "resnet50")} == {models.ResNet}


@pytest.mark.parametrize("arch, keywords, own", [
    ("small", {}, {"dropout": 0.5, "batch_norm": False}),
    ("medium", {"dropout": 0.25, "batch_norm": True}, {"dropout": 0.25, "batch_norm": True}),
    ("resnet18", {"resnet_width": 8}, {"resnet_stem": "cifar", "resnet_width": 8}),
    ("resnet50", {"resnet_stem": "imagenet", "resnet_width": 4}, {"resnet_stem": "imagenet", "resnet_width": 4}),
])
def test_options_record_the_encoder_and_rebuild_it(arch, keywords, own, rng, tmp_path):
    encoder = build_encoder(arch, input_size=32, mean_rgb=MEAN, **keywords)
    options = encoder.options()
    assert options == {"arch": arch, "input_size": 32, **own}
    unbuilt = {"arch": arch, "input_size": 32, **models.ENCODERS[arch].OPTIONS, **keywords}
    assert models.resolved_options(unbuilt) == options  # the "auto" choices resolved without building
    rebuilt = models.encoder_from_options(options)
    assert rebuilt.options() == options and type(rebuilt) is type(encoder)
    assert [(v.path, v.shape) for v in rebuilt.weights] == [(v.path, v.shape) for v in encoder.weights]
    # The keywords of build_encoder are the options' names: its checkpoints restore into the rebuilt encoder.
    again = build_encoder(**{**options, "mean_rgb": (0.0, 0.0, 0.0)})
    path = tf.train.Checkpoint(encoder=encoder).save(str(tmp_path / "ckpt"))
    tf.train.Checkpoint(encoder=again).restore(path).assert_consumed()
    x = images(rng, 32)
    np.testing.assert_allclose(again(x).numpy(), encoder(x).numpy(), rtol=1e-5, atol=1e-6)


def test_encoder_from_options_refuses_options_of_another_class():
    with pytest.raises(TypeError, match="resnet_width"):
        models.encoder_from_options({"arch": "small", "input_size": 32, "resnet_width": 8})
    with pytest.raises(ValueError, match="unknown arch"):
        models.encoder_from_options({"arch": "vgg", "input_size": 32})


def test_recorded_options_fill_what_older_exports_lack():
    full = {"arch": "small", "input_size": 32, "dropout": 0.0, "batch_norm": True, "name": "run", "step": 5}
    assert models.recorded_options(full) == [{"arch": "small", "input_size": 32, "dropout": 0.0,
                                              "batch_norm": True}]
    # Exports before the options were recorded: batch norm unknown (both layouts, without first), dropout default.
    assert models.recorded_options({"arch": "large", "input_size": 96}) == [
        {"arch": "large", "input_size": 96, "dropout": 0.5, "batch_norm": False},
        {"arch": "large", "input_size": 96, "dropout": 0.5, "batch_norm": True}]
    # ResNet exports recorded stem and width before; older ones take the defaults.
    assert models.recorded_options({"arch": "resnet18", "input_size": 32, "resnet_width": 32}) == [
        {"arch": "resnet18", "input_size": 32, "resnet_stem": "auto", "resnet_width": 32}]

    class Config:  # an object with the options as attributes (a TrainConfig)
        arch, input_size, resnet_stem, resnet_width, batch_norm, dropout = "resnet50", 64, "auto", 16, True, 0.5

    assert models.recorded_options(Config()) == [
        {"arch": "resnet50", "input_size": 64, "resnet_stem": "auto", "resnet_width": 16}]
