"""Linear-probe evaluation through SavedModels: batching, splits, the probe, protocols, the program."""
import hashlib
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import tensorflow as tf

from exemplar_tf.evaluation import probe, protocols, savedmodel
from exemplar_tf.models import ProjectionHead, build_encoder
from exemplar_tf.serving import export

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLOURS = np.array([[230, 30, 30], [30, 200, 40], [40, 60, 220]], np.uint8)  # class -> dominant colour


def coloured_images(labels, size, seed):
    """uint8 [n,size,size,3]: class colour plus noise, so even a random encoder separates the classes."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(-40, 40, (len(labels), size, size, 3))
    return np.clip(COLOURS[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)


def fake_source(labels, size, seed):
    labels = np.asarray(labels, np.int64)
    data = {"image": coloured_images(labels, size, seed), "label": labels, "index": np.arange(len(labels))}
    return types.SimpleNamespace(dataset=tf.data.Dataset.from_tensor_slices(data), num_examples=len(labels),
                                 num_classes=3, name="fake")


@pytest.fixture
def fake_sources(monkeypatch):
    """load_source stand-in: 'train' folds of 18 images (fold k has its own pixels), 'test' of 24. Records calls."""
    calls = []

    def load_source(spec, split, *, data_dir=None, fold=None):
        calls.append((spec, split, fold))
        if split == "test":
            return fake_source(np.arange(24) % 3, 40, seed=99)
        return fake_source(np.arange(18) % 3, 40, seed=0 if fold is None else fold + 1)

    monkeypatch.setattr(savedmodel.sources, "load_source", load_source)
    return calls


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """(trained, random) exports of the small Exemplar-CNN under <base>/tiny/1 and <base>/tiny_random/1."""
    base = tmp_path_factory.mktemp("savedmodels")
    paths = []
    for seed, name in ((0, "tiny"), (1, "tiny_random")):
        tf.keras.utils.set_random_seed(seed)
        encoder = build_encoder("small", input_size=32, mean_rgb=(0.5, 0.5, 0.5))
        head = ProjectionHead(128)
        head.build((None, encoder.representation_dim))
        percentiles = export.measure_percentiles(encoder, coloured_images(np.arange(6) % 3, 40, seed=5))
        paths.append(export.export_encoder(encoder, head, export_dir_base=str(base), name=name,
                                           percentiles=percentiles))
    return tuple(paths)


def _snapshot(path):
    """Every variable value of an export plus a hash of every file in it."""
    reader = tf.train.load_checkpoint(os.path.join(path, "variables", "variables"))
    values = {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map() if "VARIABLE_VALUE" in key}
    files = {}
    for root, _, names in os.walk(path):
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                files[os.path.relpath(os.path.join(root, name), path)] = hashlib.sha256(f.read()).hexdigest()
    return values, files


# ---------------------------------------------------------------- pieces


def test_same_size_batches_split_on_size_changes_and_batch_size():
    shapes = [(4, 4)] * 5 + [(6, 5)] + [(4, 4)] * 2
    examples = [{"image": np.full((*s, 3), i, np.uint8), "label": i, "index": i} for i, s in enumerate(shapes)]
    batches = list(savedmodel.same_size_batches(examples, batch_size=2))
    assert [b["image"].shape for b in batches] == [(2, 4, 4, 3), (2, 4, 4, 3), (1, 4, 4, 3), (1, 6, 5, 3),
                                                   (2, 4, 4, 3)]
    np.testing.assert_array_equal(np.concatenate([b["index"] for b in batches]), np.arange(8))


def test_resize_images_makes_every_image_the_eval_size():
    dataset = tf.data.Dataset.from_generator(
        lambda: iter([{"image": np.zeros((20, 30, 3), np.uint8)}, {"image": np.full((50, 10, 3), 255, np.uint8)}]),
        output_signature={"image": tf.TensorSpec([None, None, 3], tf.uint8)})
    images = [e["image"] for e in savedmodel.resize_images(dataset, 16).as_numpy_iterator()]
    assert [i.shape for i in images] == [(16, 16, 3), (16, 16, 3)] and images[1].min() == 255
    assert savedmodel.resize_images(dataset, 0) is dataset


def test_per_class_subset_draws_the_requested_count_per_class():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 7)
    rows = protocols.per_class_subset(labels, 5, np.random.default_rng(0))
    assert np.bincount(labels[rows]).tolist() == [5, 3, 5]
    assert len(set(rows)) == len(rows)
    again = protocols.per_class_subset(labels, 5, np.random.default_rng(0))
    other = protocols.per_class_subset(labels, 5, np.random.default_rng(1))
    np.testing.assert_array_equal(rows, again)
    assert not np.array_equal(rows, other)


def test_holdout_split_is_stratified_and_disjoint():
    labels = np.array([0] * 10 + [1] * 5 + [2] * 1)
    fit, held = probe.holdout_split(labels, 0.2, np.random.default_rng(0))
    assert set(fit).isdisjoint(held) and sorted(np.concatenate([fit, held])) == list(range(16))
    assert np.bincount(labels[held], minlength=3).tolist() == [2, 1, 0]  # a lone image stays in fit


def _blobs(n_per_class, seed, shift=3.0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(4), n_per_class)
    centres = rng.normal(size=(4, 20)) * shift
    return savedmodel.Extracted((centres[labels] + rng.normal(size=(len(labels), 20))).astype(np.float32), labels,
                              np.arange(len(labels)))


def test_linear_probe_separates_blobs_and_picks_c_from_the_grid():
    train, test = _blobs(30, seed=0), _blobs(30, seed=0)
    test.features = test.features + np.random.default_rng(1).normal(size=test.features.shape).astype(np.float32)
    result = probe.linear_probe(train, test)
    assert result.accuracy >= 0.95 and result.converged
    assert result.c in result.validation and set(probe.C_GRID[:2]) <= set(result.validation)
    assert result.fits[-1].held_out_accuracy is None and result.fits[-1].c == result.c


class FractionCorrect:
    """Stand-in SVM: on features [true label, u ~ U(0,1)] it is right where u < fraction."""

    def __init__(self, fraction, converged=True):
        self.fraction, self.converged = fraction, converged
        self.newton_iterations, self.cg_iterations = 3, 17

    def predict(self, features):
        labels = features[:, 0].astype(int)
        return np.where(features[:, 1] < self.fraction, labels, (labels + 1) % 4)


def _known_accuracy_problem():
    labels = np.repeat(np.arange(4), 250)
    features = np.stack([labels, (np.arange(1000) % 250) / 250.0], axis=1).astype(np.float32)
    return savedmodel.Extracted(features, labels, np.arange(1000))


def _fake_fit(monkeypatch, accuracy_of, fitted, converged=True):
    def fake_fit(features, labels, c, init, num_classes):
        fitted.append((c, init))
        return FractionCorrect(accuracy_of(c), converged)

    monkeypatch.setattr(probe, "_fit_svm", fake_fit)


def test_linear_probe_stops_the_grid_once_held_out_accuracy_falls(monkeypatch, capsys):
    # Held-out accuracy is a known function of C: rises, then falls at the third C.
    accuracy_at = dict(zip(probe.C_GRID, (0.5, 0.7, 0.6, 0.9, 0.9)))
    fitted = []
    _fake_fit(monkeypatch, accuracy_at.get, fitted)
    data = _known_accuracy_problem()
    result = probe.linear_probe(data, data, c_values=probe.C_GRID[::-1])  # any order: walked upwards
    assert [c for c, _ in fitted] == [*probe.C_GRID[:3], probe.C_GRID[1]]  # 3 on the grid, then the refit
    assert fitted[0][1] is None and all(init is not None for _, init in fitted[1:])  # warm starts
    assert result.c == probe.C_GRID[1] and sorted(result.validation) == sorted(probe.C_GRID[:3])
    assert result.validation[probe.C_GRID[1]] == pytest.approx(0.7, abs=0.02) and result.edge is None
    log = capsys.readouterr().err.splitlines()  # one progress line per fit, naming its C and the feature size
    assert len(log) == 4 and all(line.startswith("probe: ") and "800 x 2 features" in line for line in log[:3])
    assert all("3 Newton / 17 CG iterations, converged" in line for line in log)
    assert f"refit with C={probe.C_GRID[1]:g}" in log[3] and "1000 x 2 features" in log[3]


def test_best_c_on_the_lower_edge_extends_the_grid_downwards_a_bounded_number_of_times(monkeypatch, capsys):
    fitted = []
    _fake_fit(monkeypatch, lambda c: 0.9 - 0.1 * np.log10(c / 1e-7), fitted)  # smaller C is always better
    data = _known_accuracy_problem()
    result = probe.linear_probe(data, data, c_values=(0.001, 0.01, 0.1), max_extension=2)
    assert sorted(result.validation) == pytest.approx([1e-5, 1e-4, 1e-3, 1e-2])  # 0.1 fell: the walk stopped
    assert result.c == pytest.approx(1e-5) and result.edge == "smallest"
    err = capsys.readouterr().err
    assert err.count("WARNING: the best held-out C=") == 2 and "extending the grid to C=0.0001" in err
    assert "still the smallest C tried after extending the grid 2 times" in err


def test_extension_stops_once_the_edge_no_longer_wins_and_extends_upwards_too(monkeypatch, capsys):
    peak = 0.3  # held-out accuracy peaks at C = 0.3, above the grid
    fitted = []
    _fake_fit(monkeypatch, lambda c: 0.9 - 0.1 * abs(np.log10(c / peak)), fitted)
    data = _known_accuracy_problem()
    result = probe.linear_probe(data, data, c_values=(0.001, 0.01, 0.1))
    assert sorted(result.validation) == pytest.approx([0.001, 0.01, 0.1, 1.0])
    assert result.c == pytest.approx(0.1) and result.edge is None
    assert "the best held-out C=0.1 is the largest C tried; extending the grid to C=1" in capsys.readouterr().err


def test_unconverged_fits_are_reported_not_hidden(monkeypatch, capsys):
    _fake_fit(monkeypatch, lambda c: 0.5, [], converged=False)
    data = _known_accuracy_problem()
    result = probe.linear_probe(data, data, c_values=(0.01,), max_extension=0)
    assert not result.converged and not any(fit.converged for fit in result.fits)
    assert "NOT CONVERGED" in capsys.readouterr().err
    report = protocols.results_json("x", "folder", protocols.ProtocolOptions(),
                                   protocols.ProtocolResult("m", [0.5], [0.01], [1000], 1000, [result]), None)
    assert report["trained"]["converged"] is False and report["trained"]["fits"][0][0]["converged"] is False


def test_features_reach_the_svm_as_exported_unless_standardize(monkeypatch):
    seen = []

    def recording_fit(features, labels, c, init, num_classes):
        seen.append(features.copy())
        return FractionCorrect(0.5)

    monkeypatch.setattr(probe, "_fit_svm", recording_fit)
    data = _known_accuracy_problem()
    data.features = data.features * np.array([5.0, 0.01], np.float32)  # percentile-scaled columns, say
    probe.linear_probe(data, data, c_values=(0.01,), max_extension=0)
    np.testing.assert_array_equal(seen[-1], data.features)  # the refit sees the exported features unchanged
    seen.clear()
    probe.linear_probe(data, data, c_values=(0.01,), max_extension=0, standardize=True)
    np.testing.assert_allclose(seen[-1].mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(seen[-1].std(axis=0), 1.0, atol=1e-4)


def test_linear_probe_on_shuffled_labels_is_near_chance():
    train, test = _blobs(40, seed=2), _blobs(40, seed=2)
    train.labels = np.random.default_rng(3).permutation(train.labels)
    test.labels = np.random.default_rng(4).permutation(test.labels)
    assert probe.linear_probe(train, test).accuracy < 0.45  # chance 0.25, 160 test images


def test_protocol_defaults_and_random_baseline_lookup(tmp_path):
    assert [protocols.protocol_for(s) for s in ("stl10", "stl10_binary:/d", "cifar10", "caltech101", "folder:/x",
                                               "demo_labelled")] == ["stl10", "stl10", "cifar10", "caltech101",
                                                                     "folder", "folder"]
    assert protocols.random_baseline_path(str(tmp_path / "m" / "3")) is None
    assert f"no {tmp_path / 'm_random'}/<version> exists" in protocols.missing_baseline_message(
        str(tmp_path / "m" / "3"))
    for version in ("1", "4", "tmp"):
        os.makedirs(tmp_path / "m_random" / version)
    assert protocols.random_baseline_path(str(tmp_path / "m" / "3") + "/") == str(tmp_path / "m_random" / "4")


def test_table_and_json_report_gain_over_random():
    trained = protocols.ProtocolResult("sm/x/2", [0.7, 0.8], [0.01, 0.01], [100, 100], 50)
    baseline = protocols.ProtocolResult("sm/x_random/1", [0.5, 0.5], [0.2, 0.2], [100, 100], 50)
    table = protocols.results_table("stl10", "features", trained, baseline)
    assert "75.00 ± 5.00" in table and "+25.00" in table and "50.00 ± 0.00" in table
    report = protocols.results_json("stl10", "stl10", protocols.ProtocolOptions(), trained, baseline)
    assert report["gain_over_random"] == pytest.approx(0.25) and report["trained"]["accuracies"] == [0.7, 0.8]
    assert "no baseline" in protocols.results_table("stl10", "features", trained, None)


# ---------------------------------------------------------------- protocols through SavedModels


def test_stl10_protocol_probes_each_fold_and_leaves_the_encoder_unchanged(exports, fake_sources):
    before = [_snapshot(path) for path in exports]
    options = protocols.ProtocolOptions(c_values=(0.01, 0.1))
    results = [protocols.run_protocol(path, "stl10", "stl10", options, batch_size=16) for path in exports]
    assert sorted(fold for _, split, fold in fake_sources if split == "train") == sorted(list(range(10)) * 2)
    for result in results:
        assert len(result.accuracies) == 10 and result.num_train == [18] * 10 and result.num_test == 24
        assert result.mean > 0.9  # colours separate even through a random encoder
        assert result.std == pytest.approx(np.std(result.accuracies))
    after = [_snapshot(path) for path in exports]
    for (values_before, files_before), (values_after, files_after) in zip(before, after):
        assert files_before == files_after
        assert values_before.keys() == values_after.keys()
        for key in values_before:
            np.testing.assert_array_equal(values_before[key], values_after[key])


def test_per_class_protocol_draws_the_same_splits_for_every_model(exports, fake_sources, monkeypatch):
    monkeypatch.setitem(protocols.PER_CLASS, "cifar10_400", 4)
    options = protocols.ProtocolOptions(eval_size=32, splits=3, c_values=(0.1,), max_test=12)
    model = savedmodel.SavedModelFeatures(exports[0], batch_size=8)
    drawn = [train.indices.tolist() for train in protocols.training_sets(model, "cifar10_400", "cifar10", options)]
    assert len(drawn) == 3 and all(len(rows) == 12 for rows in drawn) and drawn[0] != drawn[1]
    other = savedmodel.SavedModelFeatures(exports[1], batch_size=8)
    assert drawn == [t.indices.tolist() for t in protocols.training_sets(other, "cifar10_400", "cifar10", options)]
    result = protocols.run_protocol(exports[0], "cifar10_400", "cifar10", options, batch_size=8)
    assert result.num_train == [12, 12, 12] and result.num_test == 12


def test_pyramid_features_come_from_the_pooled_signature(exports, fake_sources):
    model = savedmodel.SavedModelFeatures(exports[0], batch_size=8)
    pyramid = model.extract("caltech101", "test", "pyramid", eval_size=48, max_examples=5)
    quadrants = model.extract("caltech101", "test", "features", eval_size=48, max_examples=5)
    assert pyramid.features.shape == (5, 21 * 256) and quadrants.features.shape == (5, 4 * 256)
    with pytest.raises(ValueError, match="not one of"):
        model(np.zeros((1, 32, 32, 3), np.uint8), "logits")


# ---------------------------------------------------------------- the program


def _image_folder(root, per_class, seed):
    """<root>/<split>/<class>/<i>.png with the coloured classes."""
    for split, count in (("train", per_class), ("test", per_class // 2)):
        images = coloured_images(np.repeat(np.arange(3), count), 36, seed + (split == "test"))
        for i, image in enumerate(images):
            folder = os.path.join(root, split, f"class{i // count}")
            os.makedirs(folder, exist_ok=True)
            tf.io.write_file(os.path.join(folder, f"{i}.png"), tf.io.encode_png(image))


def test_program_finds_the_random_sibling_and_writes_table_and_json(exports, tmp_path):
    _image_folder(tmp_path / "images", per_class=10, seed=0)
    out_json = tmp_path / "reports" / "results.json"  # a folder that does not exist yet: made before the probes
    result = subprocess.run(
        [sys.executable, "-m", "exemplar_tf.evaluate", f"--savedmodel={exports[0]}",
         f"--dataset=folder:{tmp_path / 'images'}", "--c_values=0.01,0.1", f"--out_json={out_json}"],
        cwd=REPO, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert "gain over random" in result.stdout and exports[1] in result.stdout
    report = json.loads(out_json.read_text())
    assert json.loads(result.stdout.strip().splitlines()[-1]) == report  # the same report on stdout
    assert report["protocol"] == "folder" and report["random_baseline"]["savedmodel"] == exports[1]
    assert report["trained"]["num_train"] == [30] and report["trained"]["num_test"] == 15
    assert report["trained"]["accuracy_mean"] > 0.9
    assert report["gain_over_random"] == pytest.approx(report["trained"]["accuracy_mean"]
                                                       - report["random_baseline"]["accuracy_mean"])


def _fake_export(path, **info):
    """A folder with only assets.extra/export_info.json: enough for the baseline lookup and the mismatch check."""
    os.makedirs(os.path.join(path, "assets.extra"))
    with open(os.path.join(path, export.INFO_PATH), "w") as f:
        json.dump(info, f)
    return str(path)


def test_the_random_baseline_is_the_one_of_the_same_run(tmp_path):
    trained = _fake_export(tmp_path / "m" / "3", run_dir="/runs/a", step=100, arch="small", input_size=32)
    own = _fake_export(tmp_path / "m_random" / "1", run_dir="/runs/a", step=0, arch="small", input_size=32)
    _fake_export(tmp_path / "m_random" / "2", run_dir="/runs/b", step=0, arch="small", input_size=32)  # newest
    assert protocols.random_baseline_path(trained) == own
    other_run = _fake_export(tmp_path / "m" / "4", run_dir="/runs/c", step=5, arch="small", input_size=32)
    assert protocols.random_baseline_path(other_run) is None
    assert "from run /runs/c" in protocols.missing_baseline_message(other_run)


def test_a_run_started_over_in_the_same_directory_keeps_each_export_with_its_own_baseline(tmp_path):
    """--overwrite starts a new run in the same run_dir: the old run's exports keep the baseline exported before
    them, not the new run's (a newer version of the same run_dir)."""
    def exported(path, created, step):
        return _fake_export(path, run_dir="/runs/a", step=step, created=created, arch="small", input_size=32)

    first_random = exported(tmp_path / "m_random" / "1", "2026-12-07T10:00:00+0000", 0)
    first = exported(tmp_path / "m" / "1", "2026-12-07T11:00:00+0000", 500)
    second_random = exported(tmp_path / "m_random" / "2", "2026-12-07T12:30:00+0100", 0)  # 11:30 UTC
    second = exported(tmp_path / "m" / "2", "2026-12-07T11:45:00+0000", 500)
    assert protocols.random_baseline_path(first) == first_random
    assert protocols.random_baseline_path(second) == second_random
    legacy = _fake_export(tmp_path / "m" / "3", run_dir="/runs/a", step=9, arch="small", input_size=32)  # no time
    assert protocols.random_baseline_path(legacy) == second_random


def test_a_baseline_of_another_architecture_or_input_size_is_refused(tmp_path):
    trained = _fake_export(tmp_path / "m" / "1", run_dir="/r", arch="medium", input_size=32)
    same = _fake_export(tmp_path / "same" / "1", run_dir="/r", arch="medium", input_size=32)
    arch = _fake_export(tmp_path / "arch" / "1", run_dir="/r", arch="small", input_size=32)
    size = _fake_export(tmp_path / "size" / "1", run_dir="/r", arch="medium", input_size=64)
    assert protocols.baseline_mismatch(trained, same) is None
    assert "has arch=small but" in protocols.baseline_mismatch(trained, arch)
    assert "has input_size=64 but" in protocols.baseline_mismatch(trained, size)
    result = subprocess.run([sys.executable, "-m", "exemplar_tf.evaluate", f"--savedmodel={trained}",
                             f"--baseline_savedmodel={arch}", "--dataset=demo_labelled"],
                            cwd=REPO, capture_output=True, text=True, timeout=180)
    assert result.returncode == 2  # bad input: one line, as every program's
    assert result.stderr.strip().splitlines()[-1] == f"Error: {protocols.baseline_mismatch(trained, arch)}"
