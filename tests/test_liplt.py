"""LipLT bounds, the CRM loss and empirical Lipschitz lower bounds."""

import keras
import numpy as np
import pytest
from keras import ops

import keras_lipschitz
from keras_lipschitz import _backend
from keras_lipschitz import attacks
from keras_lipschitz import liplt
from keras_lipschitz import losses
from tests import helpers


def _mlp(activations=("relu", "relu", "relu"), width=12, classes=4, seed=0):
    keras.utils.set_random_seed(seed)
    stack = [keras.Input((5,))]
    for act in activations:
        stack.append(
            keras.layers.Dense(
                width,
                activation=act,
                kernel_initializer=keras.initializers.RandomNormal(stddev=0.5),
                bias_initializer=keras.initializers.RandomNormal(stddev=0.5),
            )
        )
    stack.append(keras.layers.Dense(classes))
    return keras.Sequential(stack)


def _convnet(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            keras.layers.Conv2D(3, 3, padding="same", activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Conv2D(4, 3, strides=2, padding="valid"),
            keras.layers.ReLU(),
            keras.layers.Flatten(),
            keras.layers.Dense(3),
        ]
    )
    bn = model.layers[1]
    rng = np.random.default_rng(seed)
    bn.moving_variance.assign(rng.uniform(0.3, 2.0, 3).astype("float32"))
    bn.gamma.assign(rng.uniform(0.5, 1.5, 3).astype("float32"))
    return model


# ---------------------------------------------------------------- reference
def _block_matrices(model):
    """Explicit matrices (out x in) of the linear blocks, from Jacobians."""
    if any(isinstance(l, keras.layers.Conv2D) for l in model.layers):
        conv1, bn, conv2, _, _, dense = model.layers
        scale = helpers.to_numpy(bn.gamma) / np.sqrt(
            helpers.to_numpy(bn.moving_variance) + bn.epsilon
        )

        def block1(x):
            return ops.conv(x, conv1.kernel, padding="same")

        def block2(x):
            return ops.conv(x * scale.astype("float32"), conv2.kernel,
                            strides=2, padding="valid")

        m1 = helpers.linear_jacobian(block1, (6, 6, 2))
        m2 = helpers.linear_jacobian(block2, (6, 6, 3))
        m3 = helpers.to_numpy(dense.kernel).T
        return [m1, m2, m3], [(0.0, 1.0), (0.0, 1.0)]
    mats, slopes = [], []
    table = {"relu": (0.0, 1.0), "tanh": (0.0, 1.0), "sigmoid": (0.0, 0.25),
             "leaky_relu": (0.2, 1.0)}
    for layer in model.layers:
        mats.append(helpers.to_numpy(layer.kernel).T)
        name = layer.activation.__name__
        if name != "linear":
            slopes.append(table[name])
    return mats, slopes


def _reference(mats, slopes, last_rows=None):
    """LipLT recursion in float64 with SVD norms (1-indexed as the paper)."""
    n = len(mats)
    a = [(lo + hi) / 2 for lo, hi in slopes]
    b = [(hi - lo) / 2 for lo, hi in slopes]

    def prod(j, k, rows=None):  # ||W_k ... W_j|| (1-indexed, inclusive)
        m = np.eye(mats[j - 1].shape[1])
        for i in range(j, k + 1):
            m = mats[i - 1] @ m
        if rows is not None:
            return np.linalg.norm(rows @ m, axis=1)
        return np.linalg.svd(m, compute_uv=False)[0]

    def big_a(p, q):
        return float(np.prod([a[i - 1] for i in range(p, q + 1)]))

    ms = {}
    for k in range(1, n + 1):
        ms[k] = big_a(1, k - 1) * prod(1, k) + sum(
            b[j - 1] * big_a(j + 1, k - 1) * prod(j + 1, k) * ms[j]
            for j in range(1, k)
        )
    if last_rows is None:
        return ms[n]
    return big_a(1, n - 1) * prod(1, n, last_rows) + sum(
        b[j - 1] * big_a(j + 1, n - 1) * prod(j + 1, n, last_rows) * ms[j]
        for j in range(1, n)
    )


def _gradient_norms(model, x, projections):
    """Norms of input gradients of <p, f(x)> for each row p (per example)."""
    norms = []
    for p in projections:
        p_tensor = ops.convert_to_tensor(p.astype("float32"))

        def fn(inputs, p_tensor=p_tensor):
            return ops.sum(model(inputs, training=False) * p_tensor)

        _, grad = _backend.value_and_input_gradient(fn, x)
        grad = helpers.to_numpy(grad).reshape(len(x), -1)
        norms.append(np.linalg.norm(grad, axis=1))
    return np.array(norms)


MODELS = {
    "relu_mlp": lambda: _mlp(),
    "mixed_mlp": lambda: _mlp(("relu", "tanh", "leaky_relu", "sigmoid")),
    "convnet": _convnet,
}


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_liplt_is_sound_exact_and_below_product(kind):
    model = MODELS[kind]()
    bound = keras_lipschitz.lipschitz_bound(model, method="liplt")
    product = keras_lipschitz.lipschitz_bound(model)
    mats, slopes = _block_matrices(model)
    np.testing.assert_allclose(
        liplt.liplt_lipschitz_bound(model), _reference(mats, slopes), rtol=1e-7
    )
    assert bound <= product * (1 + 1e-9)
    assert bound < 0.95 * product, "LipLT should improve on random nets"
    # Measured local gains never exceed it.
    rng = np.random.default_rng(1)
    shape = tuple(model.input_shape[1:])
    x = rng.normal(size=(32,) + shape).astype("float32")
    classes = model.output_shape[-1]
    projections = rng.normal(size=(3, classes))
    projections /= np.linalg.norm(projections, axis=1, keepdims=True)
    grads = _gradient_norms(model, x, projections)
    assert np.max(grads) <= bound * (1 + 1e-5)
    lower = keras_lipschitz.empirical_lipschitz(model, x[:8], steps=3)
    assert 0 < lower <= bound * (1 + 1e-5)
    assert lower >= 0.5 * np.max(grads), "the lower bound search is weak"


@pytest.mark.parametrize("kind", ["mixed_mlp", "convnet"])
def test_pairwise_bounds_exact_and_dominate_gradients(kind):
    model = MODELS[kind]()
    pair = liplt.liplt_pairwise_bounds(model)
    classes = pair.shape[0]
    rows = []
    for p in range(classes):
        for q in range(p + 1, classes):
            r = np.zeros(classes)
            r[p], r[q] = 1.0, -1.0
            rows.append(r)
    rows = np.array(rows)
    mats, slopes = _block_matrices(model)
    expected = _reference(mats, slopes, last_rows=rows)
    got = np.array([pair[p, q] for p in range(classes)
                    for q in range(p + 1, classes)])
    np.testing.assert_allclose(got, expected, rtol=1e-7)
    np.testing.assert_allclose(pair, pair.T)
    assert np.all(np.diag(pair) == 0)
    # Never above sqrt(2) L, and bounds every measured gradient of z_p - z_q.
    bound = liplt.liplt_lipschitz_bound(model)
    assert np.all(got <= np.sqrt(2) * bound * (1 + 1e-9))
    rng = np.random.default_rng(2)
    x = rng.normal(size=(32,) + tuple(model.input_shape[1:])).astype("float32")
    grads = _gradient_norms(model, x, rows)  # (pairs, N)
    assert np.all(grads <= got[:, None] * (1 + 1e-5))


def test_training_estimate_converges_to_the_exact_bound():
    model = _convnet()
    estimate = liplt.LipLTBound(model, iterations=30)
    exact_pair = liplt.liplt_pairwise_bounds(model)
    first = helpers.to_numpy(estimate.pairwise(update=True))
    # Power-iteration norms are lower estimates of the exact ones.
    assert np.all(first <= exact_pair * (1 + 1e-5) + 1e-6)
    # The stored vectors warm-start the next call: it gets closer.
    pair = helpers.to_numpy(estimate.pairwise(update=True))
    assert np.all(np.abs(pair - exact_pair) <= np.abs(first - exact_pair)
                  + 1e-5)
    estimate.lipschitz(update=True)
    value = float(helpers.to_numpy(estimate.lipschitz(update=True)))
    np.testing.assert_allclose(pair, exact_pair, rtol=2e-3, atol=1e-6)
    np.testing.assert_allclose(
        value, liplt.liplt_lipschitz_bound(model), rtol=2e-3
    )
    # Power-iteration norms are lower estimates: never above the exact one.
    assert value <= liplt.liplt_lipschitz_bound(model) * (1 + 1e-4)
    # update=False leaves the state alone.
    before = [helpers.to_numpy(v) for v in estimate.vectors]
    estimate.pairwise(update=False)
    for b, v in zip(before, estimate.vectors):
        np.testing.assert_array_equal(b, helpers.to_numpy(v))


def _numpy_crm(labels, logits, pair, mu, t, max_radius, form):
    out = []
    for z, y in zip(logits.astype(np.float64), labels):
        ce = -z[y] + np.log(np.sum(np.exp(z)))
        top = int(np.argmax(z))
        r = np.array([(z[top] - z[j]) / pair[top, j]
                      for j in range(len(z)) if j != top])
        penalty = 0.0
        if top == y and r.min() < max_radius:
            if form == "softmax":
                penalty = np.log(np.sum(np.exp(-t * r))) / t
            else:
                penalty = np.exp(-t * r.min()) / t
        out.append(ce + mu * penalty)
    return np.array(out)


@pytest.mark.parametrize("form", ["softmax", "max"])
def test_crm_matches_numpy(form):
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(16, 4)).astype("float32")
    labels = np.where(rng.uniform(size=16) < 0.7, logits.argmax(1),
                      rng.integers(0, 4, 16))
    pair = rng.uniform(0.5, 3.0, size=(4, 4))
    pair = (pair + pair.T) / 2
    np.fill_diagonal(pair, 0.0)
    got = helpers.to_numpy(
        losses.crm(labels, logits, pair.astype("float32"), mu=7.0, t=3.0,
                   max_radius=0.8, form=form)
    )
    expected = _numpy_crm(labels, logits, pair, 7.0, 3.0, 0.8, form)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # Some samples are penalized, some are not, so the test can fail.
    ce = _numpy_crm(labels, logits, pair, 0.0, 3.0, 0.8, form)
    assert np.any(expected > ce + 1e-3) and np.any(np.isclose(expected, ce))
    # One-hot labels give the same values.
    one_hot = np.eye(4, dtype="float32")[labels]
    again = helpers.to_numpy(
        losses.crm(one_hot, logits, pair.astype("float32"), mu=7.0, t=3.0,
                   max_radius=0.8, form=form)
    )
    np.testing.assert_allclose(again, got, rtol=1e-6)


def test_crm_trains_through_fit_and_updates_state():
    model = _mlp(("relu", "relu"), width=8, classes=3)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(64, 5)).astype("float32")
    y = rng.integers(0, 3, 64)
    loss = losses.CRM.for_model(model, iterations=2, mu=5.0, t=5.0,
                                max_radius=1.0, form="softmax")
    config = loss.get_config()
    assert losses.CRM.from_config(config).get_config() == config
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=loss)
    before = [helpers.to_numpy(v) for v in loss.bound.vectors]
    kernel_before = helpers.to_numpy(model.layers[0].kernel)
    bound_before = liplt.liplt_lipschitz_bound(model)
    history = model.fit(x, y, epochs=3, batch_size=32, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert "liplt" in history.history
    after = [helpers.to_numpy(v) for v in loss.bound.vectors]
    assert np.max(np.abs(after[0] - before[0])) > 1e-4, "state not updated"
    assert np.max(np.abs(helpers.to_numpy(model.layers[0].kernel)
                         - kernel_before)) > 1e-4
    # The radius penalty shrinks the Lipschitz bound (CE alone would grow it).
    assert liplt.liplt_lipschitz_bound(model) < bound_before
    with pytest.raises(ValueError, match="LipLTBound"):
        losses.CRM()(y[:2], model(x[:2]))


def test_certify_with_pairwise_liplt_resists_attacks():
    rng = np.random.default_rng(0)
    centers = 2.0 * rng.normal(size=(3, 5))
    y = rng.integers(0, 3, 192)
    x = (centers[y] + 0.5 * rng.normal(size=(192, 5))).astype("float32")
    model = _mlp(("relu", "relu"), width=16, classes=3)
    model.compile(
        optimizer=keras.optimizers.Adam(0.02),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, y, epochs=20, batch_size=64, verbose=0)
    product = keras_lipschitz.certify(model, x, y, method="product")
    radius = keras_lipschitz.certify(model, x, y, method="liplt")
    auto = keras_lipschitz.certify(model, x, y)
    assert np.all(auto >= np.maximum(radius, product) - 1e-12)
    assert np.mean(radius > product) > 0.5, "LipLT should be tighter here"
    certified = radius > 0
    assert certified.mean() > 0.3, "too few certified points to test"
    _, success = attacks.pgd_l2(
        model, x[certified], y[certified], 0.999 * radius[certified], steps=20
    )
    assert not np.any(success), "an attack beat a LipLT certificate"
    _, success = attacks.pgd_l2(
        model, x[certified], y[certified], 4.0 * radius[certified] + 0.5,
        steps=20,
    )
    assert np.any(success)


def test_unsupported_layers_raise_naming_the_layer():
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(4, activation="relu", name="body")(inputs)
    skip = keras.layers.Add(name="the_skip")([hidden, inputs])
    model = keras.Model(inputs, keras.layers.Dense(2)(skip))
    with pytest.raises(ValueError, match="the_skip.*Supported"):
        keras_lipschitz.lipschitz_bound(model, method="liplt")
    assert keras_lipschitz.lipschitz_bound(model) > 0  # product still works
    with pytest.raises(ValueError, match="the_skip"):
        keras_lipschitz.certify(model, np.zeros((2, 4)), [0, 1],
                                method="liplt")
    pooled = keras.Sequential([
        keras.Input((4, 4, 1)), keras.layers.Conv2D(2, 3),
        keras.layers.MaxPooling2D(name="the_pool"), keras.layers.Flatten(),
        keras.layers.Dense(2),
    ])
    with pytest.raises(ValueError, match="the_pool"):
        liplt.LipLTBound(pooled)
    gelu = keras.Sequential([keras.Input((3,)),
                             keras.layers.Dense(3, activation="gelu",
                                                name="the_gelu"),
                             keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="the_gelu.*gelu"):
        liplt.liplt_lipschitz_bound(gelu)
    with pytest.raises(ValueError, match="method"):
        keras_lipschitz.lipschitz_bound(gelu, method="fast")
    with pytest.raises(ValueError, match="method"):
        keras_lipschitz.certify(gelu, np.zeros((2, 3)), [0, 1], method="x")
    with pytest.raises(ValueError, match="iterations"):
        liplt.LipLTBound(_mlp(), iterations=0)
