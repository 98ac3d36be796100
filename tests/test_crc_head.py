"""CRC-Lip head (curvature certificates) and the LLN pairwise certificate."""

import keras
import numpy as np
import pytest

import keras_lipschitz
from keras_lipschitz import attacks
from keras_lipschitz import curvature
from keras_lipschitz import layers
from tests import helpers

# --------------------------------------------------------------------------
# NumPy reference of the head.
# --------------------------------------------------------------------------


def _sigmoid(t):
    return 1.0 / (1.0 + np.exp(-t))


def _numpy_logits(params, phi):
    w1, b1, w2, b2, beta = params
    return np.logaddexp(0.0, beta * (phi @ w1 + b1)) / beta @ w2 + b2


def _numpy_hessian(params, phi, y, j):
    """Exact Hessian of f_y - f_j at phi (analytic, float64)."""
    w1, b1, w2, _, beta = params
    s = _sigmoid(beta * (phi @ w1 + b1))
    second = beta * s * (1.0 - s)
    delta = w2[:, y] - w2[:, j]
    return (w1 * (delta * second)) @ w1.T


def _random_head(d=5, hidden=12, classes=4, beta=1.0, seed=0):
    head = layers.CRCLipHead(
        classes,
        hidden_units=hidden,
        beta=beta,
        bias_initializer=keras.initializers.RandomNormal(stddev=1.0, seed=1),
        kernel_initializer=keras.initializers.RandomNormal(
            stddev=1.0, seed=seed
        ),
    )
    head.build((None, d))
    w1, b1, w2, b2 = head.head_weights()
    return head, (w1, b1, w2, b2, beta)


# --------------------------------------------------------------------------
# Curvature bounds.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("beta,hidden", [(1.0, 12), (2.5, 3)])
def test_curvature_bounds_contain_the_exact_hessian_spectrum(beta, hidden):
    head, params = _random_head(hidden=hidden, beta=beta)
    rng = np.random.default_rng(0)
    phi = 2.0 * rng.normal(size=(40, 5))
    # The NumPy reference is the layer (so the Hessian below is its own).
    np.testing.assert_allclose(
        _numpy_logits(params, phi),
        helpers.to_numpy(head(phi.astype("float32"))),
        rtol=1e-4,
        atol=1e-4,
    )
    w1, _, w2, _, _ = params
    exact = curvature.curvature_bounds(w1, w2, beta, method="eigvalsh")
    cheap = curvature.curvature_bounds(w1, w2, beta, method="norm")
    assert np.all(exact <= cheap * (1 + 1e-12))
    assert np.all(np.diag(exact) == 0)
    for p in phi:
        for y in range(4):
            for j in range(4):
                if y == j:
                    continue
                hess = _numpy_hessian(params, p, y, j)
                eig = np.linalg.eigvalsh(hess)
                # Rounding of the reference eigvalsh itself.
                tol = 1e-12 * np.abs(hess).sum()
                assert eig[-1] <= exact[y, j] + tol
                assert eig[0] >= -exact[j, y] - tol  # m_yj = M_jy


def test_analytic_hessian_matches_finite_differences():
    _, params = _random_head()
    rng = np.random.default_rng(1)
    p, h = rng.normal(size=5), 1e-4
    hess = _numpy_hessian(params, p, 0, 2)

    def g(v):
        z = _numpy_logits(params, v[None])[0]
        return z[0] - z[2]

    numeric = np.zeros((5, 5))
    eye = np.eye(5)
    for a in range(5):
        for b in range(5):
            numeric[a, b] = (
                g(p + h * eye[a] + h * eye[b])
                - g(p + h * eye[a] - h * eye[b])
                - g(p - h * eye[a] + h * eye[b])
                + g(p - h * eye[a] - h * eye[b])
            ) / (4 * h * h)
    np.testing.assert_allclose(hess, numeric, atol=1e-5)


def test_curvature_bound_is_attained():
    """With Δ ≥ 0 and every pre-activation at 0, ∇²g is the bound matrix."""
    rng = np.random.default_rng(2)
    w1 = rng.normal(size=(4, 7))
    w2 = np.zeros((7, 2))
    w2[:, 0] = np.abs(rng.normal(size=7))
    params = (w1, np.zeros(7), w2, np.zeros(2), 1.5)
    bound = curvature.curvature_bounds(w1, w2, 1.5, method="eigvalsh")
    top = np.linalg.eigvalsh(_numpy_hessian(params, np.zeros(4), 0, 1))[-1]
    np.testing.assert_allclose(bound[0, 1], top, rtol=1e-7)
    assert bound[1, 0] == 0.0  # Δ ≤ 0 for (1, 0): g_10 is concave


# --------------------------------------------------------------------------
# Certificates against attacks.
# --------------------------------------------------------------------------


def _blobs(n=128, dim=6, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    centers = 2.0 * rng.normal(size=(classes, dim))
    y = rng.integers(0, classes, n)
    x = centers[y] + 0.6 * rng.normal(size=(n, dim))
    return x.astype("float32"), y


_TRAINED = {}


def _trained_crc_model():
    """A 1-Lipschitz body and a CRC-Lip head trained with the regulariser."""
    if "model" not in _TRAINED:
        keras.utils.set_random_seed(0)
        x, y = _blobs()
        model = keras.Sequential(
            [
                keras.Input((6,)),
                layers.SpectralDense(16),
                layers.GroupSort2(),
                layers.SpectralDense(16),
                layers.CRCLipHead(
                    4, hidden_units=32, curvature_weight=0.05
                ),
            ]
        )
        model.compile(
            optimizer=keras.optimizers.Adam(0.01),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        model.fit(x, y, epochs=20, batch_size=32, verbose=0)
        _TRAINED["model"] = (model, x, y)
    return _TRAINED["model"]


def test_pgd_never_beats_the_curvature_certificate():
    """Attacks inside the verified-CRC radius, which is >= the fast one."""
    model, x, y = _trained_crc_model()
    model.layers[-1].certificate = "crc"
    try:
        radius = keras_lipschitz.certify(model, x, y)
    finally:
        model.layers[-1].certificate = "fast"
    certified = radius > 0
    assert certified.mean() > 0.3, "too few certified points to test"
    # The 64 smallest certified radii: the points closest to the boundary.
    index = np.flatnonzero(certified)
    index = index[np.argsort(radius[index])[:64]]
    xs, ys, rs = x[index], y[index], radius[index]
    _, success = attacks.pgd_l2(model, xs, ys, 0.999 * rs, steps=25)
    assert not np.any(success), "an attack beat a certificate"
    # The same attack at a larger radius succeeds: it is strong enough.
    _, success = attacks.pgd_l2(model, xs, ys, 3.0 * rs + 0.5, steps=15)
    assert np.mean(success) > 0.2


def test_certificates_compare_as_they_should():
    model, x, y = _trained_crc_model()
    head = model.layers[-1]
    fast = keras_lipschitz.certify(model, x, y)
    head.certificate = "crc"
    try:
        crc = keras_lipschitz.certify(model, x, y)
    finally:
        head.certificate = "fast"
    # The verified CRC only refines: never below the fast certificate, and
    # strictly above it somewhere.
    assert np.all(crc >= fast)
    assert np.mean(crc > fast * (1 + 1e-3)) > 0.1
    # Plain Lipschitz certificate of the same model, M / (sqrt(2) L).
    logits = helpers.to_numpy(model(x, training=False))
    top2 = np.sort(logits, axis=1)
    correct = logits.argmax(1) == y
    margin = np.where(correct, top2[:, -1] - top2[:, -2], 0.0)
    plain = margin / (np.sqrt(2) * keras_lipschitz.lipschitz_bound(model))
    assert np.all(fast >= plain * (1 - 1e-6) - 1e-9)
    # The curvature radius alone, r_c, per pair: it beats the pairwise
    # Lipschitz radius r_L = g / (|W1| |Δ|) exactly where the quadratic
    # model says it should: |∇g| r_L + m r_L^2 / 2 <= g.
    w1, b1, w2, b2 = head.head_weights()
    params = (w1, b1, w2, b2, head.beta)
    feature_model = keras.Model(model.inputs[0], model.layers[-2].output)
    phi = helpers.to_numpy(feature_model(x, training=False))
    bounds = curvature.curvature_bounds(w1, w2, head.beta)
    _, g, grad, diff = curvature._pair_quantities(params, phi, y)
    m = bounds[:, y].T
    r_c = curvature._fast_pair_radii(g, grad, m, np.zeros_like(g))
    k = np.linalg.norm(w1, ord=2) * diff
    ok = (g > 0) & (k > 0)
    r_l = np.where(ok, g / np.where(ok, k, 1), 0.0)
    should = ok & (grad * r_l + 0.5 * m * r_l**2 <= g * (1 - 1e-9))
    assert np.all(r_c[should] >= r_l[should] * (1 - 1e-9))
    assert np.all(r_c[ok & ~should] <= r_l[ok & ~should] * (1 + 1e-9))
    # After curvature regularisation the curvature radius wins on most pairs.
    assert np.mean(should[ok]) > 0.5


def test_certify_uses_the_body_bound_and_all_classes():
    model, x, y = _trained_crc_model()
    head = model.layers[-1]
    radius = keras_lipschitz.certify(model, x, y)
    body = keras.Sequential([keras.Input((6,))] + model.layers[:-1])
    body_bound = keras_lipschitz.lipschitz_bound(body)
    phi = helpers.to_numpy(body(x, training=False))
    w1, b1, w2, b2 = head.head_weights()
    params = (w1, b1, w2, b2, head.beta)
    bounds = curvature.curvature_bounds(w1, w2, head.beta)
    # Independent per-pair loop over every class j != y.
    norm1 = np.linalg.norm(w1, ord=2)
    expected = np.zeros(len(x))
    for i in range(len(x)):
        z = _numpy_logits(params, phi[i : i + 1])[0]
        s = _sigmoid(head.beta * (phi[i] @ w1 + b1))
        best = np.inf
        for j in range(4):
            if j == y[i]:
                continue
            delta = w2[:, y[i]] - w2[:, j]
            g = z[y[i]] - z[j]
            if g <= 0:
                best = 0.0
                break
            grad = np.linalg.norm(w1 @ (delta * s))
            m = bounds[j, y[i]]
            r_c = (np.sqrt(grad**2 + 2 * m * g) - grad) / m if m > 0 else (
                g / grad)
            r_l = g / (norm1 * np.linalg.norm(delta))
            best = min(best, max(r_c, r_l))
        expected[i] = best / body_bound
    np.testing.assert_allclose(radius, expected, rtol=1e-6, atol=1e-9)


def test_certify_handles_inputs_that_are_features(tmp_path):
    head = layers.CRCLipHead(3, hidden_units=8)
    model = keras.Sequential([keras.Input((4,)), head])
    rng = np.random.default_rng(5)
    x = rng.normal(size=(20, 4)).astype("float32")
    y = helpers.to_numpy(model(x)).argmax(1)
    radius = keras_lipschitz.certify(model, x, y)
    assert np.all(radius > 0)
    # Misclassified points and non-finite features are not certified.
    radius = keras_lipschitz.certify(model, x, (y + 1) % 3)
    assert np.all(radius == 0)
    x[0, 0] = np.nan
    assert keras_lipschitz.certify(model, x, y)[0] == 0.0


# --------------------------------------------------------------------------
# Training regulariser.
# --------------------------------------------------------------------------


def test_curvature_regulariser_reaches_fit():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = rng.integers(0, 3, 64)
    penalties = {}
    for weight in (0.0, 10.0):
        keras.utils.set_random_seed(0)
        head = layers.CRCLipHead(3, hidden_units=16, curvature_weight=weight)
        model = keras.Sequential([keras.Input((6,)), head])
        model.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        before = float(helpers.to_numpy(head.curvature_penalty()))
        model.fit(x, y, epochs=4, batch_size=64, verbose=0)
        penalties[weight] = float(helpers.to_numpy(head.curvature_penalty()))
    assert penalties[10.0] < 0.2 * before
    assert penalties[0.0] > 0.5 * before
    # The training estimate never exceeds the sound bound it imitates.
    w1, _, w2, _ = head.head_weights()
    bound = curvature.curvature_bounds(w1, w2, 1.0, method="norm")
    assert penalties[10.0] <= bound.sum() / 6 * (1 + 1e-5)


# --------------------------------------------------------------------------
# Layer contract.
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"num_classes": 1}, "num_classes"),
        ({"num_classes": 3, "hidden_units": 0}, "hidden_units"),
        ({"num_classes": 3, "beta": 0.0}, "beta"),
        ({"num_classes": 3, "beta": float("inf")}, "beta"),
        ({"num_classes": 3, "curvature_weight": -1.0}, "curvature_weight"),
        ({"num_classes": 3, "power_iterations": 0}, "power_iterations"),
        ({"num_classes": 3, "certificate": "exact"}, "certificate"),
    ],
)
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        layers.CRCLipHead(**kwargs)


def test_bad_inputs():
    with pytest.raises(ValueError, match="static"):
        layers.CRCLipHead(3).build((None, None))
    with pytest.raises(ValueError, match="method"):
        curvature.curvature_bounds(np.eye(2), np.eye(2), 1.0, method="power")
    with pytest.raises(ValueError, match="certificate"):
        curvature.feature_radii(
            (np.eye(2), np.zeros(2), np.eye(2), np.zeros(2), 1.0),
            np.zeros((1, 2)), np.zeros(1, int), np.zeros((2, 2)), "exact",
        )
    model = keras.Sequential(
        [keras.Input((3,)), layers.CRCLipHead(3, hidden_units=4)]
    )
    with pytest.raises(ValueError, match="y"):
        keras_lipschitz.certify(model, np.zeros((2, 3)), [0, 5])
    with pytest.raises(ValueError, match="CRCLipHead"):
        curvature.certify_curvature_head(
            keras.Sequential([keras.Input((3,)), layers.SpectralDense(2)]),
            np.zeros((1, 3)), [0],
        )


def test_save_load_and_config(tmp_path):
    head = layers.CRCLipHead(
        3, hidden_units=8, beta=2.0, curvature_weight=0.1, certificate="crc"
    )
    model = keras.Sequential([keras.Input((2, 3)), head])
    x = np.random.default_rng(7).normal(size=(5, 2, 3)).astype("float32")
    y = helpers.to_numpy(model(x)).argmax(1)
    loaded = helpers.save_and_load(model, tmp_path)
    np.testing.assert_allclose(
        helpers.to_numpy(loaded(x)), helpers.to_numpy(model(x)), atol=1e-6
    )
    np.testing.assert_allclose(
        keras_lipschitz.certify(loaded, x, y),
        keras_lipschitz.certify(model, x, y),
    )
    assert loaded.layers[-1].certificate == "crc"
    revived = layers.CRCLipHead.from_config(head.get_config())
    assert revived.get_config() == head.get_config()
    assert head.compute_output_shape((None, 2, 3)) == (None, 3)
    w1, _, w2, _ = head.head_weights()
    assert head.lipschitz_upper_bound() == pytest.approx(
        np.linalg.norm(w1, ord=2) * np.linalg.norm(w2, ord=2)
    )


# --------------------------------------------------------------------------
# LLN: FrobeniusDense(disjoint_neurons=True) as the last layer.
# --------------------------------------------------------------------------


def test_lln_model_is_certified_with_pairwise_distances():
    keras.utils.set_random_seed(0)
    x, y = _blobs(n=96, classes=5, seed=1)
    model = keras.Sequential(
        [
            keras.Input((6,)),
            layers.SpectralDense(16),
            layers.GroupSort2(),
            layers.SpectralDense(16),
            layers.GroupSort2(),
            layers.FrobeniusDense(5, disjoint_neurons=True),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(0.02),
        loss=keras_lipschitz.losses.TauCategoricalCrossentropy(tau=10.0),
    )
    model.fit(x, y, epochs=10, batch_size=32, verbose=0)
    radius = keras_lipschitz.certify(model, x, y)
    # NumPy: body bound from exact SVDs, min over all 4 other classes.
    body = 1.0
    for layer in model.layers[:-1]:
        kernel = getattr(layer, "effective_kernel", None)
        if kernel is not None:
            body *= np.linalg.norm(kernel().astype(np.float64), ord=2)
    w = model.layers[-1].effective_kernel().astype(np.float64)
    logits = helpers.to_numpy(model(x, training=False))
    expected = np.zeros(len(x))
    for i in range(len(x)):
        ratios = [
            (logits[i, y[i]] - logits[i, j])
            / (body * np.linalg.norm(w[:, y[i]] - w[:, j]))
            for j in range(5)
            if j != y[i]
        ]
        expected[i] = max(min(ratios), 0.0)
    np.testing.assert_allclose(radius, expected, rtol=1e-4, atol=1e-6)
    certified = radius > 0
    assert certified.mean() > 0.3
    xs, ys, rs = x[certified], y[certified], radius[certified]
    _, success = attacks.pgd_l2(model, xs, ys, 0.999 * rs, steps=25)
    assert not np.any(success)
    _, success = attacks.pgd_l2(model, xs, ys, 3.0 * rs + 0.5, steps=15)
    assert np.any(success)


def test_identical_rows_do_not_certify_a_wrong_prediction():
    """z_y - z_j constant and negative must not give an infinite ratio."""
    dense = keras.layers.Dense(3)
    model = keras.Sequential([keras.Input((2,)), dense])
    kernel = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], "float32")
    dense.set_weights([kernel, np.array([0.0, 0.0, 1.0], "float32")])
    x = np.array([[-5.0, 0.0], [0.0, 3.0]], "float32")
    # Class 2 always beats class 1 by 1: label 1 is never predicted.
    radius = keras_lipschitz.certify(model, x, [1, 1])
    np.testing.assert_array_equal(radius, [0.0, 0.0])
    # Label 2 against class 1 is certified at any radius by that pair.
    radius = keras_lipschitz.certify(model, x, [2, 2])
    assert radius[1] > 0 and np.isfinite(radius[1])


def test_verified_crc_is_sound_and_nearly_tight_on_features():
    """On the head alone the attack finds the boundary just past r_crc."""
    keras.utils.set_random_seed(0)
    head = layers.CRCLipHead(
        4,
        hidden_units=16,
        bias_initializer=keras.initializers.RandomNormal(seed=1),
        certificate="crc",
    )
    model = keras.Sequential([keras.Input((5,)), head])
    x = np.random.default_rng(5).normal(size=(32, 5)).astype("float32")
    y = helpers.to_numpy(model(x)).argmax(1)
    radius = keras_lipschitz.certify(model, x, y)
    assert np.all(radius > 0)
    _, success = attacks.pgd_l2(model, x, y, 0.999 * radius, steps=25)
    assert not np.any(success)
    # A sound but loose certificate (e.g. the fast one, about 1.3x smaller
    # here) would leave most of these attacks failing.
    _, success = attacks.pgd_l2(model, x, y, 1.3 * radius, steps=25)
    assert np.mean(success) > 0.5
