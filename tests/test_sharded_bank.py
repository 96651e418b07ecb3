"""--bank_sharding=sharded: each replica holds N/R bank rows, and losses, gradients and bank rows follow the
replicated bank on 2 and 4 replicas (NCE per-example and shared noise, the exact softmax, merged classes, the
proximal term, a key encoder's positives); checkpoints hold the whole bank and restore across modes and replica
counts.

Equality: the noise indices, the rows each update writes and the first step's bank are bitwise equal; losses,
gradients and later rows agree to float rounding (measured: losses within 3e-7 relative, summed gradients within
1e-6, rows within 1.4e-7; asserted: rtol 1e-5, 1e-4 + 1e-6, 1e-6), because the sharded bank computes the noise dot
products with other kernels (a product and sum per owned (example, row) pair instead of a batched matmul), splits
the exact softmax's log-sum-exp over shards, and the codes of later steps come from those gradients.
"""
import numpy as np
import pytest
import tensorflow as tf

from exemplar_tf import objectives
from exemplar_tf.errors import InputError
from exemplar_tf.objectives.sharded_bank import ShardedMemoryBank
from exemplar_tf.training.config import TrainConfig, validate

N, D, F, GLOBAL_BATCH, M, STEPS, SEED = 37, 8, 6, 8, 5, 3, 3  # N = 37: not a multiple of 2 or 4 (padded shards)


def _tiny_encoder():
    encoder = tf.keras.Sequential([tf.keras.layers.Flatten(), tf.keras.layers.Dense(4)])
    encoder.input_size = 2
    return encoder


def _build(strategy, objective, sharding, relabel=None, **kw):
    settings = objectives.Settings(embedding_dim=D, tau=0.1, nce_m=M, bank_sharding=sharding, seed=SEED,
                                   merges_classes=relabel is not None, **kw)
    built = objectives.make(objective, settings)
    with strategy.scope():
        built.build(_tiny_encoder(), N, _tiny_encoder)
    if relabel is not None:
        built.relabel.assign(relabel)
    return built


def _inputs():
    """STEPS global batches: features [B,F], labels [B] (distinct), key codes [B,D] (unit rows)."""
    rng = np.random.default_rng(5)
    for _ in range(STEPS):
        keys = rng.normal(size=(GLOBAL_BATCH, D)).astype(np.float32)
        yield (rng.normal(size=(GLOBAL_BATCH, F)).astype(np.float32),
               rng.choice(N, GLOBAL_BATCH, replace=False).astype(np.int64),
               keys / np.linalg.norm(keys, axis=1, keepdims=True))


def _train(strategy, objective, with_positives=False):
    """STEPS steps of the objective on codes normalise(features @ W) (W the only weight, SGD lr 0.5 on the
    replicas' summed gradients), noise seeded as the training step does. Returns (per-replica losses [STEPS,R],
    summed gradients [STEPS,F,D], the whole bank after each step [STEPS,N,D], Z or None)."""
    replicas = strategy.num_replicas_in_sync
    per_replica = GLOBAL_BATCH // replicas
    weights = np.random.default_rng(6).normal(size=(F, D)).astype(np.float32)

    @tf.function
    def step(weights, features, labels, keys, step_index):
        def replica_step():
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            part = slice(replica * per_replica, (replica + 1) * per_replica)
            noise_seed = tf.stack([tf.constant(SEED, tf.int64), step_index * replicas + tf.cast(replica, tf.int64)])
            with tf.GradientTape() as tape:
                tape.watch(weights)
                codes = tf.math.l2_normalize(tf.matmul(features[part], weights), axis=-1)
                loss, forward = objective.loss_on_codes(codes, labels[part], noise_seed,
                                                        positives=keys[part] if with_positives else None)
            gradient = tape.gradient(loss, weights)
            objective.update(forward)
            return loss, gradient

        return strategy.run(replica_step)

    losses, gradients, banks = [], [], []
    for index, (features, labels, keys) in enumerate(_inputs()):
        loss, gradient = step(tf.constant(weights), features, labels, keys, tf.constant(index, tf.int64))
        losses.append([float(x) for x in strategy.experimental_local_results(loss)])
        gradients.append(sum(g.numpy() for g in strategy.experimental_local_results(gradient)))
        weights = weights - 0.5 * gradients[-1]
        banks.append(objective.bank.whole().numpy())
    z = float(objective.z.numpy()) if hasattr(objective, "z") else None
    return np.array(losses), np.array(gradients), np.array(banks), z


def _merged_relabel():
    """37 seeds into 12 classes, seed % 12: rows 12..36 are out of use; NCE draws its noise from 12 rows."""
    return np.arange(N) % 12


CASES = {  # name: (objective, strategy fixture, build options, positives)
    "nce_2_proximal": ("nce", "two_cpus", dict(proximal_lambda=0.3), False),
    "nce_4_merged": ("nce", "four_cpus", dict(relabel=_merged_relabel()), False),
    "nce_4_shared_noise": ("nce", "four_cpus", dict(nce_noise="shared"), False),
    "nce_2_positives": ("nce", "two_cpus", dict(), True),
    "softmax_2_merged_proximal": ("nonparametric", "two_cpus", dict(relabel=_merged_relabel(), proximal_lambda=0.3),
                                  False),
    "softmax_4_positives_proximal": ("nonparametric", "four_cpus", dict(proximal_lambda=0.3), True),
}


@pytest.mark.parametrize("case", CASES)
def test_sharded_bank_follows_the_replicated_bank(case, request):
    objective, strategy_name, options, positives = CASES[case]
    strategy = request.getfixturevalue(strategy_name)
    replicated = _build(strategy, objective, "replicated", **options)
    sharded = _build(strategy, objective, "sharded", **options)
    assert not replicated.bank.sharded and sharded.bank.sharded
    np.testing.assert_array_equal(sharded.bank.whole().numpy(), replicated.bank.whole().numpy())
    want_losses, want_gradients, want_banks, want_z = _train(strategy, replicated, positives)
    got_losses, got_gradients, got_banks, got_z = _train(strategy, sharded, positives)
    assert np.all(np.isfinite(want_losses)) and np.abs(want_gradients).max() > 1e-3
    np.testing.assert_allclose(got_losses, want_losses, rtol=1e-5)
    np.testing.assert_allclose(got_gradients, want_gradients, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(got_banks[0], want_banks[0])  # step 1: the same codes, the same update rule
    np.testing.assert_allclose(got_banks, want_banks, atol=1e-6)
    if want_z is not None:
        np.testing.assert_allclose(got_z, want_z, rtol=1e-5)
    labels = np.concatenate([labels for _, labels, _ in _inputs()])
    written = np.unique(options["relabel"][labels] if "relabel" in options else labels)
    initial = _build(tf.distribute.get_strategy(), objective, "replicated").bank.whole().numpy()
    assert np.all(np.abs(got_banks[-1] - initial).max(axis=1)[written] > 0)
    untouched = np.setdiff1d(np.arange(N), written)
    np.testing.assert_array_equal(got_banks[-1][untouched], initial[untouched])


@pytest.mark.parametrize("strategy_name, rows_per_replica", [("two_cpus", 19), ("four_cpus", 10)])
def test_each_replica_holds_its_own_block_of_rows(strategy_name, rows_per_replica, request):
    strategy = request.getfixturevalue(strategy_name)
    bank = _build(strategy, "nce", "sharded").bank
    whole = _build(tf.distribute.get_strategy(), "nce", "replicated").bank.whole().numpy()
    shards = [shard.numpy() for shard in strategy.experimental_local_results(bank.variable)]
    assert isinstance(bank, ShardedMemoryBank) and len(shards) == strategy.num_replicas_in_sync
    assert [shard.shape for shard in shards] == [(rows_per_replica, D)] * len(shards)
    padded = np.concatenate([whole, np.zeros((len(shards) * rows_per_replica - N, D), np.float32)])
    for replica, shard in enumerate(shards):
        np.testing.assert_array_equal(shard, padded[replica * rows_per_replica:(replica + 1) * rows_per_replica])
    np.testing.assert_array_equal(bank.whole().numpy(), whole)


def _rows(seed):
    rows = np.random.default_rng(seed).normal(size=(N, D)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _save(objective, path):
    return tf.train.Checkpoint(**objective.checkpoint_parts()).save(str(path))


def _restore(objective, path):
    tf.train.Checkpoint(**objective.checkpoint_parts()).restore(path).assert_existing_objects_matched()


@pytest.mark.parametrize("saved_by, restored_by", [("two_cpus", "four_cpus"), ("four_cpus", "two_cpus"),
                                                   ("two_cpus", "default"), ("default", "four_cpus")])
def test_checkpoints_hold_the_whole_bank_and_restore_across_modes_and_replica_counts(saved_by, restored_by, request,
                                                                                    tmp_path):
    def strategy(name):
        return tf.distribute.get_strategy() if name == "default" else request.getfixturevalue(name)

    saved = _build(strategy(saved_by), "nce", "sharded" if saved_by != "default" else "replicated")
    saved.bank.assign_whole(_rows(1))
    path = _save(saved, tmp_path / "ckpt")
    assert ("bank/bank/.ATTRIBUTES/VARIABLE_VALUE", [N, D]) in tf.train.list_variables(path)
    np.testing.assert_array_equal(tf.train.load_checkpoint(path).get_tensor("bank/bank/.ATTRIBUTES/VARIABLE_VALUE"),
                                  _rows(1))
    restored = _build(strategy(restored_by), "nce", "sharded" if restored_by != "default" else "replicated")
    assert restored.bank.sharded == (restored_by != "default")
    _restore(restored, path)
    np.testing.assert_array_equal(restored.bank.whole().numpy(), _rows(1))
    if restored.bank.sharded:  # the shards themselves took the rows: the last one holds the tail of the bank
        shards = strategy(restored_by).experimental_local_results(restored.bank.variable)
        start = restored.bank.rows_per_shard * (len(shards) - 1)
        np.testing.assert_array_equal(shards[-1].numpy()[:N - start], _rows(1)[start:])


def test_replicated_checkpoint_keys_are_unchanged(two_cpus, tmp_path):
    path = _save(_build(two_cpus, "nce", "replicated"), tmp_path / "ckpt")
    assert ("bank/bank/.ATTRIBUTES/VARIABLE_VALUE", [N, D]) in tf.train.list_variables(path)


def test_one_replica_keeps_the_whole_bank():
    assert not _build(tf.distribute.get_strategy(), "nce", "sharded").bank.sharded


@pytest.mark.parametrize("overrides, message", [
    (dict(strategy="multi_worker"), "--bank_sharding=sharded is not supported with --strategy=multi_worker"),
    (dict(strategy="tpu", tpu="grpc://x"), "--bank_sharding=sharded is not supported with --strategy=tpu"),
    (dict(jit_compile=True), "--bank_sharding=sharded is not supported with --jit_compile"),
    (dict(objective="softmax"), "--bank_sharding=sharded needs a memory bank"),
])
def test_sharding_is_refused_where_it_cannot_work(overrides, message):
    config = TrainConfig(run_dir="/tmp/unused", **{"method": "npid", "objective": "nce", "bank_sharding": "sharded",
                                                   "strategy": "mirrored", **overrides})
    with pytest.raises(InputError, match=message.replace("-", r"\-")):
        validate(config)


def test_the_training_step_with_a_sharded_bank_follows_the_replicated_one_and_checkpoints_restore(two_cpus, tmp_path):
    """The real step (build_state, make_train_step) with a key encoder (MomentumNCE): the same losses and bank;
    the run's checkpoint restores into a replicated state; the fingerprint reads the bank whole."""
    from exemplar_tf.training.loop import state_fingerprint
    from exemplar_tf.training.step import build_state, make_train_step
    from exemplar_tf.training.views import stacked_views

    rng = np.random.default_rng(2)
    images = rng.uniform(size=(2 * STEPS, GLOBAL_BATCH // 2, 32, 32, 3)).astype(np.float32)
    batches = {"views": np.stack([images, images[:, :, ::-1]], axis=1),  # query and key views
               "label": rng.permutation(N)[:STEPS * GLOBAL_BATCH].reshape(2 * STEPS, -1).astype(np.int64)}

    def run(sharding):
        config = TrainConfig(run_dir="/tmp/unused", arch="small", objective="nce", num_seeds=N, nce_m=M,
                             batch_size=GLOBAL_BATCH, steps=10, lr=0.05, tau=0.1, dropout=0.0, momentum_encoder=0.5,
                             bank_sharding=sharding)
        tf.keras.utils.set_random_seed(0)
        with two_cpus.scope():
            state = build_state(config, N, np.full(3, 0.5, np.float32), stacked_views)
        dataset = tf.data.Dataset.from_tensor_slices(batches)
        iterator = iter(two_cpus.distribute_datasets_from_function(lambda context: dataset))
        out = make_train_step(config, two_cpus, state)(iterator, tf.constant(STEPS))
        assert int(out["steps"]) == STEPS and bool(out["finite"])
        return state, float(out["loss"]), float(out["nce_z"])

    replicated, replicated_loss, replicated_z = run("replicated")
    sharded, sharded_loss, sharded_z = run("sharded")
    assert sharded.objective.bank.sharded
    np.testing.assert_allclose([sharded_loss, sharded_z], [replicated_loss, replicated_z], rtol=1e-5)
    np.testing.assert_allclose(sharded.objective.bank.whole().numpy(), replicated.objective.bank.whole().numpy(),
                               atol=1e-6)
    path = sharded.checkpoint().save(str(tmp_path / "ckpt"))
    replicated.checkpoint().restore(path).assert_existing_objects_matched()
    assert state_fingerprint(replicated) == state_fingerprint(sharded)


def test_merging_classes_writes_the_class_rows_into_the_shards(four_cpus):
    replicated = _build(four_cpus, "nonparametric", "replicated", relabel=np.arange(N))
    sharded = _build(four_cpus, "nonparametric", "sharded", relabel=np.arange(N))
    for objective in (replicated, sharded):
        objective.merge_classes(_merged_relabel())
    merged = replicated.bank.whole().numpy()
    assert not np.array_equal(merged[:12], _build(tf.distribute.get_strategy(), "nce", "replicated").bank.whole()[:12])
    np.testing.assert_array_equal(sharded.bank.whole().numpy(), merged)
    np.testing.assert_array_equal(four_cpus.experimental_local_results(sharded.bank.variable)[1].numpy()[:2],
                                  merged[10:12])  # rows 10, 11 (classes) are the second shard's first rows
    assert sharded.num_classes == 12 and sharded.scalars(0)["bank/mean_norm"] == pytest.approx(1.0)


def test_bank_init_from_features_fills_every_shard(two_cpus):
    images = np.random.default_rng(7).uniform(size=(N, 2, 2, 3)).astype(np.float32)
    instances = lambda: tf.data.Dataset.from_tensor_slices({"image": images, "index": np.arange(N)})  # noqa: E731
    replicated = _build(two_cpus, "nce", "replicated", bank_init="features")
    sharded = _build(two_cpus, "nce", "sharded", bank_init="features")
    sharded.head.set_weights(replicated.head.get_weights())
    encoder = _tiny_encoder()
    encoder(images[:1])
    for objective in (replicated, sharded):
        assert objective.start(encoder, instances).startswith(f"Memory bank: {N} rows")
    np.testing.assert_array_equal(sharded.bank.whole().numpy(), replicated.bank.whole().numpy())
    assert not np.array_equal(sharded.bank.whole().numpy(), _build(two_cpus, "nce", "sharded").bank.whole().numpy())


@pytest.mark.slow  # two short demo trainings with exports: ~35 s
def test_a_run_trains_with_a_sharded_bank_and_resumes_with_a_replicated_one(tmp_path, tiny_config, two_cpus):
    """The training loop end to end on two replicas (data, step, bank statistics, checkpoints, exports): 2 steps
    sharded, then resumed replicated to step 4 from the sharded run's checkpoint (the flag is resume-safe)."""
    import dataclasses

    from exemplar_tf.serving import runs

    config = tiny_config(tmp_path / "run", objective="nce", batch_norm=True, nce_m=8, steps=4, checkpoint_every=2,
                         strategy="mirrored", bank_sharding="sharded")
    first = runs.train(dataclasses.replace(config, steps=2), strategy=two_cpus)
    bank_key = "bank/bank/.ATTRIBUTES/VARIABLE_VALUE"
    sharded_bank = tf.train.load_checkpoint(tf.train.latest_checkpoint(first.checkpoint_dir)).get_tensor(bank_key)
    assert first.step == 2 and sharded_bank.shape == (64, 128)
    resumed = runs.train(dataclasses.replace(config, bank_sharding="replicated"), strategy=two_cpus)
    assert resumed.step == 4 and resumed.steps_run == 2 and np.isfinite(resumed.loss)
    replicated_bank = tf.train.load_checkpoint(tf.train.latest_checkpoint(resumed.checkpoint_dir)).get_tensor(bank_key)
    moved = np.abs(replicated_bank - sharded_bank).max(axis=1) > 0
    assert 0 < moved.sum() <= 2 * 16  # the rows of the two resumed batches moved, the others kept the sharded run's
