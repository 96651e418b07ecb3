"""The momentum (key) encoder (objectives/momentum.py, docs/method.md §7): an EMA copy that is never trained,
scores the positive of each query and writes the bank rows; checkpointed; replicas stay equal."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from exemplar_tf import objectives
from exemplar_tf.objectives import losses
from exemplar_tf.objectives.momentum import (SHUFFLE_STREAM, batch_permutation, embedder, grouped_forward,
                                             shuffled_grouped_forward)
from exemplar_tf.training.config import TrainConfig, validate
from exemplar_tf.training.step import build_state, make_train_step

N, B, M = 24, 8, 0.9


def _config(objective="nce", **kw):
    return TrainConfig(run_dir="/tmp/unused", arch="small", objective=objective, num_seeds=N, nce_m=8, batch_size=B,
                       steps=10, lr=0.05, tau=0.1, dropout=0.0, batch_norm=True, momentum_encoder=M, **kw)


def _two_views(seed=0, batch=B):
    rng = np.random.default_rng(seed)
    views = rng.uniform(size=(2, batch, 32, 32, 3)).astype(np.float32)
    labels = rng.choice(N, size=batch, replace=False).astype(np.int64)
    return {"views": views, "label": labels}


def _state(config, strategy=None):
    from exemplar_tf.training.views import stacked_views

    with (strategy or tf.distribute.get_strategy()).scope():
        return build_state(config, N, np.full(3, 0.5, np.float32), stacked_views)


def _weights(layers):
    return [w.numpy() for layer in layers for w in layer.trainable_variables]


def test_a_momentum_encoder_makes_the_two_view_variant_of_each_bank_objective():
    for name in ("nce", "nonparametric"):
        made = objectives.make(name, objectives.Settings(momentum_encoder=0.99))
        assert made.views == 2 and made.name == name and isinstance(made, objectives.BankObjective)
    assert objectives.make("nce", objectives.Settings()).views == 1  # 0 = off = NPID


def test_the_key_copy_starts_equal_and_follows_the_ema_after_every_step():
    state = _state(_config())
    key = state.objective
    for online, copy in zip(_weights([state.encoder, key.head]), _weights([key.key_encoder, key.key_head])):
        np.testing.assert_array_equal(online, copy)
    assert not ({id(v) for v in key.key_encoder.variables} & {id(v) for v in state.trainable_variables})
    key_before = _weights([key.key_encoder, key.key_head])
    step = make_train_step(_config(), tf.distribute.get_strategy(), state)
    out = step(iter(tf.data.Dataset.from_tensors(_two_views()).repeat()), tf.constant(1))
    assert bool(out["finite"]) and int(out["steps"]) == 1
    online_after = _weights([state.encoder, key.head])
    for before, online, after in zip(key_before, online_after, _weights([key.key_encoder, key.key_head])):
        np.testing.assert_allclose(after, M * before + (1 - M) * online, rtol=1e-6, atol=1e-7)
    assert any(not np.array_equal(a, b) for a, b in zip(key_before, online_after))  # the online weights moved


def test_keys_are_the_positives_and_the_rows_the_bank_takes():
    state = _state(_config("nonparametric", bank_momentum=0.5))
    key = state.objective
    batch = _two_views(1)
    views = [tf.constant(v) for v in batch["views"]]
    queries = key.head(state.encoder(views[0], training=True), training=True)
    keys = key.key_head(key.key_encoder(views[1], training=True), training=True)
    rows_before = key.bank().numpy()
    loss, forward = key.loss(state.encoder, views, tf.constant(batch["label"]), tf.constant([0, 1], tf.int64))
    # The exact softmax with each example's own row replaced by its key.
    bank_with_keys = np.repeat(rows_before[None], B, axis=0)
    bank_with_keys[np.arange(B), batch["label"]] = keys.numpy()
    logits = np.einsum("bd,bnd->bn", queries.numpy(), bank_with_keys) / 0.1
    want = np.mean(np.log(np.exp(logits).sum(1)) - logits[np.arange(B), batch["label"]])
    assert float(loss) == pytest.approx(want, rel=1e-4)
    key.update(forward)
    blended = 0.5 * rows_before[batch["label"]] + 0.5 * keys.numpy()
    np.testing.assert_allclose(key.bank().numpy()[batch["label"]],
                               blended / np.linalg.norm(blended, axis=1, keepdims=True), atol=1e-5)


def test_nce_with_the_bank_rows_as_positives_is_plain_nce():
    rng = np.random.default_rng(3)
    bank = tf.math.l2_normalize(tf.constant(rng.normal(size=(N, 16)), tf.float32), -1)
    v = tf.math.l2_normalize(tf.constant(rng.normal(size=(B, 16)), tf.float32), -1)
    labels = tf.constant(rng.choice(N, B, replace=False), tf.int64)
    noise = losses.sample_noise(labels, N, 5, tf.constant([1, 2], tf.int64))
    plain = losses.nce_loss(v, bank, labels, noise, 0.1, 3.0)
    given = losses.nce_loss(v, bank, labels, noise, 0.1, 3.0, positives=tf.gather(bank, labels))
    np.testing.assert_allclose([float(t) for t in given], [float(t) for t in plain], rtol=1e-6)


def test_the_key_encoder_is_checkpointed_and_restored(tmp_path):
    state = _state(_config())
    assert {"key_encoder", "key_head", "bank", "z", "head"} <= set(state.objective.checkpoint_parts())
    for variable in state.objective.key_weights:
        variable.assign(variable + 1.0)
    path = state.checkpoint().save(str(tmp_path / "ckpt"))
    restored = _state(_config())
    restored.checkpoint().restore(path).assert_existing_objects_matched()
    for got, want in zip(restored.objective.key_weights, state.objective.key_weights):
        np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_key_copies_and_banks_stay_bitwise_equal_on_two_replicas(two_cpus):
    config = _config()
    state = _state(config, two_cpus)
    pieces = [_two_views(s, B // 2) for s in range(6)]  # 3 steps x 2 replicas
    dataset = tf.data.Dataset.from_tensor_slices({k: np.stack([p[k] for p in pieces]) for k in pieces[0]})
    step = make_train_step(config, two_cpus, state)
    out = step(iter(two_cpus.distribute_datasets_from_function(lambda context: dataset)), tf.constant(3))
    assert int(out["steps"]) == 3 and bool(out["finite"])
    for variable in state.objective.key_weights + [state.objective.bank.bank]:
        value = variable.value if hasattr(variable, "path") else variable
        first, second = [v.numpy() for v in two_cpus.experimental_local_results(value)]
        np.testing.assert_array_equal(first, second)


# --bn_groups: MoCo's shuffling BN on one device.

def _batch_norm(epsilon=1e-3):
    """forward [b,F] -> [b,F]: one BatchNormalization layer (gamma 1, beta 0) in training mode."""
    layer = keras.layers.BatchNormalization(epsilon=epsilon)
    return lambda x: layer(x, training=True)


def _normalised(x, epsilon=1e-3):
    """Batch normalisation of the rows of x [b,F] by their own mean and (biased) variance, in float64."""
    x = x.astype(np.float64)
    return (x - x.mean(0)) / np.sqrt(x.var(0) + epsilon)


def _rows(seed=0, batch=8, features=3):
    return np.random.default_rng(seed).normal(2.0, 3.0, size=(batch, features)).astype(np.float32)


def test_one_group_is_the_plain_forward():
    x = tf.constant(_rows())
    forward = _batch_norm()
    plain = forward(x).numpy()
    np.testing.assert_array_equal(grouped_forward(forward, x, 1).numpy(), plain)
    np.testing.assert_array_equal(shuffled_grouped_forward(forward, x, 1, tf.constant([0, 1], tf.int64)).numpy(),
                                  plain)


def test_grouped_batch_norm_normalises_each_contiguous_group_by_its_own_statistics():
    x = _rows()
    got = grouped_forward(_batch_norm(), tf.constant(x), 2).numpy()
    np.testing.assert_allclose(got, np.concatenate([_normalised(x[:4]), _normalised(x[4:])]), atol=1e-5)
    assert not np.allclose(got, _normalised(x), atol=1e-3)  # not the whole batch's statistics


def test_grouped_forward_refuses_a_batch_the_groups_do_not_divide():
    with pytest.raises(ValueError, match="--bn_groups=3 must divide the per-replica batch size, 8"):
        grouped_forward(_batch_norm(), tf.constant(_rows()), 3)


def test_shuffled_groups_give_each_row_back_to_its_instance():
    x, seed = _rows(1), tf.constant([5, 7], tf.int64)
    dense = keras.layers.Dense(4)
    np.testing.assert_allclose(shuffled_grouped_forward(dense, tf.constant(x), 4, seed).numpy(),
                               dense(tf.constant(x)).numpy(), rtol=1e-6, atol=1e-6)
    permutation = batch_permutation(8, seed).numpy()
    want = np.zeros((8, 3))
    for group in permutation.reshape(2, 4):  # instance i normalised within the group the permutation put it in
        want[group] = _normalised(x[group])
    np.testing.assert_allclose(shuffled_grouped_forward(_batch_norm(), tf.constant(x), 2, seed).numpy(), want,
                               atol=1e-5)
    assert not np.allclose(want, np.concatenate([_normalised(x[:4]), _normalised(x[4:])]), atol=1e-3)


def test_the_permutation_is_fixed_by_its_seed():
    first = batch_permutation(32, tf.constant([0, 3], tf.int64)).numpy()
    np.testing.assert_array_equal(np.sort(first), np.arange(32))
    np.testing.assert_array_equal(batch_permutation(32, tf.constant([0, 3], tf.int64)).numpy(), first)
    assert not np.array_equal(batch_permutation(32, tf.constant([0, 4], tf.int64)).numpy(), first)


def test_the_loss_runs_queries_in_groups_and_keys_in_shuffled_groups():
    state = _state(_config("nonparametric", bn_groups=2))
    key = state.objective
    batch = _two_views(2)
    views = [tf.constant(v) for v in batch["views"]]
    noise_seed = tf.constant([0, 1], tf.int64)
    labels = tf.constant(batch["label"])
    keys = shuffled_grouped_forward(embedder(key.key_encoder, key.key_head), views[1], 2,
                                    tf.random.experimental.stateless_fold_in(noise_seed, SHUFFLE_STREAM))
    queries = grouped_forward(embedder(state.encoder, key.head), views[0], 2)
    loss, forward = key.loss(state.encoder, views, labels, noise_seed)
    np.testing.assert_allclose(forward.codes.numpy(), keys.numpy(), atol=1e-6)
    whole = embedder(key.key_encoder, key.key_head)(views[1])
    assert not np.allclose(forward.codes.numpy(), whole.numpy(), atol=1e-4)
    want, _ = key.loss_on_codes(queries, labels, noise_seed, positives=keys)
    np.testing.assert_allclose(float(loss), float(want), rtol=1e-6)
    ungrouped, _ = key.loss_on_codes(embedder(state.encoder, key.head)(views[0]), labels, noise_seed, positives=keys)
    assert abs(float(ungrouped) - float(want)) > 1e-4  # the queries' grouping changes the loss


def test_a_compiled_step_with_shuffled_bn_groups_trains():
    config = _config(bn_groups=4)
    step = make_train_step(config, tf.distribute.get_strategy(), _state(config))
    out = step(iter(tf.data.Dataset.from_tensors(_two_views()).repeat()), tf.constant(2))
    assert bool(out["finite"]) and int(out["steps"]) == 2


@pytest.mark.parametrize("change, message", [
    (dict(bn_groups=2), "--bn_groups=2 shuffles the key encoder's BatchNorm groups: use it with --momentum_encoder"),
    (dict(bn_groups=3, momentum_encoder=0.99, objective="nce", batch_norm=True, nce_m=50),
     "--bn_groups=3 must divide the batch size, --batch_size=128"),
    (dict(bn_groups=0), "--bn_groups must be > 0, got 0"),
])
def test_bad_bn_groups_are_refused_with_the_flag_named(change, message):
    with pytest.raises(ValueError, match="Bad training flags") as error:
        validate(TrainConfig(run_dir="/tmp/x", **change))
    assert message in str(error.value)


def test_bn_groups_with_a_momentum_encoder_are_accepted():
    config = TrainConfig(run_dir="/tmp/x", bn_groups=4, momentum_encoder=0.99, objective="nce", batch_norm=True,
                         nce_m=50)
    assert validate(config) is config and objectives.Settings(bn_groups=4).bn_groups == 4
