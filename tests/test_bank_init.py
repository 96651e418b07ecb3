"""--bank_init=features: the memory bank starts from the initial encoder's training-mode codes."""
import keras
import numpy as np
import pytest
from PIL import Image
import tensorflow as tf

from exemplar_tf.objectives.bank import encoder_bank_rows
from exemplar_tf.serving import runs
from exemplar_tf.training import inputs
from exemplar_tf.training.config import TrainConfig
from exemplar_tf.training.step import build_state

NUM_INSTANCES = 12


def _state(strategy=None, **kw):
    config = TrainConfig(run_dir="/tmp/unused", arch="small", objective="nonparametric", dropout=0.0, **kw)
    with (strategy or tf.distribute.get_strategy()).scope():
        return build_state(config, NUM_INSTANCES, np.full(3, 0.5, np.float32))


def _parts(state):
    return state.encoder, state.objective.head, state.objective.bank


def _instances(order):
    """Random images [P,P,3] in [0,1], listed in `order` of their bank index."""
    images = np.random.default_rng(0).uniform(size=(NUM_INSTANCES, 32, 32, 3)).astype(np.float32)
    return images, tf.data.Dataset.from_tensor_slices({"image": images[order], "index": np.asarray(order, np.int64)})


def test_rows_are_the_normalised_codes_in_bank_order():
    state = _state()
    order = np.random.default_rng(1).permutation(NUM_INSTANCES)
    images, instances = _instances(order)
    rows = encoder_bank_rows(*_parts(state), instances, batch_size=5)
    expected = tf.math.l2_normalize(state.objective.head(state.encoder(images, training=True)), axis=-1).numpy()
    np.testing.assert_allclose(rows, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)


def test_batch_norm_moving_statistics_are_put_back():
    state = _state(batch_norm=True)
    before = [v.numpy() for v in state.encoder.non_trainable_variables]
    assert before, "the batch-norm encoder should have moving statistics"
    images, instances = _instances(np.arange(NUM_INSTANCES))
    encoder_bank_rows(*_parts(state), instances, batch_size=5)
    for saved, variable in zip(before, state.encoder.non_trainable_variables):
        np.testing.assert_array_equal(saved, variable.numpy())
    state.encoder(images, training=True)  # what the forward pass alone would have done
    assert any(not np.array_equal(saved, v.numpy()) for saved, v in zip(before, state.encoder.non_trainable_variables))


def test_missing_or_out_of_range_instances_are_errors():
    state = _state()
    _, instances = _instances(np.arange(NUM_INSTANCES - 2))
    with pytest.raises(ValueError, match="2 of 12 memory-bank rows have no instance image"):
        encoder_bank_rows(*_parts(state), instances)
    _, instances = _instances(np.arange(NUM_INSTANCES))
    with pytest.raises(ValueError, match=r"must lie in \[0, 12\)"):
        encoder_bank_rows(*_parts(state), instances.map(lambda e: {**e, "index": e["index"] + 1}))


def test_rows_written_under_mirrored_strategy_are_equal_on_every_replica(two_cpus):
    state = _state(two_cpus, batch_norm=True)
    _, instances = _instances(np.arange(NUM_INSTANCES))
    rows = encoder_bank_rows(*_parts(state), instances, batch_size=5)
    state.objective.bank.bank.assign(rows)
    copies = [v.numpy() for v in two_cpus.experimental_local_results(state.objective.bank.bank.value)]
    assert len(copies) == 2
    np.testing.assert_array_equal(copies[0], rows)
    np.testing.assert_array_equal(copies[1], rows)


def test_training_starts_from_the_initial_encoders_codes(tmp_path):
    # bank_momentum=1 never moves a row, so the bank after training is the bank at step 0.
    config = TrainConfig(run_dir=str(tmp_path / "run"), name="init", source="demo", method="exemplar",
                         arch="small", objective="nonparametric", allow_unnormalised_bank=True, knn_source="",
                         bank_init="features", bank_momentum=1.0,
                         dropout=0.0, num_seeds=48, seeds_per_image=8, batch_size=16, steps=2, progress=False,
                         export_base=str(tmp_path / "sm"))
    result = runs.train(config)
    bank = tf.train.load_checkpoint(result.checkpoint_dir).get_tensor("bank/bank/.ATTRIBUTES/VARIABLE_VALUE")

    keras.utils.set_random_seed(config.seed)  # rebuild the step-0 state as the loop does
    data = inputs.training_data(config)
    state = build_state(config, data.num_instances, data.mean_rgb, data.views)
    np.testing.assert_allclose(bank, encoder_bank_rows(*_parts(state), data.instances()), atol=1e-5)
    assert not np.allclose(bank, state.objective.bank.bank.numpy(), atol=0.1)  # not the random rows


def test_batch_norm_statistics_are_put_back_when_a_bad_index_stops_the_pass():
    state = _state(batch_norm=True)
    before = [v.numpy() for v in state.encoder.non_trainable_variables]
    _, instances = _instances(np.arange(NUM_INSTANCES))
    shifted = instances.map(lambda e: {**e, "index": e["index"] + 1})  # the last batch holds index 12
    with pytest.raises(ValueError, match="must lie in"):
        encoder_bank_rows(*_parts(state), shifted, batch_size=5)
    for saved, variable in zip(before, state.encoder.non_trainable_variables):
        np.testing.assert_array_equal(saved, variable.numpy())


@pytest.mark.parametrize("method", [dict(method="npid", image_size=16),
                                    dict(method="exemplar", seed_sampling="online", patch_size=16),
                                    dict(method="exemplar", seed_sampling="fixed", patch_size=16, num_seeds=24,
                                         seeds_per_image=1)])
def test_the_instances_of_a_class_sorted_folder_come_in_batches_of_mixed_classes(tmp_path, method):
    """--bank_init=features encodes every instance in training mode, BatchNorm on each batch's own statistics: in
    an image folder's order (by class) a batch would hold one class and lose its mean. Every instance comes once,
    and the first batch of 8 spans classes (it used to be the 8 images of class 0)."""
    per_class = 8
    for label in range(3):
        (tmp_path / "data" / f"class{label}").mkdir(parents=True)
        for k in range(per_class):
            pixels = np.random.default_rng(label * per_class + k).integers(0, 256, (48, 48, 3), np.uint8)
            Image.fromarray(pixels).save(tmp_path / "data" / f"class{label}" / f"{k}.png")
    (tmp_path / "run").mkdir()  # the fixed seeds are cached there
    config = TrainConfig(run_dir=str(tmp_path / "run"), source=f"folder:{tmp_path / 'data'}", arch="small",
                         objective="nonparametric", batch_size=per_class, **method)
    data = inputs.training_data(config)
    order = [int(element["index"]) for element in data.instances().as_numpy_iterator()]
    assert sorted(order) == list(range(data.num_instances)) == list(range(3 * per_class))
    image_of = np.arange(3 * per_class)  # instance i is image i (file i, class i // 8) ...
    if method["method"] == "exemplar" and method["seed_sampling"] == "fixed":  # ... or seed i comes from an image
        image_of = np.load(tmp_path / "run" / "seeds.npz")["source_index"]
    assert len({image_of[index] // per_class for index in order[:per_class]}) > 1
