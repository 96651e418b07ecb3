"""The one-vs-rest squared-hinge SVM solver against scikit-learn's LinearSVC (same objective)."""
import numpy as np
import pytest
from sklearn.svm import LinearSVC

from exemplar_tf.probe import svm


def _problem(n=600, dim=40, classes=4, seed=0):
    """Overlapping, all-positive (ReLU-like) features: the classes are not separable, so C matters."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    centres = rng.normal(size=(classes, dim))
    return np.abs(centres[labels] + 1.5 * rng.normal(size=(n, dim))).astype(np.float32), labels


def _objective(features, labels, c, weights, bias):
    """Every class's f_k (float64) at weights [D,K], bias [K]."""
    y = np.where(np.arange(weights.shape[1])[None, :] == labels[:, None], 1.0, -1.0)
    scores = features.astype(np.float64) @ weights.astype(np.float64) + bias
    return 0.5 * ((weights.astype(np.float64) ** 2).sum(0) + bias.astype(np.float64) ** 2) + c * (
        np.maximum(0.0, 1.0 - y * scores) ** 2).sum(0)


@pytest.mark.parametrize("c", [0.01, 1.0])
def test_solution_matches_linearsvc_weights_bias_and_decisions(c):
    features, labels = _problem()
    reference = LinearSVC(C=c, dual=False, tol=1e-8, max_iter=10_000).fit(features, labels)
    model = svm.fit_ovr_squared_hinge(features, labels, c, tol=1e-5)
    assert model.converged and model.relative_gradient <= 1e-5 and model.newton_iterations >= 2
    scale = np.abs(reference.coef_).max()
    ours = _objective(features, labels, c, model.weights, model.bias)
    np.testing.assert_allclose(ours, _objective(features, labels, c, reference.coef_.T, reference.intercept_),
                               rtol=1e-7)
    np.testing.assert_allclose(model.weights, reference.coef_.T, atol=1e-4 * scale)
    np.testing.assert_allclose(model.bias, reference.intercept_, atol=1e-4 * scale)
    np.testing.assert_allclose(model.decision_function(features), reference.decision_function(features),
                               atol=1e-3)
    np.testing.assert_array_equal(model.predict(features), reference.predict(features))


def test_the_iteration_limit_is_reported_as_not_converged():
    features, labels = _problem()
    model = svm.fit_ovr_squared_hinge(features, labels, 1.0, tol=1e-6, max_iter=1)
    assert model.newton_iterations == 1 and not model.converged and model.relative_gradient > 1e-6
    assert model.cg_iterations >= 1


def test_warm_start_from_the_solution_needs_no_iterations_and_from_a_neighbour_reaches_the_same_solution():
    features, labels = _problem()
    cold = svm.fit_ovr_squared_hinge(features, labels, 0.1, tol=1e-4)
    again = svm.fit_ovr_squared_hinge(features, labels, 0.1, tol=1e-4, init=cold)
    assert again.newton_iterations == 0 and again.converged
    neighbour = svm.fit_ovr_squared_hinge(features, labels, 0.03, tol=1e-4)
    warm = svm.fit_ovr_squared_hinge(features, labels, 0.1, tol=1e-4, init=neighbour)
    assert warm.converged and warm.newton_iterations >= 1
    np.testing.assert_allclose(warm.weights, cold.weights, atol=1e-2 * np.abs(cold.weights).max())


def test_warm_start_at_a_larger_c_on_many_rows_moves_to_that_c_solution():
    """Many rows of positive features with a large common part (like percentile-scaled ReLU features) and a weak
    class signal: |grad f(0)| ~ C n |mean row| is so large that the C = 0.01 solution already has |grad| <=
    1e-3 |grad f(0)| at C = 0.1 (the bug: the fit stopped there after 0 iterations); the warm fit must still
    reach the C = 0.1 solution."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 20_000)
    centres = rng.normal(size=(10, 400)) * 0.2
    features = ((np.abs(centres[labels] + rng.normal(size=(20_000, 400))) + 5.0) * 0.05).astype(np.float32)
    small_c = svm.fit_ovr_squared_hinge(features, labels, 0.01)
    cold = svm.fit_ovr_squared_hinge(features, labels, 0.1)
    warm = svm.fit_ovr_squared_hinge(features, labels, 0.1, init=small_c)
    scale = np.abs(cold.weights).max()
    assert np.abs(small_c.weights - cold.weights).max() > 0.3 * scale  # the two C really differ
    assert warm.converged and warm.newton_iterations >= 1 and warm.c == 0.1
    np.testing.assert_allclose(warm.weights, cold.weights, atol=1e-2 * scale)


def test_missing_classes_still_get_a_column():
    features, labels = _problem(classes=3)
    model = svm.fit_ovr_squared_hinge(features, labels, 0.1, num_classes=5)
    assert model.weights.shape == (40, 5) and set(model.predict(features)) <= {0, 1, 2}
