"""--train_minutes: the step count that fits a budget (known costs in, exact steps out), the sides the step is
timed at, where and how the second fit is made, and in a run: a run fitted twice is bitwise the run given its
final --steps, the steps are recorded and kept on resume, and budgets that cannot work are refused."""
import dataclasses
import glob
import os

import numpy as np
import pytest
from test_neighbours import record_neighbour_switches
from test_resume import _checkpoint_values

import tensorflow as tf
from tensorboard.plugins.hparams import metadata as hparams_metadata

from exemplar_tf.errors import InputError
from exemplar_tf.serving import runs
from exemplar_tf.training import budget, loop, rundir
from exemplar_tf.training.config import TrainConfig, validate

COSTS = budget.Costs(elapsed=10.0, step=0.5, compile=5.0, knn_reading=2.0, export=3.0, checkpoint=1.0)


def _command_seconds(steps, costs, knn_every, checkpoint_every):
    """What a run of `steps` costs by the model fit_steps inverts: start-up, compile, the steps with their
    periodic readings and checkpoints, then the last reading, checkpoint and export."""
    readings = steps / knn_every if knn_every else 0.0
    return (costs.elapsed + costs.compile + steps * costs.step + readings * costs.knn_reading
            + steps / checkpoint_every * costs.checkpoint + costs.knn_reading + costs.checkpoint + costs.export)


def test_fit_steps_is_the_most_steps_within_the_budget():
    # left: 100 - 10 - 5 - 2 - 1 - 3 = 79 s; per step: 0.5 + 2/10 + 1/20 = 0.75 s -> 105.3
    assert budget.fit_steps(100.0, COSTS, knn_every=10, checkpoint_every=20) == 105
    for budget_s in (30.0, 100.0, 7200.0):
        steps = budget.fit_steps(budget_s, COSTS, knn_every=10, checkpoint_every=20)
        assert _command_seconds(steps, COSTS, 10, 20) <= budget_s < _command_seconds(steps + 1, COSTS, 10, 20)


def test_fit_steps_without_a_knn_monitor_and_when_nothing_fits():
    quiet = dataclasses.replace(COSTS, knn_reading=0.0)
    # left: 100 - 10 - 5 - 1 - 3 = 81 s; per step 0.5 + 1/20 = 0.55 s -> 147.3
    assert budget.fit_steps(100.0, quiet, knn_every=0, checkpoint_every=20) == 147
    assert budget.fit_steps(20.0, COSTS, knn_every=10, checkpoint_every=20) == 0  # start-up alone is 21 s


def test_input_sides_weigh_progressive_resolution_by_its_share_of_the_steps():
    full = TrainConfig(run_dir="r", method="npid", arch="resnet18", image_size=32, precision="float32")
    assert budget.input_sides(full) == [(32, 1.0)]
    low = dataclasses.replace(full, low_res_size=24, low_res_until=0.6)
    assert budget.input_sides(low) == [(24, 0.6), (32, pytest.approx(0.4))]


def test_the_input_sides_are_timed_in_turn_each_by_its_own_calls():
    """A clock that advances by each fake step function's cost: 0.5 s a step at 24 px, 0.8 s at 32, 10 steps a
    call. After one compiling call each, the sides alternate until each has 17 s and 3 calls: 4 rounds (the
    32-px side had its 17 s after 3)."""
    clock, calls = [0.0], []

    def step_function(side, step_s):
        def train_steps(iterator, num_steps):
            calls.append(side)
            clock[0] += step_s * int(num_steps)
            return {"steps": num_steps}
        return train_steps

    first_s, side_step_s = budget._time_sides({24: step_function(24, 0.5), 32: step_function(32, 0.8)}, None,
                                              steps_per_call=10, seconds=17.0, clock=lambda: clock[0])
    assert calls == [24, 32] + [24, 32] * 4
    assert first_s == pytest.approx({24: 5.0, 32: 8.0}) and side_step_s == pytest.approx({24: 0.5, 32: 0.8})


def test_the_fit_line_names_each_input_sides_timing(tiny_config):
    config = tiny_config("r", train_minutes=115, arch="resnet18", patch_size=32, image_size=32, low_res_size=24)
    line = budget.summary_line(config, 9344, COSTS, {24: 0.572, 32: 0.902})
    assert line.startswith("--train_minutes=115: 9344 steps fit (0.500 s per step timed on this machine (24 px "
                           "0.572 s, 32 px 0.902 s); 0.2 min gone on start-up and timing, 5 s to compile)")
    assert "timed on this machine; 0.2 min" in budget.summary_line(config, 10, COSTS, {32: 0.5})


def test_the_second_fit_is_half_way_to_the_first_step_that_depends_on_the_count(tiny_config):
    config = tiny_config("r", steps=1000, lr_decay_at=(0.8, 0.6))
    assert budget.refit_step(config) == 300  # the drop at 600
    assert budget.refit_step(dataclasses.replace(config, lr_decay_at=())) == 500  # nothing but the end
    resnet = dataclasses.replace(config, arch="resnet18", patch_size=32, low_res_size=24, low_res_until=0.4)
    assert budget.refit_step(resnet) == 200  # the switch to full resolution at 400
    assert budget.refit_step(dataclasses.replace(config, lr_schedule="cosine")) is None


def test_the_start_of_the_bank_neighbours_is_a_switch_the_second_fit_keeps_ahead(tiny_config):
    config = tiny_config("r", steps=1000, objective="nonparametric", neighbours=3, neighbours_from=0.4,
                         lr_decay_at=(0.6,), knn_every=0, checkpoint_every=10_000)
    assert budget.refit_step(config) == 200  # the neighbours from 400, before the drop at 600
    refit = _refit(config, {config.input_size: 0.25})
    assert budget.refit_steps(config, refit, 200, bare_s=0.25, left_s=200.0) == 1000  # 800 more at the timed pace
    # Far slower: int(0.4 * S) must stay ahead of step 200 -> S = 503 (int(0.4 * 502) = 200 is not ahead).
    assert budget.refit_steps(config, refit, 200, bare_s=5.0, left_s=10.0) == 503


def _refit(config, side_step_s, costs=COSTS):
    return budget.Refit(at_step=budget.refit_step(config), started=0.0, costs=costs, side_step_s=side_step_s)


def test_the_second_fit_counts_the_time_left_but_keeps_every_switch_ahead(tiny_config):
    config = tiny_config("r", steps=1000, lr_decay_at=(0.6, 0.8), knn_every=0, checkpoint_every=10_000)
    refit = _refit(config, {config.input_size: 0.25})
    assert budget.refit_steps(config, refit, 300, bare_s=0.5, left_s=450.0) == 1200  # 300 done + 900 more
    # Far slower than first timed: 100 more steps would put the drop at int(0.6 * 400) = 240, behind step 300;
    # the fewest steps whose drops are all ahead: 502 (int(0.6 * 501) = 300 is not ahead).
    assert budget.refit_steps(config, refit, 300, bare_s=2.0, left_s=200.0) == 502
    assert budget.refit_steps(config, refit, 300, bare_s=2.0, left_s=-50.0) == 502


def test_the_second_fit_prices_the_readings_and_checkpoints_apart_from_the_step(tiny_config):
    config = tiny_config("r", steps=1000, lr_decay_at=(0.6, 0.8), knn_every=100, checkpoint_every=50)
    # From step 10 to 310: readings at 100, 200, 300 (2 s each) and checkpoints at 50 ... 300 (1 s each).
    assert budget.events_between(100, 10, 310) == 3 and budget.events_between(50, 10, 310) == 6
    assert budget.events_between(0, 10, 310) == 0 and budget.events_between(100, 0, 99) == 1  # step 0 counts
    bare_s = budget.bare_step_seconds(config, COSTS, 10, 310, paced_s=300 * 0.5 + 3 * 2.0 + 6 * 1.0)
    assert bare_s == pytest.approx(0.5)
    # Measured costs over half the stretch do not describe it: the pace keeps them (here 12 s of 20).
    assert budget.bare_step_seconds(config, COSTS, 10, 310, paced_s=20.0) == pytest.approx(20.0 / 300)
    # After step 310 a run of S steps costs 0.5 s per step, 2 s per reading at 400 ... and 1 s per checkpoint at
    # 350 ... before S (the last ones are in Refit.final_s): S = 1000 -> 345 + 6 * 2 + 13 = 370 s; S = 1001 adds
    # a step, the reading and the checkpoint at 1000: 373.5 s.
    refit = _refit(config, {config.input_size: 0.5})
    assert budget.refit_steps(config, refit, 310, bare_s, left_s=370.0) == 1000
    assert budget.refit_steps(config, refit, 310, bare_s, left_s=373.4) == 1000
    assert budget.refit_steps(config, refit, 310, bare_s, left_s=373.5) == 1001


def test_with_progressive_resolution_the_second_fit_prices_the_full_side_at_its_own_timing(tiny_config):
    """The second fit comes before the switch, so the run has only stepped at the low side: the full-side steps
    left are priced at their timed cost, scaled like the low side's (here the run went at its timed pace)."""
    config = tiny_config("r", steps=1000, arch="resnet18", patch_size=32, image_size=32, low_res_size=24,
                         low_res_until=0.6, lr_decay_at=(0.8,), knn_every=0, checkpoint_every=10_000)
    assert budget.refit_step(config) == 300
    refit = _refit(config, {24: 0.5, 32: 1.0})
    # (int(0.6 S) - 300) * 0.5 + (S - int(0.6 S)) * 1.0 <= 500: S = 928 costs 500.0, S = 929 500.5; priced all at
    # the low side's 0.5 s it would be 1 300 steps, 760 s.
    assert budget.refit_steps(config, refit, 300, bare_s=0.5, left_s=500.0) == 928
    # Twice as slow as timed: both sides twice their timed cost, (int(0.6 S) - 300) + 2 (S - int(0.6 S)) <= 500
    assert budget.refit_steps(config, refit, 300, bare_s=1.0, left_s=500.0) == 571


@pytest.mark.parametrize("settings, problem", [
    (dict(strategy="multi_worker"), "--train_minutes is not supported with --strategy=multi_worker"),
    (dict(data_service="grpc://localhost:5050"), "--train_minutes is not supported with --data_service"),
])
def test_budgets_that_cannot_be_kept_are_refused(tiny_config, settings, problem):
    with pytest.raises(InputError, match=problem):
        validate(tiny_config("r", train_minutes=5, **settings))


@pytest.mark.parametrize("settings, problem", [
    (dict(lr_schedule="cosine", lr_warmup_steps=50), "--lr_warmup_steps=50 must be fewer than --steps=4"),
    (dict(merge_classes_at=50, merge_to=8), "--merge_classes_at=50 must be smaller than --steps=4"),
])
def test_flags_that_name_a_step_wait_for_the_fitted_count(tiny_config, settings, problem):
    """Under a budget --steps is a placeholder: a step flag past it is checked against the count the fit gives."""
    budgeted = tiny_config("r", train_minutes=5, **settings)  # --steps=4, the placeholder
    validate(budgeted)
    with pytest.raises(InputError, match=problem):
        validate(budgeted, steps_fitted=True)
    with pytest.raises(InputError, match=problem):
        validate(dataclasses.replace(budgeted, train_minutes=0))


def _hparams_steps(run_dir) -> list[float]:
    """--steps in every hparams record the run wrote to TensorBoard, in the order written (TensorBoard's
    HParams table shows the first)."""
    steps = []
    for path in sorted(glob.glob(os.path.join(run_dir, "tensorboard", "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == hparams_metadata.SESSION_START_INFO_TAG:
                    info = hparams_metadata.parse_session_start_info_plugin_data(value.metadata.plugin_data.content)
                    steps.append(info.hparams["steps"].number_value)
    return steps


@pytest.fixture
def quick_timing(monkeypatch):
    """The step timed for a fraction of a second (the real measurement on the throw-away state), and the fits
    recorded: fitted["steps"] is what fit_steps returned, forced to `fitted["force"]` when that is set, and
    fitted["refit"] what refit_steps returned, forced to `fitted["force_refit"]`."""
    monkeypatch.setattr(budget, "TIMED_SECONDS", 0.05)
    fitted = {}
    fit = budget.fit_steps

    def recording_fit(budget_s, costs, knn_every, checkpoint_every):
        fitted["costs"] = costs
        fitted["steps"] = fitted["force"] if "force" in fitted else fit(budget_s, costs, knn_every, checkpoint_every)
        return fitted["steps"]

    monkeypatch.setattr(budget, "fit_steps", recording_fit)
    refit = budget.refit_steps

    def recording_refit(config, at, step, bare_s, left_s):
        fitted["refit_at"], fitted["refit_step_s"] = step, bare_s
        fitted["refit"] = fitted["force_refit"] if "force_refit" in fitted else refit(config, at, step, bare_s, left_s)
        return fitted["refit"]

    monkeypatch.setattr(budget, "refit_steps", recording_refit)
    return fitted


def test_a_budgeted_run_is_bitwise_the_run_given_its_final_steps(tmp_path, tiny_config, quick_timing, capsys):
    """The first fit says 12 steps (the drop at half of them, step 6; the provisional --steps=100 would put it at
    50), the second, at step 3, says 8 (the drop at 4). Equality with --steps=8 needs the optimizer rebuilt on
    the fitted steps both times, its momentum carried over the second time, and the throw-away timing state
    leaving the run's random streams and input alone."""
    quick_timing.update(force=12, force_refit=8)
    settings = dict(objective="nce", batch_norm=True, nce_m=8, lr_decay_at=(0.5,), checkpoint_every=3)
    budgeted = runs.train(tiny_config(tmp_path / "budgeted", name="budgeted", steps=100, train_minutes=30,
                                      **settings))
    given = runs.train(tiny_config(tmp_path / "given", name="given", steps=8, **settings))
    assert budgeted.step == given.step == 8 and quick_timing["refit_at"] == 3 and quick_timing["refit_step_s"] > 0
    out = capsys.readouterr().out
    assert "--train_minutes=30: 12 steps fit" in out and "step 3: --train_minutes=30: --steps=8 (was 12)" in out
    assert rundir.read_flagfile(str(tmp_path / "budgeted" / rundir.FLAGFILE))["steps"] == "8"
    assert _hparams_steps(tmp_path / "budgeted") == [8]  # written once, after the second fit
    want, got = _checkpoint_values(tmp_path / "given"), _checkpoint_values(tmp_path / "budgeted")
    assert set(got) == set(want) and any("kernel" in name for name in got)
    different = [name for name in want if not np.array_equal(want[name], got[name])]
    assert not different, f"the budgeted run differs in {different}"
    costs = quick_timing["costs"]
    assert costs.step > 0 and costs.checkpoint > 0 and costs.export > 0 and costs.elapsed > costs.export


def test_a_second_fit_that_keeps_the_count_leaves_the_optimizer_and_step_alone(tmp_path, tiny_config, quick_timing,
                                                                               monkeypatch):
    quick_timing.update(force=12, force_refit=12)
    switched = []
    switch = loop._switch_steps
    monkeypatch.setattr(loop, "_switch_steps", lambda run, fitted: (switched.append(fitted.steps),
                                                                      switch(run, fitted)))
    config = tiny_config(tmp_path / "run", steps=100, train_minutes=30, lr_decay_at=(0.5,))
    assert runs.train(config).step == 12 and quick_timing["refit_at"] == 3
    assert switched == [12]  # the first fit only: no rebuilt optimizer, no step compiled again
    assert _hparams_steps(config.run_dir) == [12]


def test_a_budgeted_run_starts_the_bank_neighbours_where_the_run_given_its_final_steps_does(
        tmp_path, tiny_config, quick_timing, monkeypatch, capsys):
    """The objective is built on the provisional --steps=100 (neighbours from step 50); the first fit says 16
    (from 8, the drop at 12), the second, at step 4, says 10: the neighbours join at step 5, as with --steps=10,
    and the two runs are bitwise equal."""
    switches = record_neighbour_switches(monkeypatch)
    quick_timing.update(force=16, force_refit=10)
    settings = dict(objective="nonparametric", batch_norm=True, neighbours=3, neighbours_from=0.5,
                    lr_decay_at=(0.75,), checkpoint_every=5)
    budgeted = runs.train(tiny_config(tmp_path / "budgeted", name="budgeted", steps=100, train_minutes=30,
                                      **settings))
    assert budgeted.step == 10 and quick_timing["refit_at"] == 4
    assert min(step for step, on in switches if on) == 5 and not any(on for step, on in switches if step < 5)
    assert "step 5: the 3 nearest bank rows join each example's positive from here on" in capsys.readouterr().out
    runs.train(tiny_config(tmp_path / "given", name="given", steps=10, **settings))
    want, got = _checkpoint_values(tmp_path / "given"), _checkpoint_values(tmp_path / "budgeted")
    different = [name for name in want if not np.array_equal(want[name], got[name])]
    assert set(got) == set(want) and not different, f"the budgeted run differs in {different}"


def test_the_fitted_steps_are_recorded_and_a_resume_keeps_them_without_timing_again(tmp_path, tiny_config,
                                                                                   quick_timing, monkeypatch):
    quick_timing["force"] = 5
    config = tiny_config(tmp_path / "run", steps=100, train_minutes=30)
    first = runs.train(config)
    steps = quick_timing["steps"]
    assert first.step == steps == 5
    assert rundir.read_flagfile(os.path.join(config.run_dir, rundir.FLAGFILE))["steps"] == str(steps)

    def no_timing(*args, **kwargs):
        raise AssertionError("a resumed run timed its step again")

    monkeypatch.setattr(budget, "measure", no_timing)
    again = runs.train(dataclasses.replace(config, train_minutes=2))  # another budget: still the recorded steps
    assert again.step == steps and again.steps_run == 0
    assert set(_hparams_steps(config.run_dir)) == {steps}


def test_a_resume_without_the_budget_trains_the_given_steps_and_says_the_schedule_moves(tmp_path, tiny_config,
                                                                                       quick_timing, capsys):
    quick_timing["force"] = 4
    # The drop at 90 % is step 3 of 4 and step 5 of 6: past every step trained either way, so the count may grow
    # (rundir refuses one that moves a drop the run has trained past).
    config = tiny_config(tmp_path / "run", steps=100, train_minutes=30, checkpoint_every=2, lr_decay_at=(0.9,))
    assert runs.train(config).step == 4
    assert rundir.unbudgeted_resume_note(dataclasses.replace(config, train_minutes=0, steps=4)) == ""  # the count
    assert rundir.unbudgeted_resume_note(dataclasses.replace(config, train_minutes=2, steps=6)) == ""  # kept: 4
    capsys.readouterr()
    longer = runs.train(dataclasses.replace(config, train_minutes=0, steps=6))
    assert longer.step == 6 and longer.steps_run == 2
    assert (f"Note: {config.run_dir} was fitted to --steps=4 by --train_minutes=30; with --train_minutes=0 it "
            f"trains to --steps=6 instead") in capsys.readouterr().out


def test_a_budget_too_small_for_the_start_up_says_so(tmp_path, tiny_config, quick_timing):
    quick_timing["force"] = 0
    with pytest.raises(InputError, match=r"--train_minutes=0.01: no step fits \(start-up and timing took"):
        runs.train(tiny_config(tmp_path / "run", train_minutes=0.01))
    assert not rundir.has_checkpoint(str(tmp_path / "run"))


def test_a_budget_that_fits_fewer_steps_than_a_step_flag_names_says_so(tmp_path, tiny_config, quick_timing):
    quick_timing["force"] = 6
    with pytest.raises(InputError, match=r"--train_minutes=5 fits 6 steps, too few for the other flags: Bad training "
                                         r"flags: --lr_warmup_steps=8 must be fewer than --steps=6"):
        runs.train(tiny_config(tmp_path / "run", train_minutes=5, steps=100, lr_schedule="cosine", lr_warmup_steps=8))
    assert not rundir.has_checkpoint(str(tmp_path / "run"))


def test_a_budgeted_progressive_run_times_both_sides_in_turn(tmp_path, quick_timing, capsys, monkeypatch):
    """The budget builds one step function per input side on its throw-away state and times them in turn (each
    called once to compile, then alternately); the run is then the run of the fitted steps at both sides."""
    timed = []  # the input side of every call the budget makes
    make = budget.make_train_step

    def recording(config, strategy, state, side=None):
        train_steps = make(config, strategy, state, side)

        def call(iterator, num_steps):
            timed.append(side)
            return train_steps(iterator, num_steps)
        return call

    monkeypatch.setattr(budget, "make_train_step", recording)
    quick_timing.update(force=6, force_refit=6)
    config = TrainConfig(run_dir=str(tmp_path / "run"), name="progressive", source="demo", method="exemplar",
                         arch="resnet18", resnet_width=4, objective="nonparametric", num_seeds=64, seeds_per_image=8,
                         batch_size=16, steps=100, train_minutes=30, log_every=2, checkpoint_every=3, progress=False,
                         export_base=str(tmp_path / "sm"), low_res_size=16, low_res_until=0.5, precision="float32")
    result = runs.train(config)
    assert result.step == 6
    assert len(timed) >= 2 + 2 * budget.MIN_TIMED_CALLS and timed == [16, 32] * (len(timed) // 2)
    out = capsys.readouterr().out
    assert "--train_minutes=30: 6 steps fit (" in out and " (16 px " in out and " s, 32 px " in out
    assert "views at 16 pixels until step 3, then 32" in out


def test_a_resume_checks_the_step_flags_against_the_recorded_steps(tmp_path, tiny_config):
    """A resumed budgeted run's --steps are final (recorded at its fit): a flags.cfg edited below the warm-up is
    refused before anything is read, although the placeholder --steps=100 would pass."""
    config = tiny_config(tmp_path / "run", train_minutes=5, steps=100, lr_schedule="cosine", lr_warmup_steps=8)
    rundir.write_flagfile(dataclasses.replace(config, steps=6))
    os.makedirs(os.path.join(config.run_dir, "checkpoints"))
    open(os.path.join(config.run_dir, "checkpoints", "checkpoint"), "w").close()
    with pytest.raises(InputError, match="--lr_warmup_steps=8 must be fewer than --steps=6"):
        loop._prepare_run_dir(config, tf.distribute.get_strategy(), chief=True)
