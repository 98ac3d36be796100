"""Tests of the centering and Lipschitz batch normalization layers.

References are NumPy float64 re-implementations of the documented formulas.
Lipschitz checks run in inference mode, after large SGD steps that move the
raw weights and the running statistics. The float32 layer's Jacobian is
checked at the library tolerance (1e-3); the tight checks (random pairs at
1e-6) use a float64 copy of the trained layer, because the float32 forward
pass rounds $x - m$ and $+\\beta$ at about $10^{-7}|x|$, which dominates the
ratio of close pairs.
"""

import contextlib

import keras
import numpy as np
import pytest

import keras_lipschitz
from keras_lipschitz import _backend
from keras_lipschitz.layers.normalization import BatchCentering
from keras_lipschitz.layers.normalization import BatchLipNorm
from keras_lipschitz.layers.normalization import LayerCentering
from tests import helpers

TIGHT = 1e-6


def random_input(shape, seed=0, offset=0.0):
    """Inputs whose channels (last axis) have different means and scales."""
    rng = np.random.default_rng(seed)
    channels = shape[-1]
    scales = np.linspace(0.2, 3.0, channels)
    means = offset * np.linspace(-1.0, 1.0, channels)
    return (means + scales * rng.normal(size=shape)).astype("float32")


def move_channels(x, axis):
    """Channels-last data with the channel axis moved to `axis`."""
    return np.moveaxis(x, -1, axis)


def per_channel(vector, rank, axis):
    shape = [1] * rank
    shape[axis] = -1
    return np.asarray(vector, np.float64).reshape(shape)


def reduction_axes(rank, axis):
    return tuple(a for a in range(rank) if a != axis % rank)


def np_moments(x, axis):
    x = np.asarray(x, np.float64)
    axes = reduction_axes(x.ndim, axis)
    return x.mean(axis=axes), x.var(axis=axes)


def np_lip_scale(variance, gamma, epsilon, lipschitz):
    """The documented gain: shared variance, then the uniform cap."""
    gain = np.asarray(gamma, np.float64) / np.sqrt(np.max(variance) + epsilon)
    return gain * lipschitz / max(lipschitz, np.max(np.abs(gain)))


def np_batch_lip_norm(x, axis, mean, variance, gamma, beta, eps, lipschitz):
    x = np.asarray(x, np.float64)
    scale = np_lip_scale(variance, gamma, eps, lipschitz)
    return (x - per_channel(mean, x.ndim, axis)) * per_channel(
        scale, x.ndim, axis
    ) + per_channel(beta, x.ndim, axis)


def np_layer_centering(x, axis, bias):
    x = np.asarray(x, np.float64)
    spatial = reduction_axes(x.ndim, axis)[1:]
    return x - x.mean(axis=spatial, keepdims=True) + per_channel(
        bias, x.ndim, axis
    )


def set_random_weights(layer, seed=1, gamma_scale=1.0):
    """Random values for every trainable weight (moving stats untouched)."""
    rng = np.random.default_rng(seed)
    for weight in layer.trainable_weights:
        value = rng.normal(size=weight.shape)
        if "gamma" in weight.path:
            value = gamma_scale * value
        weight.assign(value.astype("float32"))


@contextlib.contextmanager
def float64_enabled():
    """JAX drops float64 to float32 unless x64 is on; enable it locally."""
    if keras.backend.backend() == "jax":
        import jax

        with jax.enable_x64(True):
            yield
    else:
        yield


def float64_twin(layer, input_shape):
    """The same layer (config and weights) computing in float64."""
    config = layer.get_config()
    config["dtype"] = "float64"
    twin = type(layer).from_config(config)
    twin.build((None,) + tuple(input_shape))
    twin.set_weights(layer.get_weights())
    return twin


def fit_layer(layer, input_shape, steps=5, learning_rate=1.0, seed=0):
    """Large SGD steps through `fit`; the layer sees offset, spread data.

    The targets are 10 times the centered inputs plus noise, so the
    optimizer pushes the gains up (into the `lipschitz` cap). Returns the
    data, so tests can recompute the running statistics.
    """
    rng = np.random.default_rng(seed)
    inputs = keras.Input(shape=input_shape)
    model = keras.Model(inputs, layer(inputs))
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=learning_rate),
        loss="mse",
    )
    # Channel means and scales differ along the layer's channel axis.
    axis = layer.axis % (len(input_shape) + 1)
    last = list(input_shape)
    last.append(last.pop(axis - 1))
    x = random_input((32,) + tuple(last), seed=seed, offset=4.0)
    x = move_channels(x, axis)
    y = 10.0 * (x - x.mean(axis=0)) + rng.normal(size=x.shape)
    model.fit(
        x, y.astype("float32"), epochs=steps, batch_size=16, shuffle=False,
        verbose=0,
    )
    return x


# ------------------------------------------------------ training outputs


# The channels-first shapes have as many columns as channels: TensorFlow's
# `keras.ops.add` adds a (1, C, 1, 1) bias along the last axis then.


def test_batch_centering_outputs_match_numpy():
    for shape, axis in [((5, 3), -1), ((4, 2, 3, 3), 1)]:
        check_batch_centering_outputs(shape, axis)


def check_batch_centering_outputs(shape, axis):
    x = move_channels(random_input(shape, offset=2.0), axis)
    layer = BatchCentering(axis=axis)
    layer.build(x.shape)
    set_random_weights(layer)
    bias = helpers.to_numpy(layer.bias)
    mean, _ = np_moments(x, axis)
    expected = (
        x - per_channel(mean, x.ndim, axis) + per_channel(bias, x.ndim, axis)
    )
    y = helpers.to_numpy(layer(x, training=True))
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    assert y.shape == layer.compute_output_shape(x.shape)
    # Inference subtracts the running mean instead.
    moving = helpers.to_numpy(layer.moving_mean)
    expected = (
        x - per_channel(moving, x.ndim, axis)
        + per_channel(bias, x.ndim, axis)
    )
    np.testing.assert_allclose(
        helpers.to_numpy(layer(x)), expected, rtol=1e-5, atol=1e-5
    )


def test_layer_centering_outputs_match_numpy():
    for shape, axis in [((2, 4, 3), -1), ((2, 3, 4, 4), 1)]:
        check_layer_centering_outputs(shape, axis)


def check_layer_centering_outputs(shape, axis):
    x = move_channels(random_input(shape, offset=2.0), axis)
    layer = LayerCentering(axis=axis)
    layer.build(x.shape)
    set_random_weights(layer)
    expected = np_layer_centering(x, axis, helpers.to_numpy(layer.bias))
    for training in (True, False):
        y = helpers.to_numpy(layer(x, training=training))
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    assert y.shape == layer.compute_output_shape(x.shape)
    # No bias: the per-channel spatial means of the output are zero.
    plain = helpers.to_numpy(LayerCentering(axis=axis, use_bias=False)(x))
    spatial = reduction_axes(x.ndim, axis)[1:]
    np.testing.assert_allclose(plain.mean(axis=spatial), 0.0, atol=1e-5)


def test_batch_lip_norm_training_outputs_match_numpy():
    for shape, axis, lipschitz, gamma_scale in [
        ((6, 3), -1, 100.0, 1.0),  # cap inactive
        ((4, 3, 3), -1, 1.0, 3.0),  # cap active
        ((3, 3, 2, 2), 1, 0.1, 1.0),  # channels first, cap active
    ]:
        check_batch_lip_norm_outputs(shape, axis, lipschitz, gamma_scale)


def check_batch_lip_norm_outputs(shape, axis, lipschitz, gamma_scale):
    x = move_channels(random_input(shape, offset=2.0), axis)
    layer = BatchLipNorm(axis=axis, lipschitz=lipschitz, epsilon=1e-3)
    layer.build(x.shape)
    set_random_weights(layer, gamma_scale=gamma_scale)
    gamma = helpers.to_numpy(layer.gamma)
    beta = helpers.to_numpy(layer.beta)
    mean, variance = np_moments(x, axis)
    scale = np_lip_scale(variance, gamma, 1e-3, lipschitz)
    capped = np.max(np.abs(scale)) >= lipschitz * (1 - 1e-9)
    assert capped == (lipschitz < 50), "the case does not test the cap"
    expected = np_batch_lip_norm(
        x, axis, mean, variance, gamma, beta, 1e-3, lipschitz
    )
    y = helpers.to_numpy(layer(x, training=True))
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    assert y.shape == layer.compute_output_shape(x.shape)


def test_batch_lip_norm_shares_the_largest_variance():
    # A nearly dead channel (variance 1e-6) is not amplified: both channels
    # are divided by the largest standard deviation (2), where
    # BatchNormalization would multiply channel 1 by about 700.
    signs = np.array([-1.0, 1.0, -1.0, 1.0])
    x = np.stack([2.0 * signs, 7.0 + 1e-3 * signs], axis=-1)
    x = x.astype("float32")
    layer = BatchLipNorm(lipschitz=10.0, epsilon=1e-6, center=False)
    y = helpers.to_numpy(layer(x, training=True))
    np.testing.assert_allclose(y[:, 0], signs, rtol=1e-5)
    np.testing.assert_allclose(y[:, 1], 5e-4 * signs, rtol=1e-3)


def test_batch_lip_norm_without_gamma_is_one_scalar():
    x = random_input((8, 4), offset=1.0)
    layer = BatchLipNorm(scale=False, lipschitz=100.0, epsilon=1e-3)
    y = helpers.to_numpy(layer(x, training=True))
    mean, variance = np_moments(x, -1)
    s = 1.0 / np.sqrt(variance.max() + 1e-3)
    np.testing.assert_allclose(y, (x - mean) * s, rtol=1e-5, atol=1e-5)
    assert [w.path.split("/")[-1] for w in layer.trainable_weights] == [
        "beta"
    ]


# -------------------------------------------------- running statistics


def np_ema(batches, axis, momentum, mean0, variance0):
    mean, variance = np.asarray(mean0, np.float64), np.asarray(variance0)
    for batch in batches:
        batch_mean, batch_variance = np_moments(batch, axis)
        mean = momentum * mean + (1 - momentum) * batch_mean
        variance = momentum * variance + (1 - momentum) * batch_variance
    return mean, variance


def test_running_statistics_update_only_in_training():
    x = random_input((6, 3, 2), offset=3.0)
    batches = [x[:3], x[3:], 2.0 * x[:4]]
    for layer in (BatchCentering(momentum=0.6), BatchLipNorm(momentum=0.6)):
        layer.build(x.shape)
        state = [helpers.to_numpy(w) for w in layer.non_trainable_weights]
        for _ in range(2):
            layer(x)
            layer(x, training=False)
        after = [helpers.to_numpy(w) for w in layer.non_trainable_weights]
        for before, now in zip(state, after):
            np.testing.assert_array_equal(before, now)
        for batch in batches:
            layer(batch, training=True)
        mean, variance = np_ema(batches, -1, 0.6, 0.0, 1.0)
        np.testing.assert_allclose(
            helpers.to_numpy(layer.moving_mean), mean, rtol=1e-5, atol=1e-6
        )
        if isinstance(layer, BatchLipNorm):
            np.testing.assert_allclose(
                helpers.to_numpy(layer.moving_variance),
                variance,
                rtol=1e-5,
                atol=1e-6,
            )
        assert len(layer.non_trainable_weights) == (
            2 if isinstance(layer, BatchLipNorm) else 1
        )


def test_running_statistics_in_fit_match_numpy():
    # The layer is first in the model, so its running statistics depend on
    # the data only, whatever the optimizer does to beta and gamma; they
    # are updated inside the compiled train step of every backend.
    axis = 1
    shape = (2, 3, 3)
    layer = BatchLipNorm(axis=axis, momentum=0.7)
    x = fit_layer(layer, shape, steps=2, learning_rate=0.5)
    batches = [x[:16], x[16:]] * 2  # two epochs, not shuffled
    mean, variance = np_ema(batches, axis, 0.7, 0.0, 1.0)
    np.testing.assert_allclose(
        helpers.to_numpy(layer.moving_mean), mean, rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        helpers.to_numpy(layer.moving_variance), variance, rtol=1e-5, atol=1e-5
    )


def test_frozen_layer_uses_running_statistics():
    # As Keras BatchNormalization: trainable=False means inference
    # statistics, not updated, even with training=True.
    x = random_input((6, 3), offset=3.0)
    for layer in (BatchCentering(), BatchLipNorm()):
        layer.build(x.shape)
        set_random_weights(layer)
        expected = helpers.to_numpy(layer(x, training=False))
        layer.trainable = False
        y = helpers.to_numpy(layer(x, training=True))
        np.testing.assert_array_equal(y, expected)
        np.testing.assert_array_equal(
            helpers.to_numpy(layer.moving_mean), np.zeros(3)
        )


def test_inference_outputs_do_not_depend_on_the_batch():
    x = random_input((4, 3, 3, 2), offset=1.0)
    other = x.copy()
    other[1:] = random_input((3, 3, 3, 2), seed=5)
    for layer in (BatchCentering(), LayerCentering(), BatchLipNorm()):
        layer(x, training=True)
        a = helpers.to_numpy(layer(x))[0]
        b = helpers.to_numpy(layer(other))[0]
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_batch_centering_training_is_a_joint_projection():
    # In training the map on the whole batch is I - (1/n) 1 1^T per
    # channel: singular values 1 and (one per channel) 0.
    shape = (3, 2, 2)
    layer = BatchCentering(use_bias=False)
    n = int(np.prod(shape))
    zero = helpers.to_numpy(layer(np.zeros(shape, "float32"), training=True))
    columns = []
    for i in range(n):
        e = np.zeros(n, "float32")
        e[i] = 1.0
        y = helpers.to_numpy(layer(e.reshape(shape), training=True))
        columns.append((y - zero).ravel())
    sigma = helpers.singular_values(np.stack(columns, axis=1))
    np.testing.assert_allclose(sigma[: n - 2], 1.0, atol=1e-6)
    np.testing.assert_allclose(sigma[n - 2 :], 0.0, atol=1e-6)


# ------------------------------------------------------ Lipschitz checks

LIPSCHITZ_CASES = [
    ("batch_centering_cf", BatchCentering, {"axis": 1, "momentum": 0.5},
     (2, 3, 3)),
    ("layer_centering", LayerCentering, {}, (3, 3, 2)),
    ("lip_norm_capped", BatchLipNorm, {"momentum": 0.5}, (3, 3, 2)),
    ("lip_norm_cf", BatchLipNorm,
     {"axis": 1, "momentum": 0.5, "lipschitz": 0.25, "scale": False},
     (2, 3, 3)),
    ("lip_norm_free", BatchLipNorm,
     {"momentum": 0.5, "lipschitz": 1e3, "epsilon": 1e-2}, (6,)),
]
# Trained weights by case name: each case is trained once per session.
_TRAINED_WEIGHTS = {}


def trained_case(name):
    """A layer of LIPSCHITZ_CASES after large SGD steps."""
    _, cls, kwargs, shape = next(c for c in LIPSCHITZ_CASES if c[0] == name)
    layer = cls(**kwargs)
    layer.build((None,) + shape)
    if name not in _TRAINED_WEIGHTS:
        before = [helpers.to_numpy(w) for w in layer.weights]
        fit_layer(layer, shape)
        after = [helpers.to_numpy(w) for w in layer.weights]
        # Every weight (trainable and running statistics) really moved.
        for old, new in zip(before, after):
            change = np.linalg.norm(new - old)
            assert change > 0.1 * max(np.linalg.norm(old), 1.0), name
        _TRAINED_WEIGHTS[name] = layer.get_weights()
    layer.set_weights(_TRAINED_WEIGHTS[name])
    return layer, shape


def float64_pair_ratio(fn, input_shape, scale, pairs=128, seed=0):
    """Largest ||f(x) - f(y)|| / ||x - y|| over float64 random pairs."""
    rng = np.random.default_rng(seed)
    shape = (pairs,) + tuple(input_shape)
    x = scale * rng.normal(size=shape)
    radius = np.exp(rng.uniform(-6, 1, size=(pairs,) + (1,) * len(shape[1:])))
    y = x + radius * rng.normal(size=shape)
    difference = helpers.to_numpy(fn(x)) - helpers.to_numpy(fn(y))
    num = np.linalg.norm(difference.reshape(pairs, -1), axis=1)
    den = np.linalg.norm((x - y).reshape(pairs, -1), axis=1)
    return float(np.max(num / den))


def check_jacobian(layer, shape):
    """Float32 inference Jacobian against the bound; returns sigma_max."""
    bound = layer.lipschitz_upper_bound()
    limit = getattr(layer, "lipschitz", 1.0)
    assert bound <= limit * (1 + TIGHT)
    sigma = helpers.layer_singular_values(layer, shape)
    assert sigma[0] <= bound * (1 + helpers.NORM_TOLERANCE), (sigma[0], bound)
    # The bound is the exact norm, not a loose one.
    assert sigma[0] >= bound * (1 - helpers.NORM_TOLERANCE), (sigma[0], bound)
    if isinstance(layer, BatchCentering):
        np.testing.assert_allclose(sigma, 1.0, atol=1e-3)
    if isinstance(layer, LayerCentering):
        # One zero singular value per channel (the spatial mean).
        channels = layer.channels
        np.testing.assert_allclose(sigma[:-channels], 1.0, atol=1e-3)
        np.testing.assert_allclose(sigma[-channels:], 0.0, atol=1e-3)
    if isinstance(layer, BatchLipNorm):
        variance = helpers.to_numpy(layer.moving_variance)
        gamma = np.ones(layer.channels)
        if layer.scale:
            gamma = helpers.to_numpy(layer.gamma)
        expected = np_lip_scale(
            variance, gamma, layer.epsilon, layer.lipschitz
        )
        np.testing.assert_allclose(
            layer.effective_scale(), expected, rtol=1e-5
        )
        # Diagonal map: the singular values are the |gains|, each repeated
        # once per position.
        repeats = sigma.size // layer.channels
        np.testing.assert_allclose(
            np.sort(np.abs(expected))[::-1].repeat(repeats),
            sigma,
            rtol=1e-3,
            atol=1e-6,
        )
    return sigma[0]


@pytest.mark.parametrize("name", [c[0] for c in LIPSCHITZ_CASES])
def test_inference_lipschitz_after_training(name):
    layer, shape = trained_case(name)
    sigma_max = check_jacobian(layer, shape)
    # The trained cases with a small `lipschitz` do hit the cap.
    if getattr(layer, "lipschitz", 1e3) < 10:
        assert sigma_max == pytest.approx(layer.lipschitz, rel=1e-3)
        assert layer.lipschitz_upper_bound() == pytest.approx(
            layer.lipschitz, rel=1e-6
        )
    limit = getattr(layer, "lipschitz", 1.0)
    with float64_enabled():
        twin = float64_twin(layer, shape)
        twin_bound = twin.lipschitz_upper_bound()
        assert twin_bound <= limit * (1 + TIGHT)

        def inference(x):
            return twin(x, training=False)

        for scale in (1e-3, 1.0, 100.0):
            ratio = float64_pair_ratio(inference, shape, scale)
            assert ratio <= twin_bound * (1 + 1e-9), (scale, ratio)
            assert ratio <= limit * (1 + TIGHT)
        # The float64 twin computes the same map as the float32 layer.
        x = random_input((4,) + shape, seed=3)
        np.testing.assert_allclose(
            helpers.to_numpy(twin(x)),
            helpers.to_numpy(layer(x)),
            rtol=1e-5,
            atol=1e-4,
        )


def test_jacobian_right_after_construction():
    # Before any training: running variance 1, gamma 1.
    layer = BatchLipNorm(lipschitz=2.0, epsilon=0.25)
    layer.build((None, 2, 3))
    assert layer.lipschitz_upper_bound() == pytest.approx(1 / np.sqrt(1.25))
    check_jacobian(layer, (2, 3))
    for cls in (BatchCentering, LayerCentering):
        layer = cls()
        layer.build((None, 2, 3))
        assert layer.lipschitz_upper_bound() == 1.0
        check_jacobian(layer, (2, 3))
    with pytest.raises(ValueError, match="built"):
        BatchLipNorm().lipschitz_upper_bound()


def test_lipschitz_bound_of_a_model_covers_gradient_norms():
    inputs = keras.Input(shape=(4, 4, 2))
    x = BatchCentering(momentum=0.5)(inputs)
    x = keras.layers.Dense(3)(x)  # per pixel, like a 1x1 convolution
    x = LayerCentering()(x)
    x = BatchLipNorm(momentum=0.5, lipschitz=3.0)(x)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(3)(x))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    rng = np.random.default_rng(0)
    data = random_input((32, 4, 4, 2), offset=3.0)
    model.fit(
        data, rng.normal(size=(32, 3)).astype("float32"), epochs=1,
        batch_size=16, verbose=0,
    )
    bound = keras_lipschitz.lipschitz_bound(model)
    norm_layer = model.layers[4]
    assert isinstance(norm_layer, BatchLipNorm)
    assert norm_layer.lipschitz_upper_bound() <= 3.0 * (1 + TIGHT)
    # Gradients of <v, f(x)> for random unit v, at random points.
    x = random_input((64, 4, 4, 2), seed=2, offset=3.0)
    v = rng.normal(size=(64, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    weights = keras.ops.convert_to_tensor(v, "float32")
    _, grad = _backend.value_and_input_gradient(
        lambda t: keras.ops.sum(model(t, training=False) * weights), x
    )
    norms = np.linalg.norm(helpers.to_numpy(grad).reshape(64, -1), axis=1)
    assert 0.0 < norms.max() <= bound * (1 + 1e-5), (norms.max(), bound)


def test_lipschitz_bound_uses_the_layer_bound():
    layer, shape = trained_case("lip_norm_free")
    inputs = keras.Input(shape=shape)
    model = keras.Model(inputs, layer(inputs))
    bound = keras_lipschitz.lipschitz_bound(model)
    assert bound == layer.lipschitz_upper_bound()
    # The bound is attained: the gradient of the channel with the largest
    # gain has norm max |s|.
    channel = int(np.argmax(np.abs(layer.effective_scale())))
    x = keras.ops.convert_to_tensor(random_input((1,) + shape, seed=4))
    _, grad = _backend.value_and_input_gradient(
        lambda t: model(t, training=False)[0, channel], x
    )
    assert np.linalg.norm(helpers.to_numpy(grad)) == pytest.approx(
        bound, rel=1e-6
    )


# ------------------------------------------------------------ bad inputs

ALL = [BatchCentering, LayerCentering, BatchLipNorm]


def test_bad_axis():
    x = np.zeros((2, 3, 4), "float32")
    for cls in ALL:
        for axis in ("1", 1.5, True, None, (1, 2)):
            with pytest.raises(ValueError, match="axis"):
                cls(axis=axis)
        for axis in (0, 3, -3, -4):
            with pytest.raises(ValueError, match="axis"):
                cls(axis=axis)(x)
        with pytest.raises(ValueError, match="channel"):
            cls()(keras.Input(shape=(3, None)))


def test_bad_momentum_epsilon_and_lipschitz():
    for cls in (BatchCentering, BatchLipNorm):
        for momentum in (-0.1, 1.5, "0.9", float("nan"), True, None):
            with pytest.raises(ValueError, match="momentum"):
                cls(momentum=momentum)
        assert cls(momentum=0).momentum == 0.0
        assert cls(momentum=1).momentum == 1.0
    for name in ("epsilon", "lipschitz"):
        for value in (0.0, -1.0, float("nan"), float("inf"), "1", None):
            with pytest.raises(ValueError, match=name):
                BatchLipNorm(**{name: value})


def test_layer_centering_needs_spatial_axes():
    with pytest.raises(ValueError, match="rank >= 3"):
        LayerCentering()(np.zeros((2, 3), "float32"))


# ----------------------------------------------------- config and saving

CONFIG_CASES = [
    (
        BatchCentering,
        {"axis": 1, "momentum": 0.8, "use_bias": False,
         "moving_mean_initializer": "ones"},
        (3, 2, 4),
    ),
    (
        LayerCentering,
        {"axis": -1, "bias_initializer": "ones",
         "bias_regularizer": "l2"},
        (3, 2, 4),
    ),
    (
        BatchLipNorm,
        {"axis": 1, "momentum": 0.9, "epsilon": 1e-4, "lipschitz": 1.5,
         "center": False, "gamma_initializer": "random_normal",
         "gamma_regularizer": "l2", "gamma_constraint": "non_neg",
         "moving_variance_initializer": "zeros"},
        (3, 2, 4),
    ),
]


def test_config_round_trip():
    for cls, kwargs, shape in CONFIG_CASES:
        check_config_round_trip(cls, kwargs, shape)


def check_config_round_trip(cls, kwargs, shape):
    layer = cls(**kwargs, name="norm")
    config = layer.get_config()
    revived = cls.from_config(config)
    assert revived.get_config() == config
    x = random_input(shape, offset=1.0)
    layer(x, training=True)
    revived.build(x.shape)
    revived.set_weights(layer.get_weights())
    for training in (False, True):
        np.testing.assert_array_equal(
            helpers.to_numpy(revived(x, training=training)),
            helpers.to_numpy(layer(x, training=training)),
        )


def test_save_and_load_round_trip(tmp_path):
    inputs = keras.Input(shape=(4, 4, 3))
    x = BatchCentering(momentum=0.5)(inputs)
    x = LayerCentering(axis=1)(x)
    x = BatchLipNorm(momentum=0.5, lipschitz=2.0)(x)
    model = keras.Model(inputs, x)
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse")
    data = random_input((8, 4, 4, 3), offset=2.0)
    model.fit(data, np.ones_like(data), epochs=2, batch_size=4, verbose=0)
    expected = helpers.to_numpy(model(data))
    loaded = helpers.save_and_load(model, tmp_path)
    np.testing.assert_array_equal(helpers.to_numpy(loaded(data)), expected)
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(helpers.to_numpy(a), helpers.to_numpy(b))
    assert [type(layer).__name__ for layer in loaded.layers[1:]] == [
        "BatchCentering",
        "LayerCentering",
        "BatchLipNorm",
    ]
    assert loaded.layers[3].lipschitz_upper_bound() == (
        model.layers[3].lipschitz_upper_bound()
    )


# --------------------------------------------------------- mixed precision


def test_mixed_float16():
    for cls in ALL:
        keras.config.set_dtype_policy("float32")
        check_mixed_float16(cls)


def check_mixed_float16(cls):
    # Values near 300 square to more than float16's 65504: the statistics
    # are computed in float32. The inputs are float16 values, so both runs
    # see the same numbers.
    x = random_input((4, 3, 3, 2), offset=300.0)
    x = x.astype("float16").astype("float32")
    kwargs = {} if cls is LayerCentering else {"momentum": 0.5}
    reference = cls(**kwargs)
    reference.build(x.shape)
    set_random_weights(reference)
    weights = reference.get_weights()
    expected_train = helpers.to_numpy(reference(x, training=True))
    expected = helpers.to_numpy(reference(x))
    keras.config.set_dtype_policy("mixed_float16")
    layer = cls(**kwargs)
    layer.build(x.shape)
    layer.set_weights(weights)
    assert all(
        keras.backend.standardize_dtype(w.dtype) == "float32"
        for w in layer.weights
    )
    y_train = layer(x, training=True)
    assert keras.backend.standardize_dtype(y_train.dtype) == "float16"
    y = layer(x)
    for got, want in ((y_train, expected_train), (y, expected)):
        got = helpers.to_numpy(got)
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(
            got, want, rtol=2e-3, atol=2e-3
        )
    states = zip(layer.non_trainable_weights, reference.non_trainable_weights)
    for a, b in states:
        np.testing.assert_allclose(
            helpers.to_numpy(a), helpers.to_numpy(b), rtol=1e-5
        )
