"""training.summaries: bank statistics and the representation-collapse readings, on known inputs."""
import numpy as np
import pytest

from exemplar_tf.objectives.bank import bank_statistics
from exemplar_tf.training import summaries


def test_bank_statistics_of_orthogonal_and_identical_rows():
    orthogonal = bank_statistics(np.eye(4, dtype=np.float32), sample=4)
    assert orthogonal == pytest.approx({"bank/mean_norm": 1.0, "bank/mean_cosine": 0.0, "bank/max_cosine": 0.0})
    identical = bank_statistics(np.tile([[0.6, 0.8]], (5, 1)).astype(np.float32), sample=5)
    assert identical["bank/mean_cosine"] == pytest.approx(1.0)


def test_representation_health_counts_units_that_ever_fire_and_code_agreement():
    representations = np.array([[0.0, 2.0, 0.0, 0.0],
                                [0.0, 0.0, 0.0, 1.0],
                                [0.0, 3.0, 0.0, 0.0]], np.float32)
    codes = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], np.float32)
    health = summaries.representation_health(representations, codes)
    assert health["representation/active_units"] == pytest.approx(0.5)  # units 1 and 3 fire, 0 and 2 are dead
    # Distinct pairs (6 ordered): (0,2) and (2,0) have cosine 1, the other four 0.
    assert health["representation/code_mean_cosine"] == pytest.approx(2 / 6)


def test_collapsed_network_reads_as_dead_and_identical():
    representations = np.zeros((6, 8), np.float32)  # every ReLU dead: the code is the head's bias everywhere
    codes = np.tile([[0.0, 1.0, 0.0]], (6, 1)).astype(np.float32)
    assert summaries.representation_health(representations, codes) == pytest.approx(
        {"representation/active_units": 0.0, "representation/code_mean_cosine": 1.0})


def test_sprite_tiles_images_row_major_in_a_square_and_shrinks_past_8192_px():
    images = np.arange(1, 6, dtype=np.uint8)[:, None, None, None] * np.ones((5, 2, 2, 3), np.uint8)
    sprite = summaries.sprite(images)
    assert sprite.shape == (6, 6, 3)  # ceil(sqrt(5)) = 3 cells of 2 px a side
    cells = sprite[::2, ::2, 0]
    np.testing.assert_array_equal(cells, [[1, 2, 3], [4, 5, 0], [0, 0, 0]])
    assert summaries.sprite_thumb_side(10000, 96) == 81  # 100 columns: 8192 // 100
    assert summaries.sprite_thumb_side(2000, 96) == 96  # 45 columns of 96 px fit
