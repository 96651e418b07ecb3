"""training.summaries: bank statistics and the representation-collapse readings, on known inputs."""
import numpy as np
import pytest

from exemplar_tf.training import summaries


def test_bank_statistics_of_orthogonal_and_identical_rows():
    orthogonal = summaries.bank_statistics(np.eye(4, dtype=np.float32), sample=4)
    assert orthogonal == pytest.approx({"bank/mean_norm": 1.0, "bank/mean_cosine": 0.0, "bank/max_cosine": 0.0})
    identical = summaries.bank_statistics(np.tile([[0.6, 0.8]], (5, 1)).astype(np.float32), sample=5)
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
