"""Run directories under faults, as an operator meets them: a second trainer, damaged or deleted checkpoints, a
failed start, a run directory that is a file, a precision switch that cannot resume, a full disk, permissions
and an export killed half-way. Each failure is one line and an exit status, and nothing the user made is lost."""
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from exemplar_tf.errors import InputError
from exemplar_tf.io.lock import DirectoryLock, DirectoryLocked
from exemplar_tf.serving import runs
from exemplar_tf.serving.export import STAGING_PREFIX, write_version
from exemplar_tf.training import checkpoints, rundir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_FLAGS = ["--source=demo", "--arch=small", "--objective=softmax", "--num_seeds=64", "--seeds_per_image=8",
              "--batch_size=16", "--steps=4", "--checkpoint_every=2", "--knn_source=", "--noprogress"]


def _train_program(run_dir, *flags, timeout=240):
    return subprocess.run([sys.executable, "-m", "exemplar_tf.train", f"--run_dir={run_dir}",
                           f"--export_base={os.path.dirname(run_dir)}/savedmodels", *TINY_FLAGS, *flags],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _error_lines(stderr: str) -> list[str]:
    """stderr without TensorFlow's own start-up lines."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith(("WARNING", "I0000", "E0000",
                                                                                          "W0000", "To enable"))]


def test_a_second_trainer_on_a_locked_run_directory_stops_at_once_naming_the_holder(tmp_path):
    run_dir = str(tmp_path / "run")
    with DirectoryLock(run_dir):
        started = time.monotonic()
        result = _train_program(run_dir)
    assert result.returncode == 2, result.stderr
    [line] = _error_lines(result.stderr)
    assert line.startswith("Error: ") and f"in use by another trainer (PID {os.getpid()} on " in line, result.stderr
    assert time.monotonic() - started < 120  # before any data or model work
    assert sorted(os.listdir(run_dir)) == [".lock"]  # nothing else written


def test_a_sigkilled_holder_leaves_no_stale_lock(tmp_path):
    run_dir = str(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from exemplar_tf.io.lock import DirectoryLock; "
                               f"lock = DirectoryLock({run_dir!r}); print('held', flush=True); time.sleep(120)"],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(DirectoryLocked, match=f"PID {holder.pid} on "):
            DirectoryLock(run_dir)
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        DirectoryLock(run_dir).release()  # the kernel dropped the lock with the process
    finally:
        holder.kill()
        holder.wait()


def _trained(tiny_config, tmp_path, **overrides):
    # The rate drops at 90 % (step 3 of 4, 5 of 6): the tests below resume to 6 steps, which may not move a drop
    # the run has trained past.
    config = tiny_config(tmp_path / "run", **{"lr_decay_at": (0.9,), **overrides})
    runs.train(config)
    return config


@pytest.mark.parametrize("damage", ["truncate", pytest.param("flip", marks=pytest.mark.slow)])
def test_an_unreadable_newest_checkpoint_is_moved_aside_and_the_previous_one_resumed(tmp_path, tiny_config, capsys,
                                                                                     damage):
    config = _trained(tiny_config, tmp_path)  # checkpoints at steps 2 and 4
    folder = os.path.join(config.run_dir, "checkpoints")
    (data,) = [os.path.join(folder, name) for name in os.listdir(folder) if name.startswith("ckpt-4.data")]
    content = bytearray(open(data, "rb").read())
    if damage == "truncate":
        content = content[:len(content) // 2]
    else:
        for offset in range(0, len(content), 97):
            content[offset] ^= 0xFF
    open(data, "wb").write(bytes(content))
    result = runs.train(dataclasses.replace(config, steps=6))
    out = capsys.readouterr().out
    assert "ckpt-4: cannot be read" in out and "trying the previous checkpoint" in out
    assert f"Resuming {config.run_dir} from step 2/6" in out
    assert result.step == 6
    aside = [name for name in os.listdir(folder) if name.startswith("ckpt-4.corrupt-")]
    assert len(aside) == 1 and os.listdir(os.path.join(folder, aside[0]))  # kept, not deleted


@pytest.mark.slow  # two trainings, ~30 s
def test_deleted_checkpoint_files_are_refused_not_restarted_at_step_zero(tmp_path, tiny_config):
    config = _trained(tiny_config, tmp_path)
    folder = os.path.join(config.run_dir, "checkpoints")
    for name in os.listdir(folder):
        if name.startswith("ckpt-4"):
            os.remove(os.path.join(folder, name))
    before = sorted(os.listdir(folder))
    with pytest.raises(checkpoints.CheckpointsMissing, match="names ckpt-4 but its files are missing"):
        runs.train(dataclasses.replace(config, steps=6))
    assert sorted(os.listdir(folder)) == before  # ckpt-2 untouched
    result = runs.train(dataclasses.replace(config, steps=6, overwrite=True))  # starts over, old run kept
    assert result.step == 6
    assert [name for name in os.listdir(tmp_path) if name.startswith("run.old-")]


def test_a_failed_start_does_not_block_the_corrected_rerun(tmp_path, tiny_config):
    config = tiny_config(tmp_path / "run", source=f"folder:{tmp_path / 'missing'}")
    with pytest.raises(InputError):
        runs.train(config)
    assert not os.path.exists(os.path.join(config.run_dir, rundir.FLAGFILE))  # nothing recorded for a failed start
    assert runs.train(dataclasses.replace(config, source="demo")).step == 4


def test_new_settings_are_taken_while_no_checkpoint_exists(tmp_path, tiny_config):
    config = tiny_config(tmp_path / "run")
    os.makedirs(config.run_dir)
    rundir.write_flagfile(dataclasses.replace(config, num_seeds=48))  # an earlier start that never trained
    open(os.path.join(config.run_dir, rundir.SEEDS_FILE), "wb").write(b"stale")
    assert rundir.check_reuse(config, overwrite=False) is None
    assert not os.path.exists(os.path.join(config.run_dir, rundir.SEEDS_FILE))  # drawn for the old settings


def test_a_run_directory_that_is_a_file_is_one_line(tmp_path):
    path = tmp_path / "run"
    path.write_text("not a folder")
    result = _train_program(str(path))
    assert result.returncode == 2 and "--run_dir is a file, not a folder" in result.stderr
    assert len(_error_lines(result.stderr)) == 1, result.stderr
    assert path.read_text() == "not a folder"


def test_resuming_with_mixed_float16_is_refused_before_anything_changes(tmp_path, tiny_config):
    config = _trained(tiny_config, tmp_path)
    flagfile = os.path.join(config.run_dir, rundir.FLAGFILE)
    before = open(flagfile).read()
    with pytest.raises(rundir.RunDirMismatch, match="--precision was 'float32', now 'mixed_float16'"):
        runs.train(dataclasses.replace(config, precision="mixed_float16", steps=6))
    assert open(flagfile).read() == before


def test_files_follow_the_umask(tmp_path, tiny_config):
    previous = os.umask(0o022)
    try:
        config = _trained(tiny_config, tmp_path)
    finally:
        os.umask(previous)
    for name in (rundir.FLAGFILE, rundir.SEEDS_FILE):
        assert os.stat(os.path.join(config.run_dir, name)).st_mode & 0o777 == 0o644


@pytest.mark.slow  # two program runs, ~35 s
def test_a_rerun_at_the_final_step_says_there_is_nothing_left(tmp_path):
    run_dir = str(tmp_path / "run")
    assert _train_program(run_dir).returncode == 0
    result = _train_program(run_dir)
    assert result.returncode == 0 and "Finished 4 steps, nothing left to train" in result.stdout
    assert "nan" not in result.stdout


def test_staging_folders_of_killed_exports_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    model_dir = tmp_path / "model"
    abandoned = model_dir / f"{STAGING_PREFIX}{dead.pid}-abc"
    abandoned.mkdir(parents=True)
    live = model_dir / f"{STAGING_PREFIX}{os.getppid()}-def"  # the test runner's parent is alive
    live.mkdir()
    write_version(str(model_dir), lambda path: os.makedirs(path))
    assert not abandoned.exists() and live.exists() and (model_dir / "1").is_dir()


def _tmpfs(path, size):
    """Mounts a tmpfs of `size` at `path`, or skips the test saying why it cannot."""
    os.makedirs(path, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip() or 'mount failed'})")


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux" or os.geteuid() != 0, reason="mounting a tmpfs needs root on Linux")
def test_a_full_disk_is_one_line_with_exit_3_and_keeps_what_was_written(tmp_path):
    disk = tmp_path / "disk"
    _tmpfs(disk, "300k")  # room for the flags, not for the seed cache and checkpoints
    try:
        result = _train_program(str(disk / "run"))
        assert result.returncode == 3, result.stderr
        lines = _error_lines(result.stderr)
        assert len(lines) == 1 and "No space left on device" in lines[0], result.stderr
    finally:
        subprocess.run(["umount", str(disk)], check=False)
        shutil.rmtree(disk, ignore_errors=True)


@pytest.mark.slow  # two trainings; test_export's pre-check tests cover the rule
def test_a_model_name_of_another_run_is_refused_before_training(tmp_path, tiny_config):
    first = _trained(tiny_config, tmp_path)
    other = tiny_config(tmp_path / "other")  # same --name and export base, another run directory
    with pytest.raises(InputError, match="exported from run"):
        runs.train(other)
    assert not os.path.exists(other.run_dir)  # refused before the run directory was made
    assert runs.train(dataclasses.replace(other, name="other")).step == first.steps
