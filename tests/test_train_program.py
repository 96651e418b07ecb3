"""End-to-end training: the run directory, resume after SIGKILL, NaN handling, device-side augmentation."""
import dataclasses
import glob
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from exemplar_tf.training import loop
from exemplar_tf.training.config import TrainConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(source="demo", method="exemplar", arch="small", num_seeds=64, seeds_per_image=8, nce_m=32,
            batch_size=16, log_every=2, checkpoint_every=4, progress=False)


def _tags(log_dir):
    tags = set()
    for path in glob.glob(os.path.join(log_dir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(value.tag for value in event.summary.value)
    return tags


def test_short_run_writes_checkpoints_tensorboard_and_exports(tmp_path):
    config = TrainConfig(run_dir=str(tmp_path / "run"), name="tiny", steps=6, export_base=str(tmp_path / "sm"),
                         objective="nce", batch_norm=True, knn_source="demo_labelled", knn_every=3,
                         knn_max_examples=40, **TINY)
    result = loop.run(config)
    assert result.step == 6 and np.isfinite(result.loss)
    assert result.export_dir == str(tmp_path / "sm" / "tiny" / "1")
    assert os.path.exists(os.path.join(result.export_dir, "saved_model.pb"))
    assert os.path.isdir(tmp_path / "sm" / "tiny_random" / "1")
    assert tf.train.latest_checkpoint(result.checkpoint_dir).endswith("-6")
    assert os.path.exists(tmp_path / "run" / "seeds.npz")
    tags = _tags(result.log_dir)
    for tag in ("loss", "learning_rate", "examples_per_second", "nce_z", "bank/mean_cosine",
                "surrogate_samples", "knn_top1", "representation/active_units",
                "representation/code_mean_cosine"):
        assert tag in tags, f"missing TensorBoard tag {tag}; have {sorted(tags)}"
    assert os.path.exists(os.path.join(result.log_dir, "projector_config.pbtxt"))  # beside the event file


def test_rerun_with_more_steps_resumes_from_the_last_checkpoint(tmp_path, capsys):
    config = TrainConfig(run_dir=str(tmp_path / "run"), name="resume", steps=4, objective="softmax",
                         export_base=str(tmp_path / "sm"), **TINY)
    assert loop.run(config).step == 4
    result = loop.run(dataclasses.replace(config, steps=6))
    assert f"Resuming {tmp_path / 'run'} from step 4/6" in capsys.readouterr().out
    assert result.step == 6 and tf.train.latest_checkpoint(result.checkpoint_dir).endswith("-6")


def test_device_side_augmentation_trains(tmp_path):
    config = TrainConfig(run_dir=str(tmp_path / "run"), name="dev", steps=3, objective="softmax",
                         augment_on="device", export_base=str(tmp_path / "sm"), **TINY)
    result = loop.run(config)
    assert result.step == 3 and np.isfinite(result.loss)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    config = TrainConfig(run_dir=str(tmp_path / "run"), name="nan", steps=40, objective="softmax", lr=1e12,
                         lr_decay_at=(), export_base=str(tmp_path / "sm"), **TINY)
    with pytest.raises(loop.TrainingDiverged, match="loss became") as error:
        loop.run(config)
    assert "last good checkpoint" in str(error.value)
    assert not os.path.isdir(tmp_path / "sm" / "nan")


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_resumes_and_finishes(tmp_path):
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "exemplar_tf.train", f"--flagfile={REPO}/flags/demo.cfg",
               f"--run_dir={run_dir}", f"--export_base={tmp_path / 'sm'}", "--steps=200", "--checkpoint_every=5",
               "--num_seeds=64", "--seeds_per_image=8", "--nce_m=32", "--batch_size=16", "--knn_source=",
               "--knn_every=0", "--noprogress"]
    first = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not glob.glob(str(run_dir / "checkpoints" / "ckpt-*.index")):
            time.sleep(0.5)
        assert glob.glob(str(run_dir / "checkpoints" / "ckpt-*.index")), "no checkpoint before the deadline"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    killed_at = int(tf.train.latest_checkpoint(str(run_dir / "checkpoints")).rsplit("-", 1)[1])
    assert 0 < killed_at < 200
    second = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"Resuming {run_dir} from step {killed_at}/200" in second.stdout
    assert tf.train.latest_checkpoint(str(run_dir / "checkpoints")).endswith("-200")
    assert "Export:" in second.stdout
