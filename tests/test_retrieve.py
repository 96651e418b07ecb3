"""Retrieval end to end on a tiny folder with a tiny export: index file, thumbnails, HTML, PNG grid."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from exemplar_tf.evaluation import retrieval
from exemplar_tf.models import ProjectionHead, build_encoder
from exemplar_tf.serving import export

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K = 3


def lines_in_order(out: str, *starts: str) -> None:
    """Asserts that a line of `out` (progress bar redraws are lines) begins with each of `starts`, in this order."""
    lines = out.splitlines()
    found = [next((i for i, line in enumerate(lines) if line.startswith(start)), None) for start in starts]
    assert None not in found and found == sorted(found), f"expected lines starting with {starts} in order:\n{out}"


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    tf.keras.utils.set_random_seed(0)
    encoder = build_encoder("small", input_size=32, mean_rgb=(0.5, 0.5, 0.5))
    head = ProjectionHead(128)
    head.build((None, encoder.representation_dim))
    base = tmp_path_factory.mktemp("savedmodels")
    return export.export_encoder(encoder, head, export_dir_base=str(base), name="tiny",
                                 percentiles=[1.0, 1.0, 1.0])


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """index/: 9 random images of two sizes in two sub-folders; queries/: exact copies of index images 2 and 7."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    index_paths = []
    for i in range(9):
        shape = (40, 40, 3) if i % 3 else (30, 52, 3)
        path = root / "index" / f"part{i % 2}" / f"img{i}.png"
        os.makedirs(path.parent, exist_ok=True)
        tf.io.write_file(str(path), tf.io.encode_png(rng.integers(0, 256, shape, dtype=np.uint8)))
        index_paths.append(str(path))
    index_paths.sort()
    os.makedirs(root / "queries")
    for name, source in (("a.png", index_paths[2]), ("b.png", index_paths[7])):
        tf.io.write_file(str(root / "queries" / name), tf.io.read_file(source))
    return root, index_paths


def test_nearest_matches_numpy_cosine_ranking():
    rng = np.random.default_rng(1)
    index, queries = rng.normal(size=(50, 8)), rng.normal(size=(7, 8))
    rows, similarities = retrieval.nearest(index, queries, k=5, batch=3)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    cosine = unit(queries) @ unit(index).T
    np.testing.assert_array_equal(rows, np.argsort(-cosine, axis=1)[:, :5])
    np.testing.assert_allclose(similarities, np.sort(cosine, axis=1)[:, ::-1][:, :5], atol=1e-6)
    assert retrieval.nearest(index[:2], queries, k=5)[0].shape == (7, 2)


def test_results_grid_places_query_then_neighbours():
    query = [np.full((64, 64, 3), 10, np.uint8)]
    cells = [[np.full((64, 64, 3), 20 + j, np.uint8) for j in range(2)]]
    grid = retrieval.results_grid(query, cells)
    assert grid.shape == (68, 3 * 68 + 4, 3)
    assert grid[0, 0, 0] == 10 and grid[0, 68 + 4, 0] == 20 and grid[0, 2 * 68 + 4, 0] == 21
    assert grid[0, 64, 0] == 255  # gap


def test_folder_end_to_end_finds_exact_copies_and_writes_every_output(tiny_export, folders, tmp_path, capsys):
    root, index_paths = folders
    out = tmp_path / "out"
    summary = retrieval.retrieve(tiny_export, str(root / "index"), str(root / "queries"), str(out), k=K,
                                batch_size=4)
    assert summary["index_images"] == 9 and summary["queries"] == 2
    assert [rows[0] for rows in summary["neighbours"]] == [2, 7]  # each query is a copy of that index image
    assert all(sims[0] == pytest.approx(1.0, abs=2e-3) for sims in summary["similarities"])
    assert summary["bytes_per_image"] == 128 * 2 and summary["codes_per_second"] > 0

    with np.load(out / "index.npz") as index:
        assert index["codes"].dtype == np.float16 and index["codes"].shape == (9, 128)
        assert index["ids"].tolist() == index_paths
        np.testing.assert_allclose(np.linalg.norm(index["codes"].astype(np.float32), axis=1), 1.0, atol=2e-3)

    page = (out / "results.html").read_text()
    sources = re.findall(r"<img src='([^']+)'>", page)
    assert len(sources) == 2 * (1 + K)
    for src in sources:
        assert not os.path.isabs(src) and os.path.exists(out / src), src
    assert max(tf.io.decode_png(tf.io.read_file(str(out / sources[0]))).shape[:2]) <= retrieval.THUMB_SIZE
    grid = tf.io.decode_png(tf.io.read_file(str(out / "neighbours.png"))).numpy()
    assert grid.shape == (2 * 68, (1 + K) * 68 + 4, 3)
    # a status line before each phase, progress bars over the passes that write thumbnails (issue 32 item 8)
    lines_in_order(capsys.readouterr().err, f"Loading the SavedModel {tiny_export} ...",
                   f"Indexing {root / 'index'} ...", f"Querying with {root / 'queries'} ...",
                   "Writing the thumbnails of the 2 queries and their ",
                   "query thumbnails: 100%|", "index thumbnails: 100%|",
                   f"Writing {out / 'neighbours.png'} ({(1 + K) * 68 + 4} x {2 * 68} px) ...")


def test_program_prints_speed_and_code_size_with_float32_codes(tiny_export, folders, tmp_path):
    root, _ = folders
    result = subprocess.run(
        [sys.executable, "-m", "exemplar_tf.retrieve", f"--savedmodel={tiny_export}", f"--index={root / 'index'}",
         f"--queries={root / 'queries'}", "--k=2", f"--out={tmp_path / 'out'}", "--codes=float32"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert re.search(r"indexed 9 images at [\d.]+ codes per second; 512 bytes per image", result.stdout)
    with np.load(tmp_path / "out" / "index.npz") as index:
        assert index["codes"].dtype == np.float32
