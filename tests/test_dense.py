"""Exact-norm, state, precision and error tests of the dense layers."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_lipschitz import normalizers
from keras_lipschitz.layers import BjorckDense
from keras_lipschitz.layers import FrobeniusDense
from keras_lipschitz.layers import SpectralDense
from tests import helpers

INPUT_DIM = 12


def _built(layer, input_dim=INPUT_DIM):
    layer.build((None, input_dim))
    return layer


def _jacobian_sv(layer, input_dim=INPUT_DIM):
    return helpers.layer_singular_values(layer, (input_dim,))


@pytest.mark.parametrize("units", [5, 12, 20])
@pytest.mark.parametrize("lipschitz", [1.0, 2.5])
@pytest.mark.parametrize(
    "initializer", ["orthogonal", "glorot_uniform", "random_normal"]
)
def test_spectral_dense_exact_norm_after_construction(
    units, lipschitz, initializer
):
    layer = _built(
        SpectralDense(
            units, lipschitz=lipschitz, kernel_initializer=initializer
        )
    )
    sv = _jacobian_sv(layer)
    assert sv[0] <= lipschitz * (1 + helpers.NORM_TOLERANCE)
    assert sv[0] >= 0.95 * lipschitz


@pytest.mark.parametrize("units", [5, 20])
@pytest.mark.parametrize("lipschitz", [1.0, 2.5])
def test_spectral_dense_exact_norm_after_large_sgd_steps(units, lipschitz):
    layer = SpectralDense(units, lipschitz=lipschitz, use_bias=False)
    change = helpers.push_weights(layer, (INPUT_DIM,), steps=5)
    assert change > 0.1, "the push did not move the raw kernel"
    sv = _jacobian_sv(layer)
    assert sv[0] <= lipschitz * (1 + helpers.NORM_TOLERANCE)
    assert sv[0] >= 0.95 * lipschitz
    # The reported bound is guaranteed: never below the exact norm.
    assert layer.lipschitz_upper_bound() >= sv[0] * (1 - 1e-6)


def test_spectral_dense_bound_holds_with_a_stale_power_vector():
    # An adversarial `u` (orthogonal to the top singular vector) makes power
    # iteration useless; inference must still be normalized by a bound.
    layer = _built(SpectralDense(6, kernel_initializer="random_normal"))
    w = helpers.to_numpy(layer.kernel)
    _, _, vt = np.linalg.svd(w)
    layer.u.assign(vt[-1:].astype("float32"))
    sv = _jacobian_sv(layer)
    assert sv[0] <= 1 + helpers.NORM_TOLERANCE
    assert sv[0] >= 0.95


@pytest.mark.parametrize("units,input_dim", [(8, 8), (4, 12), (12, 4)])
def test_bjorck_dense_is_orthogonal(units, input_dim):
    layer = _built(BjorckDense(units), input_dim)
    sv = _jacobian_sv(layer, input_dim)
    np.testing.assert_allclose(sv, 1.0, atol=1e-2)
    assert sv[0] <= 1 + helpers.NORM_TOLERANCE
    helpers.push_weights(layer, (input_dim,), steps=5, learning_rate=0.3)
    sv = _jacobian_sv(layer, input_dim)
    np.testing.assert_allclose(sv, 1.0, atol=1e-2)
    assert sv[0] <= 1 + helpers.NORM_TOLERANCE


def test_bjorck_dense_lipschitz_scaling():
    layer = _built(BjorckDense(6, lipschitz=3.0))
    sv = _jacobian_sv(layer)
    np.testing.assert_allclose(sv, 3.0, atol=3e-2)


@pytest.mark.parametrize("lipschitz", [1.0, 0.5])
def test_frobenius_dense_disjoint_neurons(lipschitz):
    layer = _built(FrobeniusDense(7, lipschitz=lipschitz))
    helpers.push_weights(layer, (INPUT_DIM,), steps=3)
    jac = helpers.linear_jacobian(
        lambda x: layer(x, training=False), (INPUT_DIM,)
    )
    # Each output neuron is exactly `lipschitz`-Lipschitz on its own.
    np.testing.assert_allclose(
        np.linalg.norm(jac, axis=1), lipschitz, rtol=1e-5
    )
    # Float32 evaluation of the Jacobian itself rounds at ~1e-7.
    assert layer.lipschitz_upper_bound() >= helpers.singular_values(jac)[0] * (
        1 - 1e-6
    )


def test_frobenius_dense_whole_kernel():
    layer = _built(FrobeniusDense(7, disjoint_neurons=False))
    helpers.push_weights(layer, (INPUT_DIM,), steps=3)
    jac = helpers.linear_jacobian(
        lambda x: layer(x, training=False), (INPUT_DIM,)
    )
    np.testing.assert_allclose(np.linalg.norm(jac), 1.0, rtol=1e-5)
    assert helpers.singular_values(jac)[0] <= 1 + helpers.NORM_TOLERANCE


def test_power_vector_written_only_in_training():
    layer = _built(SpectralDense(5, kernel_initializer="random_normal"))
    layer.kernel.assign(np.random.default_rng(1).normal(size=(12, 5)))
    x = np.ones((2, INPUT_DIM), "float32")
    u0 = helpers.to_numpy(layer.u)
    layer(x)
    layer(x, training=False)
    np.testing.assert_array_equal(helpers.to_numpy(layer.u), u0)
    layer(x, training=True)
    assert not np.allclose(helpers.to_numpy(layer.u), u0)
    assert layer.u.dtype == "float32"
    assert not layer.u.trainable
    assert [w.name for w in layer.trainable_weights] == ["kernel", "bias"]


def test_power_iteration_converges_to_top_singular_value():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(9, 6)).astype("float32")
    u = rng.normal(size=(1, 6)).astype("float32")
    _, sigma = normalizers.power_iteration_dense(
        ops.convert_to_tensor(w), ops.convert_to_tensor(u), 200
    )
    exact = np.linalg.norm(w.astype(np.float64), 2)
    assert abs(float(helpers.to_numpy(sigma)) - exact) < 1e-4 * exact
    # Every iterate is a lower bound.
    for steps in (0, 1, 3):
        _, sigma = normalizers.power_iteration_dense(
            ops.convert_to_tensor(w), ops.convert_to_tensor(u), steps
        )
        assert float(helpers.to_numpy(sigma)) <= exact * (1 + 1e-6)


@pytest.mark.parametrize("shape", [(9, 6), (6, 9), (30, 30)])
def test_gram_bound_is_an_upper_bound(shape):
    rng = np.random.default_rng(2)
    for trial in range(5):
        w = rng.normal(size=shape).astype("float32")
        if trial == 1:  # all singular values equal: the worst case
            q, _ = np.linalg.qr(rng.normal(size=(max(shape), max(shape))))
            w = q[: shape[0], : shape[1]].astype("float32")
        exact = np.linalg.norm(w.astype(np.float64), 2)
        for t in (1, 3, 8):
            bound = float(
                helpers.to_numpy(
                    normalizers.gram_spectral_norm_upper_bound(
                        ops.convert_to_tensor(w), t
                    )
                )
            )
            assert bound >= exact * (1 - 1e-5)
            rank = min(shape)
            assert bound <= exact * rank ** (2.0 ** -(t + 1)) * (1 + 1e-4)


def test_bjorck_safety_when_prescale_underestimates():
    # One order-1 step (beta=1/2) maps singular values in [0, 2] into [0, 1].
    rng = np.random.default_rng(3)
    q1, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    q2, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    s = np.linspace(0.05, 1.95, 8)
    w = (q1 * s) @ q2
    out = normalizers.bjorck_orthonormalize(
        ops.convert_to_tensor(w.astype("float32")), 1
    )
    assert helpers.singular_values(helpers.to_numpy(out))[0] <= 1 + 1e-5


@pytest.mark.parametrize("cls", [SpectralDense, BjorckDense, FrobeniusDense])
def test_higher_rank_inputs_and_output_shape(cls):
    layer = cls(4)
    x = np.random.default_rng(0).normal(size=(2, 3, 5)).astype("float32")
    y = layer(x)
    assert tuple(y.shape) == (2, 3, 4)
    assert layer.compute_output_shape((None, 3, 5)) == (None, 3, 4)
    sym = layer(keras.Input((3, 5)))
    assert tuple(sym.shape) == (None, 3, 4)


@pytest.mark.parametrize("cls", [SpectralDense, BjorckDense, FrobeniusDense])
def test_config_round_trip(cls):
    layer = cls(
        4, lipschitz=2.0, activation="relu", use_bias=False, name="dense_x"
    )
    revived = cls.from_config(layer.get_config())
    assert revived.get_config() == layer.get_config()
    assert set(dir(revived)) == set(dir(layer))


@pytest.mark.parametrize("cls", [SpectralDense, BjorckDense, FrobeniusDense])
def test_activation_is_applied_and_counted(cls):
    layer = _built(cls(4, activation="sigmoid"))
    x = np.random.default_rng(0).normal(size=(3, INPUT_DIM)).astype("float32")
    plain = cls(4)
    plain.build((None, INPUT_DIM))
    plain.set_weights(layer.get_weights())
    np.testing.assert_allclose(
        helpers.to_numpy(layer(x)),
        1 / (1 + np.exp(-helpers.to_numpy(plain(x)))),
        rtol=1e-5,
        atol=1e-6,
    )
    assert layer.lipschitz_upper_bound() == pytest.approx(
        0.25 * plain.lipschitz_upper_bound()
    )


@pytest.mark.parametrize("cls", [SpectralDense, BjorckDense, FrobeniusDense])
def test_mixed_precision_keeps_state_in_float32(cls):
    keras.config.set_dtype_policy("mixed_float16")
    try:
        layer = cls(4)
        x = np.random.default_rng(0).normal(size=(3, 6)).astype("float16")
        y = layer(x, training=True)
        assert layer.kernel.dtype == "float32"
        if hasattr(layer, "u"):
            assert layer.u.dtype == "float32"
        assert str(ops.convert_to_numpy(y).dtype) == "float16"
        assert np.all(np.isfinite(ops.convert_to_numpy(y)))
        sv = _jacobian_sv(layer, 6)
        assert sv[0] <= 1 + 2e-3  # float16 outputs: rounding of 1e-3
    finally:
        keras.config.set_dtype_policy("float32")


@pytest.mark.parametrize("cls", [SpectralDense, BjorckDense])
def test_trains_under_jit_compile(cls):
    jit = keras.config.backend() != "torch"
    inputs = keras.Input((INPUT_DIM,))
    layer = cls(6)
    model = keras.Model(inputs, layer(inputs))
    model.compile(optimizer="adam", loss="mse", jit_compile=jit)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, INPUT_DIM)).astype("float32")
    y = rng.normal(size=(64, 6)).astype("float32")
    history = model.fit(x, y, epochs=3, batch_size=16, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    sv = _jacobian_sv(layer)
    assert sv[0] <= 1 + helpers.NORM_TOLERANCE


def test_learns_a_one_lipschitz_target():
    # The reparametrised kernel must actually be trainable on every backend
    # (JAX discards assignments to trainable weights inside fit).
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(INPUT_DIM, INPUT_DIM)))
    target = q[:, :4]
    x = rng.normal(size=(512, INPUT_DIM)).astype("float32")
    y = (x @ target).astype("float32")
    model = keras.Sequential(
        [keras.Input((INPUT_DIM,)), BjorckDense(4, use_bias=False)]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    first = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=20, batch_size=64, verbose=0)
    last = model.evaluate(x, y, verbose=0)
    assert last < 0.05 * first


@pytest.mark.parametrize(
    "kwargs,argument",
    [
        ({"units": 0}, "units"),
        ({"units": -3}, "units"),
        ({"units": 2.5}, "units"),
        ({"units": 4, "lipschitz": 0.0}, "lipschitz"),
        ({"units": 4, "lipschitz": -1.0}, "lipschitz"),
        ({"units": 4, "lipschitz": float("nan")}, "lipschitz"),
        ({"units": 4, "lipschitz": "1"}, "lipschitz"),
        ({"units": 4, "activation": "softmax"}, "activation"),
        ({"units": 4, "power_iterations": 0}, "power_iterations"),
        ({"units": 4, "eval_gram_iterations": 0}, "eval_gram_iterations"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        SpectralDense(**kwargs)


@pytest.mark.parametrize(
    "kwargs,argument",
    [
        ({"bjorck_beta": 0.7}, "bjorck_beta"),
        ({"bjorck_beta": 0.0}, "bjorck_beta"),
        ({"bjorck_iterations": 0}, "bjorck_iterations"),
    ],
)
def test_bjorck_bad_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        BjorckDense(4, **kwargs)


def test_unknown_input_dim_raises_at_build():
    with pytest.raises(ValueError, match="last input dimension"):
        SpectralDense(3).build((None, None))


def test_power_iteration_gradient_is_top_singular_pair():
    """d sigma / dW is a b^T for the top singular pair (a, b) of W.

    The estimate is computed from the last half-step with the
    differentiable kernel; at convergence its gradient must be the
    gradient of the true largest singular value (Miyato et al. 2018).
    """
    from keras_lipschitz import _backend

    rng = np.random.default_rng(3)
    left, _ = np.linalg.qr(rng.normal(size=(9, 6)))
    right, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    singular = np.array([3.0, 1.5, 1.0, 0.7, 0.4, 0.1])
    w = (left * singular) @ right.T
    u = rng.normal(size=(1, 6)).astype("float32")
    sigma, grad = _backend.value_and_input_gradient(
        lambda k: normalizers.power_iteration_dense(
            k, ops.convert_to_tensor(u), 30
        )[1],
        w.astype("float32"),
    )
    assert abs(float(helpers.to_numpy(sigma)) - 3.0) < 1e-4
    expected = np.outer(left[:, 0], right[:, 0])
    np.testing.assert_allclose(helpers.to_numpy(grad), expected, atol=1e-4)
