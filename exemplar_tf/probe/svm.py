"""One-vs-rest linear SVM with the squared hinge loss (scikit-learn LinearSVC's objective), solved in the primal.

For every class k, with y_ik = +1 on its rows and -1 elsewhere, (w_k, b_k) minimises
    f_k = 1/2 (|w_k|^2 + b_k^2) + C sum_i max(0, 1 - y_ik (x_i . w_k + b_k))^2
(the bias is regularised like liblinear's, intercept_scaling=1). The K problems are solved together by a
truncated Newton method (Keerthi & DeCoste 2005, "L2-SVM-MFN"): the generalised Newton system
(I + 2C X_A^T X_A) d = -grad on the active rows A is solved by conjugate gradients, then an exact line search
on the piecewise quadratic f_k(w + t d). Features stay float32 in TensorFlow; one Newton iteration costs
2 + 2 * (CG steps) matrix products with X [n,D] by a [D,K] or [n,K] block.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf


@dataclasses.dataclass
class SvmModel:
    """weights float32 [D,K], bias float32 [K] fitted at `c`; how the solver ended."""

    weights: np.ndarray
    bias: np.ndarray
    c: float
    newton_iterations: int
    cg_iterations: int  # summed over Newton iterations
    converged: bool  # every class reached |grad f_k| <= tol * |grad f_k(0)|
    relative_gradient: float  # the largest |grad f_k| / |grad f_k(0)| at the end

    def decision_function(self, features: np.ndarray) -> np.ndarray:
        """features [n,D] -> scores float32 [n,K]."""
        return np.asarray(features, np.float32) @ self.weights + self.bias

    def predict(self, features: np.ndarray) -> np.ndarray:
        """features [n,D] -> int64 [n]: the class with the largest score (LinearSVC's one-vs-rest rule)."""
        return np.argmax(self.decision_function(features), axis=1).astype(np.int64)


@tf.function(reduce_retracing=True)
def _gradient(x, y, w, b, z, c):
    """Gradient of every f_k at (w [D,K], b [K]) given the scores z = x w + b [n,K]; the active rows [n,K]."""
    slack = tf.nn.relu(1.0 - y * z)
    coef = -2.0 * c * y * slack
    return w + _transposed_times(x, coef), b + tf.reduce_sum(coef, 0), tf.cast(slack > 0, tf.float32)


def _transposed_times(x, r):
    """x^T r for x [n,D], r [n,K] -> [D,K], as (r^T x)^T: TensorFlow's CPU matmul with transpose_a on the big
    operand is about twice as slow."""
    return tf.transpose(tf.matmul(r, x, transpose_a=True))


@tf.function(reduce_retracing=True)
def _hessian_times(x, active, c, v, vb):
    """(I + 2C X_A^T X_A) [v; vb] for every class, the bias as a constant feature: ([D,K], [K])."""
    u = (tf.matmul(x, v) + vb) * active
    return v + 2.0 * c * _transposed_times(x, u), vb + 2.0 * c * tf.reduce_sum(u, 0)


@tf.function(reduce_retracing=True)
def _scores(x, w, b):
    return tf.matmul(x, w) + b


def _conjugate_gradients(x, active, c, gw, gb, tolerance: float, max_steps: int):
    """Solves H_k d_k = -g_k for every class k (columns) to |residual_k| <= tolerance * |g_k|.
    Returns (dw [D,K], db [K], steps taken)."""
    dw, db = tf.zeros_like(gw), tf.zeros_like(gb)
    rw, rb = -gw, -gb
    pw, pb = rw, rb
    rr = tf.reduce_sum(rw * rw, 0) + rb * rb
    target = tolerance ** 2 * rr
    steps = 0
    while steps < max_steps and bool(tf.reduce_any(rr > target)):
        hw, hb = _hessian_times(x, active, c, pw, pb)
        curvature = tf.reduce_sum(pw * hw, 0) + pb * hb
        alpha = tf.where(rr > target, rr / tf.maximum(curvature, 1e-30), 0.0)  # done columns stay put
        dw, db = dw + alpha * pw, db + alpha * pb
        rw, rb = rw - alpha * hw, rb - alpha * hb
        rr_new = tf.reduce_sum(rw * rw, 0) + rb * rb
        beta = tf.where(rr > target, rr_new / tf.maximum(rr, 1e-30), 0.0)
        pw, pb = rw + beta * pw, rb + beta * pb
        rr = tf.where(rr > target, rr_new, rr)
        steps += 1
    return dw, db, steps


def _line_search(y, z, u, w_dot_d, d_dot_d, c, iterations: int = 30) -> np.ndarray:
    """Per class, the minimiser t >= 0 of f_k(w + t d) (convex, piecewise quadratic in t): safeguarded Newton
    steps inside a bracket. y, z, u = X d + db: [n,K]; w_dot_d, d_dot_d: [K]. Returns t [K]."""
    t = np.ones_like(w_dot_d)
    low, high = np.zeros_like(t), np.full_like(t, np.inf)
    for _ in range(iterations):
        slack = np.maximum(0.0, 1.0 - y * (z + t * u))
        slope = w_dot_d + t * d_dot_d - 2.0 * c * np.sum(y * u * slack, 0)
        curvature = d_dot_d + 2.0 * c * np.sum(u * u * (slack > 0), 0)
        low, high = np.where(slope < 0, t, low), np.where(slope >= 0, t, high)
        step = t - slope / np.maximum(curvature, 1e-30)
        bisect = np.isfinite(high) & ((step <= low) | (step >= high))
        new_t = np.where(bisect, 0.5 * (low + high), step)
        if np.all(np.abs(new_t - t) <= 1e-7 * np.maximum(t, 1.0)):
            return new_t
        t = new_t
    return t


def fit_ovr_squared_hinge(features: np.ndarray, labels: np.ndarray, c: float, *, num_classes: int | None = None,
                          init: SvmModel | None = None, tol: float = 1e-3, max_iter: int = 50,
                          max_cg: int = 100) -> SvmModel:
    """Fits the K one-vs-rest squared-hinge SVMs of `labels` (int [n], classes 0..K-1) on features [n,D].

    init: a model of the same D and K to start from (warm start along a C grid). Stops when every class has
    |grad f_k| <= tol * |grad f_k(0)| (reported as converged) or after max_iter Newton iterations (not). A warm
    start from a model of another C takes at least one Newton step: |grad f_k(0)| grows with C and n, so on many
    rows the previous C's solution can pass the test at a larger C while far from its minimum.
    """
    x = tf.convert_to_tensor(np.asarray(features, np.float32))
    labels = np.asarray(labels, np.int64)
    k = int(num_classes or labels.max() + 1)
    y = tf.one_hot(labels, k, on_value=1.0, off_value=-1.0, dtype=tf.float32)
    c32 = tf.constant(c, tf.float32)
    if init is None:
        w, b = tf.zeros([x.shape[1], k]), tf.zeros([k])
    else:
        w, b = tf.constant(init.weights, tf.float32), tf.constant(init.bias, tf.float32)
    g0w, g0b, _ = _gradient(x, y, tf.zeros_like(w), tf.zeros_like(b), tf.zeros_like(y), c32)
    g0_norm = np.sqrt(np.sum(g0w.numpy() ** 2, 0) + g0b.numpy() ** 2)
    z = _scores(x, w, b)
    y_np = y.numpy()
    cg_total, relative = 0, np.inf
    for iteration in range(max_iter + 1):
        gw, gb, active = _gradient(x, y, w, b, z, c32)
        relative = float(np.max(np.sqrt(np.sum(gw.numpy() ** 2, 0) + gb.numpy() ** 2) / g0_norm))
        must_step = iteration == 0 and init is not None and init.c != c
        if (relative <= tol and not must_step) or iteration == max_iter:
            break
        # Inexact Newton: CG to a relative residual that tightens as the gradient falls.
        dw, db, steps = _conjugate_gradients(x, active, c32, gw, gb, min(0.1, np.sqrt(relative)), max_cg)
        cg_total += steps
        u = _scores(x, dw, db).numpy()
        w_dot_d = (tf.reduce_sum(w * dw, 0) + b * db).numpy()
        d_dot_d = (tf.reduce_sum(dw * dw, 0) + db * db).numpy()
        t = tf.constant(_line_search(y_np, z.numpy(), u, w_dot_d, d_dot_d, c), tf.float32)
        w, b, z = w + t * dw, b + t * db, z + t * u
    return SvmModel(w.numpy(), b.numpy(), float(c), iteration, cg_total, relative <= tol, relative)
