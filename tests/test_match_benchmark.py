"""The matching benchmark: AP, nearest neighbours, pair scoring, the synthetic suite end to end, Oxford-format
sequences, the report and the program."""
import json
import math
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from exemplar_tf.matching import benchmark, images, report, warps
from exemplar_tf.matching.descriptors import standard_descriptors

FAST = benchmark.Settings(max_regions=150, max_side=320)


@pytest.fixture(scope="module")
def base_images():
    return images.demo_images(1)  # the astronaut photograph


def test_average_precision_of_a_known_ranking():
    distances = np.array([4.0, 1.0, 3.0, 2.0])
    correct = np.array([False, True, True, False])  # ranked: T (1.0), F (2.0), T (3.0), F (4.0)
    precision, recall = benchmark.precision_recall(distances, correct, 2)
    np.testing.assert_allclose(precision, [1, 1 / 2, 2 / 3, 2 / 4])
    np.testing.assert_allclose(recall, [0.5, 0.5, 1.0, 1.0])
    assert benchmark.average_precision(distances, correct, 2) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # two more regions had a correspondence but their matches were wrong: recall stops at 1/2
    assert benchmark.average_precision(distances, correct, 4) == pytest.approx(0.25 * 1 + 0.25 * 2 / 3)
    assert benchmark.average_precision(distances, np.ones(4, bool), 4) == pytest.approx(1.0)
    assert math.isnan(benchmark.average_precision(distances, np.zeros(4, bool), 0))
    assert benchmark.average_precision(np.zeros(0), np.zeros(0, bool), 3) == 0.0


def test_nearest_neighbours_agree_with_brute_force(rng):
    queries, candidates = rng.normal(size=(30, 8)), rng.normal(size=(50, 8))
    indices, distances = benchmark.nearest_neighbours(queries, candidates)
    brute = np.linalg.norm(queries[:, None] - candidates[None], axis=-1)
    np.testing.assert_array_equal(indices, brute.argmin(axis=1))
    np.testing.assert_allclose(distances, brute.min(axis=1), rtol=1e-9)


def test_an_image_matched_against_itself_is_perfect(base_images):
    image, _ = images.shrink(base_images[0], FAST.max_side)
    descriptors = standard_descriptors()
    identity = warps.lighting(1.0, image.shape[:2], None)
    first = benchmark.make_view(image, descriptors, FAST)
    scores = benchmark.evaluate_pair(first, image, identity, descriptors, FAST)
    for name in ("sift", "pixels"):
        name = ("upright", name)
        # image 1 keeps its regions inside the common part (here: not touching the border); image 2 picks its
        # most stable regions among those, so it may hold a few more
        assert scores[name]["regions1"] == scores[name]["correspondences"] > 50
        assert scores[name]["regions2"] >= scores[name]["regions1"]
        assert scores[name]["average_precision"] > 0.99


@pytest.fixture(scope="module")
def synthetic_results(base_images):
    return benchmark.run_synthetic(base_images, standard_descriptors(), levels=(1, 2), settings=FAST, seed=0,
                                   progress=False)


def test_the_synthetic_suite_scores_every_pair_and_descriptor(base_images, synthetic_results):
    assert len(synthetic_results) == len(base_images) * len(warps.FAMILIES) * 2 * 2
    keys = {(r.image, r.family, r.level, r.descriptor) for r in synthetic_results}
    assert len(keys) == len(synthetic_results)
    for result in synthetic_results:
        assert 0.0 <= result.average_precision <= 1.0
        assert result.correct <= result.correspondences <= result.regions1 <= FAST.max_regions
        assert result.strength == warps.FAMILIES[result.family].strengths[result.level - 1]
    # mild changes keep most regions matchable
    mild = [r for r in synthetic_results if r.family in ("lighting", "nonlinear") and r.level == 1]
    assert np.mean([r.correspondences / r.regions1 for r in mild]) > 0.5


def test_sift_beats_raw_pixels_under_rotation(synthetic_results):
    def mean_ap(name):
        return np.mean([r.average_precision for r in synthetic_results
                        if r.family == "rotation" and r.descriptor == name])

    assert mean_ap("sift") > mean_ap("pixels") + 0.02


def test_the_same_seed_gives_the_same_numbers(base_images, synthetic_results):
    again = benchmark.run_synthetic(base_images[:1], standard_descriptors(), families=("perspective", "nonlinear"),
                                    levels=(2,), settings=FAST, seed=0, progress=False)
    earlier = {(r.family, r.descriptor): r for r in synthetic_results if r.image == "0" and r.level == 2}
    for result in again:
        assert result == earlier[(result.family, result.descriptor)]
    with pytest.raises(ValueError, match="level 5"):
        benchmark.family_levels(["blur"], [5])


def write_oxford_folder(folder, image: np.ndarray) -> list[np.ndarray]:
    """An Oxford-layout sequence of the photograph: img1.ppm .. img6 (img3 gray .pgm) and H1to2p .. H1to6p from
    known homographies (small turn, zoom + tilt, 50 degree turn, zoom, tilt); returns the homographies."""
    height, width = image.shape[:2]
    shape = (height, width)
    tilt = warps.perspective(0.04, shape, np.random.default_rng(5)).matrix
    homographies = [warps.rotation(8.0, shape, None).matrix, warps.zoom(1.3, shape, None).matrix @ tilt,
                    warps.rotation(50.0, shape, None).matrix, warps.zoom(1.15, shape, None).matrix,
                    warps.perspective(0.06, shape, np.random.default_rng(6)).matrix]
    os.makedirs(folder, exist_ok=True)
    cv2.imwrite(os.path.join(folder, "img1.ppm"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    extensions = (".ppm", ".pgm", ".ppm", ".png", ".ppm")
    for k, (matrix, extension) in enumerate(zip(homographies, extensions), start=2):
        warped = cv2.warpPerspective(image, matrix, (width, height))
        if extension == ".pgm":
            warped = cv2.cvtColor(warped, cv2.COLOR_RGB2GRAY)
        else:
            warped = cv2.cvtColor(warped, cv2.COLOR_RGB2BGR)
        cv2.imwrite(os.path.join(folder, f"img{k}{extension}"), warped)
        np.savetxt(os.path.join(folder, f"H1to{k}p"), matrix)
    return homographies


@pytest.fixture(scope="module")
def oxford_root(tmp_path_factory, base_images):
    root = tmp_path_factory.mktemp("oxford")
    image, _ = images.shrink(base_images[0], 320)
    homographies = write_oxford_folder(str(root / "scene"), image)
    return root, homographies


def test_oxford_folders_are_parsed_with_their_homographies(oxford_root):
    root, homographies = oxford_root
    for location in (root / "scene", root):  # the sequence itself, or a folder of sequences
        (sequence,) = images.load_sequences(str(location))
        assert sequence.name == "scene"
        assert [image.shape for image in sequence.images] == [(320, 320, 3)] * 6
        for parsed, written in zip(sequence.homographies, homographies):
            np.testing.assert_allclose(parsed, written, rtol=1e-12)
    gray = sequence.images[2]
    np.testing.assert_array_equal(gray[..., 0], gray[..., 2])
    (root / "broken").mkdir()
    cv2.imwrite(str(root / "broken" / "img1.png"), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="needs img2 and H1to2p"):
        images.load_sequence(str(root / "broken"))


def test_shrinking_a_sequence_rewrites_the_homographies(oxford_root):
    root, homographies = oxford_root
    sequence = images.load_sequence(str(root / "scene"))
    small = images.shrink_sequence(sequence, 200)
    assert small.images[0].shape == (200, 200, 3)
    point = np.array([[150.0, 90.0]])
    to_small = warps.Homography(images.shrink(sequence.images[0], 200)[1])
    mapped_then_shrunk = to_small.map_points(warps.Homography(homographies[1]).map_points(point))
    shrunk_then_mapped = warps.Homography(small.homographies[1]).map_points(to_small.map_points(point))
    np.testing.assert_allclose(shrunk_then_mapped, mapped_then_shrunk, atol=1e-9)


def test_oxford_pairs_are_scored(oxford_root):
    root, _ = oxford_root
    results = benchmark.run_oxford(images.load_sequences(str(root / "scene")), standard_descriptors(),
                                   settings=FAST, progress=False)
    assert [(r.family, r.level, r.descriptor) for r in results] == [
        ("oxford:scene", k, name) for k in range(2, 7) for name in ("sift", "pixels")]
    assert all(r.correspondences > 20 and r.orientation == "upright" for r in results)
    assert results[0].average_precision > 0.5


def test_summary_averages_over_images_and_skips_pairs_without_correspondences():
    def result(image, descriptor, ap):
        return benchmark.PairResult("synthetic", image, "blur", 1, 1.0, descriptor, "upright", ap, 10, 12 + int(image),
                                    5, 3)

    rows = report.summarise([result("0", "sift", 0.5), result("1", "sift", 0.7), result("2", "sift", float("nan")),
                             result("0", "pixels", 0.2), result("1", "pixels", 0.4),
                             result("2", "pixels", float("nan"))])
    assert len(rows) == 1 and rows[0]["pairs"] == 2
    assert rows[0]["mean_ap"] == pytest.approx({"sift": 0.6, "pixels": 0.3})
    assert (rows[0]["regions1"], rows[0]["regions2"], rows[0]["correspondences"]) == (10, 13, 5)  # mean of 12, 13, 14
    table = report.format_table(rows)
    assert "blur" in table and "0.600" in table and "mean synthetic" in table
    header, _, line = table.splitlines()[:3]
    assert header.split()[:8] == ["family", "level", "strength", "orient", "pairs", "regions1", "regions2", "corr"]
    assert line.split()[:8] == ["blur", "1", "1", "upright", "2", "10", "13", "5"]


def test_the_program_prints_the_table_and_writes_json_and_plots(tmp_path, oxford_root):
    root, _ = oxford_root
    out_dir = tmp_path / "out"
    completed = subprocess.run(
        [sys.executable, "-m", "exemplar_tf.match", "--num_images=1", "--families=rotation,blur", "--strengths=1",
         "--max_regions=100", "--max_side=240", f"--oxford={root / 'scene'}", f"--out_dir={out_dir}"],
        capture_output=True, text=True, timeout=120, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "family" in completed.stdout and "rotation" in completed.stdout and "oxford:scene" in completed.stdout
    document = json.loads((out_dir / "match.json").read_text())
    assert {row["family"] for row in document["summary"]} == {"rotation", "blur", "oxford:scene"}
    assert document["means"].keys() == {"synthetic", "oxford"}
    assert document["means"]["synthetic"].keys() == {"upright"}  # synthetic: upright only
    assert document["means"]["oxford"].keys() == {"dominant", "upright"}  # oxford: both by default
    assert len(document["pairs"]) == 2 * 2 + 5 * 2 * 2 and document["config"]["max_regions"] == 100
    turned = {(p["level"], p["orientation"]): p["average_precision"] for p in document["pairs"]
              if p["benchmark"] == "oxford" and p["descriptor"] == "sift"}
    assert turned[4, "dominant"] > 0.5 > turned[4, "upright"] + 0.2  # img4 is turned by 50 degrees
    for name in ("synthetic.png", "oxford.png"):
        assert cv2.imread(str(out_dir / name)) is not None


def test_an_out_dir_that_is_a_file_is_refused_before_the_benchmark(tmp_path):
    taken = tmp_path / "match.txt"
    taken.write_text("a file the user made\n")
    completed = subprocess.run(
        [sys.executable, "-m", "exemplar_tf.match", "--num_images=1", "--families=rotation", "--strengths=1",
         f"--out_dir={taken}"],
        capture_output=True, text=True, timeout=120, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert completed.returncode == 2 and completed.stdout == "", completed.stderr[-2000:]  # no table: not run
    assert completed.stderr.strip().splitlines()[-1] == f"Error: {taken}: File exists"
    assert taken.read_text() == "a file the user made\n"
