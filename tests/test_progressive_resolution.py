"""Progressive resolution (--low_res_size, --low_res_until): the views' downsampling, the step on small views, the
switch step in the config and the loop, and a run through the switch to a full-resolution export."""
import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from exemplar_tf.errors import InputError
from exemplar_tf.serving import runs
from exemplar_tf.training import loop
from exemplar_tf.training.config import TrainConfig, validate
from exemplar_tf.training.step import build_state, make_train_step
from exemplar_tf.training.views import at_side

NUM_INSTANCES, BATCH = 24, 8


def _checkerboard(batch=2, side=32):
    """float32 [batch, side, side, 3]: pixels alternate 0 and 1 in both directions (the highest frequency)."""
    rows, cols = np.indices((side, side))
    board = ((rows + cols) % 2).astype(np.float32)
    return np.repeat(np.repeat(board[None, :, :, None], 3, axis=3), batch, axis=0)


def test_views_are_downsampled_with_antialiasing_eagerly_and_inside_a_tf_function():
    views = [tf.constant(_checkerboard()), tf.constant(np.full((2, 32, 32, 3), 0.25, np.float32))]
    board, flat = [view.numpy() for view in at_side(views, 24)]
    assert board.shape == flat.shape == (2, 24, 24, 3) and board.dtype == np.float32
    # Antialiased, the checkerboard averages to grey: within 0.1 of 0.5 (0.08 at the border) (plain bilinear sampling at 24 of 32
    # gives about 0.28, 0.5 and 0.72).
    assert np.abs(board - 0.5).max() < 0.1
    aliased = tf.image.resize(views[0], (24, 24), method="bilinear", antialias=False).numpy()
    assert np.abs(aliased - 0.5).max() > 0.2
    np.testing.assert_allclose(flat, 0.25, atol=1e-6)
    in_graph = tf.function(lambda view: at_side([view], 24)[0])
    np.testing.assert_allclose(in_graph(views[0]).numpy(), board, atol=1e-6)


@pytest.mark.parametrize("side", [16, 23, 24, 31])
def test_views_are_downsampled_exactly_as_the_export_resizes(side):
    view = tf.random.stateless_uniform([3, 32, 32, 3], [4, side])
    expected = tf.image.resize(view, (side, side), method="bilinear", antialias=True)
    np.testing.assert_allclose(at_side([view], side)[0].numpy(), expected.numpy(), atol=1e-6)


def test_the_downsampling_compiles_under_xla():
    view = tf.random.stateless_uniform([2, 32, 32, 3], [5, 6])
    compiled = tf.function(lambda v: at_side([v], 24)[0], jit_compile=True)
    np.testing.assert_allclose(compiled(view).numpy(), at_side([view], 24)[0].numpy(), atol=1e-6)


def test_views_at_their_own_side_are_returned_unchanged():
    views = [tf.constant(_checkerboard())]
    assert at_side(views, 32)[0] is views[0]


def test_bf16_views_keep_their_dtype():
    view = tf.cast(tf.constant(_checkerboard()), tf.bfloat16)
    assert at_side([view], 16)[0].dtype == tf.bfloat16


def test_the_switch_step_is_a_fraction_of_the_steps():
    config = TrainConfig(run_dir="/tmp/unused", arch="resnet18", steps=10, low_res_size=24, low_res_until=0.6)
    assert config.low_res_steps == 6
    assert [config.input_size_at(step) for step in (0, 5, 6, 9)] == [24, 24, 32, 32]
    off = TrainConfig(run_dir="/tmp/unused", arch="resnet18", steps=10)
    assert off.low_res_steps == 0 and off.input_size_at(0) == 32


@pytest.mark.parametrize("changes, message", [
    (dict(low_res_size=24), "--low_res_size and --low_res_until go together"),
    (dict(low_res_until=0.5), "--low_res_size and --low_res_until go together"),
    (dict(low_res_size=24, low_res_until=1.0), "--low_res_size and --low_res_until go together"),
    (dict(low_res_size=32, low_res_until=0.5), r"--low_res_size=32 must be from half the training side 32 to "
                                                r"below it \(16..31; the side is --patch_size\)"),
    (dict(low_res_size=15, low_res_until=0.5), "--low_res_size=15 must be from half the training side 32"),
    (dict(method="npid", image_size=40, low_res_size=12, low_res_until=0.5),
     r"--low_res_size=12 must be from half the training side 40 to below it \(20..39; the side is --image_size\)"),
    (dict(low_res_size=24, low_res_until=0.04, steps=10),
     r"--low_res_until=0.04 of --steps=10 puts the switch to full resolution at step 0: it must leave steps at "
     r"both sides"),
    (dict(low_res_size=24, low_res_until=0.5, arch="small"), "--low_res_size needs a ResNet"),
])
def test_bad_progressive_resolution_flags_are_refused(changes, message):
    with pytest.raises(InputError, match=message):
        validate(TrainConfig(run_dir="/tmp/unused", **{"arch": "resnet18", **changes}))


def test_a_call_stops_at_the_switch_to_full_resolution():
    config = TrainConfig(run_dir="/tmp/unused", arch="resnet18", steps=40, log_every=20, checkpoint_every=20,
                         steps_per_call=100, low_res_size=24, low_res_until=0.3)
    assert loop.steps_this_call(config, 0) == 12 and loop.steps_this_call(config, 12) == 8


def _step_config(**changes):
    return TrainConfig(run_dir="/tmp/unused", arch="resnet18", resnet_width=4, objective="nonparametric",
                       num_seeds=NUM_INSTANCES, batch_size=BATCH, steps=10, lr=0.05, tau=0.1, weight_decay=0.0,
                       precision="float32", **changes)


def test_the_step_at_a_low_side_trains_on_the_downsampled_views():
    """A step's loss (before its update) equals the objective's loss on the views at the step's side: 16 pixels
    for the low side's step, 32 for the full side's, whose losses differ."""
    config = _step_config(low_res_size=16, low_res_until=0.5)
    rng = np.random.default_rng(0)
    batch = {"image": rng.uniform(size=(BATCH, 32, 32, 3)).astype(np.float32),
             "label": rng.choice(NUM_INSTANCES, BATCH, replace=False).astype(np.int64)}
    no_noise = tf.constant([0, 0], tf.int64)
    losses = {}
    for side in (16, 32):
        tf.keras.utils.set_random_seed(0)  # the same initial weights and bank for both sides
        state = build_state(config, NUM_INSTANCES, np.full(3, 0.5, np.float32))
        expected = {at: float(state.objective.loss(state.encoder, at_side([tf.constant(batch["image"])], at),
                                                   tf.constant(batch["label"]), no_noise)[0]) for at in (16, 32)}
        train_steps = make_train_step(config, tf.distribute.get_strategy(), state, side=side)
        losses[side] = float(train_steps(iter(tf.data.Dataset.from_tensors(batch).repeat()), tf.constant(1))["loss"])
        np.testing.assert_allclose(losses[side], expected[side], rtol=1e-4)
    assert abs(losses[16] - losses[32]) > 1e-3


def test_a_run_switches_to_full_resolution_and_exports_at_it(tmp_path, capsys, monkeypatch):
    built_sides = []  # the side of every step function the loop builds

    def recording(config, strategy, state, side=None):
        built_sides.append(side)
        return make_train_step(config, strategy, state, side)

    monkeypatch.setattr(loop, "make_train_step", recording)
    config = TrainConfig(run_dir=str(tmp_path / "run"), name="progressive", source="demo", method="exemplar",
                         arch="resnet18", resnet_width=4, objective="nonparametric", num_seeds=64, seeds_per_image=8,
                         batch_size=16, steps=6, log_every=2, checkpoint_every=3, progress=False,
                         export_base=str(tmp_path / "sm"), low_res_size=16, low_res_until=0.5, precision="float32")
    result = runs.train(config)
    assert result.step == 6 and np.isfinite(result.loss)
    out = capsys.readouterr().out
    assert "Compiling the training step (on its first call; views at 16 pixels until step 3, then 32) ..." in out
    assert "step 3: views at 32 pixels from here on (compiling the step for them) ..." in out
    assert built_sides == [16, 32]
    sides = {}  # TensorBoard's input_side at each log step (every 2): the side of the step before it
    for path in glob.glob(os.path.join(result.log_dir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == "input_side":
                    sides[event.step] = float(tf.make_ndarray(value.tensor))
    assert sides == {2: 16.0, 4: 32.0, 6: 32.0}
    with open(os.path.join(result.export_dir, "assets.extra", "export_info.json")) as file:
        assert json.load(file)["input_size"] == 32  # served at the full side, like a run without the flag
    loaded = tf.saved_model.load(result.export_dir)
    codes = loaded.signatures["serving_default"](images=tf.zeros([2, 32, 32, 3], tf.uint8))["embedding"]
    assert codes.shape == (2, 128)
