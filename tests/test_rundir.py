"""training.rundir and the loop's use of it: reusing a run directory, atomic shared files, failed writes."""
import os
import threading

import pytest
import tensorflow as tf

from exemplar_tf.io.atomic import atomic_write
from exemplar_tf.training import loop, rundir
from exemplar_tf.training.config import TrainConfig

TINY = dict(source="demo", method="exemplar", arch="small", objective="softmax", num_seeds=64, seeds_per_image=8,
            batch_size=16, log_every=2, checkpoint_every=2, progress=False, knn_source="")


def _config(tmp_path, **change):
    return TrainConfig(run_dir=str(tmp_path / "run"), export_base=str(tmp_path / "sm"),
                       **{**TINY, "name": "rd", "steps": 2, **change})


def test_changed_training_settings_are_refused_naming_each_flag(tmp_path):
    rundir.write_flagfile(_config(tmp_path))
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
    loop.run(_config(tmp_path))
    with pytest.raises(rundir.RunDirMismatch, match="--num_seeds was '64', now '48'"):
        loop.run(_config(tmp_path, num_seeds=48))
    result = loop.run(_config(tmp_path, steps=4))
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
        loop.run(_config(tmp_path, steps=6))
    assert "ckpt-2" in str(error.value)
    assert tf.train.latest_checkpoint(str(tmp_path / "run" / "checkpoints")).endswith("-2")
    monkeypatch.setattr(tf.train.CheckpointManager, "save", save)
    assert loop.run(_config(tmp_path, steps=6)).step == 6
