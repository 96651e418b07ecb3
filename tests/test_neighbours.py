"""Bank neighbours as positives (--neighbours, --neighbours_from): the exact softmax's switch to the neighbourhood
loss in the objective and the compiled step, the loop's call that stops at the switch, and the flags' rules."""
import numpy as np
import pytest
import tensorflow as tf

from exemplar_tf import models, objectives
from exemplar_tf.errors import InputError
from exemplar_tf.objectives import losses
from exemplar_tf.serving import runs
from exemplar_tf.training import loop
from exemplar_tf.training.config import TrainConfig, instance_problems, validate
from exemplar_tf.training.step import build_state, make_train_step

N, D, TAU, K = 6, 4, 0.1, 2
NUM_INSTANCES, BATCH = 24, 8


def _nonparametric(**settings):
    encoder = models.build_encoder("small", input_size=32, mean_rgb=(0.5, 0.5, 0.5), dropout=0.0)
    made = objectives.make("nonparametric", objectives.Settings(embedding_dim=D, tau=TAU, **settings))
    made.build(encoder, N, lambda: None)
    rng = np.random.default_rng(0)
    made.bank.assign_whole(tf.math.l2_normalize(tf.constant(rng.normal(size=(N, D)), tf.float32), -1))
    return made


def _codes():
    rng = np.random.default_rng(1)
    return tf.math.l2_normalize(tf.constant(rng.normal(size=(3, D)), tf.float32), -1), tf.constant([1, 4, 5], tf.int64)


def test_the_objective_switches_to_the_neighbourhood_loss_at_its_step_eagerly_and_compiled():
    made = _nonparametric(neighbours=K, neighbours_from_step=5)
    v, labels = _codes()
    bank = made.bank.whole()
    own_row = float(losses.nonparametric_softmax_loss(v, bank, labels, TAU))
    neighbourhood = float(losses.neighbourhood_softmax_loss(v, bank, labels, losses.bank_neighbours(bank, labels, K),
                                                            TAU))
    assert neighbourhood < own_row - 1e-3  # more positive probability: a smaller loss
    compiled = tf.function(lambda: made.bank_loss(v, labels, None, None, None)[0])
    for step, expected in ((0, own_row), (4, own_row), (5, neighbourhood), (9, neighbourhood)):
        made.at_step(step)
        assert float(made.bank_loss(v, labels, None, None, None)[0]) == pytest.approx(expected, rel=1e-5)
        assert float(compiled()) == pytest.approx(expected, rel=1e-5)
    assert compiled.experimental_get_tracing_count() == 1  # one compiled step serves both phases


def test_without_neighbours_the_objective_has_no_switch_and_ignores_the_step():
    made = _nonparametric()
    v, labels = _codes()
    made.at_step(10 ** 6)
    assert made.neighbours_on is None
    loss = float(made.bank_loss(v, labels, None, None, None)[0])
    assert loss == pytest.approx(float(losses.nonparametric_softmax_loss(v, made.bank.whole(), labels, TAU)), rel=1e-6)


def _step_config(**changes):
    settings = dict(run_dir="/tmp/unused", arch="resnet18", resnet_width=4, objective="nonparametric",
                    num_seeds=NUM_INSTANCES, batch_size=BATCH, steps=10, lr=0.05, tau=TAU, weight_decay=0.0,
                    precision="float32", neighbours=K, neighbours_from=0.5)
    return TrainConfig(**{**settings, **changes})


def test_the_compiled_step_trains_on_the_neighbourhood_loss_after_the_switch():
    """The step's loss (before its update) is the pure neighbourhood loss of the step's codes against the bank,
    with the neighbours found in that bank, once `at_step` has passed the switch; the plain loss before it."""
    config = _step_config()
    rng = np.random.default_rng(0)
    batch = {"image": rng.uniform(size=(BATCH, 32, 32, 3)).astype(np.float32),
             "label": rng.choice(NUM_INSTANCES, BATCH, replace=False).astype(np.int64)}
    for step, neighbourhood in ((4, False), (5, True)):
        tf.keras.utils.set_random_seed(0)
        state = build_state(config, NUM_INSTANCES, np.full(3, 0.5, np.float32))
        codes = state.objective.head(state.encoder(tf.constant(batch["image"]), training=True), training=True)
        bank, labels = state.objective.bank.whole(), tf.constant(batch["label"])
        expected = (losses.neighbourhood_softmax_loss(codes, bank, labels, losses.bank_neighbours(bank, labels, K), TAU)
                    if neighbourhood else losses.nonparametric_softmax_loss(codes, bank, labels, TAU))
        state.objective.at_step(step)
        train_steps = make_train_step(config, tf.distribute.get_strategy(), state)
        loss = float(train_steps(iter(tf.data.Dataset.from_tensors(batch).repeat()), tf.constant(1))["loss"])
        np.testing.assert_allclose(loss, float(expected), rtol=1e-4)


def test_a_call_stops_at_the_start_of_the_neighbours():
    config = _step_config(steps=40, log_every=20, checkpoint_every=20, steps_per_call=100, neighbours_from=0.3)
    assert config.neighbours_from_step == 12
    assert loop.steps_this_call(config, 0) == 12 and loop.steps_this_call(config, 12) == 8


def record_neighbour_switches(monkeypatch) -> list[tuple[int, bool]]:
    """(step, neighbours on) at every call of the step from now on (NonParametric.at_step patched)."""
    switches = []
    at_step = objectives.NonParametric.at_step

    def recording(self, step):
        at_step(self, step)
        switches.append((step, bool(self.neighbours_on.numpy())))

    monkeypatch.setattr(objectives.NonParametric, "at_step", recording)
    return switches


def test_a_run_turns_the_neighbours_on_at_their_step(tmp_path, monkeypatch, tiny_config, capsys):
    switches = record_neighbour_switches(monkeypatch)
    config = tiny_config(tmp_path / "run", arch="resnet18", resnet_width=4, objective="nonparametric", steps=6,
                         checkpoint_every=3, neighbours=3, neighbours_from=0.5, precision="float32")
    result = runs.train(config)
    assert result.step == 6 and np.isfinite(result.loss)
    assert switches == [(0, False), (2, False), (3, True), (4, True)]
    assert "step 3: the 3 nearest bank rows join each example's positive from here on" in capsys.readouterr().out


@pytest.mark.parametrize("changes, message", [
    (dict(objective="nce"), "--neighbours sums the exact softmax over a neighbourhood: use --objective=nonparametric, "
                            "not nce"),
    (dict(momentum_encoder=0.99), "--neighbours is not supported with --momentum_encoder"),
    (dict(bank_sharding="sharded", merge_classes_at=2, merge_to=8, method="exemplar"),
     "--neighbours is not supported with --merge_to, --bank_sharding=sharded"),
    (dict(neighbours_from=0.05), "--neighbours_from=0.05 of --steps=10 puts the start of the bank neighbours at "
                                 "step 0: it must leave steps at both sides"),
    (dict(neighbours_from=0.0), "--neighbours_from must be in (0, 1), got 0.0"),
    (dict(neighbours_from=1.0), "--neighbours_from must be in (0, 1), got 1.0"),
    (dict(neighbours=0, neighbours_from=0.3), "--neighbours_from=0.3 applies with --neighbours=k > 0 (it is 0)"),
])
def test_bad_neighbour_flags_are_refused(changes, message):
    with pytest.raises(InputError) as error:
        validate(_step_config(**changes))
    assert message in str(error.value)


@pytest.mark.parametrize("settings", [dict(momentum_encoder=0.99), dict(merges_classes=True)])
def test_the_objective_refuses_neighbours_where_its_positive_is_not_the_whole_banks_own_row(settings):
    with pytest.raises(ValueError, match="neighbours need the whole bank of instance rows"):
        _nonparametric(neighbours=K, **settings)


def test_neighbours_must_be_fewer_than_the_instances():
    assert instance_problems(_step_config(neighbours=24), 24) == [
        "--neighbours=24 must be smaller than the 24 instances of --source=demo"]
    assert instance_problems(_step_config(neighbours=23), 24) == []
