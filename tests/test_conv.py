"""Tests of the Lipschitz conv layers: SpectralConv2D and BjorckConv2D.

The central checks compare the layers against their *real* operator: the
exact Jacobian of the layer on its input size (`helpers.linear_jacobian`,
no finite differences), whose largest singular value is the layer's exact
ℓ2 Lipschitz constant. Every check is repeated after `helpers.push_weights`
has moved the raw kernel far from its initialization.
"""

import itertools

import keras
import numpy as np
import pytest
from keras import ops

from keras_lipschitz import bounds
from keras_lipschitz import normalizers
from keras_lipschitz.layers import BjorckConv2D
from keras_lipschitz.layers import SpectralConv2D
from tests import helpers

TOL = helpers.NORM_TOLERANCE
# SpectralConv2D must be tight: its Lipschitz constant is at least this
# fraction of `lipschitz`.
TIGHTNESS = 0.95
# The float32 Jacobian can exceed the float64 norm of the same float32
# kernel by rounding only (~1e-7 relative).
FLOAT32_SLACK = 1e-5


@pytest.fixture(autouse=True, scope="module")
def _single_threaded_torch():
    """Runs torch single-threaded for this module, then restores it.

    These tests run thousands of convolutions on 1-sample, few-pixel
    inputs. With intra-op threads on a busy CPU each such torch conv can
    take ~15 ms of thread synchronisation instead of ~0.1 ms of work.
    """
    if keras.config.backend() != "torch":
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _spectral_norm(layer, input_shape):
    return helpers.layer_singular_values(layer, input_shape)[0]


def _kernel_change(layer, input_shape):
    """Runs `push_weights` on a bias-free layer: returns the kernel change."""
    assert not layer.use_bias
    return helpers.push_weights(layer, input_shape)


# ---------------------------------------------------------------- adjoint
@pytest.mark.parametrize("s", [1, 2, 3])
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_conv_transpose_is_exact_adjoint(k, s):
    """<Au, v> == <u, A^T v> with the layers' output_padding, same shape.

    Both paddings; sizes 7, 8, 9 cover every residue modulo the stride, on
    both axes. The error is measured relative to ||Au|| ||v||, the scale of
    the float32 rounding (the inner product itself can cancel).
    """
    rng = np.random.default_rng(k * 10 + s)
    kernel = rng.normal(size=(k, k, 2, 3)).astype("float32")
    for padding, size in itertools.product(
        ("same", "valid"), ((7, 8), (9, 9))
    ):
        case = (padding, size)
        u = rng.normal(size=(1, *size, 2)).astype("float32")
        au = ops.conv(u, kernel, strides=s, padding=padding)
        v = rng.normal(size=tuple(au.shape)).astype("float32")
        output_padding = normalizers.conv_transpose_output_padding(
            size, (k, k), (s, s), padding
        )
        atv = ops.conv_transpose(
            v, kernel, strides=s, padding=padding, output_padding=output_padding
        )
        assert tuple(atv.shape) == u.shape, case
        au, atv = helpers.to_numpy(au), helpers.to_numpy(atv)
        lhs = float(np.sum(au * v))
        rhs = float(np.sum(u * atv))
        scale = float(np.linalg.norm(au) * np.linalg.norm(v))
        assert abs(lhs - rhs) <= 1e-5 * scale, (case, lhs, rhs)
        # And ops.conv is the operator the float64 bounds describe.
        matrix = bounds.conv_operator_matrix(kernel, size, (s, s), padding)
        np.testing.assert_allclose(
            au.reshape(-1),
            matrix @ u.reshape(-1).astype(np.float64),
            rtol=1e-4,
            atol=1e-4,
            err_msg=str(case),
        )


# ----------------------------------------------------- SpectralConv2D norm
# (kernel, strides, padding, input size, c_in, lipschitz)
SPECTRAL_CASES = [
    (2, 1, "same", 6, 3, 1.0),  # even kernel: asymmetric zero padding
    (3, 1, "same", 8, 2, 1.0),
    (3, 2, "same", 9, 3, 1.0),
    (4, 2, "valid", 8, 3, 1.0),
    (5, 1, "valid", 9, 2, 2.0),
]


@pytest.mark.parametrize("k,s,padding,n,c_in,lip", SPECTRAL_CASES)
def test_spectral_conv_exact_norm_tight_and_sound(k, s, padding, n, c_in, lip):
    shape = (n, n, c_in)
    layer = SpectralConv2D(
        3, k, strides=s, padding=padding, lipschitz=lip, use_bias=False
    )
    layer.build((None, *shape))

    def check():
        sigma = _spectral_norm(layer, shape)
        assert sigma <= lip * (1 + TOL), sigma / lip
        assert sigma >= TIGHTNESS * lip, sigma / lip
        bound = layer.lipschitz_upper_bound()
        assert bound >= sigma * (1 - FLOAT32_SLACK), (bound, sigma)

    check()
    assert _kernel_change(layer, shape) > 0.1
    check()


def test_spectral_conv_large_input_uses_fft_bound_and_is_sound():
    """h*w*c_in > 1024: the bound goes through the FFT, not the matrix."""
    shape = (19, 19, 3)
    assert 19 * 19 * 3 > bounds.EXPLICIT_OPERATOR_MAX_INPUT_DIM
    layer = SpectralConv2D(3, 3, strides=2, use_bias=False)
    layer.build((None, *shape))
    sigma = _spectral_norm(layer, shape)
    assert TIGHTNESS <= sigma <= 1 + TOL
    assert layer.lipschitz_upper_bound() >= sigma * (1 - FLOAT32_SLACK)


def test_spectral_conv_smaller_input_stays_normalized():
    """The norm grows with the input size, so smaller inputs are safe."""
    layer = SpectralConv2D(2, 3, use_bias=False)
    layer.build((None, 9, 9, 2))
    assert _spectral_norm(layer, (6, 6, 2)) <= 1 + TOL


# --------------------------------------------------------- BjorckConv2D
# (kernel, strides, padding, input size, c_in, filters, lipschitz)
BJORCK_CASES = [
    (3, 1, "same", 8, 3, 3, 1.0),
    (2, 2, "valid", 8, 1, 6, 1.0),  # wide reshaped kernel (4 x 6)
    (4, 1, "same", 6, 2, 3, 2.0),
    (5, 2, "valid", 7, 3, 3, 1.0),
]


@pytest.mark.parametrize("k,s,padding,n,c_in,filters,lip", BJORCK_CASES)
def test_bjorck_conv_norm_orthonormal_and_sound(
    k, s, padding, n, c_in, filters, lip
):
    shape = (n, n, c_in)
    layer = BjorckConv2D(
        filters, k, strides=s, padding=padding, lipschitz=lip, use_bias=False
    )
    layer.build((None, *shape))
    factor = normalizers.rko_correction_factor((k, k), (s, s))
    assert layer.correction_factor == pytest.approx(factor)

    def check():
        sigma = _spectral_norm(layer, shape)
        assert sigma <= lip * (1 + TOL), sigma / lip
        assert layer.lipschitz_upper_bound() >= sigma * (1 - FLOAT32_SLACK)
        reshaped = layer.effective_kernel().reshape(k * k * c_in, filters)
        values = helpers.singular_values(reshaped / (factor * lip))
        np.testing.assert_allclose(values, 1.0, atol=1e-2)

    check()
    assert _kernel_change(layer, shape) > 0.1
    check()


def test_bjorck_conv_without_spatial_size_has_size_free_bound():
    layer = BjorckConv2D(3, 3, strides=2, use_bias=False)
    layer.build((None, None, None, 2))
    bound = layer.lipschitz_upper_bound()
    for n in (5, 9):
        sigma = _spectral_norm(layer, (n, n, 2))
        assert sigma <= 1 + TOL
        assert bound >= sigma * (1 - FLOAT32_SLACK)


# ------------------------------------------------------------------ state
@pytest.mark.parametrize("cls", [SpectralConv2D, BjorckConv2D])
def test_u_written_only_in_training(cls):
    shape = (7, 7, 2)
    layer = cls(3, 3, strides=2)
    layer.build((None, *shape))
    # Move the raw kernel so that one power-iteration step visibly moves u.
    rng = np.random.default_rng(1)
    layer.kernel.assign(rng.normal(size=(3, 3, 2, 3)).astype("float32"))
    x = rng.normal(size=(2, *shape)).astype("float32")
    u0 = helpers.to_numpy(layer.u)
    layer(x)
    layer(x, training=False)
    np.testing.assert_array_equal(helpers.to_numpy(layer.u), u0)
    layer(x, training=True)
    assert np.max(np.abs(helpers.to_numpy(layer.u) - u0)) > 1e-3
    assert not layer.u.trainable


@pytest.mark.parametrize("cls", [SpectralConv2D, BjorckConv2D])
def test_mixed_precision_keeps_state_float32(cls):
    # Conv in float16 runs on every backend here, torch CPU included
    # (checked on torch 2.13), so nothing is skipped.
    keras.config.set_dtype_policy("mixed_float16")
    shape = (6, 6, 2)
    layer = cls(3, 3)
    x = np.random.default_rng(0).normal(size=(2, *shape)).astype("float32")
    y = layer(x)
    assert keras.backend.standardize_dtype(y.dtype) == "float16"
    y = layer(x, training=True)
    assert keras.backend.standardize_dtype(y.dtype) == "float16"
    for weight in (layer.kernel, layer.u):
        assert keras.backend.standardize_dtype(weight.dtype) == "float32"
        value = weight.value if hasattr(weight, "value") else weight
        assert keras.backend.standardize_dtype(value.dtype) == "float32"
    assert np.all(np.isfinite(helpers.to_numpy(y)))


# ------------------------------------------------------------ data format
@pytest.mark.parametrize("cls", [SpectralConv2D, BjorckConv2D])
def test_channels_first_matches_channels_last(cls):
    hw, c_in = (7, 9), 2
    kwargs = dict(filters=3, kernel_size=3, strides=2, bias_initializer="ones")
    last = cls(data_format="channels_last", **kwargs)
    first = cls(data_format="channels_first", **kwargs)
    last.build((None, *hw, c_in))
    first.build((None, c_in, *hw))
    first.kernel.assign(last.kernel)
    u = helpers.to_numpy(last.u)
    if u.ndim == 4:
        assert first.u.shape == (1, c_in, *hw)
        u = u.transpose(0, 3, 1, 2)
    first.u.assign(u.astype("float32"))
    x = np.random.default_rng(0).normal(size=(4, *hw, c_in)).astype("float32")
    y_last = helpers.to_numpy(last(x))
    y_first = helpers.to_numpy(first(x.transpose(0, 3, 1, 2)))
    assert y_first.shape == tuple(first.compute_output_shape((4, c_in, *hw)))
    np.testing.assert_allclose(
        y_first.transpose(0, 2, 3, 1), y_last, rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        first.lipschitz_upper_bound(), last.lipschitz_upper_bound(), rtol=1e-5
    )


@pytest.mark.parametrize("cls", [SpectralConv2D, BjorckConv2D])
def test_channels_first_bias_is_added_on_the_channel_axis(cls):
    # Output width == filters: the case where TF's `ops.add` adds a
    # (1, C, 1, 1) bias along the last axis instead.
    layer = cls(4, 3, data_format="channels_first", use_bias=True)
    layer.build((None, 2, 3, 4))
    layer.bias.assign(np.array([1.0, 2.0, 3.0, 4.0], "float32"))
    outputs = helpers.to_numpy(layer(np.zeros((1, 2, 3, 4), "float32")))
    assert outputs.shape == (1, 4, 3, 4)
    expected = np.broadcast_to(np.arange(1.0, 5.0)[:, None, None], (4, 3, 4))
    np.testing.assert_allclose(outputs[0], expected, atol=1e-6)


def test_compute_output_shape():
    """Against keras.layers.Conv2D, and against real (symbolic) outputs."""
    for data_format, padding in itertools.product(
        ("channels_last", "channels_first"), ("same", "valid")
    ):
        case = (data_format, padding)
        shape = (2, 9, 7, 3) if data_format == "channels_last" else (2, 3, 9, 7)
        kwargs = dict(
            filters=4,
            kernel_size=(2, 3),
            strides=(2, 3),
            padding=padding,
            data_format=data_format,
        )
        reference = keras.layers.Conv2D(**kwargs)
        expected = tuple(reference.compute_output_shape(shape))
        for cls in (SpectralConv2D, BjorckConv2D):
            assert tuple(cls(**kwargs).compute_output_shape(shape)) == expected
        # The shape logic is shared: one real call per format and padding.
        symbolic = BjorckConv2D(**kwargs)(keras.Input(shape[1:], batch_size=2))
        assert tuple(symbolic.shape) == expected, case
    layer = SpectralConv2D(**kwargs)
    y = layer(np.zeros(shape, "float32"))
    assert tuple(y.shape) == tuple(layer.compute_output_shape(shape))


# ------------------------------------------------------------- validation
INVALID_ARGUMENTS = [
    ({"filters": 0}, "filters"),
    ({"filters": -2}, "filters"),
    ({"filters": 2.5}, "filters"),
    ({"lipschitz": 0.0}, "lipschitz"),
    ({"lipschitz": -1.0}, "lipschitz"),
    ({"lipschitz": float("inf")}, "lipschitz"),
    ({"padding": "causal"}, "padding"),
    ({"padding": "full"}, "padding"),
    ({"kernel_size": 0}, "kernel_size"),
    ({"kernel_size": (3, 0)}, "kernel_size"),
    ({"kernel_size": (3, 3, 3)}, "kernel_size"),
    ({"strides": 0}, "strides"),
    ({"data_format": "nhwc"}, "data_format"),
    ({"activation": "exponential"}, "activation"),
    ({"power_iterations": 0}, "power_iterations"),
]


@pytest.mark.parametrize("cls", [SpectralConv2D, BjorckConv2D])
def test_invalid_arguments_raise(cls):
    for kwargs, name in INVALID_ARGUMENTS:
        args = {"filters": 3, "kernel_size": 3, **kwargs}
        with pytest.raises(ValueError, match=f"`{name}`"):
            cls(**args)


def test_invalid_layer_specific_arguments_raise():
    with pytest.raises(ValueError, match="eval_power_iterations"):
        SpectralConv2D(3, 3, eval_power_iterations=0)
    with pytest.raises(ValueError, match="bjorck_beta"):
        BjorckConv2D(3, 3, bjorck_beta=0.7)
    with pytest.raises(ValueError, match="bjorck_iterations"):
        BjorckConv2D(3, 3, bjorck_iterations=0)


def test_spectral_conv_needs_static_spatial_size():
    layer = SpectralConv2D(3, 3)
    with pytest.raises(ValueError, match="spatial dimensions"):
        layer.build((None, None, None, 3))
    with pytest.raises(ValueError, match="spatial dimensions"):
        SpectralConv2D(3, 3)(keras.Input((None, 8, 3)))


@pytest.mark.parametrize("cls", [SpectralConv2D, BjorckConv2D])
def test_larger_input_than_built_raises(cls):
    layer = cls(3, 3)
    layer.build((None, 6, 6, 2))
    layer(np.zeros((1, 5, 6, 2), "float32"))  # smaller is fine
    with pytest.raises(ValueError, match="built for spatial size"):
        layer(np.zeros((1, 7, 6, 2), "float32"))


def test_valid_padding_needs_input_at_least_kernel():
    with pytest.raises(ValueError, match="kernel_size"):
        SpectralConv2D(3, 5, padding="valid").build((None, 4, 8, 2))


# -------------------------------------------------------- serialization
@pytest.mark.parametrize("cls", [SpectralConv2D, BjorckConv2D])
def test_config_round_trip(cls):
    extra = (
        {"eval_power_iterations": 20}
        if cls is SpectralConv2D
        else {"bjorck_iterations": 12, "bjorck_beta": 0.4}
    )
    layer = cls(
        4,
        (3, 2),
        strides=(2, 1),
        padding="valid",
        data_format="channels_last",
        lipschitz=2.0,
        activation="relu",
        use_bias=False,
        power_iterations=2,
        name="conv",
        **extra,
    )
    config = layer.get_config()
    revived = cls.from_config(config)
    assert revived.get_config() == config
    for key, value in extra.items():
        assert config[key] == value
    layer.build((None, 8, 8, 2))
    revived.build((None, 8, 8, 2))
    assert set(dir(layer)) == set(dir(revived))
    revived.set_weights(layer.get_weights())
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 2)).astype("float32")
    np.testing.assert_allclose(
        helpers.to_numpy(revived(x)), helpers.to_numpy(layer(x)), rtol=1e-6
    )


@pytest.mark.parametrize("cls", [SpectralConv2D, BjorckConv2D])
def test_keras_save_load_keeps_outputs_and_bound(cls, tmp_path):
    inputs = keras.Input((6, 6, 2))
    layer = cls(3, 3, strides=2)
    model = keras.Model(inputs, layer(inputs))
    rng = np.random.default_rng(0)
    layer.kernel.assign(rng.normal(size=(3, 3, 2, 3)).astype("float32"))
    x = rng.normal(size=(2, 6, 6, 2)).astype("float32")
    model(x, training=True)  # writes u
    loaded = helpers.save_and_load(model, tmp_path)
    loaded_layer = loaded.layers[-1]
    np.testing.assert_array_equal(
        helpers.to_numpy(loaded_layer.u), helpers.to_numpy(layer.u)
    )
    np.testing.assert_allclose(
        helpers.to_numpy(loaded(x)), helpers.to_numpy(model(x)), rtol=1e-6
    )
    assert loaded_layer.lipschitz_upper_bound() == pytest.approx(
        layer.lipschitz_upper_bound(), rel=1e-9
    )


@pytest.mark.parametrize("s", [1, 2])
def test_power_iteration_conv_gradient_is_top_singular_pair(s):
    """<d sigma / dK, D> = a^T A(D) b for the top singular pair of A(K).

    The operator norm is simple here, so its derivative in the direction D
    is exact from the singular vectors of the real operator matrix (A is
    linear in the kernel). The power iteration's estimate must have that
    gradient once converged.
    """
    from keras_lipschitz import _backend

    rng = np.random.default_rng(11 + s)
    shape, padding = (5, 5, 2), "same"
    kernel = rng.normal(size=(3, 3, 2, 2)).astype("float32")

    def operator(k):
        return helpers.linear_jacobian(
            lambda x: ops.conv(x, k, strides=s, padding=padding), shape
        )

    left, values, right_t = np.linalg.svd(operator(kernel))
    assert values[0] > 1.05 * values[1]  # a simple top singular value
    output_padding = normalizers.conv_transpose_output_padding(
        shape[:2], (3, 3), (s, s), padding
    )
    u = right_t[0].reshape((1, *shape)) + 0.01 * rng.normal(size=(1, *shape))
    sigma, grad = _backend.value_and_input_gradient(
        lambda k: normalizers.power_iteration_conv(
            k,
            ops.convert_to_tensor(u.astype("float32")),
            60,
            strides=(s, s),
            padding=padding,
            data_format="channels_last",
            output_padding=output_padding,
        )[1],
        kernel,
    )
    assert abs(float(helpers.to_numpy(sigma)) - values[0]) < 1e-4 * values[0]
    grad = helpers.to_numpy(grad)
    for _ in range(3):
        direction = rng.normal(size=kernel.shape).astype("float32")
        expected = left[:, 0] @ operator(direction) @ right_t[0]
        scale = np.linalg.norm(operator(direction), 2)
        assert abs(np.sum(grad * direction) - expected) < 1e-3 * scale
