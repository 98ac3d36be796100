"""Tests of the 1-Lipschitz pooling and downsampling layers.

References are NumPy float64 re-implementations of the documented formulas.
"""

import math

import keras
import numpy as np
import pytest

from keras_lipschitz.layers import InvertibleDownSampling
from keras_lipschitz.layers import ScaledAveragePooling2D
from keras_lipschitz.layers import ScaledGlobalAveragePooling2D
from keras_lipschitz.layers import ScaledGlobalL2NormPooling2D
from keras_lipschitz.layers import ScaledL2NormPooling2D
from tests import helpers

CL = "channels_last"
CF = "channels_first"


def random_input(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def image_shape(height, width, channels, data_format):
    if data_format == CL:
        return (height, width, channels)
    return (channels, height, width)


def np_windows(x, pool_size, data_format):
    """Non-overlapping windows, 'valid' cropping: (B, Ho, Wo, C, ph * pw)."""
    x = np.asarray(x, np.float64)
    if data_format == CF:
        x = x.transpose(0, 2, 3, 1)
    ph, pw = pool_size
    b, h, w, c = x.shape
    ho, wo = h // ph, w // pw
    x = x[:, : ho * ph, : wo * pw].reshape(b, ho, ph, wo, pw, c)
    return x.transpose(0, 1, 3, 5, 2, 4).reshape(b, ho, wo, c, ph * pw)


def to_format(x_channels_last, data_format):
    if data_format == CF:
        return x_channels_last.transpose(0, 3, 1, 2)
    return x_channels_last


def np_scaled_average(x, pool_size, data_format):
    windows = np_windows(x, pool_size, data_format)
    out = windows.sum(-1) / math.sqrt(windows.shape[-1])
    return to_format(out, data_format)


def np_scaled_l2(x, pool_size, data_format, epsilon):
    windows = np_windows(x, pool_size, data_format)
    return to_format(np.sqrt((windows**2).sum(-1) + epsilon), data_format)


def np_space_to_depth(x, pool_size, data_format):
    """The documented index map, written as explicit loops."""
    x = np.asarray(x)
    if data_format == CF:
        x = x.transpose(0, 2, 3, 1)
    ph, pw = pool_size
    b, h, w, c = x.shape
    out = np.zeros((b, h // ph, w // pw, ph * pw * c), x.dtype)
    for i in range(h // ph):
        for j in range(w // pw):
            for a in range(ph):
                for bb in range(pw):
                    for ch in range(c):
                        out[:, i, j, (a * pw + bb) * c + ch] = x[
                            :, i * ph + a, j * pw + bb, ch
                        ]
    return to_format(out, data_format)


def np_depth_to_space(y, pool_size, data_format):
    """Inverse of the documented map, by reshapes (not loops)."""
    y = np.asarray(y)
    if data_format == CF:
        y = y.transpose(0, 2, 3, 1)
    ph, pw = pool_size
    b, ho, wo, depth = y.shape
    c = depth // (ph * pw)
    x = y.reshape(b, ho, wo, ph, pw, c).transpose(0, 1, 3, 2, 4, 5)
    return to_format(x.reshape(b, ho * ph, wo * pw, c), data_format)


# ----------------------------------------------------------- numpy values


@pytest.mark.parametrize("data_format", [CL, CF])
@pytest.mark.parametrize(
    "pool_size,height,width",
    [((2, 2), 4, 6), ((3, 2), 7, 5), ((1, 4), 3, 8)],
)
def test_windowed_pooling_matches_numpy(data_format, pool_size, height, width):
    x = random_input((2,) + image_shape(height, width, 3, data_format))
    average = ScaledAveragePooling2D(pool_size, data_format=data_format)
    l2 = ScaledL2NormPooling2D(pool_size, epsilon=1e-3, data_format=data_format)
    for layer, expected in (
        (average, np_scaled_average(x, pool_size, data_format)),
        (l2, np_scaled_l2(x, pool_size, data_format, 1e-3)),
    ):
        y = helpers.to_numpy(layer(x))
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
        assert y.shape == layer.compute_output_shape(x.shape)


@pytest.mark.parametrize("data_format", [CL, CF])
@pytest.mark.parametrize(
    "pool_size,height,width",
    [((2, 2), 4, 6), ((3, 2), 7, 5), ((1, 4), 3, 8)],
)
def test_l2_norm_pooling_gradient_matches_numpy(
    data_format, pool_size, height, width
):
    # The layer's hand-written gradient x * g / y, spread over each window
    # and 0 on the rows and columns that 'valid' pooling drops.
    from keras_lipschitz import _backend

    x = random_input((2,) + image_shape(height, width, 3, data_format))
    layer = ScaledL2NormPooling2D(
        pool_size, epsilon=1e-3, data_format=data_format
    )
    y = np_scaled_l2(x, pool_size, data_format, 1e-3)
    g = np.random.default_rng(1).normal(size=y.shape)
    weights = keras.ops.convert_to_tensor(g, "float32")
    _, grad = _backend.value_and_input_gradient(
        lambda v: keras.ops.sum(layer(v) * weights),
        keras.ops.convert_to_tensor(x),
    )
    def channels_last(a):
        a = np.asarray(a, np.float64)
        return a.transpose(0, 2, 3, 1) if data_format == CF else a

    x_last = channels_last(x)
    spread = channels_last(g / y).repeat(pool_size[0], axis=1)
    spread = spread.repeat(pool_size[1], axis=2)
    expected = np.zeros_like(x_last)
    h, w = spread.shape[1:3]
    expected[:, :h, :w] = x_last[:, :h, :w] * spread
    np.testing.assert_allclose(
        helpers.to_numpy(grad),
        to_format(expected, data_format),
        rtol=1e-4,
        atol=1e-6,
    )


@pytest.mark.parametrize("data_format", [CL, CF])
@pytest.mark.parametrize("keepdims", [False, True])
def test_global_pooling_matches_numpy(data_format, keepdims):
    x = random_input((2,) + image_shape(3, 5, 4, data_format))
    axes = (1, 2) if data_format == CL else (2, 3)
    x64 = x.astype(np.float64)
    for layer, expected in (
        (
            ScaledGlobalAveragePooling2D(data_format, keepdims=keepdims),
            x64.sum(axis=axes, keepdims=keepdims) / math.sqrt(15),
        ),
        (
            ScaledGlobalL2NormPooling2D(
                data_format, keepdims=keepdims, epsilon=1e-3
            ),
            np.sqrt((x64**2).sum(axis=axes, keepdims=keepdims) + 1e-3),
        ),
    ):
        y = helpers.to_numpy(layer(x))
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
        assert y.shape == layer.compute_output_shape(x.shape)


def test_data_format_defaults_to_image_data_format():
    original = keras.config.image_data_format()
    try:
        keras.config.set_image_data_format(CF)
        for layer in (
            ScaledAveragePooling2D(),
            ScaledL2NormPooling2D(),
            ScaledGlobalAveragePooling2D(),
            ScaledGlobalL2NormPooling2D(),
            InvertibleDownSampling(),
        ):
            assert layer.data_format == CF
    finally:
        keras.config.set_image_data_format(original)


@pytest.mark.parametrize("data_format", [CL, CF])
@pytest.mark.parametrize("pool_size", [2, (2, 3)])
def test_invertible_down_sampling_is_an_invertible_permutation(
    data_format, pool_size
):
    pool = (pool_size, pool_size) if isinstance(pool_size, int) else pool_size
    x = random_input((2,) + image_shape(4, 6, 3, data_format))
    layer = InvertibleDownSampling(pool_size, data_format=data_format)
    y = helpers.to_numpy(layer(x))
    depth = 3 * pool[0] * pool[1]
    expected_shape = image_shape(4 // pool[0], 6 // pool[1], depth, data_format)
    assert y.shape == (2,) + expected_shape
    assert y.shape == layer.compute_output_shape(x.shape)
    np.testing.assert_array_equal(y, np_space_to_depth(x, pool, data_format))
    np.testing.assert_array_equal(np_depth_to_space(y, pool, data_format), x)
    np.testing.assert_array_equal(
        np.sort(y.reshape(2, -1), axis=1), np.sort(x.reshape(2, -1), axis=1)
    )
    np.testing.assert_allclose(
        np.linalg.norm(y.reshape(2, -1), axis=1),
        np.linalg.norm(x.reshape(2, -1), axis=1),
        rtol=1e-6,
    )


def test_invertible_down_sampling_channel_order_is_the_same_in_both_formats():
    x = random_input((2, 4, 4, 3))
    y_last = helpers.to_numpy(InvertibleDownSampling(2, data_format=CL)(x))
    y_first = helpers.to_numpy(
        InvertibleDownSampling(2, data_format=CF)(x.transpose(0, 3, 1, 2))
    )
    np.testing.assert_array_equal(y_first.transpose(0, 2, 3, 1), y_last)


# ------------------------------------------------------ Lipschitz checks

LIPSCHITZ_CASES = [
    (ScaledAveragePooling2D, {"pool_size": (2, 2)}, (4, 4, 3)),
    (ScaledAveragePooling2D, {"pool_size": (3, 2)}, (6, 4, 2)),
    (ScaledL2NormPooling2D, {"pool_size": (2, 2)}, (4, 4, 3)),
    (ScaledL2NormPooling2D, {"pool_size": 3, "epsilon": 0.1}, (6, 3, 2)),
    (ScaledGlobalAveragePooling2D, {}, (3, 5, 2)),
    (ScaledGlobalL2NormPooling2D, {}, (3, 5, 2)),
    (ScaledGlobalL2NormPooling2D, {"epsilon": 0.5}, (3, 5, 2)),
    (InvertibleDownSampling, {"pool_size": 2}, (4, 4, 3)),
]


def test_pooling_is_1_lipschitz():
    for cls, kwargs, shape in LIPSCHITZ_CASES:
        layer = cls(data_format=CL, **kwargs)
        case = f"{cls.__name__}({kwargs})"
        assert helpers.random_pair_ratio(layer, shape) <= 1.0 + 1e-5, case
        # Small inputs, where epsilon matters most.
        ratio = helpers.random_pair_ratio(layer, shape, scale=1e-3)
        assert ratio <= 1.0 + 1e-5, case
        assert layer.lipschitz_upper_bound() == 1.0


def test_scaled_average_pooling_is_tight():
    # The constant is exactly 1: the ratio is attained by a constant window.
    layer = ScaledAveragePooling2D(2, data_format=CL)
    x = np.ones((1, 2, 2, 1), "float32")
    np.testing.assert_allclose(
        np.linalg.norm(helpers.to_numpy(layer(x))), np.linalg.norm(x)
    )


# -------------------------------------------------- gradients at zero


def _fit_on_zeros(pooling):
    """One fit step where the pooling layer sees all-zero inputs.

    A 1x1 conv with zero kernel and bias feeds the pooling, so its inputs are
    exactly 0 and every trainable weight's gradient goes through the
    pooling's gradient at 0. Returns (loss, weights after the step).
    """
    inputs = keras.Input(shape=(4, 4, 2))
    x = keras.layers.Conv2D(
        2, 1, kernel_initializer="zeros", bias_initializer="zeros"
    )(inputs)
    x = keras.layers.Flatten()(pooling(x))
    model = keras.Model(inputs, keras.layers.Dense(1)(x))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    history = model.fit(
        np.zeros((4, 4, 4, 2), "float32"),
        np.ones((4, 1), "float32"),
        epochs=1,
        batch_size=4,
        verbose=0,
    )
    return history.history["loss"][-1], [
        helpers.to_numpy(w) for w in model.trainable_weights
    ]


@pytest.mark.parametrize(
    "cls", [ScaledL2NormPooling2D, ScaledGlobalL2NormPooling2D]
)
def test_l2_norm_pooling_gradient_is_finite_at_zero(cls):
    loss, weights = _fit_on_zeros(cls(data_format=CL))
    assert np.isfinite(loss)
    assert all(np.all(np.isfinite(w)) for w in weights)


@pytest.mark.parametrize(
    "cls", [ScaledL2NormPooling2D, ScaledGlobalL2NormPooling2D]
)
def test_gradient_check_detects_nan_without_epsilon(cls):
    # Control: with epsilon forced to 0 (not allowed by the constructor), the
    # same check sees the NaN gradient of sqrt at 0, so the test above can
    # fail.
    layer = cls(data_format=CL)
    layer.epsilon = 0.0
    _, weights = _fit_on_zeros(layer)
    assert not all(np.all(np.isfinite(w)) for w in weights)


# ------------------------------------------------------------ bad inputs

WINDOWED = [ScaledAveragePooling2D, ScaledL2NormPooling2D]


@pytest.mark.parametrize("cls", WINDOWED)
def test_windowed_pooling_rejects_bad_arguments(cls):
    # strides != pool_size, "same" or unknown padding, bad pool sizes.
    with pytest.raises(ValueError, match="strides"):
        cls(pool_size=2, strides=1)
    with pytest.raises(ValueError, match="strides"):
        cls(pool_size=(2, 2), strides=(2, 1))
    with pytest.raises(ValueError, match="padding"):
        cls(padding="same")
    with pytest.raises(ValueError, match="padding"):
        cls(padding="causal")
    with pytest.raises(ValueError, match="pool_size"):
        cls(pool_size=0)
    with pytest.raises(ValueError, match="pool_size"):
        cls(pool_size=(2, 2, 2))
    with pytest.raises(ValueError, match="data_format"):
        cls(data_format="NHWC")
    with pytest.raises(ValueError, match="pool_size"):
        cls(pool_size=3, data_format=CL)(np.zeros((1, 2, 4, 1), "float32"))
    # Accepted: strides equal to the pool size, and "VALID" in capitals.
    layer = cls(pool_size=(2, 3), strides=(2, 3), padding="VALID")
    assert layer.strides == (2, 3) and layer.padding == "valid"


def test_l2_norm_pooling_rejects_bad_epsilon():
    for cls in [ScaledL2NormPooling2D, ScaledGlobalL2NormPooling2D]:
        for epsilon in [0.0, -1e-6, float("nan"), "1e-6"]:
            with pytest.raises(ValueError, match="epsilon"):
                cls(epsilon=epsilon)


def test_global_average_pooling_needs_static_spatial_sizes():
    with pytest.raises(ValueError, match="spatial"):
        ScaledGlobalAveragePooling2D(data_format=CL)(
            keras.Input(shape=(None, 4, 3))
        )
    # The L2-norm version does not need them.
    inputs = keras.Input(shape=(None, None, 3))
    outputs = ScaledGlobalL2NormPooling2D(data_format=CL)(inputs)
    assert tuple(outputs.shape) == (None, 3)


def test_invertible_down_sampling_rejects_bad_inputs():
    with pytest.raises(ValueError, match=r"pool_size.*H=5"):
        InvertibleDownSampling(2, data_format=CL)(
            np.zeros((1, 5, 4, 1), "float32")
        )
    with pytest.raises(ValueError, match=r"pool_size.*W=5"):
        InvertibleDownSampling(2, data_format=CF)(
            np.zeros((1, 1, 4, 5), "float32")
        )
    with pytest.raises(ValueError, match=r"pool_size.*H=None"):
        InvertibleDownSampling(2, data_format=CL)(
            keras.Input(shape=(None, 4, 1))
        )
    with pytest.raises(ValueError, match="channel"):
        InvertibleDownSampling(2, data_format=CL)(
            keras.Input(shape=(4, 4, None))
        )
    with pytest.raises(ValueError, match="pool_size"):
        InvertibleDownSampling(0)
    with pytest.raises(ValueError, match="data_format"):
        InvertibleDownSampling(2, data_format="channels_middle")


# ----------------------------------------------------- config and saving

CONFIG_CASES = [
    (
        ScaledAveragePooling2D,
        {"pool_size": (3, 2), "data_format": CF},
        (2, 3, 6, 4),
    ),
    (
        ScaledL2NormPooling2D,
        {"pool_size": 2, "strides": 2, "epsilon": 1e-4, "data_format": CL},
        (2, 4, 4, 3),
    ),
    (ScaledGlobalAveragePooling2D, {"keepdims": True}, (2, 3, 3, 2)),
    (
        ScaledGlobalL2NormPooling2D,
        {"epsilon": 0.01, "data_format": CF},
        (2, 2, 3, 3),
    ),
    (
        InvertibleDownSampling,
        {"pool_size": (2, 1), "data_format": CF},
        (2, 3, 4, 4),
    ),
]


def test_config_round_trip():
    for cls, kwargs, shape in CONFIG_CASES:
        layer = cls(**kwargs, name="pool")
        config = layer.get_config()
        revived = cls.from_config(config)
        assert revived.get_config() == config
        x = random_input(shape)
        y = helpers.to_numpy(layer(x))
        np.testing.assert_array_equal(helpers.to_numpy(revived(x)), y)
        assert set(dir(layer)) == set(dir(revived)), cls.__name__
        assert not layer.weights


def test_save_and_load_round_trip(tmp_path):
    inputs = keras.Input(shape=(8, 8, 3))
    x = InvertibleDownSampling(2, data_format=CL)(inputs)
    a = ScaledL2NormPooling2D(2, data_format=CL)(x)
    a = ScaledGlobalAveragePooling2D(data_format=CL)(a)
    b = ScaledAveragePooling2D((2, 4), data_format=CL)(x)
    b = ScaledGlobalL2NormPooling2D(data_format=CL, keepdims=True)(b)
    b = keras.layers.Flatten()(b)
    model = keras.Model(inputs, keras.layers.Concatenate()([a, b]))
    assert tuple(model.output.shape) == (None, 24)
    data = random_input((3, 8, 8, 3))
    expected = helpers.to_numpy(model(data))
    loaded = helpers.save_and_load(model, tmp_path)
    np.testing.assert_array_equal(helpers.to_numpy(loaded(data)), expected)
    assert {
        "InvertibleDownSampling",
        "ScaledL2NormPooling2D",
        "ScaledAveragePooling2D",
        "ScaledGlobalAveragePooling2D",
        "ScaledGlobalL2NormPooling2D",
    } <= {type(layer).__name__ for layer in loaded.layers}


# --------------------------------------------------------- mixed precision


def test_mixed_float16():
    inputs = [random_input((2,) + shape) for _, _, shape in LIPSCHITZ_CASES]
    expected = [
        helpers.to_numpy(cls(data_format=CL, **kwargs)(x))
        for (cls, kwargs, _), x in zip(LIPSCHITZ_CASES, inputs)
    ]
    keras.config.set_dtype_policy("mixed_float16")
    for (cls, kwargs, _), x, want in zip(LIPSCHITZ_CASES, inputs, expected):
        y = cls(data_format=CL, **kwargs)(x)
        assert keras.backend.standardize_dtype(y.dtype) == "float16"
        np.testing.assert_allclose(
            helpers.to_numpy(y),
            want,
            rtol=2e-3,
            atol=2e-3,
            err_msg=cls.__name__,
        )
