"""End-to-end training: the run directory, resume after SIGKILL, NaN handling, device-side augmentation."""
import dataclasses
import glob
import os
import signal
import subprocess
import sys
import time
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf

from exemplar_tf.serving import runs
from exemplar_tf.training import loop, rundir, summaries
from exemplar_tf.training.config import TrainConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The rate drops at 90 %: the tests that rerun with more steps (4 -> 6, 6 -> 8) move no drop a run trained past.
TINY = dict(source="demo", method="exemplar", arch="small", num_seeds=64, seeds_per_image=8, nce_m=32,
            batch_size=16, log_every=2, checkpoint_every=4, progress=False, lr_decay_at=(0.9,))


def _tags(log_dir):
    tags = set()
    for path in glob.glob(os.path.join(log_dir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(value.tag for value in event.summary.value)
    return tags


def lines_in_order(out: str, *starts: str) -> None:
    """Asserts that a line of `out` begins with each of `starts`, in this order (first occurrences)."""
    lines = out.splitlines()
    found = [next((i for i, line in enumerate(lines) if line.startswith(start)), None) for start in starts]
    assert None not in found and found == sorted(found), f"expected lines starting with {starts} in order:\n{out}"


def test_short_run_writes_checkpoints_tensorboard_and_exports(tmp_path, capsys):
    config = TrainConfig(run_dir=str(tmp_path / "run"), name="tiny", steps=6, export_base=str(tmp_path / "sm"),
                         objective="nce", batch_norm=True, knn_source="demo_labelled", knn_every=3,
                         knn_max_examples=40, **TINY)
    result = runs.train(config)
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
    assert "knn_top1_representation" not in tags  # only an MLP head has a representation to watch apart
    assert os.path.exists(os.path.join(result.log_dir, "projector_config.pbtxt"))  # beside the event file
    # one status line before each phase that takes seconds, with --noprogress too (issue 32 item 8)
    lines_in_order(capsys.readouterr().out,
                   f"Reading --source=demo and drawing 64 seed patches (cached in {tmp_path / 'run' / 'seeds.npz'})",
                   "Building the small encoder and a memory bank of 64 x 128 ...",
                   "Reading the kNN monitor's labelled images (--knn_source=demo_labelled) ...",
                   f"Exporting the randomly initialised encoder (baseline) to {tmp_path / 'sm' / 'tiny_random'}/ ...",
                   "step 0: kNN top-1", "Compiling the training step", "step 3: kNN top-1",
                   "step 6: last kNN reading and the TensorBoard projector", "step 6: kNN top-1",
                   f"Exporting the trained encoder (step 6) to {tmp_path / 'sm' / 'tiny'}/ ...")


def test_rerun_with_more_steps_resumes_from_the_last_checkpoint(tmp_path, capsys):
    config = TrainConfig(run_dir=str(tmp_path / "run"), name="resume", steps=4, objective="softmax",
                         export_base=str(tmp_path / "sm"), **TINY)
    assert runs.train(config).step == 4
    capsys.readouterr()
    result = runs.train(dataclasses.replace(config, steps=6))
    lines_in_order(capsys.readouterr().out,
                   f"Reading --source=demo and the seed patches cached in {tmp_path / 'run' / 'seeds.npz'} ...",
                   f"Resuming {tmp_path / 'run'} from step 4/6", "Compiling the training step")
    assert result.step == 6 and tf.train.latest_checkpoint(result.checkpoint_dir).endswith("-6")


def test_device_side_augmentation_trains(tmp_path):
    config = TrainConfig(run_dir=str(tmp_path / "run"), name="dev", steps=3, objective="softmax",
                         augment_on="device", export_base=str(tmp_path / "sm"), **TINY)
    result = runs.train(config)
    assert result.step == 3 and np.isfinite(result.loss)


def test_npid_device_side_augmentation_trains_and_exports(tmp_path):
    # demo_labelled: 64x64 crops of one size, so a batch of whole images can go to the step.
    config = TrainConfig(run_dir=str(tmp_path / "run"), name="npid_dev", steps=3, augment_on="device",
                         export_base=str(tmp_path / "sm"), image_size=32, batch_norm=True,
                         **{**TINY, "method": "npid", "source": "demo_labelled", "knn_source": ""})
    result = runs.train(config)
    assert result.step == 3 and np.isfinite(result.loss)
    assert os.path.exists(os.path.join(result.export_dir, "saved_model.pb"))


@pytest.mark.parametrize("augment_on, source", [("host", "demo"), ("device", "demo_labelled"),
                                                ("host", "demo_labelled")])
def test_online_seed_sampling_trains_one_class_per_image(tmp_path, capsys, augment_on, source):
    # demo: photographs of several sizes (each sampled alone); demo_labelled: 64x64 crops (whole batches; on the
    # host from energy CDFs computed once).
    config = TrainConfig(run_dir=str(tmp_path / "run"), name="online", steps=3, objective="softmax",
                         seed_sampling="online", augment_on=augment_on, export_base=str(tmp_path / "sm"),
                         **{**TINY, "source": source, "knn_source": ""})
    result = runs.train(config)
    assert result.step == 3 and np.isfinite(result.loss)
    assert not os.path.exists(tmp_path / "run" / "seeds.npz")  # nothing drawn once
    cached = "Energy CDFs of the 600 images kept in memory" in capsys.readouterr().out
    assert cached == (augment_on == "host" and source == "demo_labelled")
    head = tf.train.load_checkpoint(result.checkpoint_dir)
    classifier = [name for name, shape in head.get_variable_to_shape_map().items() if name.startswith("head/")
                  and len(shape) == 2]
    num_images = 15 if source == "demo" else 600
    assert [head.get_variable_to_shape_map()[name][1] for name in classifier] == [num_images]


def test_merging_classes_mid_run_is_checkpointed_and_kept_on_resume(tmp_path, capsys):
    # 64 seeds merged into 8 classes at step 3 of 6. After the merge a label >= 8 would meet a masked (-inf)
    # logit and make the loss infinite (the run would stop with TrainingDiverged): finite losses through step 6
    # mean every label the loss saw was < 8.
    config = TrainConfig(run_dir=str(tmp_path / "run"), name="merge", steps=6, objective="softmax", merge_classes_at=3,
                         merge_to=8, export_base=str(tmp_path / "sm"), **{**TINY, "knn_source": ""})
    result = runs.train(config)
    assert result.step == 6 and np.isfinite(result.loss)
    assert "step 3: merged the 64 seeds into 8 classes" in capsys.readouterr().out
    checkpoints = tmp_path / "run" / "checkpoints"

    def relabel(step):
        reader = tf.train.load_checkpoint(str(checkpoints / f"ckpt-{step}"))
        (name,) = [n for n in reader.get_variable_to_shape_map() if n.startswith("relabel/")]
        return reader.get_tensor(name)

    labels = relabel(4)  # the first checkpoint after the merge
    assert labels.shape == (64,) and labels.dtype == np.int64 and sorted(set(labels.tolist())) == list(range(8))
    np.testing.assert_array_equal(relabel(6), labels)
    result = runs.train(dataclasses.replace(config, steps=8))  # resumes at 6: no second merge, same classes
    assert result.step == 8 and np.isfinite(result.loss)
    assert "merged the" not in capsys.readouterr().out
    np.testing.assert_array_equal(relabel(8), labels)


# The exact-softmax case is marked slow (the default suite keeps NCE, which also covers the Z reset); each case
# trains, resumes and exports.
@pytest.mark.parametrize("objective, merge_to", [pytest.param("nonparametric", 8, marks=pytest.mark.slow),
                                                 ("nce", 16)])
def test_merging_with_a_bank_keeps_k_class_rows_through_resume_and_exports(tmp_path, capsys, objective, merge_to):
    # 64 seeds merged into K classes at step 3 of 6. Exact softmax: a label >= K would meet a masked (-inf) score
    # and stop the run; both: rows >= K are never written after the merge, and the relabelling and bank survive
    # the resume to step 8.
    config = TrainConfig(run_dir=str(tmp_path / "run"), name="merge", steps=6, objective=objective, batch_norm=True,
                         merge_classes_at=3, merge_to=merge_to, export_base=str(tmp_path / "sm"),
                         **{**TINY, "knn_source": "", "nce_m": 8})
    result = runs.train(config)
    assert result.step == 6 and np.isfinite(result.loss)
    assert f"step 3: merged the 64 seeds into {merge_to} classes" in capsys.readouterr().out
    checkpoints = tmp_path / "run" / "checkpoints"

    def saved(step, prefix):
        reader = tf.train.load_checkpoint(str(checkpoints / f"ckpt-{step}"))
        (name,) = [n for n in reader.get_variable_to_shape_map() if n.startswith(prefix) and "OPTIMIZER" not in n]
        return reader.get_tensor(name)

    labels, bank = saved(4, "relabel/"), saved(4, "bank/")  # the first checkpoint after the merge
    assert sorted(set(labels.tolist())) == list(range(merge_to)) and bank.shape == (64, 128)
    np.testing.assert_allclose(np.linalg.norm(bank[:merge_to], axis=1), 1.0, rtol=1e-5)
    if objective == "nce":
        assert saved(4, "z/") > 0  # re-estimated over the K rows after the merge
    result = runs.train(dataclasses.replace(config, steps=8))  # resumes at 6: no second merge, same classes
    assert result.step == 8 and np.isfinite(result.loss)
    assert "merged the" not in capsys.readouterr().out
    np.testing.assert_array_equal(saved(8, "relabel/"), labels)
    for step in (6, 8):
        later = saved(step, "bank/")
        np.testing.assert_array_equal(later[merge_to:], bank[merge_to:])
        assert not np.allclose(later[:merge_to], bank[:merge_to])
    assert os.path.exists(os.path.join(result.export_dir, "saved_model.pb"))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    config = TrainConfig(run_dir=str(tmp_path / "run"), name="nan", steps=40, objective="softmax", lr=1e12,
                         export_base=str(tmp_path / "sm"), **{**TINY, "lr_decay_at": ()})
    with pytest.raises(loop.TrainingDiverged, match="became .* at step") as error:
        runs.train(config)
    assert "last good checkpoint" in str(error.value)
    assert not os.path.isdir(tmp_path / "sm" / "nan")


def test_an_update_that_breaks_the_weights_stops_before_the_checkpoint_due_at_that_step(tmp_path):
    # lr = inf: the first update turns the weights into Inf/NaN, while the loss it was computed from is finite.
    # Checking only that loss would save step 1's checkpoint and stop at step 2 on the loss.
    config = TrainConfig(run_dir=str(tmp_path / "run"), name="nan", steps=8, objective="softmax", lr=float("inf"),
                         export_base=str(tmp_path / "sm"), **{**TINY, "checkpoint_every": 1, "lr_decay_at": ()})
    with pytest.raises(loop.TrainingDiverged, match="weights became NaN/Inf at step 1;"):
        runs.train(config)
    assert tf.train.latest_checkpoint(str(tmp_path / "run" / "checkpoints")) is None


@pytest.mark.parametrize("steps_per_call", [1, 3, 100])
def test_calls_of_several_steps_stop_exactly_at_every_log_checkpoint_and_knn_step(steps_per_call):
    config = TrainConfig(run_dir="/tmp/unused", steps=23, log_every=5, checkpoint_every=7, knn_every=4,
                         knn_source="demo_labelled", steps_per_call=steps_per_call)
    step, stops = 0, []
    while step < config.steps:
        step += loop.steps_this_call(config, step)
        stops.append(step)
    events = {s for s in range(1, 24) if s % 5 == 0 or s % 7 == 0 or s % 4 == 0} | {23}
    assert events <= set(stops)
    assert all(b - a <= steps_per_call for a, b in zip([0] + stops, stops))
    if steps_per_call == 100:
        assert stops == sorted(events)


def test_a_call_stops_at_the_merge_step():
    config = TrainConfig(run_dir="/tmp/unused", steps=40, log_every=20, checkpoint_every=20, steps_per_call=100,
                         merge_classes_at=9, merge_to=4)
    assert loop.steps_this_call(config, 0) == 9 and loop.steps_this_call(config, 9) == 11


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


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_sigkill_at_random_points_never_leaves_a_broken_checkpoint_or_export(tmp_path):
    """Kill the program a dozen times at random moments (during seed sampling, steps, checkpoint writes every
    step, exports); after each kill the newest checkpoint reads back whole and every export version is complete;
    the last rerun finishes at the asked step."""
    run_dir, export_base = tmp_path / "run", tmp_path / "sm"
    command = [sys.executable, "-m", "exemplar_tf.train", f"--flagfile={REPO}/flags/demo.cfg",
               f"--run_dir={run_dir}", f"--export_base={export_base}", "--steps=60", "--checkpoint_every=1",
               "--num_seeds=64", "--seeds_per_image=8", "--batch_size=16", "--knn_source=", "--knn_every=0",
               "--noprogress"]
    rng = np.random.default_rng(0)
    for _ in range(12):
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            process.wait(timeout=float(rng.uniform(8, 30)))
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
        latest = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
        if latest:
            reader = tf.train.load_checkpoint(latest)
            assert reader.get_variable_to_shape_map(), f"{latest} reads back empty"
        for version in glob.glob(str(export_base / "*" / "[0-9]*")):
            assert os.path.exists(os.path.join(version, "saved_model.pb")), f"half-written export {version}"
    final = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stdout + final.stderr
    assert tf.train.latest_checkpoint(str(run_dir / "checkpoints")).endswith("-60")


def test_reexporting_the_final_checkpoint_gives_the_training_time_features(tmp_path):
    from exemplar_tf.evaluation import savedmodel
    from exemplar_tf.serving import runs

    # --max_instances=5 of the 15 demo photographs: the percentile images must come from those 5 in both exports.
    config = TrainConfig(run_dir=str(tmp_path / "run"), name="re", steps=4, export_base=str(tmp_path / "sm"),
                         **{**TINY, "num_seeds": 32, "checkpoint_every": 2}, max_instances=5)
    result = runs.train(config)
    again = runs.export_run(config.run_dir)
    assert result.export_dir == str(tmp_path / "sm" / "re" / "1") and again == str(tmp_path / "sm" / "re" / "2")
    images = tf.constant(np.random.default_rng(0).integers(0, 256, (3, 40, 48, 3), dtype=np.uint8))
    served = [tf.saved_model.load(path).signatures["serving_default"](images=images) for path in (result.export_dir,
                                                                                                   again)]
    np.testing.assert_array_equal(served[0]["features"].numpy(), served[1]["features"].numpy())
    np.testing.assert_array_equal(served[0]["embedding"].numpy(), served[1]["embedding"].numpy())
    infos = [savedmodel.read_export_info(path) for path in (result.export_dir, again)]
    assert infos[0]["percentiles"] == infos[1]["percentiles"]
    assert [i["step"] for i in infos] == [4, 4] and {i["run_dir"] for i in infos} == {str(tmp_path / "run")}
    baseline_id = savedmodel.read_export_info(str(tmp_path / "sm" / "re_random" / "1"))["run_id"]
    assert {i["run_id"] for i in infos} == {baseline_id, rundir.run_id(config.run_dir)} and baseline_id
    baseline = savedmodel.read_export_info(str(tmp_path / "sm" / "re_random" / "1"))
    assert baseline["step"] == 0 and baseline["run_dir"] == str(tmp_path / "run") and baseline["name"] == "re_random"

    # A checkpoint saved between reading the newest and restoring it (the run still training): the export records
    # the step of the weights it restored, read once.
    newest = iter([os.path.join(config.run_dir, "checkpoints", "ckpt-2")])
    real_latest = tf.train.latest_checkpoint
    with mock.patch.object(tf.train, "latest_checkpoint", lambda folder: next(newest, None) or real_latest(folder)):
        earlier = runs.export_run(config.run_dir)
    assert savedmodel.read_export_info(earlier)["step"] == 2
    step2 = tf.saved_model.load(earlier).signatures["serving_default"](images=images)
    assert not np.array_equal(step2["embedding"].numpy(), served[0]["embedding"].numpy())  # not the step-4 weights


class _ConstantMlpHead:
    """An MLP head (hidden_dim > 0) that maps every representation to the same code: kNN on its codes is blind."""

    hidden_dim = 4

    def __call__(self, representations, training=False):
        return tf.ones([tf.shape(representations)[0], 4])


def test_knn_monitor_reads_the_representation_below_an_mlp_head_apart_from_its_codes():
    """Images of three flat colours, the encoder a flattening: the representation separates the classes
    (top-1 1.0) where the constant head's codes cannot (one class for every query: top-1 1/3); a linear head
    (no hidden_dim) gives no representation reading."""
    colours = np.array([[250, 0, 0], [0, 250, 0], [0, 0, 250]], np.uint8)
    labels = np.repeat(np.arange(3), 4)
    images = np.broadcast_to(colours[labels][:, None, None, :], (12, 2, 2, 3)).copy()
    monitor = summaries.LabelledImages(images, labels.astype(np.int64), None)

    def flatten(x, training=False):
        return tf.reshape(x, [tf.shape(x)[0], -1])

    reading = loop.knn_reading(flatten, _ConstantMlpHead(), monitor, monitor, num_classes=3)
    assert reading.representation_top1 == 1.0 and reading.top1 == pytest.approx(1 / 3)
    linear = loop.knn_reading(flatten, lambda r, training=False: r[:, :4], monitor, monitor, num_classes=3)
    assert linear.representation_top1 is None
