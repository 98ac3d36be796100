"""Soundness of `lipschitz_bound`, `certify` and `certified_accuracy`."""

import keras
import numpy as np
import pytest

import keras_lipschitz
from keras_lipschitz import _backend
from keras_lipschitz import attacks
from keras_lipschitz import layers
from tests import helpers


def _blobs(n=256, dim=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = 2.0 * rng.normal(size=(classes, dim))
    y = rng.integers(0, classes, n)
    x = centers[y] + 0.6 * rng.normal(size=(n, dim))
    return x.astype("float32"), y


def _train(model, x, y, epochs=30):
    def tau_ce(y_true, logits):
        return keras.losses.sparse_categorical_crossentropy(
            y_true, 10.0 * logits, from_logits=True
        )

    model.compile(optimizer=keras.optimizers.Adam(0.02), loss=tau_ce)
    model.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
    return model


def _lipschitz_mlp(last):
    return keras.Sequential(
        [
            keras.Input((6,)),
            layers.SpectralDense(32),
            layers.GroupSort2(),
            layers.BjorckDense(32),
            layers.GroupSort2(),
            last,
        ]
    )


def _plain_mlp():
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(32, activation="tanh"),
            keras.layers.Dense(3),
        ]
    )


MODELS = {
    "lln": lambda: _lipschitz_mlp(layers.FrobeniusDense(3)),
    "spectral_last": lambda: _lipschitz_mlp(layers.SpectralDense(3)),
    "plain": _plain_mlp,
}


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_pgd_never_beats_a_certificate(kind):
    x, y = _blobs()
    model = _train(MODELS[kind](), x, y)
    radius = keras_lipschitz.certify(model, x, y)
    certified = radius > 0
    assert certified.mean() > 0.3, "too few certified points to test"
    _, success = attacks.pgd_l2(
        model, x[certified], y[certified], 0.999 * radius[certified],
        steps=30,
    )
    assert not np.any(success), "an attack beat a certificate"
    # The same attack with 4x the radius must succeed somewhere, which shows
    # that it is strong enough for the check above to fail if unsound.
    _, success = attacks.pgd_l2(
        model, x[certified], y[certified], 4.0 * radius[certified] + 0.5,
        steps=30,
    )
    assert np.any(success)


def test_compiled_input_gradient_matches_the_eager_gradient():
    # The attacks' compiled (value, aux) gradient equals the eager one at
    # every call, not only at the input it was traced with.
    model = _plain_mlp()
    weights = keras.ops.convert_to_tensor(np.float32([1.0, -2.0, 0.5]))

    def objective(x):
        logits = model(x, training=False)
        return keras.ops.sum(logits * weights), logits

    compiled = _backend.compiled_input_gradient(objective)
    rng = np.random.default_rng(0)
    for _ in range(2):
        x = rng.normal(size=(5, 6)).astype("float32")
        logits, grad = compiled(x)
        _, expected = _backend.value_and_input_gradient(
            lambda v: objective(v)[0], x
        )
        np.testing.assert_allclose(
            helpers.to_numpy(logits), helpers.to_numpy(model(x)), rtol=1e-5
        )
        np.testing.assert_allclose(
            helpers.to_numpy(grad), helpers.to_numpy(expected), rtol=1e-5,
            atol=1e-6,
        )


def test_pgd_results_lie_in_the_ball_and_flip_where_reported():
    x, y = _blobs(n=64)
    model = _train(MODELS["plain"](), x, y, epochs=5)
    eps = np.linspace(0.1, 3.0, len(x)).astype("float32")
    for restarts in (1, 2):
        x_adv, success = attacks.pgd_l2(
            model, x, y, eps, steps=10, restarts=restarts
        )
        norms = np.linalg.norm(x_adv - x, axis=1)
        assert np.all(norms <= eps * (1 + 1e-5) + 1e-6)
        predicted = np.argmax(helpers.to_numpy(model(x_adv)), axis=1)
        np.testing.assert_array_equal(predicted != y, success)
        assert 0 < success.sum() < len(x)


def test_certify_matches_the_pairwise_formula():
    x, y = _blobs(n=64)
    model = _train(MODELS["lln"](), x, y, epochs=5)
    radius = keras_lipschitz.certify(model, x, y)
    logits = helpers.to_numpy(model(x, training=False))
    w = model.layers[-1].effective_kernel().astype(np.float64)
    body = 1.0
    for layer in model.layers[:-1]:
        body *= layer.lipschitz_upper_bound()
    expected = np.full(len(x), np.inf)
    for i in range(len(x)):
        for j in range(3):
            if j != y[i]:
                k = body * np.linalg.norm(w[:, y[i]] - w[:, j])
                expected[i] = min(expected[i], (logits[i, y[i]] - logits[i, j]) / k)
    expected = np.where(expected > 0, expected, 0.0)
    # predict() and a direct call differ by float32 rounding.
    np.testing.assert_allclose(radius, expected, rtol=1e-5, atol=1e-7)
    # Pairwise is at least as good as the global M / (sqrt(2) L).
    bound = keras_lipschitz.lipschitz_bound(model)
    top2 = np.sort(logits, axis=1)
    margin = np.where(logits.argmax(1) == y, top2[:, -1] - top2[:, -2], 0)
    assert np.all(radius >= margin / (np.sqrt(2) * bound) - 1e-9)


def test_certified_accuracy_counts_strictly_greater():
    x, y = _blobs(n=64)
    model = _train(MODELS["spectral_last"](), x, y, epochs=5)
    radius = keras_lipschitz.certify(model, x, y)
    eps = [0.0, float(np.median(radius[radius > 0])), 10.0]
    acc = keras_lipschitz.certified_accuracy(model, x, y, eps)
    np.testing.assert_allclose(acc, [np.mean(radius > e) for e in eps])
    assert acc[0] >= acc[1] >= acc[2]
    # Clean accuracy equals certified accuracy at 0 (up to ties at 0).
    pred = helpers.to_numpy(model(x, training=False)).argmax(1)
    assert acc[0] == pytest.approx(np.mean(pred == y))


def test_nan_inputs_are_not_certified():
    x, y = _blobs(n=8)
    model = _train(MODELS["lln"](), x, y, epochs=2)
    x = x.copy()
    x[0, 0] = np.nan
    radius = keras_lipschitz.certify(model, x, y)
    assert radius[0] == 0.0
    assert np.all(np.isfinite(radius))


def _gradient_norms(model, x, num_directions=8, seed=0):
    """Norms of input gradients of random unit projections of the output."""
    rng = np.random.default_rng(seed)
    out_dim = int(np.prod(model.output_shape[1:]))
    norms = []
    for _ in range(num_directions):
        u = rng.normal(size=(out_dim,))
        u = keras.ops.convert_to_tensor((u / np.linalg.norm(u)), "float32")

        def projection(v):
            out = keras.ops.reshape(model(v, training=False), (-1, out_dim))
            return keras.ops.sum(out * u)

        _, grad = _backend.value_and_input_gradient(projection, x)
        grad = helpers.to_numpy(grad).reshape(len(x), -1)
        norms.append(np.linalg.norm(grad, axis=1))
    return np.max(norms)


def _residual_conv_model():
    inputs = keras.Input((8, 8, 2))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    branch = layers.SpectralConv2D(4, 3)(x)
    x = keras.layers.Add()([x, branch])
    x = layers.GroupSort2()(x)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(4, 2, strides=2, padding="valid")(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(3)(x)
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize(
    "builder,shape",
    [
        (_plain_mlp, (6,)),
        (lambda: MODELS["lln"](), (6,)),
        (_residual_conv_model, (8, 8, 2)),
    ],
)
def test_bound_lies_above_gradient_norms_and_pair_ratios(builder, shape):
    model = builder()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64,) + shape).astype("float32")
    bound = keras_lipschitz.lipschitz_bound(model)
    assert _gradient_norms(model, x) <= bound * (1 + 1e-5)
    ratio = helpers.random_pair_ratio(
        lambda v: model(v, training=False), shape, pairs=128
    )
    assert ratio <= bound * (1 + 1e-5)


def test_bound_of_linear_models_is_above_the_exact_norm():
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(3, 3, padding="same")(inputs)
    x = keras.layers.Conv2D(2, 3, strides=2, padding="valid")(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(4)(x)
    model = keras.Model(inputs, outputs)
    exact = helpers.singular_values(
        helpers.linear_jacobian(lambda v: model(v, training=False), (6, 6, 2))
    )[0]
    bound = keras_lipschitz.lipschitz_bound(model)
    assert exact <= bound * (1 + 1e-6)
    # Per-layer exact norms: the product is not absurdly loose here.
    assert bound <= 50 * exact


def test_residual_add_is_the_sum_of_branch_bounds():
    inputs = keras.Input((5,))
    a = keras.layers.Dense(5, use_bias=False)(inputs)
    b = keras.layers.Dense(5, use_bias=False)(inputs)
    model = keras.Model(inputs, keras.layers.Add()([a, b]))
    norms = [
        np.linalg.norm(helpers.to_numpy(layer.kernel), 2)
        for layer in model.layers
        if isinstance(layer, keras.layers.Dense)
    ]
    assert keras_lipschitz.lipschitz_bound(model) == pytest.approx(sum(norms))


def test_input_rescaling_and_normalization_scale_the_bound():
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Rescaling(1 / 0.25),
            layers.SpectralDense(3),
        ]
    )
    assert keras_lipschitz.lipschitz_bound(model) == pytest.approx(
        4.0 * model.layers[-1].lipschitz_upper_bound()
    )


def test_unsupported_layer_is_named():
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(3),
            keras.layers.Lambda(lambda t: 3 * t, name="mystery"),
        ]
    )
    with pytest.raises(ValueError, match="mystery"):
        keras_lipschitz.lipschitz_bound(model)


@pytest.mark.parametrize(
    "y,match",
    [
        (np.array([0, 1, 5, 1]), "outside"),
        (np.array([0, 1, -1, 1]), "outside"),
        (np.zeros((4, 2, 2)), "labels"),
        (np.array([0, 1, 2]), "different numbers"),
    ],
)
def test_certify_rejects_bad_labels(y, match):
    model = MODELS["lln"]()
    x = np.zeros((4, 6), "float32")
    with pytest.raises(ValueError, match=match):
        keras_lipschitz.certify(model, x, y)


def test_certify_rejects_bad_norm_and_epsilon():
    model = MODELS["lln"]()
    x, y = np.zeros((4, 6), "float32"), np.zeros(4, int)
    with pytest.raises(ValueError, match="`norm`"):
        keras_lipschitz.certify(model, x, y, norm="l3")
    with pytest.raises(ValueError, match="`epsilons`"):
        keras_lipschitz.certified_accuracy(model, x, y, [-0.1])
