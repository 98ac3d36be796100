"""Tests of the convex potential layers (CPL) and LiResConv2D.

CPL layers are nonlinear: they are checked on random pairs at several
scales and by their exact (autodiff) Jacobian at random points, including
points where every ReLU is active, where the Jacobian is
$I - hW^TW$ and its norm is $\\max(1, h\\|W\\|^2 - 1)$: above 1 exactly when
the normalization under-estimates $\\|W\\|$, so those checks fail for an
unsound normalization. LiResConv2D is linear: its real Jacobian on a small
input (outputs on the identity basis, as `helpers.linear_jacobian`) gives
its exact norm. Everything is checked again after `helpers.push_weights`
has moved the raw kernel far.
"""

import keras
import numpy as np
import pytest
from keras import ops

import keras_lipschitz
from keras_lipschitz import _backend
from keras_lipschitz import bounds
from keras_lipschitz.layers import SpectralDense
from keras_lipschitz.layers.cpl import CPLConv2D
from keras_lipschitz.layers.cpl import CPLDense
from keras_lipschitz.layers.cpl import RefreshInferenceNorms
from keras_lipschitz.layers.liresnet import LiResConv2D
from tests import helpers

TOL = helpers.NORM_TOLERANCE
# LiResConv2D must be tight: its constant is at least this fraction of 1.
TIGHTNESS = 0.95
# Float32 Jacobians vs float64 norms of the same float32 weights.
FLOAT32_SLACK = 1e-5
SCALES = (0.1, 1.0, 10.0)

DENSE_DIM, DENSE_INNER = 6, 9
CONV_SHAPE, CONV_INNER = (4, 4, 2), 3


@pytest.fixture(autouse=True, scope="module")
def _single_threaded_torch():
    """Tiny convolutions: torch's intra-op threads only add overhead."""
    if keras.config.backend() != "torch":
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- helpers
def _jacobians(fn, points):
    """Exact Jacobians of `fn` at each of `points` (float32 autodiff).

    One backward pass: `fn` is applied to n copies of each point and the
    scalar is the sum over copies i of output coordinate i, whose gradient
    with respect to copy i is row i of that point's Jacobian. Returns an
    array `(len(points), n, n)`.
    """
    count = len(points)
    n = points[0].size
    batch = np.repeat(np.asarray(points, "float32"), n, axis=0)
    selector = np.tile(np.eye(n, dtype="float32"), (count, 1))

    def scalar(inputs):
        outputs = ops.reshape(fn(inputs), (count * n, n))
        return ops.sum(outputs * ops.convert_to_tensor(selector))

    _, grad = _backend.value_and_input_gradient(scalar, batch)
    return helpers.to_numpy(grad).reshape(count, n, n)


def _inference(layer):
    return lambda t: layer(t, training=False)


def _pair_ratio(fn, input_shape, pairs=128, seed=0):
    """Largest ||f(x) - f(y)|| / ||x - y|| over random pairs at all SCALES.

    Like `helpers.random_pair_ratio`, with the scales in one batch.
    """
    rng = np.random.default_rng(seed)
    scale = np.repeat(SCALES, pairs).reshape((-1,) + (1,) * len(input_shape))
    x = scale * rng.normal(size=scale.shape[:1] + tuple(input_shape))
    radius = np.exp(rng.uniform(-6, 1, size=scale.shape))
    y = (x + radius * rng.normal(size=x.shape)).astype("float32")
    x = x.astype("float32")
    diff = helpers.to_numpy(fn(x)) - helpers.to_numpy(fn(y))
    num = np.linalg.norm(diff.reshape(len(x), -1), axis=1)
    den = np.linalg.norm((x - y).reshape(len(x), -1), axis=1)
    return float(np.max(num / den))


def _max_jacobian_norm(layer, input_shape, points, seed=0):
    """Largest sigma_max of the inference-mode Jacobian at random points."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(points, *input_shape))
    jacobians = _jacobians(_inference(layer), x)
    return max(helpers.singular_values(j)[0] for j in jacobians)


def _all_active_jacobian_norm(layer, input_shape):
    """sigma_max of the Jacobian at 0 with every ReLU active (bias > 0)."""
    saved = helpers.to_numpy(layer.bias)
    layer.bias.assign(np.full(saved.shape, 1e3, "float32"))
    (jac,) = _jacobians(_inference(layer), np.zeros((1, *input_shape)))
    layer.bias.assign(saved.astype("float32"))
    return helpers.singular_values(jac)[0]


def _exact_kernel_norm(layer, input_shape):
    """float64 norm of W: the SVD, or the explicit conv operator matrix."""
    kernel = helpers.to_numpy(layer.kernel)
    if isinstance(layer, CPLDense):
        return float(np.linalg.norm(kernel, 2))
    matrix = bounds.conv_operator_matrix(
        kernel, input_shape[:2], (1, 1), "same"
    )
    return float(np.linalg.norm(matrix, 2))


def _tight_all_active_norm(exact, epsilon):
    """||I - 2W^TW/(||W||^2 + eps)|| when the layer uses s = ||W||."""
    return 2.0 * exact**2 / (exact**2 + epsilon) - 1.0


def _make_cpl(kind, **kwargs):
    if kind == "dense":
        layer = CPLDense(DENSE_INNER, **kwargs)
        shape = (DENSE_DIM,)
    else:
        layer = CPLConv2D(CONV_INNER, 3, **kwargs)
        shape = CONV_SHAPE
    layer.build((None, *shape))
    return layer, shape


def _check_cpl_sound(layer, shape, points=4):
    ratio = _pair_ratio(_inference(layer), shape)
    assert ratio <= 1 + TOL, ratio
    sigma = _max_jacobian_norm(layer, shape, points)
    assert sigma <= 1 + TOL, sigma
    active = _all_active_jacobian_norm(layer, shape)
    assert active <= 1 + TOL, active
    assert layer.lipschitz_upper_bound() >= max(sigma, active) * (
        1 - FLOAT32_SLACK
    )
    return active


# -------------------------------------------------------------- CPL norms
@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_cpl_is_one_lipschitz_and_tight_after_training(kind):
    layer, shape = _make_cpl(kind)
    active = _check_cpl_sound(layer, shape)
    exact = _exact_kernel_norm(layer, shape)
    # Fresh from build: s is the exact norm, so the step is the largest
    # 1-Lipschitz one.
    assert active >= _tight_all_active_norm(exact, layer.epsilon) - TOL
    assert layer.lipschitz_upper_bound() == 1.0

    # Large SGD steps: the stored norm is stale; the layer stays sound.
    assert helpers.push_weights(layer, shape) > 0.1
    reference = helpers.to_numpy(layer.inference_norm_kernel)
    assert not np.array_equal(helpers.to_numpy(layer.kernel), reference)
    _check_cpl_sound(layer, shape)

    # After a refresh it is tight again.
    stored = layer.refresh_inference_norm()
    exact = _exact_kernel_norm(layer, shape)
    assert exact <= stored <= exact * (1 + 1e-6)
    active = _check_cpl_sound(layer, shape)
    assert active >= _tight_all_active_norm(exact, layer.epsilon) - TOL
    assert layer.lipschitz_upper_bound() == 1.0


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_cpl_sound_whatever_the_state(kind):
    layer, shape = _make_cpl(kind, epsilon=0.0)
    exact = _exact_kernel_norm(layer, shape)

    # The training estimate (converged at build) is a lower bound.
    kernel = ops.cast(layer.kernel, "float32")
    _, sigma = layer._estimate_norm(kernel, ops.convert_to_tensor(layer.u), 1)
    sigma = float(helpers.to_numpy(sigma))
    assert exact * (1 - 1e-3) <= sigma <= exact * (1 + FLOAT32_SLACK)

    # A stored norm of half the true one (an inconsistent state): the layer
    # is 2 * 4 - 1 = 7-Lipschitz and `lipschitz_upper_bound` must say so.
    layer.inference_norm.assign(np.float32(0.5 * exact))
    active = _all_active_jacobian_norm(layer, shape)
    assert active == pytest.approx(7.0, rel=1e-3)
    bound = layer.lipschitz_upper_bound()
    assert bound >= active * (1 - FLOAT32_SLACK)
    assert bound == pytest.approx(7.0, rel=1e-5)

    # The kernel scaled by 3 behind the layer's back, no refresh: with the
    # stored norm alone the all-active Jacobian would have norm 17.
    layer.refresh_inference_norm()
    layer.kernel.assign(3.0 * helpers.to_numpy(layer.kernel))
    active = _all_active_jacobian_norm(layer, shape)
    assert active <= 1 + TOL, active
    assert layer.lipschitz_upper_bound() == pytest.approx(1.0, abs=1e-4)
    layer.refresh_inference_norm()
    active = _all_active_jacobian_norm(layer, shape)
    assert _tight_all_active_norm(3.0 * exact, 0.0) - TOL <= active
    assert active <= 1 + TOL


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_cpl_state_written_only_in_training(kind):
    layer, shape = _make_cpl(kind)
    rng = np.random.default_rng(1)
    layer.kernel.assign(rng.normal(size=layer.kernel.shape).astype("float32"))
    layer.refresh_inference_norm()
    x = rng.normal(size=(4, *shape)).astype("float32")
    state = [helpers.to_numpy(w) for w in layer.non_trainable_weights]
    layer(x)
    layer(x, training=False)
    for before, weight in zip(state, layer.non_trainable_weights):
        np.testing.assert_array_equal(helpers.to_numpy(weight), before)
    layer(x, training=True)
    u = helpers.to_numpy(layer.u)
    assert np.max(np.abs(u - state[0])) > 1e-4
    # Training writes u only: the inference normalization is host state.
    for before, weight in zip(state[1:], layer.non_trainable_weights[1:]):
        np.testing.assert_array_equal(helpers.to_numpy(weight), before)
    assert all(not w.trainable for w in layer.non_trainable_weights)
    assert [w.name for w in layer.non_trainable_weights] == [
        "u",
        "inference_norm",
        "inference_norm_kernel",
    ]


def test_refresh_callback_in_fit_on_every_backend():
    """On JAX the state lives outside the model during fit: still works."""
    inputs = keras.Input(CONV_SHAPE)
    conv = CPLConv2D(CONV_INNER, 3)
    flat = keras.layers.Flatten()(conv(inputs))
    dense = CPLDense(DENSE_INNER)
    model = keras.Model(inputs, dense(flat))
    model.compile(keras.optimizers.SGD(1.0), "mse")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, *CONV_SHAPE)).astype("float32")
    y = 5.0 * rng.normal(size=(16, int(np.prod(CONV_SHAPE)))).astype("float32")
    model.fit(
        x,
        y,
        epochs=2,
        batch_size=8,
        validation_data=(x, y),
        callbacks=[RefreshInferenceNorms()],
        verbose=0,
    )
    for layer in (conv, dense):
        np.testing.assert_array_equal(
            helpers.to_numpy(layer.inference_norm_kernel),
            helpers.to_numpy(layer.kernel),
        )
        assert float(helpers.to_numpy(layer.inference_norm)) == pytest.approx(
            layer.kernel_norm_upper_bound(), rel=1e-6
        )


# ------------------------------------------------------------- LiResConv2D
# (input size, channels, kernel size, data format)
LIRES_CASES = [
    ((4, 4), 2, 3, "channels_last"),
    ((4, 6), 3, 5, "channels_first"),
]
# Lanczos steps at inference in these tests: the operators have at most
# 75 dimensions.
EVAL_STEPS = 25


def _lires_outputs_and_norm(layer, shape):
    """Outputs on the basis and the exact norm, from one inference call.

    The layer is affine: its Jacobian's columns are f(e_i) - f(0), here
    computed in one batch (each inference call runs Lanczos).
    """
    n = int(np.prod(shape))
    batch = np.concatenate(
        [np.eye(n, dtype="float32"), np.zeros((1, n), "float32")]
    ).reshape((n + 1, *shape))
    outputs = helpers.to_numpy(layer(batch, training=False))
    flat = outputs.reshape(n + 1, -1)
    jacobian = (flat[:n] - flat[n]).T
    return batch, outputs, helpers.singular_values(jacobian)[0]


@pytest.mark.parametrize("size,channels,k,data_format", LIRES_CASES)
def test_lires_exact_norm_tight_and_sound(size, channels, k, data_format):
    if data_format == "channels_last":
        shape = (*size, channels)
    else:
        shape = (channels, *size)
    layer = LiResConv2D(
        k, data_format=data_format, eval_power_iterations=EVAL_STEPS
    )
    layer.build((None, *shape))

    def check():
        batch, outputs, sigma = _lires_outputs_and_norm(layer, shape)
        assert TIGHTNESS <= sigma <= 1 + TOL, sigma
        assert layer.lipschitz_upper_bound() >= sigma * (1 - FLOAT32_SLACK)
        # The raw residual operator I + K, built independently here.
        kernel = helpers.to_numpy(layer.kernel)
        kernel[k // 2, k // 2] += np.eye(channels)
        matrix = bounds.conv_operator_matrix(kernel, size, (1, 1), "same")
        exact = np.linalg.norm(matrix, 2)
        residual = layer.residual_operator_norm_bound()
        assert exact <= residual <= exact * (1 + 1e-9), (residual, exact)
        return batch, outputs

    check()
    assert helpers.push_weights(layer, shape) > 0.1
    batch, outputs = check()

    # A plain Conv2D with the effective kernel computes the same outputs.
    plain = keras_lipschitz.vanilla_export(
        keras.Sequential([keras.Input(shape), layer])
    )
    assert type(plain.layers[0]) is keras.layers.Conv2D
    np.testing.assert_allclose(
        helpers.to_numpy(plain(batch)), outputs, rtol=1e-5, atol=1e-5
    )
    assert keras_lipschitz.lipschitz_bound(plain) == pytest.approx(
        layer.lipschitz_upper_bound(), rel=1e-5
    )


def test_lires_large_input_uses_fft_bound_and_is_sound():
    shape = (19, 19, 3)
    assert 19 * 19 * 3 > bounds.EXPLICIT_OPERATOR_MAX_INPUT_DIM
    layer = LiResConv2D(3, use_bias=False)
    layer.build((None, *shape))
    rng = np.random.default_rng(3)
    layer.kernel.assign(0.3 * rng.normal(size=(3, 3, 3, 3)).astype("float32"))
    _, _, sigma = _lires_outputs_and_norm(layer, shape)
    assert TIGHTNESS <= sigma <= 1 + TOL
    assert layer.lipschitz_upper_bound() >= sigma * (1 - FLOAT32_SLACK)


def test_lires_u_written_only_in_training_and_input_size_limits():
    layer = LiResConv2D(3, eval_power_iterations=EVAL_STEPS)
    layer.build((None, *CONV_SHAPE))
    rng = np.random.default_rng(1)
    layer.kernel.assign(rng.normal(size=(3, 3, 2, 2)).astype("float32"))
    u0 = helpers.to_numpy(layer.u)
    # Inference (training=None) on a smaller input: fine, u untouched.
    layer(rng.normal(size=(4, 3, 4, 2)).astype("float32"))
    np.testing.assert_array_equal(helpers.to_numpy(layer.u), u0)
    layer(rng.normal(size=(4, *CONV_SHAPE)).astype("float32"), training=True)
    assert np.max(np.abs(helpers.to_numpy(layer.u) - u0)) > 1e-4
    with pytest.raises(ValueError, match="built for spatial size"):
        layer(np.zeros((1, 5, 4, 2), "float32"))
    with pytest.raises(ValueError, match="spatial dimensions"):
        LiResConv2D(3).build((None, None, None, 2))


# ------------------------------------------------------------ validation
def test_invalid_arguments_raise():
    cases = [
        (lambda: CPLDense(0), "inner_units"),
        (lambda: CPLDense(2.5), "inner_units"),
        (lambda: CPLDense(4, power_iterations=0), "power_iterations"),
        (lambda: CPLDense(4, epsilon=-1.0), "epsilon"),
        (lambda: CPLDense(4, epsilon=float("nan")), "epsilon"),
        (lambda: CPLConv2D(0), "inner_channels"),
        (lambda: CPLConv2D(4, 2), "kernel_size"),
        (lambda: CPLConv2D(4, (3, 4)), "kernel_size"),
        (lambda: CPLConv2D(4, 0), "kernel_size"),
        (lambda: CPLConv2D(4, data_format="nhwc"), "data_format"),
        (lambda: CPLConv2D(4, epsilon="big"), "epsilon"),
        (lambda: LiResConv2D(2), "kernel_size"),
        (lambda: LiResConv2D((3, 2)), "kernel_size"),
        (lambda: LiResConv2D(3, padding="valid"), "padding"),
        (lambda: LiResConv2D(3, padding="causal"), "padding"),
        (lambda: LiResConv2D(3, strides=2), "strides"),
        (lambda: LiResConv2D(3, filters=0), "filters"),
        (lambda: LiResConv2D(3, lipschitz=0.0), "lipschitz"),
        (lambda: LiResConv2D(3, power_iterations=0), "power_iterations"),
        (lambda: LiResConv2D(3, eval_power_iterations=0), "eval_power_iter"),
        (lambda: LiResConv2D(3, activation="exponential"), "activation"),
    ]
    for make, name in cases:
        with pytest.raises(ValueError, match=f"`{name}"):
            make()
    # Channels that change across the block, caught at build.
    with pytest.raises(ValueError, match="`filters`"):
        LiResConv2D(3, filters=4).build((None, 5, 5, 3))


def test_cpl_conv_needs_static_size_and_refuses_larger_inputs():
    with pytest.raises(ValueError, match="spatial dimensions"):
        CPLConv2D(3).build((None, None, 8, 2))
    layer = CPLConv2D(CONV_INNER)
    layer.build((None, *CONV_SHAPE))
    layer(np.zeros((4, 3, 4, 2), "float32"))
    with pytest.raises(ValueError, match="built for spatial size"):
        layer(np.zeros((4, 4, 5, 2), "float32"))


def test_cpl_conv_channels_first_matches_channels_last():
    last = CPLConv2D(CONV_INNER, 3, data_format="channels_last")
    first = CPLConv2D(CONV_INNER, 3, data_format="channels_first")
    last.build((None, 4, 3, 2))
    first.build((None, 2, 4, 3))
    first.kernel.assign(last.kernel)
    first.bias.assign(last.bias)
    first.refresh_inference_norm()
    x = np.random.default_rng(0).normal(size=(4, 4, 3, 2)).astype("float32")
    np.testing.assert_allclose(
        helpers.to_numpy(first(x.transpose(0, 3, 1, 2))).transpose(0, 2, 3, 1),
        helpers.to_numpy(last(x)),
        rtol=1e-5,
        atol=1e-5,
    )


# -------------------------------------------------------- serialization
def _layers_for_serialization():
    return [
        (
            CPLDense(
                DENSE_INNER,
                power_iterations=2,
                epsilon=1e-3,
                use_bias=False,
                kernel_initializer="orthogonal",
                name="cpl_dense",
            ),
            (DENSE_DIM,),
        ),
        (
            CPLConv2D(
                CONV_INNER,
                (3, 1),
                data_format="channels_last",
                bias_initializer="ones",
            ),
            CONV_SHAPE,
        ),
        (
            LiResConv2D(
                3, lipschitz=2.0, activation="relu", eval_power_iterations=20
            ),
            None,  # building it is covered by the save/load test
        ),
    ]


def test_config_round_trip():
    for layer, shape in _layers_for_serialization():
        config = layer.get_config()
        revived = type(layer).from_config(config)
        assert revived.get_config() == config
        if shape is None:
            continue
        layer.build((None, *shape))
        revived.build((None, *shape))
        assert revived.get_config() == layer.get_config()
        assert set(dir(layer)) == set(dir(revived))
        revived.set_weights(layer.get_weights())
        x = np.random.default_rng(0).normal(size=(4, *shape))
        x = x.astype("float32")
        np.testing.assert_allclose(
            helpers.to_numpy(revived(x)), helpers.to_numpy(layer(x)), rtol=1e-6
        )


def test_keras_save_load_keeps_outputs_state_and_bound(tmp_path):
    shape = CONV_SHAPE
    inputs = keras.Input(shape)
    hidden = LiResConv2D(3, eval_power_iterations=EVAL_STEPS)(
        CPLConv2D(CONV_INNER)(inputs)
    )
    outputs = CPLDense(DENSE_INNER)(keras.layers.Flatten()(hidden))
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, *shape)).astype("float32")
    model(x, training=True)  # moves the power-iteration vectors
    # Leave the CPL layers stale: the stale state must round-trip too.
    cpl = model.layers[1]
    cpl.kernel.assign(1.5 * helpers.to_numpy(cpl.kernel))
    loaded = helpers.save_and_load(model, tmp_path)
    for original, revived in zip(model.layers[1:], loaded.layers[1:]):
        for a, b in zip(original.weights, revived.weights):
            np.testing.assert_array_equal(
                helpers.to_numpy(a), helpers.to_numpy(b)
            )
        if hasattr(original, "lipschitz_upper_bound"):
            assert revived.lipschitz_upper_bound() == pytest.approx(
                original.lipschitz_upper_bound(), rel=1e-9
            )
    expected = helpers.to_numpy(model(x))
    np.testing.assert_allclose(helpers.to_numpy(loaded(x)), expected, rtol=1e-6)
    # vanilla_export: LiResConv2D becomes a plain Conv2D, the CPL layers
    # are cloned with their (stale) state: the same outputs.
    plain = keras_lipschitz.vanilla_export(model)
    assert type(plain.layers[2]) is keras.layers.Conv2D
    np.testing.assert_allclose(
        helpers.to_numpy(plain(x)), expected, rtol=1e-5, atol=1e-6
    )


# -------------------------------------------------------- mixed precision
def test_mixed_precision_keeps_state_float32():
    keras.config.set_dtype_policy("mixed_float16")
    rng = np.random.default_rng(0)
    layers = [
        (CPLDense(DENSE_INNER), (4, DENSE_DIM)),
        (CPLConv2D(CONV_INNER), (4, *CONV_SHAPE)),
        (LiResConv2D(3, eval_power_iterations=EVAL_STEPS), (4, *CONV_SHAPE)),
    ]
    for layer, shape in layers:
        x = rng.normal(size=shape).astype("float32")
        for training in (False, True):
            y = layer(x, training=training)
            assert keras.backend.standardize_dtype(y.dtype) == "float16"
            assert np.all(np.isfinite(helpers.to_numpy(y)))
        for weight in layer.weights:
            assert keras.backend.standardize_dtype(weight.dtype) == "float32"
            value = weight.value if hasattr(weight, "value") else weight
            assert keras.backend.standardize_dtype(value.dtype) == "float32"
        assert layer.lipschitz_upper_bound() <= 1 + TOL


# ------------------------------------------------------ model-level bound
def _max_gradient_norm(model, x):
    def total(inputs):
        return ops.sum(model(inputs, training=False))

    _, grad = _backend.value_and_input_gradient(total, x)
    grad = helpers.to_numpy(grad).reshape(len(x), -1)
    return float(np.max(np.linalg.norm(grad, axis=1)))


def test_lipschitz_bound_of_a_model_dominates_gradient_norms():
    shape = CONV_SHAPE
    inputs = keras.Input(shape)
    hidden = LiResConv2D(3, eval_power_iterations=EVAL_STEPS)(inputs)
    hidden = CPLConv2D(CONV_INNER)(hidden)
    hidden = CPLDense(DENSE_INNER)(keras.layers.Flatten()(hidden))
    model = keras.Model(inputs, SpectralDense(1)(hidden))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, *shape)).astype("float32")
    model.compile(keras.optimizers.SGD(1.0), "mse")
    before = helpers.to_numpy(model.layers[2].kernel)
    model.fit(x, 10.0 * rng.normal(size=(64, 1)), epochs=3, verbose=0)
    assert not np.array_equal(helpers.to_numpy(model.layers[2].kernel), before)
    bound = keras_lipschitz.lipschitz_bound(model)
    measured = _max_gradient_norm(model, x)
    assert measured <= bound * (1 + FLOAT32_SLACK), (measured, bound)
    assert bound <= 1 + TOL


def test_lipschitz_bound_follows_an_amplifying_cpl_layer():
    """A CPL layer whose stored norm is a third of the true one.

    With every ReLU active it amplifies by 2 * 9 - 1 = 17 along the top
    singular vector: measured gradients exceed 1, and the model bound
    must follow.
    """
    inputs = keras.Input((DENSE_DIM,))
    dense = CPLDense(DENSE_INNER)
    model = keras.Model(inputs, SpectralDense(1)(dense(inputs)))
    dense.inference_norm.assign(dense.inference_norm / 3.0)
    dense.bias.assign(np.full((DENSE_INNER,), 1e3, "float32"))
    x = np.random.default_rng(0).normal(size=(8, DENSE_DIM))
    bound = keras_lipschitz.lipschitz_bound(model)
    measured = _max_gradient_norm(model, x.astype("float32"))
    assert measured > 1.5
    assert measured <= bound * (1 + FLOAT32_SLACK), (measured, bound)
