"""training.rundir and the loop's use of it: reusing a run directory, atomic shared files, failed writes."""
import dataclasses
import os
import threading

import pytest
import tensorflow as tf

from exemplar_tf.io.atomic import atomic_write
from exemplar_tf.optim import schedules
from exemplar_tf.serving import runs
from exemplar_tf.training import loop, rundir
from exemplar_tf.training.config import TrainConfig

TINY = dict(source="demo", method="exemplar", arch="small", objective="softmax", num_seeds=64, seeds_per_image=8,
            batch_size=16, log_every=2, checkpoint_every=2, progress=False, knn_source="")


def _config(tmp_path, **change):
    return TrainConfig(run_dir=str(tmp_path / "run"), export_base=str(tmp_path / "sm"),
                       **{**TINY, "name": "rd", "steps": 2, **change})


def _trained(config, step=None):
    """Records `config` in its run directory as a run that has written a checkpoint (its state file, and the
    index file of ckpt-`step` when given)."""
    rundir.write_flagfile(config)
    os.makedirs(os.path.join(config.run_dir, "checkpoints"), exist_ok=True)
    open(os.path.join(config.run_dir, "checkpoints", "checkpoint"), "w").close()
    if step is not None:
        open(os.path.join(config.run_dir, "checkpoints", f"ckpt-{step}.index"), "w").close()


def test_changed_training_settings_are_refused_naming_each_flag(tmp_path):
    _trained(_config(tmp_path))
    with pytest.raises(rundir.RunDirMismatch) as error:
        rundir.check_reuse(_config(tmp_path, num_seeds=32, arch="medium"), overwrite=False)
    message = str(error.value)
    assert "--num_seeds was '64', now '32'" in message and "--arch was 'small', now 'medium'" in message
    assert "--overwrite" in message


def test_resume_safe_settings_are_accepted_and_recorded(tmp_path):
    rundir.write_flagfile(_config(tmp_path))
    longer = _config(tmp_path, steps=50, log_every=7, knn_source="demo_labelled", name="other")
    assert rundir.check_reuse(longer, overwrite=False) is None
    rundir.write_flagfile(longer)
    saved = rundir.read_flagfile(os.path.join(longer.run_dir, rundir.FLAGFILE))
    assert (saved["steps"], saved["log_every"], saved["knn_source"]) == ("50", "7", "demo_labelled")


def test_overwrite_moves_the_old_run_aside(tmp_path):
    first = _config(tmp_path)
    rundir.write_flagfile(first)
    (tmp_path / "run" / "mine.txt").write_text("user's file")
    kept = rundir.check_reuse(_config(tmp_path, num_seeds=32), overwrite=True)
    assert kept.startswith(first.run_dir + ".old-") and not os.path.exists(first.run_dir)
    assert open(os.path.join(kept, "mine.txt")).read() == "user's file"


def test_loop_refuses_a_reused_run_dir_before_any_work_and_resumes_a_longer_one(tmp_path):
    runs.train(_config(tmp_path))
    with pytest.raises(rundir.RunDirMismatch, match="--num_seeds was '64', now '48'"):
        runs.train(_config(tmp_path, num_seeds=48))
    result = runs.train(_config(tmp_path, steps=4))
    assert result.step == 4
    assert rundir.read_flagfile(os.path.join(tmp_path / "run", "flags.cfg"))["steps"] == "4"


def test_atomic_writes_from_concurrent_writers_never_show_a_partial_file(tmp_path):
    """Two writers replace one file 200 times each while a reader reads it: the reader sees only whole payloads
    and no temporary is left. (A fixed `path + ".tmp"` makes one writer's os.replace fail: its temporary was
    already renamed by the other.)"""
    path = str(tmp_path / "shared.bin")
    payloads = [bytes([k]) * 200_000 for k in (1, 2)]
    atomic_write(path, payloads[0])
    errors, seen = [], set()

    def write(payload):
        try:
            for _ in range(200):
                atomic_write(path, payload)
        except Exception as error:  # noqa: BLE001 -- reported below
            errors.append(error)

    writers = [threading.Thread(target=write, args=(p,)) for p in payloads]
    for thread in writers:
        thread.start()
    while any(thread.is_alive() for thread in writers):
        with open(path, "rb") as file:
            seen.add(file.read())
    for thread in writers:
        thread.join()
    assert not errors and seen <= set(payloads)
    assert sorted(os.listdir(tmp_path)) == ["shared.bin"]


def test_a_failed_checkpoint_write_stops_with_a_message_and_keeps_the_previous_one(tmp_path, monkeypatch):
    save = tf.train.CheckpointManager.save
    calls = []

    def full_disk_on_second_save(self, *args, **kwargs):
        calls.append(kwargs.get("checkpoint_number"))
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return save(self, *args, **kwargs)

    monkeypatch.setattr(tf.train.CheckpointManager, "save", full_disk_on_second_save)
    with pytest.raises(loop.WriteFailed, match="No space left on device") as error:
        runs.train(_config(tmp_path, steps=6))
    assert "ckpt-2" in str(error.value)
    assert tf.train.latest_checkpoint(str(tmp_path / "run" / "checkpoints")).endswith("-2")
    monkeypatch.setattr(tf.train.CheckpointManager, "save", save)
    assert runs.train(_config(tmp_path, steps=6)).step == 6


def test_a_flagfile_without_a_newer_setting_resumes_and_reads_it_as_the_default(tmp_path, tiny_config):
    """A flags.cfg written before --momentum_encoder existed: the missing key is not compared (resume), reads as
    the default (off), and the next write records it."""
    config = tiny_config(tmp_path / "run")
    path = rundir.write_flagfile(config)
    with open(path) as file:
        lines = [line for line in file if not line.startswith("--momentum_encoder=")]
    with open(path, "w") as file:
        file.writelines(lines)
    assert rundir.check_reuse(config, overwrite=False) is None
    assert rundir.read_run_config(config.run_dir) == config
    rundir.write_flagfile(config)
    assert rundir.read_flagfile(path)["momentum_encoder"] == "0.0"


def test_a_changed_momentum_encoder_is_refused_on_resume(tmp_path, tiny_config):
    _trained(tiny_config(tmp_path / "run"))
    with pytest.raises(rundir.RunDirMismatch, match="--momentum_encoder was '0.0', now '0.99'"):
        rundir.check_reuse(tiny_config(tmp_path / "run", momentum_encoder=0.99), overwrite=False)


def test_every_kind_of_setting_round_trips_through_the_run_flagfile(tmp_path, tiny_config):
    """Strings, optional strings, enums, ints, floats, optional floats, booleans and both list kinds (empty too)."""
    for change in (dict(data_dir="/data/tfds", transforms=("hue",), lr_decay_at=(0.25,), tau=0.1, lr=0.5,
                        batch_norm=True, progress=True, tpu="grpc://x:8470", momentum_encoder=0.999, seed=-3),
                   dict(transforms=(), lr_decay_at=(), knn_source="", weight_decay=0.0)):
        config = tiny_config(tmp_path / "run", **change)
        rundir.write_flagfile(config)
        assert rundir.read_run_config(config.run_dir) == config


def test_a_hand_written_flagfile_is_typed_by_the_field_declarations(tmp_path):
    path = tmp_path / "flags.cfg"
    path.write_text("# comment\n--name=hand\n--batch_norm\n--noprogress\n--steps=12\n--lr=\n--data_dir=\n"
                    "--lr_decay_at= 0.5 , 0.9\n--transforms=translate, hue\n--unknown_flag=3\n--momentum_encoder=0.5\n")
    config = rundir.config_from_flagfile(str(path))
    assert (config.name, config.batch_norm, config.progress, config.steps) == ("hand", True, False, 12)
    assert (config.lr, config.data_dir) == (0.01, None)  # empty optional values: None, then the method's default
    assert (config.lr_decay_at, config.transforms) == ((0.5, 0.9), ("translate", "hue"))
    assert config.momentum_encoder == 0.5 and config.run_dir == str(tmp_path)


@pytest.mark.parametrize("line, message", [("--steps=many", "--steps=many"), ("--batch_norm=maybe", "--batch_norm"),
                                           ("--lr_decay_at=0.5,x", "--lr_decay_at must be a comma-separated list")])
def test_a_value_of_the_wrong_type_names_the_file_and_the_flag(tmp_path, line, message):
    path = tmp_path / "flags.cfg"
    path.write_text(line + "\n")
    with pytest.raises(ValueError, match=message) as error:
        rundir.config_from_flagfile(str(path))
    assert str(path) in str(error.value)


def test_a_new_steps_count_that_moves_the_resolution_switch_is_refused(tmp_path):
    low_res = dict(arch="resnet18", objective="nonparametric", low_res_size=24, low_res_until=0.5)
    _trained(_config(tmp_path, steps=10, **low_res))
    assert rundir.changed_settings(rundir.read_flagfile(str(tmp_path / "run" / "flags.cfg")),
                                   _config(tmp_path, steps=11, **low_res)) == []  # int(5.5) = 5: the same switch
    with pytest.raises(rundir.RunDirMismatch, match=r"--steps \(with --low_res_until=0.5 it moves the switch to full "
                                                    r"resolution from step 5 to 10\) was '10', now '20'"):
        rundir.check_reuse(_config(tmp_path, steps=20, **low_res), overwrite=False)



def test_a_new_steps_count_that_moves_the_start_of_the_neighbours_is_refused(tmp_path):
    both = dict(arch="resnet18", objective="nonparametric", neighbours=2, neighbours_from=0.5, low_res_size=24,
                low_res_until=0.3)
    _trained(_config(tmp_path, steps=10, **both))
    assert rundir.changed_settings(rundir.read_flagfile(str(tmp_path / "run" / "flags.cfg")),
                                   _config(tmp_path, steps=11, **both)) == []  # int(5.5) = 5, int(3.3) = 3
    with pytest.raises(rundir.RunDirMismatch, match=r"--steps \(with --low_res_until=0.3 it moves the switch to full "
                                                    r"resolution from step 3 to 6; with --neighbours_from=0.5 it "
                                                    r"moves the start of the bank neighbours from step 5 to 10\)"):
        rundir.check_reuse(_config(tmp_path, steps=20, **both), overwrite=False)


def test_the_run_flagfile_leaves_out_overwrite_so_giving_it_back_resumes(tmp_path):
    """A run started with --overwrite: its flags.cfg, given back to resume by hand, must resume, not start over
    again (it used to record --overwrite=True)."""
    started = _config(tmp_path, overwrite=True)
    _trained(started, step=2)
    path = os.path.join(started.run_dir, rundir.FLAGFILE)
    assert "overwrite" not in rundir.read_flagfile(path)
    again = rundir.config_from_flagfile(path)
    assert again == dataclasses.replace(started, overwrite=False)
    assert rundir.check_reuse(again, again.overwrite) is None and os.path.exists(path)


def _rates(config, iterations):
    """The learning rate of each optimizer iteration in `iterations`, from the schedule training builds."""
    schedule = (schedules.cosine_decay(config.lr, config.steps, config.lr_warmup_steps)
                if config.lr_schedule == "cosine" else
                schedules.step_decay(config.lr, config.steps, config.lr_decay_at, config.lr_decay_factor))
    return [float(schedule(i)) for i in iterations]


@pytest.mark.parametrize("schedule, old, new, trained_to", [
    (dict(lr_decay_at=(0.5,)), 10, 20, 6),  # the drop after iteration 5: not yet applied at step 6
    (dict(lr_decay_at=(0.5,)), 10, 20, 7),  # applied to iteration 6: moving it would raise the rate
    (dict(lr_decay_at=(0.5,)), 10, 8, 7),  # moved earlier, into steps trained at the higher rate
    (dict(lr_decay_at=(0.5, 0.8)), 10, 12, 7),  # the first drop stays at 5 (int(6.0) = 6? no: 6), the second moves
    (dict(lr_decay_at=(0.5, 0.8)), 10, 11, 9),  # int(5.5) = 5, int(8.8) = 8: nothing moves
    (dict(lr_decay_at=()), 10, 40, 9),  # a constant rate
    (dict(lr_schedule="cosine", lr_warmup_steps=3), 10, 20, 4),  # only the warm-up (and its end) trained
    (dict(lr_schedule="cosine", lr_warmup_steps=3), 10, 20, 5),
    (dict(lr_schedule="cosine"), 10, 20, 1),
    (dict(lr_schedule="cosine"), 10, 20, 2),
])
def test_a_new_steps_count_is_refused_exactly_when_it_changes_the_rate_of_a_trained_step(
        tmp_path, schedule, old, new, trained_to):
    """A resumed run must stay the run of its final --steps: the new count is refused when the schedule it builds
    gives any step the run has trained (optimizer iterations 0 .. trained_to - 1) another rate, and only then."""
    _trained(_config(tmp_path, steps=old, **schedule), step=trained_to)
    resumed = _config(tmp_path, steps=new, **schedule)
    before = _rates(_config(tmp_path, steps=old, **schedule), range(trained_to))
    differs = before != _rates(resumed, range(trained_to))
    changes = rundir.changed_settings(rundir.read_flagfile(str(tmp_path / "run" / "flags.cfg")), resumed)
    assert bool(changes) == differs
    if differs:
        with pytest.raises(rundir.RunDirMismatch, match=r"--steps \(with --(lr_decay_at|lr_schedule)="):
            rundir.check_reuse(resumed, overwrite=False)
    else:
        assert rundir.check_reuse(resumed, overwrite=False) is None


def test_a_steps_count_below_the_newest_checkpoint_is_refused(tmp_path):
    _trained(_config(tmp_path, steps=10), step=10)
    assert rundir.check_reuse(_config(tmp_path, steps=10), overwrite=False) is None  # a finished run, rerun
    with pytest.raises(rundir.RunDirMismatch, match=r"has trained 10 steps \(its newest checkpoint\), past "
                                                    r"--steps=4: nothing would train.*Give --steps=10 or more"):
        rundir.check_reuse(_config(tmp_path, steps=4), overwrite=False)


def test_the_newest_checkpoint_step_is_read_from_the_index_file_names_alone(tmp_path):
    assert rundir.checkpoint_step(str(tmp_path)) is None
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for name in ("checkpoint", "ckpt-9.index", "ckpt-12.index", "ckpt-12.data-00000-of-00001", "ckpt-40.corrupt-1",
                 "ckpt-x.index", "model-50.index"):
        (folder / name).write_text("")
    assert rundir.checkpoint_step(str(tmp_path)) == 12
    assert rundir.checkpoint_number(str(folder / "ckpt-12")) == 12
    assert [rundir.checkpoint_number(p) for p in ("runs/a/checkpoints/model-3", "ckpt-", "ckpt-3a")] == [None] * 3


def test_export_refuses_a_newest_checkpoint_whose_name_gives_no_step(tmp_path):
    """The export records the step of what it restored: a checkpoint state naming another prefix is one line, not
    an export with no step."""
    from exemplar_tf import models

    config = _config(tmp_path)
    rundir.write_flagfile(config)
    (options,) = models.recorded_options(config)
    folder = os.path.join(config.run_dir, "checkpoints")
    # save() numbers the prefix itself ("model-1") and names it newest in the checkpoint state
    prefix = tf.train.Checkpoint(encoder=models.encoder_from_options(options)).save(os.path.join(folder, "model"))
    assert tf.train.latest_checkpoint(folder) == prefix
    with pytest.raises(rundir.InputError, match=f"^{prefix}: the newest checkpoint of {config.run_dir} is not named "
                                                f"ckpt-<step>, so its step is not known"):
        runs.export_run(config.run_dir)


def test_a_run_keeps_its_id_on_resume_and_a_new_start_gets_another(tmp_path):
    """Exports record the run's id, so `knn --checkpoint` tells an export of an earlier run in the same directory
    (started over with --overwrite) from one of the run there now."""
    config = _config(tmp_path)
    assert rundir.run_id(config.run_dir) is None
    rundir.write_flagfile(config)
    first = rundir.run_id(config.run_dir)
    assert first and len(first) == 32
    rundir.write_flagfile(dataclasses.replace(config, steps=9))  # a resume rewrites flags.cfg, not the id
    assert rundir.run_id(config.run_dir) == first
    assert rundir.check_reuse(dataclasses.replace(config, num_seeds=32), overwrite=True)
    rundir.write_flagfile(config)
    assert rundir.run_id(config.run_dir) not in (None, first)
