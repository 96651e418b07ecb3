"""Fine-tuning: the class-balanced labelled subset, encoders read back from exports, and the whole comparison
on the demo's labelled crops in a few steps (checkpoints, resume, the `classify` export)."""
import dataclasses
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from exemplar_tf import errors, models
from exemplar_tf.data import sources
from exemplar_tf.evaluation import savedmodel
from exemplar_tf.finetuning import encoders, labels, loop, outdir, run
from exemplar_tf.io.lock import HOLDER_FILE
from exemplar_tf.serving import export

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def lines_in_order(out: str, *starts: str) -> None:
    """Asserts that a line of `out` (progress bar redraws are lines) begins with each of `starts`, in this order."""
    lines = out.splitlines()
    found = [next((i for i, line in enumerate(lines) if line.startswith(start)), None) for start in starts]
    assert None not in found and found == sorted(found), f"expected lines starting with {starts} in order:\n{out}"


def test_labelled_rows_are_class_balanced_seeded_and_exclusive():
    y = np.repeat(np.arange(3), [10, 20, 40])
    rows = labels.labelled_rows(y, per_class=4, seed=1)
    assert np.bincount(y[rows]).tolist() == [4, 4, 4]
    np.testing.assert_array_equal(rows, labels.labelled_rows(y, per_class=4, seed=1))
    assert not np.array_equal(rows, labels.labelled_rows(y, per_class=4, seed=2))
    assert np.bincount(y[labels.labelled_rows(y, fraction=0.1, seed=0)]).tolist() == [1, 2, 4]
    with pytest.raises(ValueError, match="exactly one"):
        labels.labelled_rows(y, per_class=2, fraction=0.1)


def _export_pair(base, batch_norm=True):
    """<base>/tiny/1 (an encoder with perturbed weights) and <base>/tiny_random/1; returns (trained, path)."""
    tf.keras.utils.set_random_seed(0)
    encoder = models.build_encoder("small", input_size=32, mean_rgb=(0.4, 0.5, 0.6), batch_norm=batch_norm)
    head = models.ProjectionHead(128)
    head.build((None, encoder.representation_dim))
    scales = [1.0] * len(encoder.feature_maps(tf.zeros([1, 32, 32, 3])))
    export.export_encoder(encoder, head, export_dir_base=str(base), name="tiny_random", percentiles=scales)
    for variable in encoder.trainable_variables:
        variable.assign(variable * 1.5 + 0.01)
    return encoder, export.export_encoder(encoder, head, export_dir_base=str(base), name="tiny", percentiles=scales)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_encoder_comes_back_from_its_export_with_its_weights(tmp_path, batch_norm):
    encoder, path = _export_pair(tmp_path, batch_norm)
    loaded, options = encoders.from_savedmodel(path)
    assert options == {"arch": "small", "input_size": 32, "dropout": 0.5, "batch_norm": batch_norm}
    assert options == encoder.options() == loaded.options()
    x = tf.random.uniform([2, 32, 32, 3], seed=1)
    np.testing.assert_allclose(loaded(x).numpy(), encoder(x).numpy(), rtol=1e-5, atol=1e-5)
    assert encoders.random_export(path, None) == os.path.join(str(tmp_path), "tiny_random", "1")


def _drop_from_export_info(path, *keys):
    """Rewrites the export's export_info.json without `keys`, as exports written before they were recorded."""
    info_path = os.path.join(path, export.INFO_PATH)
    info = json.load(open(info_path))
    with open(info_path, "w") as f:
        json.dump({key: value for key, value in info.items() if key not in keys}, f)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_exports_without_recorded_options_still_load(tmp_path, batch_norm):
    """Older exports recorded arch and input_size only: batch norm is told by the variables, dropout is 0.5."""
    encoder, path = _export_pair(tmp_path, batch_norm)
    _drop_from_export_info(path, "dropout", "batch_norm")
    loaded, options = encoders.from_savedmodel(path)
    assert options == {"arch": "small", "input_size": 32, "dropout": 0.5, "batch_norm": batch_norm}
    x = tf.random.uniform([2, 32, 32, 3], seed=1)
    np.testing.assert_allclose(loaded(x).numpy(), encoder(x).numpy(), rtol=1e-5, atol=1e-5)


def test_an_export_whose_variables_contradict_its_options_is_refused(tmp_path):
    _, path = _export_pair(tmp_path, batch_norm=True)
    info_path = os.path.join(path, export.INFO_PATH)
    info = json.load(open(info_path))
    with open(info_path, "w") as f:
        json.dump({**info, "batch_norm": False}, f)
    with pytest.raises(errors.InputError, match="do not match"):
        encoders.from_savedmodel(path)


def test_comparison_trains_resumes_and_exports_a_classifier(tmp_path, capsys):
    _, path = _export_pair(tmp_path / "savedmodels")
    options = run.Options(dataset="demo_labelled", out_dir=str(tmp_path / "ft"), export_name="tiny_finetuned",
                          labels_per_class=2, recipe=loop.Recipe(steps=6, batch_size=16, checkpoint_every=3,
                                                                 lr_decay_at=(0.9,)),  # 6 -> 8 keeps its drop ahead
                          export_base=str(tmp_path / "savedmodels"))
    report = run.compare(options, savedmodel=path)
    assert set(report["runs"]) == {"pretrained", "random", "scratch"} and report["num_labelled"] == 30
    assert report["runs"]["scratch"]["encoder_lr"] == options.scratch_lr
    for kind in report["runs"]:
        assert tf.train.latest_checkpoint(str(tmp_path / "ft" / kind / "checkpoints")).endswith("-6")
    assert json.load(open(tmp_path / "ft" / "results.json")) == report

    exported = tf.saved_model.load(report["runs"]["pretrained"]["export"]).signatures["classify"]
    test = sources.load_source("demo_labelled", "test")
    images = np.stack([e["image"] for e in test.dataset.as_numpy_iterator()])
    truth = np.array([e["label"] for e in test.dataset.as_numpy_iterator()])
    probabilities = exported(images=tf.constant(images, tf.uint8))["probabilities"].numpy()
    assert probabilities.shape == (300, 15)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    accuracy = float(np.mean(probabilities.argmax(axis=1) == truth))
    assert accuracy == pytest.approx(report["runs"]["pretrained"]["test_accuracy"], abs=1 / 300 + 1e-9)

    # a status line before each phase that takes seconds, and a progress bar over each run's steps (issue 32 item 8)
    err = capsys.readouterr().err
    starts = ["Reading demo_labelled (train and test splits) ...", f"Loading the encoder to fine-tune from {path} ...",
              f"Loading the random baseline from {tmp_path / 'savedmodels' / 'tiny_random' / '1'} ..."]
    for kind in report["runs"]:
        starts += [f"{kind}: fine-tuning on the 30 labelled images", f"{kind}:   0%|", f"{kind}: 100%|",
                   f"{kind}: classifying the 300 test images ..."]
        if kind == "pretrained":
            starts.append(f"{kind}: exporting the classifier to {tmp_path / 'savedmodels' / 'tiny_finetuned'}/ ...")
        starts.append(f"{kind}: test accuracy")
    lines_in_order(err, *starts)
    resumed = run.compare(dataclasses.replace(options, recipe=dataclasses.replace(options.recipe, steps=8),
                                              baselines=()), savedmodel=path)
    assert "Resuming" in capsys.readouterr().out and set(resumed["runs"]) == {"pretrained"}
    assert tf.train.latest_checkpoint(str(tmp_path / "ft" / "pretrained" / "checkpoints")).endswith("-8")


def test_a_resumed_fine_tune_is_bitwise_the_uninterrupted_one(tmp_path):
    """Stopped at step 2 and resumed to 4, in a fresh encoder as a new process would be: the same weights as 4 steps
    in one go (the resume used to train on the first batches again, and to start dropout's masks over)."""
    train = sources.load_source("demo_labelled", "train")
    rows = np.arange(0, train.num_examples, 3)

    def tuned(out_dir, stops):
        for steps in stops:
            tf.keras.utils.set_random_seed(0)
            encoder = models.build_encoder("small", input_size=32, mean_rgb=(0.5, 0.5, 0.5), dropout=0.5,
                                           batch_norm=True)  # the dropout masks' generator resumes too
            recipe = loop.Recipe(steps=steps, batch_size=8, checkpoint_every=2, lr_decay_at=())
            batches = loop.training_batches(train.dataset, rows, train.num_examples, 32, recipe)
            head, _ = loop.finetune(encoder, train.num_classes, batches, recipe, str(out_dir))
        return [variable.numpy() for variable in encoder.weights + head.weights]

    whole, parts = tuned(tmp_path / "whole", [4]), tuned(tmp_path / "parts", [2, 4])
    assert len(whole) == len(parts) and all(np.array_equal(a, b) for a, b in zip(whole, parts))


def test_a_fine_tune_checkpointed_without_the_dropout_generators_still_resumes(tmp_path, monkeypatch, capsys):
    """Checkpoints written before the seed generators were saved hold no "random/" entries: they resume (with
    fresh dropout masks) instead of failing to match the encoder's generators."""
    train = sources.load_source("demo_labelled", "train")
    rows = np.arange(0, train.num_examples, 3)
    for steps, legacy in ((2, True), (4, False)):
        with monkeypatch.context() as patch:
            if legacy:
                patch.setattr(loop.models, "seed_generator_states", lambda layers: {})
            encoder = models.build_encoder("small", input_size=32, mean_rgb=(0.5, 0.5, 0.5), dropout=0.5)
            recipe = loop.Recipe(steps=steps, batch_size=8, checkpoint_every=2, lr_decay_at=())
            batches = loop.training_batches(train.dataset, rows, train.num_examples, 32, recipe)
            loop.finetune(encoder, train.num_classes, batches, recipe, str(tmp_path))
    assert f"Resuming {tmp_path} from step 2/4" in capsys.readouterr().out
    names = [name for name, _ in tf.train.list_variables(tf.train.latest_checkpoint(str(tmp_path / "checkpoints")))]
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-4")
    assert any(name.startswith("random/seed_generator_0/") for name in names)  # saved from now on


def test_a_checkpoint_pruned_after_its_step_was_read_is_one_line(tmp_path):
    """The source run still training deletes old checkpoints: one read as the newest may be gone at restore."""
    with pytest.raises(errors.InputError, match=r"ckpt-500: gone since it was read as the run's newest"):
        encoders.from_run(str(tmp_path / "run"), 500)


def test_program_refuses_both_sources_and_both_label_counts():
    for args in (["--savedmodel=a", "--run_dir=b", "--labels_per_class=1"],
                 ["--savedmodel=a", "--labels_per_class=1", "--label_fraction=0.1"]):
        done = subprocess.run([sys.executable, "-m", "exemplar_tf.finetune", "--dataset=demo_labelled", *args],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and "exactly one" in done.stderr


def test_narrow_resnet_comes_back_from_its_export_and_as_a_float32_copy(tmp_path):
    """A ResNet of --resnet_width 16 with a forced ImageNet stem: the export records both, and the rebuilt encoder
    (fine-tuning, float32 copies) has the same shape and outputs."""
    encoder = models.build_encoder("resnet18", input_size=32, mean_rgb=(0.4, 0.5, 0.6), resnet_stem="imagenet",
                                   resnet_width=16)
    scales = [1.0] * len(encoder.feature_maps(tf.zeros([1, 32, 32, 3])))
    path = export.export_encoder(encoder, export_dir_base=str(tmp_path), name="narrow", percentiles=scales)
    info = savedmodel.read_export_info(path)
    assert (info["resnet_width"], info["resnet_stem"], info["representation_dim"]) == (16, "imagenet", 128)
    loaded, options = encoders.from_savedmodel(path)
    assert options == {"arch": "resnet18", "input_size": 32, "resnet_stem": "imagenet", "resnet_width": 16}
    x = tf.random.uniform([2, 32, 32, 3], seed=2)
    np.testing.assert_allclose(loaded(x).numpy(), encoder(x).numpy(), rtol=1e-5, atol=1e-5)
    assert encoders.fresh(options, (0.4, 0.5, 0.6), seed=0).representation_dim == 128
    bf16 = models.build_encoder("resnet18", input_size=32, mean_rgb=(0.4, 0.5, 0.6), resnet_stem="imagenet",
                                resnet_width=16, precision="mixed_bfloat16")
    copy = models.float32_copy(bf16)
    assert (copy.width, copy.imagenet_stem, copy.compute_dtype) == (16, True, "float32")


# ---------------------------------------------------------------- reusing a fine-tuning directory (issue 32.1)


def _fake_checkpoint(out_dir, kind="pretrained"):
    os.makedirs(os.path.join(out_dir, kind, "checkpoints"))
    open(os.path.join(out_dir, kind, "checkpoints", "checkpoint"), "w").close()


def test_a_fine_tuning_directory_is_reused_only_with_its_own_settings(tmp_path):
    out_dir = str(tmp_path / "ft")
    first = {"savedmodel": "savedmodels/demo/1", "run_dir": None, "labels_per_class": 10, "label_fraction": 0.0,
             "encoder_lr": 0.01, "lr_decay_at": [0.6, 0.8], "steps": 300, "baselines": ["random", "scratch"]}
    assert outdir.check_reuse(out_dir, first) is None  # new: recorded
    assert json.load(open(os.path.join(out_dir, outdir.SETTINGS_FILE))) == first
    outdir.check_reuse(out_dir, {**first, "labels_per_class": 5})  # no checkpoint yet: takes the new settings
    outdir.check_reuse(out_dir, first)
    _fake_checkpoint(out_dir)
    longer = {**first, "steps": 600, "baselines": [], "savedmodel": "./savedmodels/demo/1"}
    outdir.check_reuse(out_dir, longer)  # length, baselines and a spelling of the same path may change
    with pytest.raises(outdir.OutDirMismatch) as refused:
        outdir.check_reuse(out_dir, {**longer, "savedmodel": None, "run_dir": "runs/demo", "labels_per_class": 0,
                                     "label_fraction": 0.05})
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"{out_dir} holds fine-tuning checkpoints made with other")
    for part in ("--savedmodel was './savedmodels/demo/1', now unset", "--run_dir was unset, now 'runs/demo'",
                 "--labels_per_class was 10, now 0", "--label_fraction was 0.0, now 0.05", "--overwrite"):
        assert part in message
    with pytest.raises(outdir.OutDirMismatch, match=r"--lr_decay_at was '0.6,0.8', now '0.5'"):
        outdir.check_reuse(out_dir, {**longer, "lr_decay_at": [0.5]})
    kept = outdir.check_reuse(out_dir, {**longer, "labels_per_class": 3}, overwrite=True)
    assert kept.startswith(out_dir + ".old-") and outdir.has_checkpoints(kept) and not outdir.has_checkpoints(out_dir)
    legacy = str(tmp_path / "legacy")
    _fake_checkpoint(legacy, "random")  # written before settings were recorded
    with pytest.raises(outdir.OutDirMismatch, match="whose settings were not recorded"):
        outdir.check_reuse(legacy, first)


def test_a_new_steps_count_is_refused_when_it_moves_a_drop_a_run_has_fine_tuned_past(tmp_path):
    out_dir = str(tmp_path / "ft")
    first = {"savedmodel": "savedmodels/demo/1", "run_dir": None, "lr_decay_at": [0.6, 0.8], "steps": 300}
    outdir.check_reuse(out_dir, first)
    _fake_checkpoint(out_dir)
    open(os.path.join(out_dir, "pretrained", "checkpoints", "ckpt-150.index"), "w").close()
    outdir.check_reuse(out_dir, {**first, "steps": 310})  # its drops move from 180 and 240 to 186 and 248: ahead
    outdir.check_reuse(out_dir, first)
    _fake_checkpoint(out_dir, "random")
    open(os.path.join(out_dir, "random", "checkpoints", "ckpt-200.index"), "w").close()
    with pytest.raises(outdir.OutDirMismatch) as refused:
        outdir.check_reuse(out_dir, {**first, "steps": 310})
    assert str(refused.value) == (
        f"{out_dir} holds fine-tuning checkpoints made with other settings (--steps was 300, now 310: with "
        f"--lr_decay_at=0.6 it moves a learning-rate drop the random run has fine-tuned past from step 180 to 186). "
        f"Use another --out_dir, or --overwrite to start over (the old directory is kept as {out_dir}.old-<time>)")
    assert outdir.moved_rates(out_dir, first, {**first, "steps": 600, "lr_decay_at": [0.5]}) == []  # named apart
    assert outdir.moved_rates(out_dir, first, {**first, "steps": 240}) == [  # 180 -> 144 for both, 240 -> 192
        f"--steps was 300, now 240: with --lr_decay_at=0.6 it moves a learning-rate drop the {kind} run has "
        f"fine-tuned past from step 180 to 144" for kind in ("pretrained", "random")] + [
        "--steps was 300, now 240: with --lr_decay_at=0.8 it moves a learning-rate drop the random run has "
        "fine-tuned past from step 240 to 192"]
    # the random run, at 200, is past --steps=160: refused for that in its own words (run._check_steps), not here
    assert outdir.moved_rates(out_dir, first, {**first, "steps": 160}) == [
        f"--steps was 300, now 160: with --lr_decay_at={fraction} it moves a learning-rate drop the pretrained run "
        f"has fine-tuned past from step {was} to {now}" for fraction, was, now in ((0.6, 180, 96), (0.8, 240, 128))]


def test_a_fine_tuning_directory_in_use_is_refused_before_anything_is_written(tmp_path):
    """Two fine-tunes in one --out_dir would write each other's settings, checkpoints and results: the second is
    refused with one line naming the holder, settings.json untouched; --overwrite on a directory holding only the
    lock does not leave an empty .old-<time> copy behind."""
    out_dir = str(tmp_path / "ft")
    options = run.Options(dataset="demo_labelled", out_dir=out_dir, export_name="tiny_finetuned", labels_per_class=2,
                          recipe=loop.Recipe(steps=6, batch_size=16), export_base=str(tmp_path / "savedmodels"))
    with outdir.locked(out_dir):
        with pytest.raises(errors.InputError) as refused:
            run.compare(options, savedmodel="savedmodels/absent/1")
        assert str(refused.value) == (f"{out_dir} is in use by another fine-tuning run (PID {os.getpid()} on "
                                      f"{socket.gethostname()}); wait for it to finish, or use another --out_dir")
        assert os.listdir(out_dir) == [HOLDER_FILE]
    assert outdir.check_reuse(out_dir, {"steps": 6}, overwrite=True) is None
    assert sorted(os.listdir(tmp_path)) == ["ft"]
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(errors.InputError, match="--out_dir is a file, not a folder"):
        outdir.locked(str(tmp_path / "file"))


def test_export_name_defaults_to_the_fine_tuning_directory():
    assert run.default_export_name("runs/demo_finetune") == "demo_finetuned"
    assert run.default_export_name("runs/demo_5pc/") == "demo_5pc"
    assert run.json_safe({"a": [float("nan"), 1.5, float("inf")], "b": None}) == {"a": [None, 1.5, None], "b": None}


def _strict_json(path):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    with open(path) as f:
        return json.load(f, parse_constant=refuse)


@pytest.mark.slow  # 45 s of subprocess training; the rule itself: test_a_fine_tuning_directory_is_reused_...
def test_program_refuses_a_rerun_with_other_settings_and_writes_strict_json(tmp_path):
    """The README's two commands on one directory: the second (other labels) is refused naming what changed, not
    answered with the first one's accuracies; a rerun of the same command resumes and writes valid JSON."""
    _, path = _export_pair(tmp_path / "savedmodels")
    out_dir = tmp_path / "tiny_finetune"

    def finetune(*args):
        return subprocess.run(
            [sys.executable, "-m", "exemplar_tf.finetune", f"--savedmodel={path}", "--dataset=demo_labelled",
             "--steps=2", "--batch_size=8", "--baselines=", f"--out_dir={out_dir}",
             f"--export_base={tmp_path / 'savedmodels'}", *args],
            cwd=REPO, capture_output=True, text=True, timeout=600)

    first = finetune("--labels_per_class=2")
    assert first.returncode == 0, first.stderr
    results = _strict_json(out_dir / "results.json")
    assert results["num_labelled"] == 30 and os.listdir(tmp_path / "savedmodels" / "tiny_finetuned") == ["1"]

    other = finetune("--label_fraction=0.05", "--encoder_lr=0.02")
    assert other.returncode == 2, other.stderr
    assert other.stderr.strip().splitlines()[-1] == (
        f"Error: {out_dir} holds fine-tuning checkpoints made with other settings (--labels_per_class was 2, now 0; "
        f"--label_fraction was 0.0, now 0.05; --encoder_lr was 0.01, now 0.02). Use another --out_dir, or "
        f"--overwrite to start over (the old directory is kept as {out_dir}.old-<time>)")
    assert _strict_json(out_dir / "results.json") == results
    assert os.listdir(tmp_path / "savedmodels" / "tiny_finetuned") == ["1"]

    again = finetune("--labels_per_class=2")
    assert again.returncode == 0, again.stderr
    assert "from step 2/2" in again.stdout
    rerun = _strict_json(out_dir / "results.json")
    assert rerun["runs"]["pretrained"]["final_loss"] is None  # no step ran: null, not NaN
    assert rerun["runs"]["pretrained"]["test_accuracy"] == results["runs"]["pretrained"]["test_accuracy"]
    info = savedmodel.read_export_info(str(tmp_path / "savedmodels" / "tiny_finetuned" / "2"))
    assert info["run_dir"] == str(out_dir) and info["num_classes"] == 15 and info["kind"] == "classifier"

    # Another directory exports under a name of its own; taking this one's name is refused before fine-tuning.
    taken = finetune("--label_fraction=0.05", f"--out_dir={tmp_path / 'fraction'}", "--export_name=tiny_finetuned")
    assert taken.returncode == 2, taken.stderr
    assert taken.stderr.strip().splitlines()[-1].endswith(
        f"exported from run {out_dir}, and this export is from run {tmp_path / 'fraction'}: every version of a "
        f"model name must come from one run (TF Serving serves the newest); give this one its own --export_name")
    assert not outdir.has_checkpoints(str(tmp_path / "fraction"))

    # A folder without class sub-folders has no labels: one line and exit 2, before anything is fine-tuned.
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(4):
        tf.io.write_file(str(flat / f"{i}.png"), tf.io.encode_png(np.full((40, 40, 3), 60 * i, np.uint8)))
    unlabelled = finetune("--labels_per_class=1", f"--out_dir={tmp_path / 'flat_ft'}", "--export_name=flat",
                          f"--dataset=folder:{flat}")
    assert unlabelled.returncode == 2, unlabelled.stderr
    assert unlabelled.stderr.strip().splitlines()[-1] == (
        f"Error: folder:{flat}: fine-tuning needs labelled train and test splits")


def test_the_random_baseline_of_a_run_is_its_own_export(tmp_path):
    """Of a training run (--run_dir), the newest `<name>_random` version that this run exported, not any newest."""
    base, run_dir, other = tmp_path / "sm", tmp_path / "runs" / "r", tmp_path / "runs" / "other"
    os.makedirs(other)
    os.makedirs(run_dir)
    (run_dir / "flags.cfg").write_text(f"--name=r\n--source=demo\n--arch=small\n--export_base={base}\n")
    for version, origin in ((1, run_dir), (2, other)):
        folder = base / "r_random" / str(version) / "assets.extra"
        os.makedirs(folder)
        (folder / "export_info.json").write_text(json.dumps(export.origin_fields(str(origin), str(base))))
    assert encoders.random_export(None, str(run_dir)) == str(base / "r_random" / "1")
