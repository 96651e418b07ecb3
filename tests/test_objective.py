"""The Objective objects: names, heads, bank and Z, and the losses they join (against the pure functions)."""
import numpy as np
import pytest
import tensorflow as tf

from exemplar_tf import choices
from exemplar_tf.models.heads import ProjectionHead, SurrogateClassifier
from exemplar_tf.objectives import losses, objective
from exemplar_tf.objectives.memory_bank import MemoryBank
from exemplar_tf.training.config import TrainConfig

N, D, TAU, M = 6, 4, 0.1, 3


def test_every_objective_choice_has_one_objective_with_the_configs_bank_rule():
    assert tuple(objective.BY_NAME) == choices.OBJECTIVES
    for name in choices.OBJECTIVES:
        made = objective.make(name)
        assert made.name == name
        assert made.uses_bank == TrainConfig(run_dir="r", objective=name).uses_bank == (name != "softmax")
        assert made.exports_head == made.uses_bank and made.estimates_z == (name == "nce")
    with pytest.raises(ValueError, match="objective 'hinge' is not one of softmax, nonparametric, nce"):
        objective.make("hinge")


def test_heads_and_what_the_export_takes_from_them():
    classifier = objective.make("softmax").head(7)
    assert isinstance(classifier, SurrogateClassifier) and classifier.num_classes == 7
    assert objective.make("softmax").embedding_head(classifier) is None
    projection = objective.make("nce", embedding_dim=16).head()
    assert isinstance(projection, ProjectionHead) and projection.dim == 16
    assert objective.make("nce").embedding_head(projection) is projection


def _problem():
    rng = np.random.default_rng(0)
    v = tf.math.l2_normalize(tf.constant(rng.normal(size=(2, D)), tf.float32), -1)
    bank = MemoryBank(N, D, seed=1)
    return v, bank, tf.constant([1, 4], tf.int64), tf.constant([0, 5], tf.int64)


def test_losses_are_the_pure_functions_on_the_bank_variable():
    v, bank, labels, seed = _problem()
    z = tf.Variable(-1.0)
    logits = tf.constant([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
    loss, z_batch = objective.make("softmax").loss(logits, tf.constant([0, 2], tf.int64), None, z, seed)
    assert float(loss) == pytest.approx(float(losses.softmax_loss(logits, tf.constant([0, 2], tf.int64))))
    assert float(z_batch) == 0.0
    loss, _ = objective.make("nonparametric", tau=TAU).loss(v, labels, bank, z, seed)
    assert float(loss) == pytest.approx(float(losses.nonparametric_softmax_loss(v, bank(), labels, TAU)))
    noise = losses.sample_noise(labels, N, M, seed)
    nce = objective.make("nce", tau=TAU, nce_m=M)
    first_z = N * float(tf.reduce_mean(tf.exp(losses.noise_scores(v, bank(), noise) / TAU)))
    loss, z_batch = nce.loss(v, labels, bank, z, seed)  # Z not estimated yet (<= 0): this batch's estimate
    want_loss, want_z = losses.nce_loss(v, bank(), labels, noise, TAU, tf.constant(first_z))
    assert (float(loss), float(z_batch)) == pytest.approx((float(want_loss), float(want_z)), rel=1e-5)
    z.assign(7.0)  # an estimated Z is used as it is
    loss, _ = nce.loss(v, labels, bank, z, seed)
    assert float(loss) == pytest.approx(float(losses.nce_loss(v, bank(), labels, noise, TAU, 7.0)[0]), rel=1e-5)
    shared = objective.make("nce", tau=TAU, nce_m=M, nce_noise="shared").loss(v, labels, bank, z, seed)[0]
    shared_noise = losses.sample_shared_noise(labels, N, M, seed)
    want = losses.nce_loss(v, bank(), labels, shared_noise, TAU, 7.0)[0]
    assert float(shared) == pytest.approx(float(want), rel=1e-5)
