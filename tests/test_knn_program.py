"""The knn program's output: a human line on stderr (with the random baseline beside the trained encoder when
--baseline_savedmodel names one) and the results as the only line on stdout, one JSON document (scripts redirect it
to a .json file); and the library names the programs read without importing TensorFlow are the library's."""
import ast
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from exemplar_tf.data import sources
from exemplar_tf.evaluation import probe, protocols, savedmodel
from exemplar_tf.metrics import knn as knn_metrics
from exemplar_tf.models import ProjectionHead, build_encoder
from exemplar_tf.serving import export

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def module_constants(program: str) -> dict:
    """The literal module-level constants of exemplar_tf/<program>.py, read without importing it (its flags would
    land in this process's absl FLAGS)."""
    tree = ast.parse(open(os.path.join(REPO, "exemplar_tf", f"{program}.py")).read())
    return {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id.isupper()}


def test_the_names_the_programs_read_without_tensorflow_are_the_librarys():
    evaluate = module_constants("evaluate")
    assert evaluate["PROTOCOLS"] == protocols.PROTOCOLS
    assert evaluate["FEATURES"] == tuple(sorted(savedmodel.FEATURE_SIGNATURES))
    assert evaluate["C_GRID"] == tuple(f"{c:g}" for c in probe.C_GRID)
    assert evaluate["MAX_GRID_EXTENSION"] == probe.MAX_GRID_EXTENSION
    knn = module_constants("knn")
    assert (knn["DEFAULT_K"], knn["DEFAULT_TAU"]) == (knn_metrics.DEFAULT_K, knn_metrics.DEFAULT_TAU)


@pytest.fixture(scope="module")
def exports_and_images(tmp_path_factory):
    """(trained, random) small Exemplar-CNN exports <base>/tiny/1, <base>/tiny_random/1, and a folder source of
    three coloured classes (train 8, test 4 per class)."""
    root = tmp_path_factory.mktemp("knn_program")
    rng = np.random.default_rng(4)
    colours = np.array([[220, 30, 30], [30, 200, 30], [30, 30, 220]])
    for split, count in (("train", 8), ("test", 4)):
        for c in range(3):
            os.makedirs(root / "images" / split / f"c{c}")
            for i in range(count):
                image = np.clip(colours[c] + rng.integers(-40, 40, (36, 36, 3)), 0, 255).astype(np.uint8)
                tf.io.write_file(str(root / "images" / split / f"c{c}" / f"{i}.png"), tf.io.encode_png(image))
    paths = []
    for seed, name in ((0, "tiny"), (1, "tiny_random")):
        tf.keras.utils.set_random_seed(seed)
        encoder = build_encoder("small", input_size=32, mean_rgb=(0.5, 0.5, 0.5))
        head = ProjectionHead(128)
        head.build((None, encoder.representation_dim))
        paths.append(export.export_encoder(encoder, head, export_dir_base=str(root / "sm"), name=name,
                                           percentiles=[1.0, 1.0, 1.0]))
    return paths[0], paths[1], f"folder:{root / 'images'}"


def run_knn(*args):
    done = subprocess.run([sys.executable, "-m", "exemplar_tf.knn", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return done


def test_knn_prints_a_human_line_with_the_random_baseline_and_json_alone_on_stdout(exports_and_images):
    trained, random, spec = exports_and_images
    done = run_knn(f"--savedmodel={trained}", f"--train={spec}", f"--test={spec}", "--k=5", "--batch_size=16",
                   "--baseline_savedmodel=auto")
    assert len(done.stdout.splitlines()) == 1
    report = json.loads(done.stdout)
    assert report["train"] == 24 and report["test"] == 12 and report["bank"] == "savedmodel"
    assert report["random_baseline"]["savedmodel"] == random and report["random_baseline"]["train"] == 24
    assert report["gain_over_random"] == pytest.approx(report["top1"] - report["random_baseline"]["top1"])
    human = done.stderr.strip().splitlines()[-1]
    assert human.startswith("kNN (k=5, tau=0.07, 12 queries, 24 training images): top-1 ")
    assert f"random baseline top-1 {100 * report['random_baseline']['top1']:.2f}%" in human
    assert f"gain over random {100 * report['gain_over_random']:+.2f} points" in human
    # TensorFlow's start-up and log lines stay off the console: what is left is the progress bars and the line
    assert not [line for line in done.stderr.splitlines()
                if line.startswith(("I0000", "W0000", "E0000", "WARNING:", "INFO:"))], done.stderr


def test_knn_without_a_baseline_says_so_and_refuses_a_baseline_of_another_architecture(exports_and_images, tmp_path):
    trained, _, spec = exports_and_images
    done = run_knn(f"--savedmodel={trained}", f"--train={spec}", f"--test={spec}", "--k=5", "--max_train=9")
    report = json.loads(done.stdout)
    assert report["random_baseline"] is None and report["gain_over_random"] is None and report["train"] == 9
    assert done.stderr.strip().splitlines()[-1].endswith("; no random baseline (--baseline_savedmodel)")
    other = tmp_path / "other" / "1"
    os.makedirs(other / "assets.extra")
    (other / export.INFO_PATH).write_text(json.dumps({"arch": "medium", "input_size": 32}))
    refused = subprocess.run([sys.executable, "-m", "exemplar_tf.knn", f"--savedmodel={trained}", f"--train={spec}",
                              f"--test={spec}", f"--baseline_savedmodel={other}"],
                             cwd=REPO, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.strip().splitlines() == [
        f"Error: the random baseline {other} has arch=medium but {trained} has arch=small; "
        "pass --baseline_savedmodel=<random export of the same arch>"]


def test_knn_on_the_representation_below_the_head_matches_the_library(exports_and_images, tmp_path):
    """--output=representation classifies the export's `representation` (not the embedding): with a head that maps
    every image to the same code the embedding's kNN is blind (top-1 1/3) while the representation's equals
    knn_accuracy on those features in process; a memory bank (--checkpoint) holds embeddings and is refused."""
    trained, _, spec = exports_and_images
    tf.keras.utils.set_random_seed(0)
    encoder = build_encoder("small", input_size=32, mean_rgb=(0.5, 0.5, 0.5))
    head = ProjectionHead(128)
    head.build((None, encoder.representation_dim))
    head.linear.kernel.assign(tf.zeros_like(head.linear.kernel))  # every code the same: normalise(bias)
    head.linear.bias.assign(tf.ones_like(head.linear.bias))
    blind = export.export_encoder(encoder, head, export_dir_base=str(tmp_path), name="blind", percentiles=[1.0] * 3)
    report = json.loads(run_knn(f"--savedmodel={blind}", f"--train={spec}", f"--test={spec}", "--k=5",
                                "--output=representation").stdout)
    model = savedmodel.SavedModelFeatures(blind)
    train, test = (model.extract(spec, split, key="representation") for split in ("train", "test"))
    expected = knn_metrics.knn_accuracy(train.features, train.labels, test.features, test.labels, k=5, num_classes=3)
    assert report["output"] == "representation" and report["top1"] == pytest.approx(expected["top1"])
    embedded = json.loads(run_knn(f"--savedmodel={blind}", f"--train={spec}", f"--test={spec}", "--k=5").stdout)
    assert embedded["output"] == "embedding" and embedded["top1"] == pytest.approx(1 / 3)
    assert report["top1"] > 0.6  # flat colours: the representation separates them
    refused = subprocess.run([sys.executable, "-m", "exemplar_tf.knn", f"--savedmodel={trained}", f"--train={spec}",
                              f"--test={spec}", "--checkpoint=runs/x", "--output=representation"],
                             cwd=REPO, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.strip().splitlines() == [
        "Error: --checkpoint: the memory bank holds embeddings; --output=representation cannot be compared against it"]
    flat = os.path.join(os.path.dirname(spec.partition(":")[2]), "flat")  # the classes without split folders
    if not os.path.exists(flat):
        shutil.copytree(os.path.join(spec.partition(":")[2], "train"), flat)
    same = subprocess.run([sys.executable, "-m", "exemplar_tf.knn", f"--savedmodel={trained}", f"--train=folder:{flat}",
                           f"--test=folder:{flat}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert same.returncode == 2 and same.stdout == ""
    expected = sources.same_images_problem(f"folder:{flat}", "train", f"folder:{flat}", "test")
    assert expected and same.stderr.strip().splitlines() == [f"Error: {expected}"]
    fewer = os.path.join(os.path.dirname(flat), "fewer")  # the test images of all but the first class
    if not os.path.exists(fewer):
        test_root = os.path.join(spec.partition(":")[2], "test")
        for name in sorted(os.listdir(test_root))[1:]:
            shutil.copytree(os.path.join(test_root, name), os.path.join(fewer, name))
    other = subprocess.run([sys.executable, "-m", "exemplar_tf.knn", f"--savedmodel={trained}",
                            f"--train=folder:{flat}", f"--test=folder:{fewer}"],
                           cwd=REPO, capture_output=True, text=True, timeout=300)
    assert other.returncode == 2 and other.stdout == ""
    expected = sources.class_names_problem(f"folder:{flat}", "train", f"folder:{fewer}", "test")
    assert expected and other.stderr.strip().splitlines() == [f"Error: {expected}"]
    subset = subprocess.run([sys.executable, "-m", "exemplar_tf.knn", f"--savedmodel={trained}", f"--train={spec}",
                             f"--test={spec}", "--checkpoint=runs/x", "--max_train=10"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert subset.returncode == 2 and subset.stdout == ""
    assert subset.stderr.strip().splitlines() == [
        "Error: --max_train: with --checkpoint the neighbours are the whole memory bank, one row per training image "
        "(the random baseline would see a subset); leave out one of the two"]
