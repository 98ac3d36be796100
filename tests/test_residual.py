"""Residual combiners: exact composition in `lipschitz_bound`, certificates
attacked, saving and bad input."""

import keras
import numpy as np
import pytest

import keras_lipschitz
from keras_lipschitz import attacks
from keras_lipschitz import layers
from tests import helpers


def _linear_residual(combiner, units=5, seed=0):
    """x -> combiner([x, W x]) with a plain Dense W (no bias)."""
    inputs = keras.Input((units,))
    branch = keras.layers.Dense(
        units if not isinstance(combiner, layers.ConcatResidual) else 3,
        use_bias=False,
        kernel_initializer=keras.initializers.RandomNormal(seed=seed),
    )(inputs)
    return keras.Model(inputs, combiner([inputs, branch]))


def _branch_norm(model):
    dense = [l for l in model.layers if isinstance(l, keras.layers.Dense)][0]
    return np.linalg.norm(helpers.to_numpy(dense.kernel), 2)


@pytest.mark.parametrize("alpha", [0.1, 0.5, 0.9])
def test_lip_residual_bound_is_the_convex_combination(alpha):
    model = _linear_residual(layers.LipResidual(initial_alpha=alpha))
    bound = keras_lipschitz.lipschitz_bound(model)
    a = model.layers[-1].alpha()
    assert a == pytest.approx(alpha, rel=1e-6)
    # (1 - a) is computed in float32, as in `call`.
    assert bound == pytest.approx(a + (1 - a) * _branch_norm(model), rel=1e-6)
    # The exact Jacobian a I + (1 - a) W lies below the bound.
    exact = helpers.singular_values(
        helpers.linear_jacobian(lambda x: model(x, training=False), (5,))
    )[0]
    assert exact <= bound * (1 + 1e-6)
    # And the bound is not the Add bound 1 + ||W||.
    assert bound < 1 + _branch_norm(model) - 1e-3


def test_lip_residual_after_training_moves_alpha_and_stays_bounded():
    model = _linear_residual(layers.LipResidual())
    before = model.layers[-1].alpha()
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5)).astype("float32")
    model.fit(x, 10 * rng.normal(size=(64, 5)).astype("float32"),
              epochs=5, verbose=0)
    after = model.layers[-1].alpha()
    assert abs(after - before) > 1e-3 and 0.0 < after < 1.0
    exact = helpers.singular_values(
        helpers.linear_jacobian(lambda x: model(x, training=False), (5,))
    )[0]
    bound = keras_lipschitz.lipschitz_bound(model)
    assert exact <= bound * (1 + 1e-6)
    assert bound == pytest.approx(
        after + (1 - after) * _branch_norm(model), rel=1e-6
    )


def test_lip_residual_of_one_lipschitz_branch_is_one_lipschitz():
    inputs = keras.Input((6,))
    branch = layers.GroupSort2()(layers.SpectralDense(6)(inputs))
    model = keras.Model(inputs, layers.LipResidual(0.3)([inputs, branch]))
    assert keras_lipschitz.lipschitz_bound(model) <= 1 + 1e-6
    ratio = helpers.random_pair_ratio(
        lambda x: model(x, training=False), (6,)
    )
    assert ratio <= 1 + 1e-5
    # Add of the same branch would be bounded by 2 only.
    added = keras.Model(inputs, keras.layers.Add()([inputs, branch]))
    assert keras_lipschitz.lipschitz_bound(added) == pytest.approx(
        2.0, rel=1e-3
    )


def test_concat_residual_bound_is_exact_for_linear_branches():
    model = _linear_residual(layers.ConcatResidual())
    bound = keras_lipschitz.lipschitz_bound(model)
    norm = _branch_norm(model)
    assert bound == pytest.approx(np.sqrt(1 + norm**2), rel=1e-9)
    # ||[I; W]|| = sqrt(1 + ||W||^2): the bound is attained.
    exact = helpers.singular_values(
        helpers.linear_jacobian(lambda x: model(x, training=False), (5,))
    )[0]
    assert exact == pytest.approx(bound, rel=1e-5)
    assert model.output.shape == (None, 8)
    # Same as a plain Concatenate.
    inputs = model.inputs[0]
    plain = keras.Model(
        inputs,
        keras.layers.Concatenate()([inputs, model.layers[1].output]),
    )
    assert keras_lipschitz.lipschitz_bound(plain) == pytest.approx(bound)


def _blobs(n=192, dim=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = 2.0 * rng.normal(size=(classes, dim))
    y = rng.integers(0, classes, n)
    x = centers[y] + 0.6 * rng.normal(size=(n, dim))
    return x.astype("float32"), y


@pytest.mark.parametrize("combiner", ["lip_residual", "concat_residual"])
def test_pgd_never_beats_the_certificate_of_a_residual_net(combiner):
    x, y = _blobs()
    inputs = keras.Input((6,))
    h = layers.GroupSort2()(layers.SpectralDense(16)(inputs))
    branch = layers.GroupSort2()(layers.BjorckDense(16)(h))
    if combiner == "lip_residual":
        h = layers.LipResidual()([h, branch])
    else:
        h = layers.ConcatResidual()([h, branch])
    model = keras.Model(inputs, layers.BjorckDense(3)(h))
    model.compile(
        optimizer=keras.optimizers.Adam(0.02),
        loss=lambda t, z: keras.losses.sparse_categorical_crossentropy(
            t, 10.0 * z, from_logits=True
        ),
    )
    model.fit(x, y, epochs=20, batch_size=64, verbose=0)
    radius, name = keras_lipschitz.certify(model, x, y, return_method=True)
    assert name == "lln"
    certified = radius > 0
    assert certified.mean() > 0.3, "too few certified points to test"
    _, success = attacks.pgd_l2(
        model, x[certified], y[certified], 0.999 * radius[certified],
        steps=30,
    )
    assert not np.any(success), "an attack beat a certificate"
    _, success = attacks.pgd_l2(
        model, x[certified], y[certified], 4.0 * radius[certified] + 3.0,
        steps=30,
    )
    assert np.any(success), "the attack is too weak to test the certificate"


def test_save_load_config_and_export(tmp_path):
    inputs = keras.Input((4,))
    branch = layers.SpectralDense(4)(inputs)
    h = layers.LipResidual(initial_alpha=0.25, name="res")([inputs, branch])
    h = layers.ConcatResidual(name="cat")([h, branch])
    model = keras.Model(inputs, h)
    x = np.random.default_rng(1).normal(size=(3, 4)).astype("float32")
    loaded = helpers.save_and_load(model, tmp_path)
    np.testing.assert_allclose(
        helpers.to_numpy(loaded(x)), helpers.to_numpy(model(x)), atol=1e-6
    )
    assert keras_lipschitz.lipschitz_bound(loaded) == pytest.approx(
        keras_lipschitz.lipschitz_bound(model), rel=1e-7
    )
    config = model.get_layer("res").get_config()
    assert config["initial_alpha"] == 0.25
    clone = layers.LipResidual.from_config(config)
    assert clone.initial_alpha == 0.25
    assert layers.ConcatResidual.from_config(
        model.get_layer("cat").get_config()
    ).axis == -1
    # The combiners stay as they are in an export; outputs unchanged.
    plain = keras_lipschitz.vanilla_export(model)
    np.testing.assert_allclose(
        helpers.to_numpy(plain(x)), helpers.to_numpy(model(x)), atol=1e-5
    )


def test_mixed_precision():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        inputs = keras.Input((4,))
        branch = layers.SpectralDense(4)(inputs)
        layer = layers.LipResidual()
        outputs = layer([inputs, branch])
        model = keras.Model(inputs, outputs)
        y = model(np.ones((2, 4), "float32"))
        assert keras.backend.standardize_dtype(y.dtype) == "float16"
        value = layer.alpha_logit.value
        assert keras.backend.standardize_dtype(value.dtype) == "float32"
    finally:
        keras.config.set_dtype_policy("float32")


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"initial_alpha": 0.0}, "initial_alpha"),
        ({"initial_alpha": 1.0}, "initial_alpha"),
        ({"initial_alpha": "half"}, "initial_alpha"),
    ],
)
def test_bad_lip_residual_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        layers.LipResidual(**kwargs)


def test_bad_inputs():
    x = keras.Input((4,))
    with pytest.raises(ValueError, match="two inputs"):
        layers.LipResidual()(x)
    with pytest.raises(ValueError, match="same shape"):
        layers.LipResidual()([x, keras.Input((3,))])
    with pytest.raises(ValueError, match="axis"):
        layers.ConcatResidual(axis=0)
    with pytest.raises(ValueError, match="axis"):
        layers.ConcatResidual(axis=True)
    with pytest.raises(ValueError, match="axis"):
        layers.ConcatResidual(axis=3)([x, x])
    with pytest.raises(ValueError, match="match"):
        layers.ConcatResidual(axis=-1)(
            [keras.Input((2, 4)), keras.Input((3, 4))]
        )
