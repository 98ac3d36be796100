"""Tests of SOCConv2D, SOCDense, the fast SOC backward and LipConvNet.

The orthogonality checks use the exact Jacobian of the layer in inference
mode (`helpers.linear_jacobian`, no finite differences), right after
construction and after `helpers.push_weights` has trained the raw kernel.
"""

import math

import keras
import numpy as np
import pytest
from keras import ops

import keras_lipschitz
from keras_lipschitz import bounds
from keras_lipschitz import normalizers
from keras_lipschitz.layers import SOCConv2D
from keras_lipschitz.layers import SOCDense
from keras_lipschitz.models import LipConvNet
from tests import helpers

TOL = helpers.NORM_TOLERANCE
# The float32 Jacobian can exceed the float64 bound of the same float32
# kernel by rounding only (~1e-7 relative per conv, 14 convs).
FLOAT32_SLACK = 1e-5


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


def _gradients(fn, *args):
    """Gradients of the scalar `fn(*args)` w.r.t. every argument (NumPy)."""
    backend = keras.config.backend()
    args = [ops.convert_to_tensor(a, "float32") for a in args]
    if backend == "jax":
        import jax

        grads = jax.grad(fn, argnums=tuple(range(len(args))))(*args)
    elif backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            for a in args:
                tape.watch(a)
            value = fn(*args)
        grads = tape.gradient(value, args)
    else:
        import torch

        args = [a.detach().clone().requires_grad_(True) for a in args]
        grads = torch.autograd.grad(fn(*args), args)
    return [helpers.to_numpy(g) for g in grads]


# ---------------------------------------------------------- orthogonality
# (strides, input shape, filters): channels kept, padded, and projected.
# Every case runs its SOC on 4 channels and a 4x4 grid: eager JAX compiles
# each op once per shape, so the cases share their compiled ops.
CONV_CASES = [
    (1, (4, 4, 4), 4, False),
    (1, (4, 4, 3), 4, True),  # zero-padded input channels
    (2, (8, 8, 1), 4, True),  # space-to-depth: 4 channels, kept
    (2, (8, 8, 1), 3, False),  # 4 channels after space-to-depth, 3 kept
]


@pytest.mark.parametrize("s,shape,filters,fast", CONV_CASES)
def test_soc_conv_jacobian_is_orthogonal_and_bound_sound(
    s, shape, filters, fast
):
    layer = SOCConv2D(
        filters, 3, strides=s, use_bias=False, fast_backward=fast
    )
    layer.build((None, *shape))

    def check():
        values = helpers.layer_singular_values(layer, shape)
        # Padding is an isometry (orthonormal columns) and keeping channels
        # a projection onto coordinates (orthonormal rows): every singular
        # value of an orthogonal map stays 1 either way.
        np.testing.assert_allclose(values, 1.0, atol=TOL)
        bound = layer.lipschitz_upper_bound()
        assert bound >= values[0] * (1 - FLOAT32_SLACK), (bound, values[0])
        assert bound <= 1 + TOL

    check()
    assert helpers.push_weights(layer, shape) > 0.1
    check()


@pytest.mark.parametrize("fast", [False, True])
def test_soc_conv_on_images_smaller_than_the_kernel(fast):
    """2x2 and 1x1 grids: the conv as one matmul on JAX/CPU, `ops.conv`
    elsewhere. Orthogonal at construction; after training, the bound still
    holds (large pushes outrun one power iteration per step, so the scaled
    kernel can exceed norm 1 and the truncated series is then no longer
    orthogonal: that is what the bound's truncation term covers)."""
    for shape in [(4, 4, 2), (2, 2, 8)]:  # 2x2 and 1x1 after space-to-depth
        layer = SOCConv2D(8, 3, strides=2, use_bias=False, fast_backward=fast)
        layer.build((None, *shape))
        values = helpers.layer_singular_values(layer, shape)
        np.testing.assert_allclose(values, 1.0, atol=TOL)
        assert helpers.push_weights(layer, shape) > 0.1
        values = helpers.layer_singular_values(layer, shape)
        bound = layer.lipschitz_upper_bound()
        assert bound >= values[0] * (1 - FLOAT32_SLACK), (bound, values[0])


@pytest.mark.parametrize(
    "image, kernel",
    [((1, 1), (3, 3)), ((2, 2), (3, 3)), ((2, 3), (5, 3)), ((3, 5), (3, 1))],
)
def test_conv_same_by_matmul_matches_conv(image, kernel):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, *image, 4)).astype("float32")
    k = rng.normal(size=(*kernel, 4, 5)).astype("float32")
    g = rng.normal(size=(3, *image, 5)).astype("float32")

    def inner(conv):
        return lambda x, k: ops.sum(conv(x, k) * ops.convert_to_tensor(g))

    expected = helpers.to_numpy(ops.conv(x, k, strides=1, padding="same"))
    actual = helpers.to_numpy(normalizers.conv_same_by_matmul(x, k))
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
    def reference(x, k):
        return ops.conv(x, k, strides=1, padding="same")

    for got, want in zip(
        _gradients(inner(normalizers.conv_same_by_matmul), x, k),
        _gradients(inner(reference), x, k),
    ):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_small_image_conv_dispatch():
    slow = keras_lipschitz._backend.small_image_conv_is_slow
    assert not slow((4, 4), (3, 3))
    if keras.config.backend() == "jax":
        import jax

        on_cpu = jax.default_backend() == "cpu"
        assert slow((2, 2), (3, 3)) == on_cpu
        assert slow((4, 1), (3, 3)) == on_cpu
    else:
        assert not slow((2, 2), (3, 3))


def test_soc_conv_training_terms_are_not_orthogonal():
    """The test above can fail: 1 Taylor term gives I + J, not orthogonal."""
    shape = (4, 4, 4)
    layer = SOCConv2D(4, 3, use_bias=False, eval_terms=1)
    layer.build((None, *shape))
    values = helpers.layer_singular_values(layer, shape)
    assert values[0] > 1.1
    # The guaranteed bound follows: 1 + ||J||^2 / 2 >= ||I + J||.
    assert layer.lipschitz_upper_bound() >= values[0]


def test_soc_conv_bound_without_spatial_size_is_size_free():
    layer = SOCConv2D(4, 3, use_bias=False)
    layer.build((None, None, None, 4))
    rho = bounds.conv_reshaped_upper_bound(layer.skew_kernel())
    assert layer.skew_operator_norm_bound() == pytest.approx(rho)
    for n in (4, 7):
        values = helpers.layer_singular_values(layer, (n, n, 4))
        np.testing.assert_allclose(values, 1.0, atol=TOL)
        assert layer.lipschitz_upper_bound() >= values[0] * (1 - FLOAT32_SLACK)


def test_skew_kernel_is_exactly_skew_and_adjoint():
    rng = np.random.default_rng(0)
    kernel = ops.convert_to_tensor(
        rng.normal(size=(3, 5, 4, 4)).astype("float32")
    )
    skew = normalizers.skew_symmetric_conv_kernel(kernel)
    adjoint = helpers.to_numpy(normalizers.conv_adjoint_kernel(skew))
    skew = helpers.to_numpy(skew)
    np.testing.assert_array_equal(adjoint, -skew)
    matrix = bounds.conv_operator_matrix(skew, (5, 6), (1, 1), "same")
    np.testing.assert_allclose(matrix.T, -matrix, atol=1e-12)


def test_power_vectors_written_only_in_training():
    shape = (4, 4, 4)
    layer = SOCConv2D(4, 3)
    layer.build((None, *shape))
    rng = np.random.default_rng(1)
    layer.kernel.assign(rng.normal(size=(3, 3, 4, 4)).astype("float32"))
    x = rng.normal(size=(2, *shape)).astype("float32")
    before = [helpers.to_numpy(w) for w in layer.non_trainable_weights]
    assert len(before) == 8
    layer(x)
    layer(x, training=False)
    for w, b in zip(layer.non_trainable_weights, before):
        np.testing.assert_array_equal(helpers.to_numpy(w), b)
    layer(x, training=True)
    change = max(
        np.max(np.abs(helpers.to_numpy(w) - b))
        for w, b in zip(layer.non_trainable_weights, before)
    )
    assert change > 1e-3
    assert all(not w.trainable for w in layer.non_trainable_weights)


def test_training_uses_train_terms():
    shape = (4, 4, 4)
    layer = SOCConv2D(4, 3, train_terms=1, eval_terms=9, use_bias=False)
    layer.build((None, *shape))
    x = np.random.default_rng(0).normal(size=(1, *shape)).astype("float32")
    kernel = layer.skew_kernel()
    expected = x + helpers.to_numpy(ops.conv(x, kernel, padding="same"))
    np.testing.assert_allclose(
        helpers.to_numpy(layer(x, training=True)), expected, atol=1e-5
    )


def test_channels_first_matches_channels_last():
    hw, c_in = (8, 4), 1
    kwargs = dict(filters=3, kernel_size=3, strides=2)
    last = SOCConv2D(data_format="channels_last", **kwargs)
    first = SOCConv2D(data_format="channels_first", **kwargs)
    last.build((None, *hw, c_in))
    first.build((None, c_in, *hw))
    first.set_weights(last.get_weights())
    x = np.random.default_rng(0).normal(size=(2, *hw, c_in)).astype("float32")
    y_last = helpers.to_numpy(last(x))
    y_first = helpers.to_numpy(first(x.transpose(0, 3, 1, 2)))
    assert y_first.shape == tuple(first.compute_output_shape((2, c_in, *hw)))
    np.testing.assert_allclose(
        y_first.transpose(0, 2, 3, 1), y_last, rtol=1e-5, atol=1e-5
    )


def test_mixed_precision_keeps_state_float32():
    keras.config.set_dtype_policy("mixed_float16")
    layer = SOCConv2D(4, 3, strides=2)
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 1)).astype("float32")
    for training in (False, True):
        y = layer(x, training=training)
        assert keras.backend.standardize_dtype(y.dtype) == "float16"
        assert np.all(np.isfinite(helpers.to_numpy(y)))
    for weight in [layer.kernel] + list(layer.non_trainable_weights):
        assert keras.backend.standardize_dtype(weight.dtype) == "float32"


# ------------------------------------------------------------ fast backward
def _skew_kernel_with_norm(c, target, seed=0):
    """A skew conv kernel whose operator norm on a 5x5 grid is `target`."""
    rng = np.random.default_rng(seed)
    raw = ops.convert_to_tensor(rng.normal(size=(3, 3, c, c)), "float32")
    skew = helpers.to_numpy(normalizers.skew_symmetric_conv_kernel(raw))
    norm = bounds.conv_spectral_norm_upper_bound(skew, (5, 5), (1, 1), "same")
    return (skew * (target / norm)).astype("float32")


def test_fast_backward_input_gradient_is_exact_and_kernel_gradient_first_order():
    """What NeurIPS'22 §3 claims, on each backend.

    - Forward: identical to the plain Taylor series.
    - Input gradient: S_n(J)^T g, exact for the truncated polynomial, so it
      equals autodiff of the plain series (float32 rounding only).
    - Kernel gradient: the coefficient of (J^T)^a g (J^b x)^T is
      1/((a+1)!(b+1)!) instead of 1/(a+b+1)!; they agree for a + b <= 1,
      so the relative error is O(||J||^2): halving ||J|| must divide it by
      about 4 (3 allows the O(||J||^3) remainder). A kernel gradient that
      were only exact to order 0 (e.g. pairing z_2 with g instead of g_2)
      would shrink by 2 only.
    """
    c, terms = 3, 5
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 5, 5, c)).astype("float32")
    weights = ops.convert_to_tensor(
        rng.normal(size=(2, 5, 5, c)).astype("float32")
    )

    def objective(fast):
        def fn(x, kernel):
            y = normalizers.skew_conv_exponential(
                x, kernel, terms, fast_backward=fast
            )
            return ops.sum(y * weights)

        return fn

    errors = []
    for target in (1.0, 0.5):
        kernel = _skew_kernel_with_norm(c, target)
        plain = _gradients(objective(False), x, kernel)
        fast = _gradients(objective(True), x, kernel)
        y_plain = normalizers.skew_conv_exponential(x, kernel, terms)
        y_fast = normalizers.skew_conv_exponential(
            x, kernel, terms, fast_backward=True
        )
        np.testing.assert_allclose(
            helpers.to_numpy(y_fast), helpers.to_numpy(y_plain), atol=1e-6
        )
        np.testing.assert_allclose(fast[0], plain[0], rtol=1e-5, atol=1e-5)
        errors.append(
            np.linalg.norm(fast[1] - plain[1]) / np.linalg.norm(plain[1])
        )
    assert errors[0] > 1e-4  # really an approximation at ||J|| = 1
    assert errors[1] < errors[0] / 3.0, errors


def test_conv_kernel_gradient_equals_autodiff_and_float64():
    """The one-conv kernel gradient of the fast backward is exact.

    Against autodiff of `ops.conv` in the kernel and a float64 NumPy sum
    over the kernel taps, for odd sizes 1, 3, 5 and a rectangular kernel,
    with c_in != c_out and a grid smaller than the kernel.
    """
    rng = np.random.default_rng(2)
    for kernel_size, (n, h, w) in (
        ((1, 1), (2, 3, 4)),
        ((3, 3), (2, 5, 4)),
        ((5, 5), (3, 3, 6)),
        ((3, 1), (2, 4, 3)),
    ):
        c_in, c_out = 3, 4
        x = rng.normal(size=(n, h, w, c_in)).astype("float32")
        g = rng.normal(size=(n, h, w, c_out)).astype("float32")
        got = helpers.to_numpy(
            normalizers.conv_kernel_gradient(x, g, kernel_size)
        )
        k_h, k_w = kernel_size
        padded = np.pad(
            x.astype(np.float64),
            ((0, 0), (k_h // 2, k_h // 2), (k_w // 2, k_w // 2), (0, 0)),
        )
        expected = np.zeros((k_h, k_w, c_in, c_out))
        for a in range(k_h):
            for b in range(k_w):
                window = padded[:, a : a + h, b : b + w, :]
                expected[a, b] = np.einsum("nhwi,nhwo->io", window, g)
        x_t, g_t = ops.convert_to_tensor(x), ops.convert_to_tensor(g)
        (autodiff,) = _gradients(
            lambda k, x_t=x_t, g_t=g_t: ops.sum(
                ops.conv(x_t, k, padding="same") * g_t
            ),
            np.zeros((k_h, k_w, c_in, c_out), "float32"),
        )
        scale = np.max(np.abs(expected))
        assert got.shape == expected.shape == autodiff.shape
        np.testing.assert_allclose(got, expected, atol=1e-6 * scale)
        np.testing.assert_allclose(got, autodiff, atol=1e-6 * scale)


def test_fast_backward_trains_like_plain_taylor_in_fit():
    """Same initial weights, one SGD step: the updates nearly coincide.

    Stride 2 (space-to-depth to 4 channels). The fast update of a
    channels-first layer equals that of the channels-last one.
    """
    shape = (8, 8, 1)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, *shape)).astype("float32")
    y = rng.normal(size=(8, 4, 4, 4)).astype("float32")
    updated = []
    for fast, data_format in (
        (False, "channels_last"),
        (True, "channels_last"),
        (True, "channels_first"),
    ):
        keras.utils.set_random_seed(0)
        layer = SOCConv2D(
            4, 3, strides=2, fast_backward=fast, data_format=data_format
        )
        x_in, y_in = x, y
        if data_format == "channels_first":
            x_in, y_in = x.transpose(0, 3, 1, 2), y.transpose(0, 3, 1, 2)
        model = keras.Sequential([keras.Input(x_in.shape[1:]), layer])
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        before = helpers.to_numpy(layer.kernel)
        model.fit(x_in, y_in, epochs=1, batch_size=8, verbose=0)
        updated.append(helpers.to_numpy(layer.kernel) - before)
    plain, fast, fast_first = updated
    assert np.linalg.norm(plain) > 1e-4
    cosine = np.sum(plain * fast) / (np.linalg.norm(plain) * np.linalg.norm(fast))
    # ||J|| <= ~2 at init: the O(||J||^2) error leaves the direction intact.
    assert cosine > 0.99, cosine
    np.testing.assert_allclose(
        fast_first, fast, atol=1e-5 * np.max(np.abs(fast))
    )


# -------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"kernel_size": 2}, "kernel_size"),
        ({"kernel_size": (3, 4)}, "kernel_size"),
        ({"kernel_size": 0}, "kernel_size"),
        ({"train_terms": 0}, "train_terms"),
        ({"eval_terms": 0}, "eval_terms"),
        ({"strides": 3}, "strides"),
        ({"strides": (1, 2)}, "strides"),
        ({"strides": 0}, "strides"),
        ({"filters": 0}, "filters"),
        ({"multiplier": 0.0}, "multiplier"),
        ({"power_iterations": 0}, "power_iterations"),
        ({"fast_backward": "yes"}, "fast_backward"),
        ({"data_format": "nhwc"}, "data_format"),
    ],
)
def test_soc_conv_invalid_arguments_raise(kwargs, name):
    args = {"filters": 3, "kernel_size": 3, **kwargs}
    with pytest.raises(ValueError, match=f"`{name}`"):
        SOCConv2D(**args)


def test_soc_conv_build_errors():
    with pytest.raises(ValueError, match="even spatial sizes"):
        SOCConv2D(3, 3, strides=2).build((None, 5, 6, 2))
    layer = SOCConv2D(4, 3)
    layer.build((None, 4, 4, 4))
    layer(np.zeros((1, 3, 4, 4), "float32"))  # smaller is fine
    with pytest.raises(ValueError, match="built for spatial size"):
        layer(np.zeros((1, 5, 4, 4), "float32"))
    for kwargs, name in (
        ({"train_terms": 0}, "train_terms"),
        ({"eval_terms": -1}, "eval_terms"),
        ({"multiplier": -1.0}, "multiplier"),
    ):
        with pytest.raises(ValueError, match=f"`{name}`"):
            SOCDense(3, **kwargs)


# ----------------------------------------------------------- serialization
def test_soc_conv_config_round_trip():
    layer = SOCConv2D(
        4,
        (3, 1),
        strides=2,
        train_terms=4,
        eval_terms=11,
        multiplier=0.7,
        power_iterations=2,
        fast_backward=True,
        data_format="channels_last",
        use_bias=True,
        bias_initializer="ones",
        name="soc",
    )
    config = layer.get_config()
    revived = SOCConv2D.from_config(config)
    assert revived.get_config() == config
    layer.build((None, 8, 8, 1))
    revived.build((None, 8, 8, 1))
    assert set(dir(layer)) == set(dir(revived))
    revived.set_weights(layer.get_weights())
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 1)).astype("float32")
    np.testing.assert_allclose(
        helpers.to_numpy(revived(x)), helpers.to_numpy(layer(x)), rtol=1e-6
    )


@pytest.mark.parametrize("cls", ["conv", "dense"])
def test_save_load_keeps_outputs_state_and_bound(cls, tmp_path):
    rng = np.random.default_rng(0)
    if cls == "conv":
        shape = (8, 8, 1)
        layer = SOCConv2D(4, 3, strides=2, fast_backward=True)
    else:
        shape = (5,)
        layer = SOCDense(3, activation="relu")
    inputs = keras.Input(shape)
    model = keras.Model(inputs, layer(inputs))
    x = rng.normal(size=(2, *shape)).astype("float32")
    model(x, training=True)  # writes the power-iteration state
    loaded = helpers.save_and_load(model, tmp_path)
    loaded_layer = loaded.layers[-1]
    for a, b in zip(loaded_layer.weights, layer.weights):
        np.testing.assert_array_equal(helpers.to_numpy(a), helpers.to_numpy(b))
    np.testing.assert_allclose(
        helpers.to_numpy(loaded(x)), helpers.to_numpy(model(x)), rtol=1e-6
    )
    assert loaded_layer.lipschitz_upper_bound() == pytest.approx(
        layer.lipschitz_upper_bound(), rel=1e-9
    )


# ------------------------------------------------------------------ SOCDense
# Square, zero-padded input, projected output; all on a 4x4 skew matrix.
@pytest.mark.parametrize("d_in,units", [(4, 4), (3, 4), (4, 3)])
def test_soc_dense_jacobian_is_orthogonal(d_in, units):
    layer = SOCDense(units, use_bias=False)
    layer.build((None, d_in))

    def check():
        values = helpers.layer_singular_values(layer, (d_in,))
        np.testing.assert_allclose(values, 1.0, atol=TOL)
        assert layer.lipschitz_upper_bound() >= values[0] * (1 - FLOAT32_SLACK)

    check()
    assert helpers.push_weights(layer, (d_in,)) > 0.1
    check()


def test_soc_dense_config_round_trip():
    layer = SOCDense(
        4, train_terms=3, eval_terms=10, multiplier=0.5, lipschitz=2.0
    )
    config = layer.get_config()
    revived = SOCDense.from_config(config)
    assert revived.get_config() == config
    layer.build((None, 3))
    revived.build((None, 3))
    assert set(dir(layer)) == set(dir(revived))
    values = helpers.singular_values(layer.effective_kernel())
    np.testing.assert_allclose(values, 2.0, atol=2 * TOL)
    # Materialized kernel: exports to a plain Dense with the same outputs.
    model = keras.Sequential([keras.Input((3,)), layer])
    plain = keras_lipschitz.vanilla_export(model)
    assert type(plain.layers[0]) is keras.layers.Dense
    x = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
    np.testing.assert_allclose(
        helpers.to_numpy(plain(x)), helpers.to_numpy(model(x)), atol=1e-5
    )


# --------------------------------------------------------------- LipConvNet
def test_lip_conv_net_bound_and_certificates():
    model = LipConvNet(
        depth=5, width=1, num_classes=3, input_shape=(32, 32, 1)
    )
    socs = [l for l in model.layers if isinstance(l, SOCConv2D)]
    assert [l.filters for l in socs] == [2, 4, 8, 16, 32]
    assert [l.kernel_size for l in socs][-1] == (1, 1)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(16, 32, 32, 1)).astype("float32")
    y = rng.integers(0, 3, 16)
    backbone = keras.Model(model.input, model.get_layer("flatten").output)
    body = keras_lipschitz.lipschitz_bound(backbone)
    assert 1.0 - 1e-9 <= body <= 1.0 + 1e-3, body
    radius = keras_lipschitz.certify(model, x, y)
    # The pairwise LLN certificate with the body bound, recomputed here.
    logits = model.predict(x, verbose=0).astype(np.float64)
    w = model.get_layer("lln").effective_kernel().astype(np.float64)
    correct = np.argmax(logits, axis=1) == y
    assert np.all(radius[~correct] == 0.0)
    for i in np.flatnonzero(correct):
        label = y[i]
        expected = min(
            (logits[i, label] - logits[i, j])
            / (body * np.linalg.norm(w[:, label] - w[:, j]))
            for j in range(3)
            if j != label
        )
        assert radius[i] == pytest.approx(expected, rel=1e-4)
    assert np.any(radius > 0)


def test_lip_conv_net_options_and_errors():
    head = keras.layers.Dense(4, name="custom_head")
    model = LipConvNet(
        depth=10,
        width=2,
        num_classes=4,
        input_shape=(32, 32, 3),
        head=head,
        activation="maxmin",
    )
    assert model.layers[-1] is head
    assert sum(isinstance(l, SOCConv2D) for l in model.layers) == 10
    for kwargs, name in (
        ({"depth": 7}, "depth"),
        ({"input_shape": (30, 32, 3)}, "input_shape"),
        ({"head": "mlp"}, "head"),
        ({"activation": "relu"}, "activation"),
        ({"num_classes": 1}, "num_classes"),
        ({"depth": 10, "width": 3}, "width"),
    ):
        with pytest.raises(ValueError, match=f"`{name}`"):
            LipConvNet(**{"width": 1, **kwargs})


def test_truncation_bound_formula():
    from keras_lipschitz.layers.soc import _truncation_bound

    assert _truncation_bound(2.0, 12) == pytest.approx(
        1 + 2.0**13 / math.factorial(13)
    )
    assert _truncation_bound(0.0, 5) == 1.0
