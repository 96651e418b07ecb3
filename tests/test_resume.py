"""Exact resume: the checkpoint holds the input position, so a run stopped at a checkpoint and resumed is bitwise
the uninterrupted run (weights, BatchNorm statistics, optimizer slots, bank, Z, key encoder), for the fixed-seed,
online and NPID pipelines with host or device augmentation. A constant learning rate makes the schedule the same
for a 3-step and a 6-step run, so "stop at 3, resume to 6" can be compared with "6 in one go"."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from exemplar_tf.serving import runs

CASES = {
    "fixed_host_nce": dict(objective="nce", batch_norm=True),
    "fixed_device_softmax": dict(augment_on="device"),
    "online_host_nonparametric": dict(seed_sampling="online", objective="nonparametric", batch_norm=True,
                                      max_instances=40),
    "online_device_momentum": dict(seed_sampling="online", objective="nce", batch_norm=True, augment_on="device",
                                   source="folder:{images}", momentum_encoder=0.9),
    "npid_host": dict(method="npid", arch="small", objective="nce", nce_m=8, batch_norm=True, image_size=32,
                      max_instances=40),
}


def _one_size_folder(path, count=40, side=48):
    """`count` random-texture PNGs of one size in two class folders (device batches carry whole images)."""
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = path / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        image = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        tf.io.write_file(str(folder / f"{i:03d}.png"), tf.io.encode_png(image))
    return path


def _checkpoint_values(run_dir):
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(f"{run_dir}/checkpoints"))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if not name.startswith(("save_counter", "_CHECKPOINTABLE_OBJECT_GRAPH"))}


SLOW = pytest.mark.slow  # three short trainings each: one case runs by default, the others with -m slow


@pytest.mark.parametrize("case", [case if case == "fixed_host_nce" else pytest.param(case, marks=SLOW)
                                  for case in sorted(CASES)])
def test_a_resumed_run_is_bitwise_the_uninterrupted_one(tmp_path, tiny_config, case):
    settings = dict(steps=6, checkpoint_every=3, lr_decay_at=(), nce_m=8, **CASES[case])
    if settings.get("source") == "folder:{images}":
        settings["source"] = f"folder:{_one_size_folder(tmp_path / 'images')}"
    whole = tiny_config(tmp_path / "whole", name="whole", **settings)  # a model name is one run's
    runs.train(whole)
    parts = tiny_config(tmp_path / "parts", name="parts", **settings)
    runs.train(dataclasses.replace(parts, steps=3))
    result = runs.train(parts)
    assert result.step == 6
    want, got = _checkpoint_values(tmp_path / "whole"), _checkpoint_values(tmp_path / "parts")
    assert set(got) == set(want) and any(name.startswith("bank/") or "kernel" in name for name in got)
    assert int(got["resume/input_batches/.ATTRIBUTES/VARIABLE_VALUE"]) == 6
    different = [name for name in want if not np.array_equal(want[name], got[name])]
    assert not different, f"resumed run differs in {different}"


@SLOW  # three short two-replica trainings, ~2 min on 2 cores
def test_a_resumed_run_with_two_replicas_on_one_input_pipeline_is_bitwise_the_uninterrupted_one(
        tmp_path, tiny_config, two_cpus):
    """MirroredStrategy on one host: one input pipeline feeds both replicas, two per-replica batches a step, so a
    resume must skip twice the steps in batches (it skipped the steps alone and fed the second half of the
    interrupted run's batches again)."""
    settings = dict(steps=4, checkpoint_every=2, lr_decay_at=(), batch_size=16, **CASES["fixed_host_nce"])
    runs.train(tiny_config(tmp_path / "whole", name="whole", **settings), strategy=two_cpus)
    parts = tiny_config(tmp_path / "parts", name="parts", **settings)
    runs.train(dataclasses.replace(parts, steps=2), strategy=two_cpus)
    assert runs.train(parts, strategy=two_cpus).step == 4
    want, got = _checkpoint_values(tmp_path / "whole"), _checkpoint_values(tmp_path / "parts")
    assert set(got) == set(want)
    different = [name for name in want if not np.array_equal(want[name], got[name])]
    assert not different, f"resumed run differs in {different}"


@pytest.mark.slow
def test_a_run_sigkilled_at_a_random_step_and_rerun_is_bitwise_the_uninterrupted_one(tmp_path, tiny_config):
    """The program killed (SIGKILL) at a random moment, then the same command again until it finishes."""
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    flags = ["--source=demo", "--arch=small", "--objective=nce", "--batch_norm", "--nce_m=8", "--num_seeds=64",
             "--seeds_per_image=8", "--batch_size=16", "--steps=40", "--checkpoint_every=5", "--lr_decay_at=",
             "--knn_source=", "--noprogress", f"--export_base={tmp_path}/savedmodels"]

    def command(run_dir, name):
        return [sys.executable, "-m", "exemplar_tf.train", f"--run_dir={run_dir}", f"--name={name}", *flags]

    subprocess.run(command(tmp_path / "whole", "whole"), cwd=repo, check=True, capture_output=True, timeout=600)
    killed = subprocess.Popen(command(tmp_path / "parts", "parts"), cwd=repo, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not os.path.exists(tmp_path / "parts" / "checkpoints" / "checkpoint") and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(random.uniform(0.0, 3.0))  # somewhere past the first checkpoint
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    subprocess.run(command(tmp_path / "parts", "parts"), cwd=repo, check=True, capture_output=True, timeout=600)
    want, got = _checkpoint_values(tmp_path / "whole"), _checkpoint_values(tmp_path / "parts")
    different = [name for name in want if not np.array_equal(want[name], got[name])]
    assert not different, f"resumed run differs in {different}"
