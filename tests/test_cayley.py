"""Tests of CayleyConv2D (Trockman & Kolter, ICLR 2021).

The layer is linear: its exact Jacobian on a small input in inference mode
(`helpers.linear_jacobian`, float64 SVD) must have all singular values
within 1e-3 of 1 when channels are kept, right after construction and
after large SGD steps; with fewer or more output channels the nonzero
singular values must all be 1 as well. The whole chain is also compared
with an independent NumPy float64 reference built from the docstring's
formula, and `lipschitz_upper_bound()` must never be below what is
measured.
"""

import keras
import numpy as np
import pytest

import keras_lipschitz
from keras_lipschitz.layers import CayleyConv2D
from keras_lipschitz.layers import GroupSort2
from keras_lipschitz.layers import SpectralDense
from tests import helpers

TOL = helpers.NORM_TOLERANCE

# (c_in, filters, strides, input spatial size, kernel_size, data_format)
CASES = [
    # Channels kept: orthogonal.
    (3, 3, 1, (8, 8), 3, "channels_last"),
    # More output channels, non-square grid, even kernel: isometry.
    (2, 4, 1, (6, 8), (3, 2), "channels_first"),
    # Fewer output channels: co-isometry.
    (4, 2, 1, (8, 8), 3, "channels_last"),
    # Stride 2 keeping the 4 c_in channels: orthogonal.
    (2, 8, 2, (8, 8), 3, "channels_last"),
]


@pytest.fixture(autouse=True, scope="module")
def _single_threaded_torch():
    """Tiny transforms: torch's intra-op threads only add overhead."""
    if keras.config.backend() != "torch":
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _input_shape(case):
    c_in, _, _, spatial, _, data_format = case
    if data_format == "channels_last":
        return (*spatial, c_in)
    return (c_in, *spatial)


def _make(case, **kwargs):
    _, filters, strides, _, kernel_size, data_format = case
    layer = CayleyConv2D(
        filters,
        kernel_size,
        strides=strides,
        data_format=data_format,
        **kwargs,
    )
    layer.build((None, *_input_shape(case)))
    return layer


# ------------------------------------------------ NumPy float64 reference
def _reference_spectrum(kernel, grid):
    """K^(u, v) = sum_ab K[a, b]^T exp(2 pi i (u(a - p_h)/H + v(b - p_w)/W)),
    for all (u, v) of the full grid: complex `(H, W, filters, c_in)`."""
    k_h, k_w = kernel.shape[:2]
    height, width = grid
    p_h, p_w = (k_h - 1) // 2, (k_w - 1) // 2
    u = np.arange(height).reshape(-1, 1, 1, 1)
    v = np.arange(width).reshape(1, -1, 1, 1)
    a = np.arange(k_h).reshape(1, 1, -1, 1) - p_h
    b = np.arange(k_w).reshape(1, 1, 1, -1) - p_w
    phase = np.exp(2j * np.pi * (u * a / height + v * b / width))
    return np.einsum("uvab,abco->uvoc", phase, kernel)


def _reference_cayley(z):
    """Rectangular Cayley transform of complex (..., m, n), float64."""
    m, n = z.shape[-2:]
    if m < n:
        return np.swapaxes(_reference_cayley(np.swapaxes(z, -1, -2)), -1, -2)
    u, v = z[..., :n, :], z[..., n:, :]
    u_h = np.conj(np.swapaxes(u, -1, -2))
    v_h = np.conj(np.swapaxes(v, -1, -2))
    a = u - u_h + v_h @ v
    identity = np.eye(n)
    inverse = np.linalg.inv(identity + a)
    return np.concatenate(
        [inverse @ (identity - a), -2 * v @ inverse], axis=-2
    )


def _reference_linear_map(layer, x):
    """The layer's linear part in float64 from its raw weights, on
    channels-last inputs `x` (space-to-depth, DFT, Cayley, inverse DFT)."""
    kernel = helpers.to_numpy(layer.kernel)
    alpha = float(helpers.to_numpy(layer.alpha))
    if layer.strides == 2:
        b, h, w, c = x.shape
        x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
        x = x.reshape(b, h // 2, w // 2, 4 * c)
    grid = x.shape[1:3]
    spectrum = _reference_spectrum(kernel, grid)
    # The Frobenius norm over the rfft half-spectrum only.
    half = spectrum[:, : grid[1] // 2 + 1]
    q = _reference_cayley(alpha * spectrum / np.linalg.norm(half))
    x_hat = np.fft.fft2(x, axes=(1, 2))
    y = np.fft.ifft2(np.einsum("uvoc,buvc->buvo", q, x_hat), axes=(1, 2))
    assert np.max(np.abs(y.imag)) < 1e-10  # Hermitian symmetry
    return y.real


def test_reference_spectrum_is_the_circular_convolution():
    """The docstring's K^ diagonalizes the circular cross-correlation
    y[i, j] = sum_ab K[a, b]^T x[i + a - p_h, j + b - p_w] (indices mod
    H, W) in the DFT: the phase convention of the layer."""
    rng = np.random.default_rng(0)
    for shape, grid in [((3, 3, 2, 3), (5, 6)), ((2, 3, 3, 2), (4, 5))]:
        kernel = rng.normal(size=shape)
        x = rng.normal(size=(*grid, shape[2]))
        p_h, p_w = (shape[0] - 1) // 2, (shape[1] - 1) // 2
        y = np.zeros((*grid, shape[3]))
        for a in range(shape[0]):
            for b in range(shape[1]):
                shifted = np.roll(x, (p_h - a, p_w - b), axis=(0, 1))
                y += shifted @ kernel[a, b]
        spectrum = _reference_spectrum(kernel, grid)
        expected = np.einsum(
            "uvoc,uvc->uvo", spectrum, np.fft.fft2(x, axes=(0, 1))
        )
        np.testing.assert_allclose(
            np.fft.fft2(y, axes=(0, 1)), expected, atol=1e-10
        )


# ------------------------------------------------------- exact Jacobian
def _jacobian_function(layer, shape):
    """`jac()`: the exact Jacobian of the bias-free layer in inference
    mode, `layer(e_i)` for every basis vector in one batch (float64
    `(out_dim, in_dim)`). On JAX the stateless call is compiled once, so
    that it is reused after the weights change."""
    n = int(np.prod(shape))
    basis = np.eye(n, dtype="float32").reshape((n, *shape))
    if keras.config.backend() == "jax":
        import jax

        compiled = jax.jit(
            lambda variables, x: layer.stateless_call(
                variables, [], x, training=False
            )[0]
        )

        def forward():
            variables = [v.value for v in layer.trainable_variables]
            return compiled(variables, basis)

    else:

        def forward():
            return layer(basis, training=False)

    def jacobian():
        return helpers.to_numpy(forward()).reshape(n, -1).T

    return jacobian


def _check(layer, case, jacobian):
    """Singular values, the float64 reference and the bound."""
    c_in, filters, strides = case[:3]
    matrix = jacobian()
    # The same map from the raw weights in float64 (channels last).
    shape = _input_shape(case)
    n = int(np.prod(shape))
    basis = np.eye(n).reshape((n, *shape))
    if case[5] == "channels_first":
        reference = _reference_linear_map(layer, basis.transpose(0, 2, 3, 1))
        reference = reference.transpose(0, 3, 1, 2)
    else:
        reference = _reference_linear_map(layer, basis)
    np.testing.assert_allclose(
        matrix, reference.reshape(n, -1).T, atol=1e-5, err_msg=str(case)
    )
    sigma = helpers.singular_values(matrix)
    pixels = np.prod(case[3]) // strides**2
    rank = min(filters, c_in * strides**2) * pixels
    # Every nonzero singular value is 1 (all of them when channels are
    # kept): orthogonal, isometry or co-isometry.
    assert sigma.shape[0] == rank, (case, sigma.shape)
    assert np.all(np.abs(sigma - 1.0) <= TOL), (case, sigma[0], sigma[-1])
    bound = layer.lipschitz_upper_bound()
    assert bound >= sigma[0], (case, bound, sigma[0])
    assert bound <= 1.0 + 1e-4, (case, bound)


def _push(layers, shapes, steps=5, learning_rate=5.0, seed=0):
    """Large SGD steps on all the layers at once (one compiled `fit`)."""
    rng = np.random.default_rng(seed)
    inputs = [keras.Input(shape) for shape in shapes]
    outputs = [layer(x) for layer, x in zip(layers, inputs)]
    model = keras.Model(inputs, outputs)
    before = [
        (helpers.to_numpy(layer.kernel), helpers.to_numpy(layer.alpha))
        for layer in layers
    ]
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=learning_rate),
        loss=["mse"] * len(layers),
    )
    x = [rng.normal(size=(16, *shape)).astype("float32") for shape in shapes]
    y = [
        10.0 * rng.normal(size=(16, *out.shape[1:])).astype("float32")
        for out in outputs
    ]
    model.fit(x, y, epochs=steps, batch_size=16, verbose=0)
    changes = []
    for layer, (kernel, alpha) in zip(layers, before):
        changes.append(
            (
                np.linalg.norm(helpers.to_numpy(layer.kernel) - kernel)
                / np.linalg.norm(kernel),
                abs(float(helpers.to_numpy(layer.alpha)) - float(alpha)),
            )
        )
    return changes


def test_exact_jacobian_is_orthogonal_before_and_after_large_steps():
    # No bias: f(e_i) is then the Jacobian's column (after the push a large
    # bias would also blur it with the float32 rounding of `y + b`).
    layers = [_make(case, use_bias=False) for case in CASES]
    jacobians = []
    for layer, case in zip(layers, CASES):
        jacobians.append(_jacobian_function(layer, _input_shape(case)))
        _check(layer, case, jacobians[-1])
    changes = _push(layers, [_input_shape(case) for case in CASES])
    for layer, case, jacobian, (kernel_change, alpha_change) in zip(
        layers, CASES, jacobians, changes
    ):
        assert kernel_change > 0.1, (case, "the push did not move the kernel")
        assert alpha_change > 1e-3, (case, "the push did not move alpha")
        _check(layer, case, jacobian)
    # A large scale makes I + A ill-conditioned (its norm grows like
    # alpha^2), a tiny one makes Q close to the identity block.
    layer, case, jacobian = layers[2], CASES[2], jacobians[2]
    for alpha in (30.0, 1e-3):
        layer.alpha.assign(np.float32(alpha))
        _check(layer, case, jacobian)


# ---------------------------------------------------------------- training
def test_training_lowers_the_loss_and_updates_alpha():
    rng = np.random.default_rng(2)
    layer = CayleyConv2D(3, 3, use_bias=False)
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, layer(inputs))
    # alpha is created in `build`, so the optimizer sees it (trap 1).
    assert any(w is layer.alpha for w in model.trainable_weights)
    assert len(model.trainable_weights) == 2
    x = rng.normal(size=(16, 8, 8, 3)).astype("float32")
    # An orthogonal target: a channel permutation with a sign.
    y = -x[..., ::-1]
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    before = model.evaluate(x, y, verbose=0)
    alpha = float(helpers.to_numpy(layer.alpha))
    model.fit(x, y, epochs=10, batch_size=16, verbose=0)
    after = model.evaluate(x, y, verbose=0)
    assert after < 0.8 * before, (before, after)
    assert abs(float(helpers.to_numpy(layer.alpha)) - alpha) > 1e-3


# --------------------------------------------------------- bad arguments
BAD_ARGUMENTS = [
    ({"filters": 0}, "filters"),
    ({"filters": 2.5}, "filters"),
    ({"filters": 2, "kernel_size": 0}, "kernel_size"),
    ({"filters": 2, "kernel_size": (3, 3, 3)}, "kernel_size"),
    ({"filters": 2, "strides": 3}, "strides"),
    ({"filters": 2, "strides": (1, 2)}, "strides"),
    ({"filters": 2, "data_format": "nhwc"}, "data_format"),
    ({"filters": 2, "use_bias": "yes"}, "use_bias"),
]


def test_bad_arguments_and_shapes_raise_value_error():
    for kwargs, argument in BAD_ARGUMENTS:
        with pytest.raises(ValueError, match=f"`{argument}`"):
            CayleyConv2D(**kwargs)
    with pytest.raises(ValueError, match="rank 4"):
        CayleyConv2D(2).build((None, 8, 3))
    with pytest.raises(ValueError, match="channel dimension"):
        CayleyConv2D(2).build((None, 8, 8, None))
    with pytest.raises(ValueError, match=r"spatial size.*input_shape"):
        CayleyConv2D(2).build((None, None, 8, 3))
    with pytest.raises(ValueError, match="even"):
        CayleyConv2D(2, strides=2).build((None, 8, 7, 3))
    with pytest.raises(ValueError, match="`kernel_size`"):
        CayleyConv2D(2, 5).build((None, 4, 8, 3))
    with pytest.raises(ValueError, match="`kernel_size`"):
        # The inner kernel of stride 2 is 7 // 2 = 3 > 8 / 2 / 2.
        CayleyConv2D(2, 7, strides=2).build((None, 4, 8, 3))
    layer = CayleyConv2D(2)
    layer.build((None, 6, 6, 3))
    with pytest.raises(ValueError, match="spatial size"):
        layer(np.zeros((1, 8, 8, 3), "float32"))
    with pytest.raises(ValueError, match="spatial size"):
        layer(keras.Input((6, 8, 3)))
    with pytest.raises(ValueError, match="must be built"):
        CayleyConv2D(2).lipschitz_upper_bound()


# ------------------------------------------- config, formats, save/load
def test_config_round_trip_and_channels_first():
    # Internally the shapes of CASES[3] and `_small_model` (a (3, 2) kernel
    # at stride 2 is a 1x1 kernel on 8 channels): no new compilation on JAX.
    layer = CayleyConv2D(
        8,
        (3, 2),
        strides=2,
        kernel_initializer="glorot_uniform",
        bias_initializer="ones",
        name="cayley",
    )
    config = layer.get_config()
    revived = CayleyConv2D.from_config(config)
    assert revived.get_config() == config
    layer.build((None, 8, 8, 2))
    revived.build((None, 8, 8, 2))
    assert set(dir(layer)) == set(dir(revived))
    assert tuple(layer.kernel.shape) == (1, 1, 8, 8)
    revived.set_weights(layer.get_weights())
    x = np.random.default_rng(3).normal(size=(16, 8, 8, 2)).astype("float32")
    y = helpers.to_numpy(layer(x))
    assert y.shape == (16, 4, 4, 8)
    assert layer.compute_output_shape((None, 8, 8, 2))[1:] == y.shape[1:]
    np.testing.assert_allclose(helpers.to_numpy(revived(x)), y, atol=1e-6)
    # The bias is added once per output channel.
    revived.bias.assign(np.zeros(8, "float32"))
    np.testing.assert_allclose(
        y - helpers.to_numpy(revived(x)), np.ones_like(y), atol=1e-6
    )
    # The same weights in channels_first give the transposed output.
    first = CayleyConv2D.from_config(
        {**config, "data_format": "channels_first"}
    )
    first.build((None, 2, 8, 8))
    first.set_weights(layer.get_weights())
    np.testing.assert_allclose(
        helpers.to_numpy(first(x.transpose(0, 3, 1, 2))).transpose(0, 2, 3, 1),
        y,
        atol=1e-5,
    )
    # Defaults: the official initializers, kept as None in the config.
    default = CayleyConv2D(2).get_config()
    assert default["kernel_initializer"] is None
    assert default["bias_initializer"] is None


def _small_model():
    # The shapes of CASES[3]: one compilation on JAX.
    inputs = keras.Input((8, 8, 2))
    x = CayleyConv2D(8, 3, strides=2)(inputs)
    x = GroupSort2()(x)
    x = keras.layers.Flatten()(x)
    outputs = SpectralDense(3)(x)
    return keras.Model(inputs, outputs)


def test_save_load_export_and_certification(tmp_path):
    rng = np.random.default_rng(4)
    model = _small_model()
    cayley_layers = [
        layer for layer in model.layers if isinstance(layer, CayleyConv2D)
    ]
    for layer in cayley_layers:
        layer.kernel.assign(
            rng.normal(size=layer.kernel.shape).astype("float32")
        )
    x = rng.normal(size=(16, 8, 8, 2)).astype("float32")
    y = helpers.to_numpy(model(x))

    loaded = helpers.save_and_load(model, tmp_path)
    np.testing.assert_array_equal(helpers.to_numpy(loaded(x)), y)
    for original, revived in zip(model.layers, loaded.layers):
        if isinstance(original, CayleyConv2D):
            assert type(revived) is CayleyConv2D
            assert revived.lipschitz_upper_bound() == pytest.approx(
                original.lipschitz_upper_bound(), rel=1e-12
            )

    # vanilla_export keeps the layer (its kernel is dense and circular).
    exported = keras_lipschitz.vanilla_export(model)
    kinds = [type(layer).__name__ for layer in exported.layers]
    assert kinds == [
        "InputLayer",
        "CayleyConv2D",
        "GroupSort2",
        "Flatten",
        "Dense",
    ]
    np.testing.assert_allclose(
        helpers.to_numpy(exported(x)), y, rtol=1e-5, atol=1e-6
    )

    # Composition and certificates use the layer's guaranteed bound.
    bound = keras_lipschitz.lipschitz_bound(model)
    expected = np.prod(
        [layer.lipschitz_upper_bound() for layer in cayley_layers]
    ) * model.layers[-1].lipschitz_upper_bound()
    assert bound == pytest.approx(expected, rel=1e-9)
    assert bound <= 1.0 + 1e-4
    ratio = helpers.random_pair_ratio(lambda v: model(v), (8, 8, 2), pairs=16)
    assert ratio <= bound, (ratio, bound)
    labels = np.argmax(y, axis=1)
    radii = keras_lipschitz.certify(model, x, labels)
    assert radii.shape == (16,)
    assert np.all(np.isfinite(radii)) and np.all(radii > 0)
    # Sound on random perturbations of norm just below each radius.
    direction = rng.normal(size=(8, *x.shape))
    direction /= np.linalg.norm(
        direction.reshape(8, 16, -1), axis=2
    ).reshape(8, 16, 1, 1, 1)
    for d in direction:
        moved = x + 0.999 * radii.reshape(-1, 1, 1, 1) * d
        predicted = np.argmax(
            helpers.to_numpy(model(moved.astype("float32"))), axis=1
        )
        np.testing.assert_array_equal(predicted, labels)


def test_mixed_precision_keeps_weights_float32():
    # The shapes of `_small_model` (no new compilation on JAX).
    x = np.random.default_rng(5).normal(size=(16, 8, 8, 2)).astype("float32")
    reference = CayleyConv2D(8, 3, strides=2)
    reference.build((None, 8, 8, 2))
    keras.config.set_dtype_policy("mixed_float16")
    layer = CayleyConv2D(8, 3, strides=2)
    layer.build((None, 8, 8, 2))
    layer.set_weights(reference.get_weights())
    y = layer(x)
    keras.config.set_dtype_policy("float32")
    assert keras.backend.standardize_dtype(y.dtype) == "float16"
    for weight in layer.weights:
        assert weight.dtype == "float32", weight.name
    np.testing.assert_allclose(
        helpers.to_numpy(y), helpers.to_numpy(reference(x)), atol=2e-2
    )


# ------------------------------------------------- JAX-on-CPU code paths
def test_dft_matrix_path_matches_the_fft_path():
    """The DFTs as matrix products (JAX on CPU) compute the FFT path's map,
    for even and odd grids."""
    from keras_lipschitz.layers import cayley

    rng = np.random.default_rng(0)
    for height, width in [(4, 4), (5, 6), (6, 5)]:
        x = rng.normal(size=(2, 3, height, width)).astype("float32")
        half = width // 2 + 1
        q_r = rng.normal(size=(half, height, 4, 3)).astype("float32")
        q_i = rng.normal(size=(half, height, 4, 3)).astype("float32")
        by_fft = helpers.to_numpy(
            cayley._apply_by_fft(x, q_r, q_i, (height, width))
        )
        by_matrices = helpers.to_numpy(
            cayley._apply_by_dft_matrices(x, q_r, q_i, (height, width))
        )
        np.testing.assert_allclose(by_matrices, by_fft, atol=1e-5)


def test_solve_matches_linalg_solve_values_and_gradients():
    """`_backend.solve_with_positive_definite_symmetric_part` (Gauss-Jordan
    with an implicit gradient on JAX-CPU) against float64 references."""
    from keras import ops

    from keras_lipschitz import _backend

    rng = np.random.default_rng(1)
    n, k = 6, 3
    s = rng.normal(size=(4, n, n))
    v = rng.normal(size=(4, 2, n))
    a = np.eye(n) + s - np.swapaxes(s, -1, -2) + np.einsum(
        "bki,bkj->bij", v, v
    )
    b = rng.normal(size=(4, n, k))
    a32, b32 = a.astype("float32"), b.astype("float32")
    x = helpers.to_numpy(
        _backend.solve_with_positive_definite_symmetric_part(a32, b32)
    )
    x64 = np.linalg.solve(a, b)
    np.testing.assert_allclose(x, x64, atol=1e-5)
    # Gradient of sum(w * x): b_bar = a^-T w, a_bar = -b_bar x^T.
    w = rng.normal(size=x64.shape)
    b_bar = np.linalg.solve(np.swapaxes(a, -1, -2), w)
    a_bar = -b_bar @ np.swapaxes(x64, -1, -2)

    weights = w.astype("float32")

    def objective(a_t, b_t):
        solved = _backend.solve_with_positive_definite_symmetric_part(a_t, b_t)
        return ops.sum(solved * ops.convert_to_tensor(weights))

    _, grad_a = _backend.value_and_input_gradient(
        lambda a_t: objective(a_t, ops.convert_to_tensor(b32)), a32
    )
    _, grad_b = _backend.value_and_input_gradient(
        lambda b_t: objective(ops.convert_to_tensor(a32), b_t), b32
    )
    np.testing.assert_allclose(helpers.to_numpy(grad_a), a_bar, atol=1e-4)
    np.testing.assert_allclose(helpers.to_numpy(grad_b), b_bar, atol=1e-4)


def test_several_cayley_layers_train_without_hanging():
    """Two or more layers in one step hung JAX on CPU (jaxlib's batched LU
    and XLA's FFT block the thread pool they run on); run in a subprocess
    with a timeout so that a regression fails instead of hanging."""
    import os
    import subprocess
    import sys

    script = (
        "import numpy as np, keras\n"
        "from keras_lipschitz.layers import CayleyConv2D, GroupSort2\n"
        "x = inputs = keras.Input((8, 8, 4))\n"
        "for _ in range(3):\n"
        "    x = GroupSort2()(CayleyConv2D(4, 3)(x))\n"
        "model = keras.Model(inputs, x)\n"
        "model.compile(optimizer='sgd', loss='mse')\n"
        "data = np.random.default_rng(0).normal(size=(8, 8, 8, 4))\n"
        "data = data.astype('float32')\n"
        "for _ in range(3):\n"
        "    model.train_on_batch(data, data)\n"
        "print('TRAINED')\n"
    )
    env = dict(os.environ, KERAS_BACKEND=keras.config.backend())
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    try:
        result = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True,
            text=True, timeout=240,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("three CayleyConv2D layers hung in training")
    assert "TRAINED" in result.stdout, result.stderr[-2000:]
