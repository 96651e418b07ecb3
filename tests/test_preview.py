"""Preview grid: layout, first column = the seed patches, and the program writes a PNG of the expected size."""
import subprocess
import sys

import matplotlib.image
import numpy as np

from exemplar_tf.augment import preview
from exemplar_tf.data import patches, sources


def test_grid_layout_and_cells(rng):
    cells = rng.random((2, 3, 4, 4, 3))
    grid = preview.grid_image(cells, zoom=2, gap=1)
    assert grid.shape == (2 * (8 + 1) + 1, 3 * (8 + 1) + 1, 3) and grid.dtype == np.uint8
    np.testing.assert_array_equal(grid[10:18:2, 19:27:2], np.round(cells[1, 2] * 255))  # row 1, column 2
    assert (grid[0] == 255).all() and (grid[:, 9] == 255).all()  # white gaps


def test_write_preview_puts_the_seed_patch_first_then_its_copies(tmp_path):
    out = tmp_path / "grid.png"
    grid = preview.write_preview(str(out), num_seeds=3, copies=4, patch_size=16, zoom=1, seed=1)
    assert grid.shape == (3 * 18 + 2, 5 * 18 + 2, 3)
    written = matplotlib.image.imread(out)
    assert written.shape[:2] == grid.shape[:2]
    np.testing.assert_allclose(written[..., :3], grid / 255.0, atol=1 / 255)
    first_cells = [grid[2 + 18 * r:18 + 18 * r, 2:18] for r in range(3)]
    copies = [grid[2 + 18 * r:18 + 18 * r, 2 + 18 * c:18 + 18 * c] for r in range(3) for c in range(1, 5)]
    assert len({cell.tobytes() for cell in first_cells + copies}) == 15  # all different
    seeds = patches.sample_seeds(sources.load_source("demo", "train").dataset, num_seeds=3, patch_size=16, rng_seed=1)
    np.testing.assert_array_equal(np.stack(first_cells), seeds.central_patches())


def test_program_writes_a_png_of_the_expected_size(tmp_path):
    out = tmp_path / "preview.png"
    subprocess.run([sys.executable, "-m", "exemplar_tf.preview", "--source=demo", "--num_seeds=2", "--copies=3",
                    "--patch_size=16", "--zoom=2", "--preset=release_code", "--transforms=translate,hue",
                    f"--out={out}"], check=True, timeout=120, capture_output=True)
    assert matplotlib.image.imread(out).shape[:2] == (2 * 34 + 2, 4 * 34 + 2)


def test_scale_max_zooms_the_copies_further_and_keeps_the_seed_patches(tmp_path):
    """The same seeds and draws with only the scale step on: the wider range maps each copy's draw to a larger zoom,
    so every copy changes and the untransformed first column does not."""
    kwargs = dict(num_seeds=2, copies=4, patch_size=16, zoom=1, seed=1, transforms=("scale",))
    paper = preview.write_preview(str(tmp_path / "paper.png"), **kwargs)
    wide = preview.write_preview(str(tmp_path / "wide.png"), scale_max=3.0, **kwargs)
    cell = lambda grid, r, c: grid[2 + 18 * r:18 + 18 * r, 2 + 18 * c:18 + 18 * c]  # noqa: E731
    for r in range(2):
        np.testing.assert_array_equal(cell(wide, r, 0), cell(paper, r, 0))
        assert all(not np.array_equal(cell(wide, r, c), cell(paper, r, c)) for c in range(1, 5))


def test_program_refuses_a_scale_max_below_the_preset_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "exemplar_tf.preview", "--scale_max=0.5",
                             f"--out={tmp_path / 'p.png'}"], timeout=120, capture_output=True, text=True)
    assert result.returncode == 2 and not (tmp_path / "p.png").exists()  # a flag error: usage, exit 2
    assert result.stderr.strip().splitlines() == [
        "Error: --scale_max=0.5 must be 0 (the preset's) or above the paper preset's smallest scale 0.7"]
