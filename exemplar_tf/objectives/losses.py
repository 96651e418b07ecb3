"""Training objectives as pure functions: parametric softmax, NPID's non-parametric softmax (also with bank
neighbours as positives) and NCE.

Shapes: B batch, N classes or instances, D embedding size, m noise samples per example.
The memory bank enters as a tensor or as the bank variable itself (`MemoryBank.variable`); no gradient flows
into it. With the variable, row gathers read it in place (ResourceGather); only the dense paths (the exact
softmax, NCE's dense scores) read it whole, and after a sparse update such a read copies all N x D values.
"""
from __future__ import annotations

import tensorflow as tf


def softmax_loss(logits, labels):
    """Mean cross-entropy of an N-way softmax.

    logits: float [B,N]; labels: int [B] in [0, N). Returns float32 scalar.
    """
    logits = tf.cast(logits, tf.float32)
    per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(labels, tf.int64), logits=logits)
    return tf.reduce_mean(per_example)


def mask_inactive(logits: tf.Tensor, num_active: tf.Tensor) -> tf.Tensor:
    """logits float32 [B,N] with every column >= num_active (int scalar) set to -inf: an N-way classifier (or the
    scores against an N-row bank) used as a num_active-way one (those columns get probability 0 and no gradient)."""
    active = tf.range(tf.shape(logits)[-1], dtype=tf.int64) < tf.cast(num_active, tf.int64)
    return tf.where(active, logits, tf.constant(float("-inf"), logits.dtype))


def nonparametric_softmax_loss(v, bank, indices, tau, num_active=None, positives=None):
    """NPID's exact non-parametric softmax: mean over the batch of -log softmax(bank . v / tau)[index].

    v: float [B,D] unit rows; bank: float [N,D] unit rows; indices: int [B] (each example's own row);
    tau: temperature; num_active: int scalar K, after merging classes (data/merging.py) the softmax runs over
    rows [0, K) only (None: all N); positives: float [B,D] unit rows that stand in for each example's own bank
    row (a key encoder's codes, objectives/momentum.py; None: the bank row). Returns float32 scalar.
    """
    v = tf.cast(v, tf.float32)
    logits = all_scores(v, bank) / tau
    if positives is not None:
        own = tf.one_hot(tf.cast(indices, tf.int32), tf.shape(logits)[-1], on_value=True, off_value=False)
        positive_logits = tf.reduce_sum(v * tf.stop_gradient(tf.cast(positives, tf.float32)), axis=-1) / tau
        logits = tf.where(own, positive_logits[:, None], logits)
    if num_active is not None:
        logits = mask_inactive(logits, num_active)
    return softmax_loss(logits, indices)


def bank_neighbours(bank, indices, k: int):
    """int32 [B,k]: for each example, the k bank rows nearest (largest dot product) to its own row `indices`
    int [B], its own row left out; nearest first. bank: float [N,D] unit rows (tensor or variable, no gradient)."""
    indices = tf.cast(indices, tf.int32)
    own_rows = gather_rows(bank, indices)  # [B,D]
    similarity = all_scores(tf.cast(own_rows, tf.float32), bank)  # [B,N]
    own = tf.one_hot(indices, tf.shape(similarity)[-1], on_value=True, off_value=False)
    similarity = tf.where(own, tf.constant(float("-inf")), similarity)
    return tf.math.top_k(similarity, k).indices


def neighbourhood_softmax_loss(v, bank, indices, neighbours, tau):
    """The exact non-parametric softmax with a neighbourhood as the positive (AND, Huang et al. 2019): mean over
    the batch of -log sum_{j in {i} + neighbours_i} softmax(bank . v / tau)_j.

    v: float [B,D] unit rows; bank: float [N,D] unit rows; indices: int [B] (each example's own row); neighbours:
    int [B,k] other rows counted as the same instance (`bank_neighbours`; k = 0 gives
    `nonparametric_softmax_loss`). Returns float32 scalar.
    """
    logits = all_scores(tf.cast(v, tf.float32), bank) / tau  # [B,N]
    members = tf.concat([tf.cast(indices, tf.int32)[:, None], tf.cast(neighbours, tf.int32)], axis=1)  # [B,1+k]
    positive_logits = tf.gather(logits, members, batch_dims=1)  # [B,1+k]
    return tf.reduce_mean(tf.reduce_logsumexp(logits, axis=-1) - tf.reduce_logsumexp(positive_logits, axis=-1))


def sample_noise(indices, num_instances, m, seed):
    """Draws m noise instances per example, uniform over the N-1 instances that are not its positive.

    Draws u in [0, N-1) and maps u -> u + (u >= positive), a bijection onto [0, N) minus {positive}.
    indices: int [B]; num_instances: N (int or int scalar tensor; K after merging classes: rows [0, K));
    m: python int; seed: int32 [2] (stateless RNG).
    Returns int64 [B,m].
    """
    positives = tf.cast(indices, tf.int64)[:, None]
    draws = tf.random.stateless_uniform(
        [tf.shape(positives)[0], m], seed=seed, minval=0, maxval=num_instances - 1, dtype=tf.int64
    )
    return draws + tf.cast(draws >= positives, tf.int64)


def sample_shared_noise(indices, num_instances, m, seed):
    """Draws m noise instances shared by the whole batch, uniform over instances not in the batch.

    The cheap variant of `sample_noise`: `nce_loss` then gathers m bank rows instead of B*m. The trade: every
    example sees the same negatives (correlated gradient noise within a step) and no instance of the batch is
    ever a negative, not even for the other examples (the loss still uses Pn = 1/N; the difference is k/N).
    Draws u in [0, N-k) (k distinct positives p_0 < ... < p_{k-1}) and maps u -> u + #{j : p_j - j <= u}.
    indices: int [B]; returns int64 [m].
    """
    positives = tf.sort(tf.unique(tf.cast(indices, tf.int64))[0])
    num_allowed = num_instances - tf.size(positives, out_type=tf.int64)
    draws = tf.random.stateless_uniform([m], seed=seed, minval=0, maxval=num_allowed, dtype=tf.int64)
    gaps = positives - tf.range(tf.size(positives, out_type=tf.int64))
    return draws + tf.searchsorted(gaps, draws, side="right", out_type=tf.int64)


NCE_SCORES = ("auto", "dense", "gather")
# Dense NCE scores pay off while N <= DENSE_SCORES_MAX_N_PER_NOISE * m (per-example noise); measured with
# benchmarks/nce_step.py on a 2-core AMD EPYC (AVX2), B = 128, D = 128, m = 4096: crossover near N = 24 m
# (dense/gather step time 0.54 at N = 12 m, 1.07 at 24 m, 2.4 at 49 m; BUILD_NOTES.md).
DENSE_SCORES_MAX_N_PER_NOISE = 20


def uses_dense_scores(num_instances, m: int, scores: str = "auto") -> bool:
    """Whether `noise_scores` computes per-example noise scores densely (`scores`: "auto", "dense", "gather").

    Dense: one [B,D] x [D,N] matmul (B*N*D multiply-adds, compute-bound) and a pick of the noise columns.
    Gather: B*m bank rows copied ([B,m,D], memory-bound) and contracted. Both costs grow with B, so the rule
    depends on N and m only: "auto" is dense when N <= DENSE_SCORES_MAX_N_PER_NOISE * m. The dense
    intermediate [B,N] is then never larger than the gather's [B,m,D] (D >= 20). An unknown (dynamic) N
    or m gathers.
    """
    if scores not in NCE_SCORES:
        raise ValueError(f"scores={scores!r} is not one of {NCE_SCORES}")
    if scores != "auto":
        return scores == "dense"
    if num_instances is None or m is None:
        return False
    return num_instances <= DENSE_SCORES_MAX_N_PER_NOISE * m


def num_rows(bank):
    """N of a bank tensor or variable [N,D]: the static size when known (no read of a variable), else dynamic."""
    return bank.shape[0] if bank.shape[0] is not None else tf.shape(bank)[0]


def gather_rows(bank, indices):
    """Bank rows at `indices` (int [...]) -> [..., D], without gradient; a bank variable is read in place."""
    return tf.stop_gradient(tf.gather(bank, indices))


def all_scores(v, bank):
    """v [B,D] . bank [N,D]^T -> float32 [B,N], without gradient into the bank (reads a variable whole)."""
    return tf.matmul(v, tf.stop_gradient(tf.convert_to_tensor(bank)), transpose_b=True)


def noise_scores(v, bank, noise, scores: str = "auto"):
    """Dot products between each example and its noise rows.

    v: float32 [B,D]; bank: [N,D] tensor or variable; noise: int [B,m] per-example, or int [m] shared by the
    batch; scores: "auto", "dense" or "gather" for per-example noise (see `uses_dense_scores`).
    Returns float32 [B,m]. Per-example noise either gathers B*m rows and contracts them in one batched matmul,
    or computes all B*N scores and picks each example's m columns. Shared noise gathers m rows and uses one
    plain matmul.
    """
    noise = tf.convert_to_tensor(noise)
    if noise.shape.rank == 1:
        return tf.matmul(v, gather_rows(bank, noise), transpose_b=True)
    if uses_dense_scores(bank.shape[0], noise.shape[-1], scores):
        return tf.gather(all_scores(v, bank), noise, batch_dims=1)
    return tf.einsum("bd,bmd->bm", v, gather_rows(bank, noise))


def nce_loss(v, bank, indices, noise, tau, z, scores: str = "auto", num_active=None, positives=None):
    """NPID's NCE loss with uniform noise Pn = 1/N and m noise samples per example.

    P(i|v) = exp(w_i . v / tau) / Z. Per example:
      -log(P_pos / (P_pos + m Pn)) - sum_noise log(m Pn / (P_noise + m Pn)),
    computed in log space as softplus(log(m Pn) - log P_pos) + sum softplus(log P_noise - log(m Pn)).
    v: float [B,D] unit rows; bank: float [N,D] tensor or variable; indices: int [B]; noise: int [B,m] (or [m],
    shared); tau: temperature; z: scalar normaliser estimate (the caller keeps it, see `update_z`);
    scores: how per-example noise scores are computed (`uses_dense_scores`; the same loss either way);
    num_active: int scalar K after merging classes, when only rows [0, K) are in use and the noise is drawn from
    them: N becomes K in Pn = 1/K and in the Z estimate (None: N, the bank's rows); positives: float [B,D] unit
    rows scored as each example's positive instead of its bank row (a key encoder's codes; None: the bank row).
    Returns (loss: float32 scalar, batch mean, and z_estimate: float32 scalar = N * mean exp(w_noise . v / tau),
    the Monte-Carlo estimate of Z from this batch's noise, without gradient; it is finite while
    max score / tau + log N < 88, e.g. tau >= 0.02 for N = 1.28M unit rows).
    """
    v = tf.cast(v, tf.float32)
    positive_rows = gather_rows(bank, indices) if positives is None else tf.stop_gradient(tf.cast(positives, tf.float32))
    positive_scores = tf.reduce_sum(v * positive_rows, axis=-1)
    negative_scores = noise_scores(v, bank, noise, scores)
    return nce_loss_from_scores(positive_scores, negative_scores, tau, z,
                                num_rows(bank) if num_active is None else num_active)


def nce_loss_from_scores(positive_scores, negative_scores, tau, z, num_instances):
    """`nce_loss` from the scores: positive_scores float32 [B] (v . positive row), negative_scores float32 [B,m]
    (v . noise rows), tau, z as there; num_instances: N of Pn = 1/N (K after a merge). Returns (loss, z_estimate)
    as `nce_loss` (a sharded bank computes the scores itself, objectives/sharded_bank.py)."""
    num_instances = tf.cast(num_instances, tf.float32)
    num_noise = tf.cast(tf.shape(negative_scores)[-1], tf.float32)
    log_z = tf.math.log(tf.cast(z, tf.float32))
    log_m_pn = tf.math.log(num_noise / num_instances)
    positive_term = tf.nn.softplus(log_m_pn - (positive_scores / tau - log_z))
    negative_term = tf.reduce_sum(tf.nn.softplus(negative_scores / tau - log_z - log_m_pn), axis=-1)
    loss = tf.reduce_mean(positive_term + negative_term)

    z_estimate = num_instances * tf.reduce_mean(tf.exp(tf.stop_gradient(negative_scores) / tau))
    return loss, z_estimate


def update_z(z_old, z_batch, momentum, is_first):
    """Next value of NCE's normaliser Z.

    The first batch sets Z to its estimate. After that: momentum 0 freezes Z (the NPID release's behaviour);
    otherwise Z <- momentum * Z + (1 - momentum) * z_batch. All arguments are scalars (python or tensors).
    """
    z_old = tf.cast(z_old, tf.float32)
    z_batch = tf.cast(z_batch, tf.float32)
    momentum = tf.cast(momentum, tf.float32)
    moving = momentum * z_old + (1.0 - momentum) * z_batch
    after_first = tf.where(tf.equal(momentum, 0.0), z_old, moving)
    return tf.where(tf.cast(is_first, tf.bool), z_batch, after_first)


def proximal_loss(v, bank, indices, strength):
    """NPID's proximal regulariser: strength * mean over the batch of ||v_i - w_i||^2.

    w_i is the bank row of instance i *before* this step's update (v_i^(t-1)); it gets no gradient, so the term
    only pulls the new code towards the old one and fades as training converges. v: float [B,D];
    bank: float [N,D]; indices: int [B]; strength: lambda >= 0. Returns float32 scalar.
    """
    return proximal_loss_from_rows(v, tf.gather(tf.stop_gradient(tf.cast(bank, tf.float32)), indices), strength)


def proximal_loss_from_rows(v, previous, strength):
    """`proximal_loss` with the rows w_i already read: v float [B,D], previous float32 [B,D] (no gradient)."""
    v = tf.cast(v, tf.float32)
    return tf.cast(strength, tf.float32) * tf.reduce_mean(tf.reduce_sum(tf.square(v - previous), axis=-1))
