"""data.images.tile: the one image tiler (TensorBoard grid, projector sprite, preview and retrieval figures)."""
import numpy as np
import pytest

from exemplar_tf.data.images import rows_of, tile


def cells(n, side=2, dtype=np.uint8):
    """n cells [side,side,3], cell i filled with i + 1."""
    return [np.full((side, side, 3), i + 1, dtype) for i in range(n)]


def test_rows_of_splits_row_major():
    assert rows_of(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert [len(row) for row in rows_of(np.zeros((4, 2, 2, 3)), 2)] == [2, 2]


def test_tile_without_gaps_places_cells_row_major_and_fills_the_rest():
    grid = tile(rows_of(cells(5), 3), num_rows=3)
    assert grid.shape == (6, 6, 3) and grid.dtype == np.uint8
    np.testing.assert_array_equal(grid[::2, ::2, 0], [[1, 2, 3], [4, 5, 0], [0, 0, 0]])


def test_tile_with_gap_margin_and_fill():
    grid = tile(rows_of(cells(4), 2), gap=1, margin=(1, 2, 3, 4), fill=255)
    assert grid.shape == (1 + 2 * 2 + 1 + 3, 2 + 2 * 2 + 1 + 4, 3)
    assert grid[1, 2, 0] == 1 and grid[1, 5, 0] == 2 and grid[4, 2, 0] == 3 and grid[4, 5, 0] == 4
    assert grid[0].min() == 255 and grid[:, 4].min() == 255 and grid[3].min() == 255  # margin, gaps
    uniform = tile([cells(1)], gap=2, margin=2)
    assert uniform.shape == (6, 6, 3) and uniform[2, 2, 0] == 1 and uniform[0, 0, 0] == 0


def test_tile_keeps_the_cells_dtype_and_pads_short_rows_to_the_columns_asked():
    floats = tile([cells(1, dtype=np.float32)], num_columns=4)
    assert floats.shape == (2, 8, 3) and floats.dtype == np.float32 and floats[:, 2:].max() == 0
    ragged = tile([cells(1), cells(3)])
    assert ragged.shape == (4, 6, 3) and ragged[0, 2, 0] == 0 and ragged[2, 4, 0] == 3
    five_d = tile(np.arange(2 * 3 * 2 * 2 * 3).reshape(2, 3, 2, 2, 3))  # an array [R,C,h,w,3]
    assert five_d.shape == (4, 6, 3)


def test_tile_needs_a_cell():
    with pytest.raises(ValueError, match="at least one"):
        tile([[]])
