"""Weighted kNN: exact agreement with a NumPy brute force, toy cases, a checkpoint's bank, the program."""
import hashlib
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from exemplar_tf import errors
from exemplar_tf.evaluation import knn, savedmodel
from exemplar_tf.metrics import knn as metrics_knn
from exemplar_tf.models import ProjectionHead, build_encoder
from exemplar_tf.objectives.memory_bank import MemoryBank
from exemplar_tf.serving import export
from exemplar_tf.training import rundir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _brute_force(train, labels, queries, k, tau, num_classes):
    """Reference in float64: every similarity, full sort, explicit per-class sums, stable ordering."""
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    predictions = []
    for query in queries:
        similarity = train.astype(np.float64) @ query.astype(np.float64)
        nearest = np.argsort(-similarity, kind="stable")[:k]
        votes = np.zeros(num_classes)
        for j in nearest:
            votes[labels[j]] += np.exp(similarity[j] / tau)
        predictions.append(np.argsort(-votes, kind="stable")[:5])
    return np.array(predictions)


def test_matches_numpy_brute_force_exactly_on_random_data():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(600, 16)).astype(np.float32)
    labels = rng.integers(0, 10, 600)
    queries = rng.normal(size=(101, 16)).astype(np.float32)
    for k, tau in ((200, 0.07), (7, 0.5)):
        got = metrics_knn.weighted_knn(train, labels, queries, k=k, tau=tau, num_classes=10, batch=13)
        assert got.shape == (101, 5)
        np.testing.assert_array_equal(got, _brute_force(train, labels, queries, k, tau, 10))


def test_clustered_toy_case_is_classified_perfectly():
    rng = np.random.default_rng(1)
    centres = np.eye(3, 8, dtype=np.float32) * 5.0
    train = np.concatenate([c + rng.normal(scale=0.3, size=(50, 8)) for c in centres]).astype(np.float32)
    labels = np.repeat([0, 1, 2], 50)
    queries = np.concatenate([c + rng.normal(scale=0.3, size=(10, 8)) for c in centres]).astype(np.float32)
    accuracy = metrics_knn.knn_accuracy(train, labels, queries, np.repeat([0, 1, 2], 10), k=20)
    assert accuracy == {"top1": 1.0, "top5": 1.0}
    assert metrics_knn.weighted_knn(train, labels, queries, k=20).shape == (30, 3)  # fewer than 5 classes


def test_temperature_weights_close_neighbours_over_many_far_ones():
    # query (1,0): one neighbour of class 0 at cosine 1, two of class 1 at cosine 0.5.
    train = np.array([[1.0, 0.0], [0.5, np.sqrt(0.75)], [0.5, -np.sqrt(0.75)], [-1.0, 0.0]], np.float32)
    labels = np.array([0, 1, 1, 2])
    query = np.array([[2.0, 0.0]], np.float32)
    assert metrics_knn.weighted_knn(train, labels, query, k=3, tau=0.07)[0, 0] == 0  # e^14.3 > 2 e^7.1
    assert metrics_knn.weighted_knn(train, labels, query, k=3, tau=100.0)[0, 0] == 1  # nearly a plain majority
    far_class_3 = np.array([0, 1, 1, 3])  # k capped at N=4: even the opposite neighbour votes, so 3 beats 2
    np.testing.assert_array_equal(metrics_knn.weighted_knn(train, far_class_3, query, k=200, tau=100.0)[0], [1, 0, 3, 2])


def test_knn_accuracy_counts_top1_and_top5():
    rng = np.random.default_rng(2)
    train = rng.normal(size=(300, 8)).astype(np.float32)
    labels = rng.integers(0, 12, 300)
    queries = rng.normal(size=(40, 8)).astype(np.float32)
    query_labels = rng.integers(0, 12, 40)
    predictions = _brute_force(train, labels, queries, 30, 0.07, 12)
    accuracy = metrics_knn.knn_accuracy(train, labels, queries, query_labels, k=30, num_classes=12)
    assert accuracy["top1"] == pytest.approx(np.mean(predictions[:, 0] == query_labels))
    assert accuracy["top5"] == pytest.approx(np.mean((predictions == query_labels[:, None]).any(axis=1)))


def test_bad_labels_are_refused():
    with pytest.raises(ValueError, match="labels"):
        metrics_knn.weighted_knn(np.ones((3, 2)), [0, 1], np.ones((1, 2)))
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        metrics_knn.weighted_knn(np.ones((2, 2)), [0, 5], np.ones((1, 2)), num_classes=2)


def test_memory_bank_is_read_from_a_checkpoint_without_writing(tmp_path):
    bank = MemoryBank(20, 4, seed=3)
    other = tf.Variable(tf.zeros([7, 4]), name="not_the_bank")
    tf.train.Checkpoint(bank=bank, z=other).save(str(tmp_path / "ckpt"))
    before = {name: hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() for name in os.listdir(tmp_path)}
    rows = knn.read_memory_bank(str(tmp_path))
    np.testing.assert_array_equal(rows, bank().numpy())
    after = {name: hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() for name in os.listdir(tmp_path)}
    assert after == before
    tf.train.Checkpoint(z=other).save(str(tmp_path / "nobank" / "ckpt"))
    with pytest.raises(ValueError, match="memory bank"):
        knn.read_memory_bank(str(tmp_path / "nobank"))


def test_bank_labels_follow_the_instance_index():
    np.testing.assert_array_equal(knn.bank_labels({2: 7, 0: 5, 1: 6}, 3), [5, 6, 7])
    with pytest.raises(ValueError, match="bank rows"):
        knn.bank_labels({0: 1}, 2)
    with pytest.raises(ValueError, match="3 rows but the training split has 4 examples"):
        knn.bank_labels({2: 7, 0: 5, 1: 6, 9: 1}, 3)  # a bank of a --max_instances subset


@pytest.mark.parametrize("recorded, refusal", [
    ({"method": "exemplar", "seed_sampling": "fixed", "num_seeds": "20"}, "one row per seed patch \\(--num_seeds=20\\)"),
    ({"method": "npid", "max_instances": "20"}, "--max_instances=20 images renumbered"),
    ({"method": "npid", "skip_bad_images": "True"}, "--skip_bad_images and left files out"),
    ({"source": "cifar10"}, "trained on --source=cifar10 split 'train': bank row i is image i there"),
    ({"split": "test"}, "trained on --source=folder:.* split 'test'"),
    ({"method": "exemplar", "seed_sampling": "online"}, None),
    ({}, None)])
def test_a_bank_that_is_not_the_training_images_of_the_export_is_refused(tmp_path, recorded, refusal):
    """The run's flags.cfg and the export's export_info.json say whether bank row i is training image i of --train
    (in its order) and whether the export is the same run at the same step."""
    run = tmp_path / "run"
    (tmp_path / "images" / "train").mkdir(parents=True)
    train = f"folder:{tmp_path / 'images'}"
    tf.train.Checkpoint(bank=MemoryBank(20, 4)).save(str(run / "checkpoints" / "ckpt"))  # ckpt-1
    flags = {"method": "npid", "seed_sampling": "fixed", "max_instances": "0", "source": train, "split": "train",
             **recorded}
    (run / "flags.cfg").write_text("".join(f"--{key}={value}\n" for key, value in flags.items()))
    savedmodel = tmp_path / "sm" / "1"
    (savedmodel / "assets.extra").mkdir(parents=True)
    (savedmodel / "assets.extra" / "export_info.json").write_text(json.dumps({"run_dir": str(run), "step": 1}))
    for checkpoint in (run / "checkpoints", tf.train.latest_checkpoint(str(run / "checkpoints"))):  # folder, prefix
        problem = knn.bank_problem(str(checkpoint), str(savedmodel), f"folder:{tmp_path}/./images", "train")
        assert problem is None if refusal is None else re.search(refusal, problem), problem
    if "skip_bad_images" in recorded:  # the run's list of what it left out is empty: its rows are the split's
        (run / rundir.SKIPPED_IMAGES_FILE).write_text("")
        assert knn.bank_problem(str(run / "checkpoints"), str(savedmodel), train, "train") is None
    assert knn.bank_problem(str(tmp_path / "elsewhere"), str(savedmodel), train, "train") is None  # no flags.cfg


def test_a_bank_of_another_step_or_run_than_the_export_is_refused(tmp_path):
    run = tmp_path / "run"
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(bank=MemoryBank(20, 4)), str(run / "checkpoints"), 3)
    manager.save(checkpoint_number=100)
    manager.save(checkpoint_number=150)
    (run / "flags.cfg").write_text("--method=npid\n--source=cifar10\n--split=train\n")

    def export_of(run_dir, step):
        savedmodel = tmp_path / f"sm_{step}"
        (savedmodel / "assets.extra").mkdir(parents=True, exist_ok=True)
        (savedmodel / "assets.extra" / "export_info.json").write_text(json.dumps({"run_dir": run_dir, "step": step}))
        return str(savedmodel)

    folder = str(run / "checkpoints")
    assert knn.bank_problem(folder, export_of(str(run), 150), "cifar10", "train") is None  # the newest: 150
    assert knn.bank_problem(folder, export_of(str(run), 100), "cifar10", "train") == (
        f"{export_of(str(run), 100)} holds the encoder of step 100 but {folder}/ckpt-150 the bank of step 150: give "
        f"--checkpoint={folder}/ckpt-100, or export step 150 (python -m exemplar_tf.export --run_dir={run})")
    assert knn.bank_problem(f"{folder}/ckpt-100", export_of(str(run), 100), "cifar10", "train") is None
    other = knn.bank_problem(folder, export_of(str(tmp_path / "other"), 150), "cifar10", "train")
    assert other.startswith(f"{tmp_path / 'sm_150'} was exported from the run {tmp_path / 'other'}, not from {run}")
    # The same directory started over (--overwrite): its new run has another id than the export's.
    (run / rundir.RUN_ID_FILE).write_text("b" * 32 + "\n")
    savedmodel = export_of(str(run), 150)
    info_path = os.path.join(savedmodel, "assets.extra", "export_info.json")
    with open(info_path, "w") as file:
        json.dump({"run_dir": str(run), "step": 150, "run_id": "a" * 32}, file)
    assert knn.bank_problem(folder, savedmodel, "cifar10", "train") == (
        f"{savedmodel} was exported from an earlier run in {run}, started over since (the export's run_id "
        f"{'a' * 32}, the directory's {'b' * 32}); classify with the SavedModel's codes (leave out --checkpoint)")
    with open(info_path, "w") as file:
        json.dump({"run_dir": str(run), "step": 150, "run_id": "b" * 32}, file)
    assert knn.bank_problem(folder, savedmodel, "cifar10", "train") is None


def test_program_with_savedmodel_codes_and_with_a_checkpoint_bank_agree(tmp_path):
    rng = np.random.default_rng(4)
    colours = np.array([[220, 30, 30], [30, 200, 30], [30, 30, 220]])
    for split, count in (("train", 8), ("test", 4)):
        for c in range(3):
            os.makedirs(tmp_path / "images" / split / f"c{c}")
            for i in range(count):
                image = np.clip(colours[c] + rng.integers(-40, 40, (36, 36, 3)), 0, 255).astype(np.uint8)
                tf.io.write_file(str(tmp_path / "images" / split / f"c{c}" / f"{i}.png"), tf.io.encode_png(image))
    tf.keras.utils.set_random_seed(0)
    encoder = build_encoder("small", input_size=32, mean_rgb=(0.5, 0.5, 0.5))
    head = ProjectionHead(128)
    head.build((None, encoder.representation_dim))
    model_path = export.export_encoder(encoder, head, export_dir_base=str(tmp_path / "sm"), name="t",
                                       percentiles=[1.0, 1.0, 1.0])
    spec = f"folder:{tmp_path / 'images'}"
    train = savedmodel.SavedModelFeatures(model_path).extract(spec, "train", "embedding")
    bank = MemoryBank(24, 128)
    bank.bank.assign(tf.gather(train.features, np.argsort(train.indices)))  # row i = training image with index i
    tf.train.Checkpoint(bank=bank).save(str(tmp_path / "ckpt" / "ckpt"))
    bank_file = next((tmp_path / "ckpt").glob("*.data-*"))
    bank_bytes = bank_file.read_bytes()

    def run(*extra):
        result = subprocess.run([sys.executable, "-m", "exemplar_tf.knn", f"--savedmodel={model_path}",
                                 f"--train={spec}", f"--test={spec}", "--k=5", *extra],
                                cwd=REPO, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout.strip().splitlines()[-1])

    from_codes = run()
    from_bank = run(f"--checkpoint={tmp_path / 'ckpt'}")
    assert from_codes["bank"] == "savedmodel" and from_bank["bank"] == "checkpoint"
    assert from_codes["train"] == from_bank["train"] == 24 and from_codes["test"] == 12
    assert from_codes["top1"] == from_bank["top1"] > 0.9
    assert bank_file.read_bytes() == bank_bytes
