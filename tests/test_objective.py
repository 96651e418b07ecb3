"""The Objective objects: names, heads, bank and Z, and the losses they join (against the pure functions)."""
import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from exemplar_tf import choices, models, objectives
from exemplar_tf.models.heads import ProjectionHead, SurrogateClassifier
from exemplar_tf.objectives import losses
from exemplar_tf.objectives.memory_bank import MemoryBank
from exemplar_tf.training.config import TrainConfig

N, D, TAU, M = 6, 4, 0.1, 3


def _built(name, num_instances=N, **settings):
    """The objective `name` built on a small Exemplar-CNN (its bank, Z and head created)."""
    encoder = models.build_encoder("small", input_size=32, mean_rgb=(0.5, 0.5, 0.5), dropout=0.0)
    made = objectives.make(name, objectives.Settings(**settings))
    made.build(encoder, num_instances, lambda: models.build_encoder("small", input_size=32, mean_rgb=(0.5, 0.5, 0.5),
                                                                    dropout=0.0))
    return made, encoder


def test_every_objective_choice_has_one_objective_with_the_configs_bank_rule():
    assert tuple(objectives.BY_NAME) == choices.OBJECTIVES
    for name in choices.OBJECTIVES:
        made = objectives.make(name, objectives.Settings())
        assert made.name == name and made.views == 1
        uses_bank = isinstance(made, objectives.BankObjective)
        assert uses_bank == TrainConfig(run_dir="r", objective=name).uses_bank == (name != "softmax")
        assert made.exports_head == uses_bank and ("nce_z" in made.reports) == (name == "nce")
    with pytest.raises(ValueError, match="objective 'hinge' is not one of softmax, nonparametric, nce"):
        objectives.make("hinge", objectives.Settings())
    with pytest.raises(ValueError, match="a momentum encoder writes a memory bank: objective 'softmax' has none"):
        objectives.make("softmax", objectives.Settings(momentum_encoder=0.99))


def test_heads_and_what_the_export_takes_from_them():
    softmax, _ = _built("softmax", num_instances=7)
    assert isinstance(softmax.head, SurrogateClassifier) and softmax.head.num_classes == 7
    assert softmax.embedding_head is None and set(softmax.checkpoint_parts()) == {"head"}
    nce, _ = _built("nce", embedding_dim=16)
    assert isinstance(nce.head, ProjectionHead) and nce.head.dim == 16 and nce.embedding_head is nce.head
    assert set(nce.checkpoint_parts()) == {"head", "bank", "z"}  # the names earlier runs' checkpoints hold
    mlp, _ = _built("nonparametric", embedding_dim=16, head_hidden_dim=24)
    assert mlp.head.hidden_dim == 24 and mlp.head.hidden.units == 24 and mlp.head.linear.units == 16


def _problem():
    rng = np.random.default_rng(0)
    v = tf.math.l2_normalize(tf.constant(rng.normal(size=(2, D)), tf.float32), -1)
    bank = MemoryBank(N, D, seed=1)
    return v, bank, tf.constant([1, 4], tf.int64), tf.constant([0, 5], tf.int64)


def _on_bank(name, bank, **settings):
    """The bank objective `name` built for the problem's N rows of size D, its bank holding `bank`'s rows."""
    made, _ = _built(name, num_instances=bank.num_instances, embedding_dim=bank.dim, **settings)
    made.bank.bank.assign(bank())
    return made


def test_losses_are_the_pure_functions_on_the_bank_variable():
    v, bank, labels, seed = _problem()
    softmax, encoder = _built("softmax", num_instances=3)
    images = tf.random.stateless_uniform([2, 32, 32, 3], [0, 1])
    loss, forward = softmax.loss(encoder, [images], tf.constant([0, 2], tf.int64), seed)
    logits = softmax.head(encoder(images, training=False))  # no dropout, no BatchNorm: the same pass
    assert float(loss) == pytest.approx(float(losses.softmax_loss(logits, tf.constant([0, 2], tf.int64))), rel=1e-5)
    np.testing.assert_array_equal(forward.labels, [0, 2])
    loss, _ = _on_bank("nonparametric", bank, tau=TAU).bank_loss(v, labels, None, seed, None)
    assert float(loss) == pytest.approx(float(losses.nonparametric_softmax_loss(v, bank(), labels, TAU)))
    noise = losses.sample_noise(labels, N, M, seed)
    nce = _on_bank("nce", bank, tau=TAU, nce_m=M)
    first_z = N * float(tf.reduce_mean(tf.exp(losses.noise_scores(v, bank(), noise) / TAU)))
    loss, extras = nce.bank_loss(v, labels, None, seed, None)  # Z not estimated yet (<= 0): this batch's estimate
    want_loss, want_z = losses.nce_loss(v, bank(), labels, noise, TAU, tf.constant(first_z))
    assert (float(loss), float(extras["z_batch"])) == pytest.approx((float(want_loss), float(want_z)), rel=1e-5)
    nce.z.assign(7.0)  # an estimated Z is used as it is
    loss, _ = nce.bank_loss(v, labels, None, seed, None)
    assert float(loss) == pytest.approx(float(losses.nce_loss(v, bank(), labels, noise, TAU, 7.0)[0]), rel=1e-5)
    shared_nce = _on_bank("nce", bank, tau=TAU, nce_m=M, nce_noise="shared")
    shared_nce.z.assign(7.0)
    shared = shared_nce.bank_loss(v, labels, None, seed, None)[0]
    shared_noise = losses.sample_shared_noise(labels, N, M, seed)
    want = losses.nce_loss(v, bank(), labels, shared_noise, TAU, 7.0)[0]
    assert float(shared) == pytest.approx(float(want), rel=1e-5)


def test_after_a_merge_the_losses_use_only_the_k_active_rows():
    v, bank, labels, seed = _problem()  # labels 1 and 4 < K = 5 of N = 6 rows
    k = tf.constant(5, tf.int64)
    softmax, encoder = _built("softmax", num_instances=4, merges_classes=True)
    softmax.relabel.assign([0, 1, 2, 2])  # K = 3 classes of the 4-way classifier
    images = tf.random.stateless_uniform([2, 32, 32, 3], [0, 2])
    loss, forward = softmax.loss(encoder, [images], tf.constant([0, 3], tf.int64), seed)
    logits = softmax.head(encoder(images, training=False))[:, :3]
    assert float(loss) == pytest.approx(float(losses.softmax_loss(logits, tf.constant([0, 2], tf.int64))), rel=1e-5)
    np.testing.assert_array_equal(forward.labels, [0, 2])  # seed 3 trains (and writes) class 2
    loss, _ = _on_bank("nonparametric", bank, tau=TAU).bank_loss(v, labels, k, seed, None)
    assert float(loss) == pytest.approx(float(losses.nonparametric_softmax_loss(v, bank()[:5], labels, TAU)))
    nce = _on_bank("nce", bank, tau=TAU, nce_m=M)
    noise = losses.sample_noise(labels, 5, M, seed)
    loss, extras = nce.bank_loss(v, labels, k, seed, None)  # Z not estimated yet: 5 * mean exp over the noise
    first_z = 5 * float(tf.reduce_mean(tf.exp(losses.noise_scores(v, bank()[:5], noise) / TAU)))
    want_loss, _ = losses.nce_loss(v, bank()[:5], labels, noise, TAU, first_z)
    assert (float(loss), float(extras["z_batch"])) == pytest.approx((float(want_loss), first_z), rel=1e-5)


@pytest.mark.parametrize("noise", ["per_example", "shared"])
def test_after_a_merge_nce_noise_never_hits_an_inactive_row(noise):
    # N = 30 rows, K = 10 active; positives 0, 3, 3, 7. Over 400 seeds x 64 draws: no noise row >= K, no positive
    # (per example: its own; shared: any of the batch's), and the allowed rows equally often (chi-square).
    nce = objectives.make("nce", objectives.Settings(nce_m=64, nce_noise=noise))
    labels = tf.constant([0, 3, 3, 7], tf.int64)
    k = tf.constant(10, tf.int64)
    draws = np.stack([nce.noise(labels, k, tf.constant([s, 1], tf.int64)).numpy() for s in range(400)])
    assert draws.min() >= 0 and draws.max() < 10
    rows = [draws[:, b] for b in range(4)] if noise == "per_example" else [draws]
    excluded = [{0}, {3}, {3}, {7}] if noise == "per_example" else [{0, 3, 7}]
    for row, positives in zip(rows, excluded):
        allowed = sorted(set(range(10)) - positives)
        counts = np.array([np.sum(row == i) for i in allowed])
        assert counts.sum() == row.size  # nothing outside the allowed rows
        assert stats.chisquare(counts).pvalue > 1e-3


def test_after_a_merge_nce_z_is_k_times_the_mean_and_ignores_inactive_rows():
    # v = e0; the K = 4 active rows are orthogonal to it (score 0, exp 1) and the 12 inactive ones equal it (score
    # 1/tau). Z's first estimate is then exactly K: any inactive noise row would add exp(10) to the mean.
    k, n, m, tau = 4, 16, 50, 0.1
    bank = MemoryBank(n, 3, seed=0)
    active = tf.math.l2_normalize(tf.random.stateless_normal([k, 2], [3, 4]), -1)
    bank.bank.assign(tf.concat([tf.concat([tf.zeros([k, 1]), active], 1), tf.tile([[1.0, 0.0, 0.0]], [n - k, 1])], 0))
    v = tf.tile([[1.0, 0.0, 0.0]], [8, 1])
    labels = tf.constant([0, 1, 2, 3, 0, 1, 2, 3], tf.int64)
    loss, extras = _on_bank("nce", bank, tau=tau, nce_m=m).bank_loss(v, labels, tf.constant(k, tf.int64),
                                                                     tf.constant([0, 9], tf.int64), None)
    assert float(extras["z_batch"]) == pytest.approx(k, rel=1e-6)
    # Every score is 0 and Z = K, so P = 1/K = Pn and m Pn = m/K: each term is softplus(+-log m).
    want = np.log1p(m) + m * np.log1p(1 / m)
    assert float(loss) == pytest.approx(want, rel=1e-5)
