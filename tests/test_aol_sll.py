"""Tests of the AOL layers (AOLDense, AOLConv2D) and SLL blocks (SLLDense,
SLLConv2D).

AOL layers are linear: their exact Lipschitz constant is the largest
singular value of their real Jacobian on a small input in inference mode
(`helpers.linear_jacobian`, float64 SVD). SLL blocks are nonlinear
residual maps: they are checked on random pairs at several scales and by
the SVD of their autodiff Jacobian at random points. Every check is
repeated after large SGD steps (`helpers.push_weights`), and the reported
`lipschitz_upper_bound()` must never be below what is measured.
"""

import keras
import numpy as np
import pytest
from keras import ops

import keras_lipschitz
from keras_lipschitz import normalizers
from keras_lipschitz.layers.aol import AOLConv2D
from keras_lipschitz.layers.aol import AOLDense
from keras_lipschitz.layers.sll import SLLAOCConv2D
from keras_lipschitz.layers.sll import SLLConv2D
from keras_lipschitz.layers.sll import SLLDense
from tests import helpers

TOL = helpers.NORM_TOLERANCE
# The float32 Jacobian can exceed the float64 norm of the same float32
# weights by rounding only.
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


def _jacobian_function(fn):
    """Returns `jac(x)`: the autodiff Jacobian of `fn` at one input `x`
    (batch 1), as a float64 matrix `(out_size, in_size)`.

    On JAX it is compiled once, so that several points cost one trace.
    """
    backend = keras.config.backend()
    if backend == "jax":
        import jax

        compiled = jax.jit(jax.jacrev(fn))

        def jacobian(x):
            return compiled(ops.convert_to_tensor(x))

    elif backend == "tensorflow":
        import tensorflow as tf

        def jacobian(x):
            xt = tf.constant(x)
            with tf.GradientTape() as tape:
                tape.watch(xt)
                y = fn(xt)
            return tape.jacobian(y, xt)

    else:
        import torch

        def jacobian(x):
            return torch.autograd.functional.jacobian(
                fn, ops.convert_to_tensor(x)
            )

    def matrix(x):
        x = np.asarray(x, "float32")
        return helpers.to_numpy(jacobian(x)).reshape(-1, x.size)

    return matrix


def _jacobian_norms(fn, shape, points=4, seed=0, scale=1.0):
    """Largest singular value of the Jacobian at random points (list)."""
    rng = np.random.default_rng(seed)
    jacobian = _jacobian_function(fn)
    norms = []
    for _ in range(points):
        x = scale * rng.normal(size=(1,) + tuple(shape))
        norms.append(helpers.singular_values(jacobian(x))[0])
    return norms


def _pair_ratio(fn, shape, scale, pairs=128, seed=0):
    """Largest ||f(x) - f(y)|| / ||x - y|| over random pairs near `scale`.

    The distances are relative to the scale (from 2% to 3x of it), so that
    float32 rounding of f stays far below the tolerance.
    """
    rng = np.random.default_rng(seed)
    x = scale * rng.normal(size=(pairs,) + tuple(shape))
    radius = scale * np.exp(
        rng.uniform(-4, 1, size=(pairs,) + (1,) * len(shape))
    )
    y = x + radius * rng.normal(size=x.shape) / np.sqrt(np.prod(shape))
    x, y = x.astype("float32"), y.astype("float32")
    fx = helpers.to_numpy(fn(x)).reshape(pairs, -1)
    fy = helpers.to_numpy(fn(y)).reshape(pairs, -1)
    num = np.linalg.norm(fx - fy, axis=1)
    den = np.linalg.norm(
        (x.astype(np.float64) - y.astype(np.float64)).reshape(pairs, -1),
        axis=1,
    )
    return float(np.max(num / den))


def _assert_one_lipschitz_block(layer, shape, scales=(0.1, 1.0, 10.0)):
    """Pairs at several scales and Jacobians at random points <= bound."""
    bound = layer.lipschitz_upper_bound()
    assert bound <= 1 + 1e-6, bound
    for scale in scales:
        ratio = _pair_ratio(lambda v: layer(v), shape, scale)
        assert ratio <= 1 + TOL, (scale, ratio)
    for norm in _jacobian_norms(lambda v: layer(v), shape, points=3):
        assert norm <= 1 + TOL, norm
        assert bound >= norm * (1 - FLOAT32_SLACK)


def _push_layers(layers, shapes, steps=5, learning_rate=5.0, seed=0):
    """Large SGD steps on several layers at once (one compiled `fit`).

    The layers are the branches of one multi-input, multi-output model
    whose MSE loss pushes every output towards large random targets, as in
    `helpers.push_weights` but with a single compilation. Returns each raw
    kernel's relative change.
    """
    rng = np.random.default_rng(seed)
    inputs = [keras.Input(shape) for shape in shapes]
    outputs = [layer(x) for layer, x in zip(layers, inputs)]
    model = keras.Model(inputs, outputs)
    before = [helpers.to_numpy(layer.kernel) for layer in layers]
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=learning_rate),
        loss=["mse"] * len(layers),
    )
    x = [rng.normal(size=(32, *shape)).astype("float32") for shape in shapes]
    y = [
        10.0 * rng.normal(size=(32, *out.shape[1:])).astype("float32")
        for out in outputs
    ]
    model.fit(x, y, epochs=steps, batch_size=32, verbose=0)
    return [
        float(
            np.linalg.norm(helpers.to_numpy(layer.kernel) - old)
            / np.linalg.norm(old)
        )
        for layer, old in zip(layers, before)
    ]


# ----------------------------------------------------------- the rescaling
def _abs_gram_reference(kernel):
    """sum_s |M_ij(s)| by explicit loops over shifts and taps (float64)."""
    kernel = np.asarray(kernel, np.float64)
    k_h, k_w, c_in, _ = kernel.shape
    total = np.zeros((c_in, c_in))
    for u in range(-(k_h - 1), k_h):
        for v in range(-(k_w - 1), k_w):
            block = np.zeros((c_in, c_in))
            for a in range(k_h):
                for b in range(k_w):
                    if 0 <= a + u < k_h and 0 <= b + v < k_w:
                        block += kernel[a + u, b + v] @ kernel[a, b].T
            total += np.abs(block)
    return total


def test_aol_rescaling_matches_float64_reference_and_q_direction():
    rng = np.random.default_rng(0)
    eps = normalizers.AOL_EPSILON
    # Dense: d_i = (sum_j |W W^T|_ij q_j / q_i + eps)^-1/2, Keras layout.
    w = rng.normal(size=(6, 4))
    log_q = 2.0 * rng.normal(size=6)
    q = np.exp(log_q)
    gram = np.abs(w @ w.T)
    expected = (gram @ q / q + eps) ** -0.5
    reversed_ratio = ((gram @ (1 / q)) * q + eps) ** -0.5
    got = helpers.to_numpy(
        normalizers.aol_rescaling_dense(
            ops.convert_to_tensor(w.astype("float32")),
            ops.convert_to_tensor(log_q.astype("float32")),
        )
    )
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert np.max(np.abs(reversed_ratio / expected - 1)) > 0.1
    got = helpers.to_numpy(
        normalizers.aol_rescaling_dense(
            ops.convert_to_tensor(w.astype("float32"))
        )
    )
    np.testing.assert_allclose(got, (gram.sum(1) + eps) ** -0.5, rtol=1e-5)
    # Conv: the Gram over all (2k - 1)^2 shifts, even and odd sizes.
    for shape in [(3, 3, 3, 4), (2, 3, 4, 2)]:
        kernel = rng.normal(size=shape)
        log_q = rng.normal(size=shape[2])
        q = np.exp(log_q)
        reference = _abs_gram_reference(kernel)
        got = helpers.to_numpy(
            normalizers.aol_rescaling_conv(
                ops.convert_to_tensor(kernel.astype("float32")),
                ops.convert_to_tensor(log_q.astype("float32")),
            )
        )
        np.testing.assert_allclose(
            got, (reference @ q / q + eps) ** -0.5, rtol=1e-5
        )


def test_aol_rescaling_bounds_adversarial_matrices():
    """||diag(d) W|| <= 1 for ill-conditioned, rank-1 and random kernels."""
    rng = np.random.default_rng(1)
    left, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    right, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    cases = [
        rng.normal(size=(8, 5)),
        np.ones((8, 5)),
        (left[:, :5] * np.logspace(-3, 2, 5)) @ right,
        np.outer(rng.normal(size=8), rng.normal(size=5)),
    ]
    for w in cases:
        for log_q in (None, 5.0 * rng.normal(size=8)):
            d = helpers.to_numpy(
                normalizers.aol_rescaling_dense(
                    ops.convert_to_tensor(w.astype("float32")),
                    None if log_q is None else log_q.astype("float32"),
                )
            )
            scaled = d[:, None] * w.astype("float32").astype(np.float64)
            assert np.linalg.norm(scaled, 2) <= 1 + 1e-6


# --------------------------------------------------------------- AOLDense
# (input_dim, units, kernel_initializer)
AOL_DENSE_CASES = [(5, 8, None), (12, 5, None), (7, 7, "glorot_uniform")]


def test_aol_dense_exact_norm_before_and_after_large_steps():
    layers = []
    for input_dim, units, initializer in AOL_DENSE_CASES:
        layer = AOLDense(
            units, use_bias=False, kernel_initializer=initializer
        )
        layer.build((None, input_dim))
        layers.append(layer)

    def check(layer, input_dim, case):
        sigma = helpers.layer_singular_values(layer, (input_dim,))[0]
        assert sigma <= 1 + TOL, (case, sigma)
        bound = layer.lipschitz_upper_bound()
        assert bound >= sigma * (1 - FLOAT32_SLACK), (case, bound, sigma)
        return sigma

    for layer, case in zip(layers, AOL_DENSE_CASES):
        sigma = check(layer, case[0], case)
        if case[2] is None:
            # The official repeated-orthogonal init makes the rescaling the
            # identity: the layer starts with norm 1.
            assert sigma >= 1 - 1e-4, (case, sigma)
    changes = _push_layers(layers, [(case[0],) for case in AOL_DENSE_CASES])
    for layer, case, change in zip(layers, AOL_DENSE_CASES, changes):
        assert change > 0.1, (case, "the push did not move the raw kernel")
        check(layer, case[0], case)


def test_aol_dense_lipschitz_factor_and_activation():
    layer = AOLDense(6, lipschitz=2.5, kernel_initializer="random_normal")
    layer.build((None, 5))
    sigma = helpers.layer_singular_values(layer, (5,))[0]
    assert sigma <= 2.5 * (1 + TOL)
    assert layer.lipschitz_upper_bound() >= sigma * (1 - FLOAT32_SLACK)
    with_activation = AOLDense(6, lipschitz=2.5, activation="sigmoid")
    with_activation.build((None, 5))
    with_activation.set_weights(layer.get_weights())
    assert with_activation.lipschitz_upper_bound() == pytest.approx(
        0.25 * layer.lipschitz_upper_bound()
    )


# -------------------------------------------------------------- AOLConv2D
# (kernel, strides, padding, input size, c_in, filters)
AOL_CONV_CASES = [
    (3, 1, "same", 6, 3, 2),
    (3, 1, "valid", 6, 3, 2),
    (3, 2, "same", 7, 3, 2),
    (2, 2, "valid", 6, 3, 2),
    # One input channel (MNIST's first layer): its Gram takes another path.
    (3, 1, "same", 6, 1, 2),
]


def test_aol_conv_exact_norm_before_and_after_large_steps():
    layers, shapes = [], []
    for k, s, padding, n, c_in, filters in AOL_CONV_CASES:
        layer = AOLConv2D(
            filters, k, strides=s, padding=padding, use_bias=False
        )
        layer.build((None, n, n, c_in))
        layers.append(layer)
        shapes.append((n, n, c_in))

    def check(layer, shape, case):
        sigma = helpers.layer_singular_values(layer, shape)[0]
        assert sigma <= 1 + TOL, (case, sigma)
        bound = layer.lipschitz_upper_bound()
        assert bound >= sigma * (1 - FLOAT32_SLACK), (case, bound, sigma)
        return sigma

    for layer, shape, case in zip(layers, shapes, AOL_CONV_CASES):
        sigma = check(layer, shape, case)
        if case[1] == 1 and case[2] == "same":
            # Orthogonal centre tap: norm 1 from the start.
            assert sigma >= 1 - 1e-4, (case, sigma)
    changes = _push_layers(layers, shapes)
    for layer, shape, case, change in zip(
        layers, shapes, AOL_CONV_CASES, changes
    ):
        assert change > 0.1, (case, "the push did not move the raw kernel")
        check(layer, shape, case)


def test_aol_conv_size_free_bound_holds_on_every_size():
    layer = AOLConv2D(3, 3, use_bias=False, kernel_initializer="he_normal")
    layer.build((None, None, None, 2))
    bound = layer.lipschitz_upper_bound()
    assert bound <= 1 + 1e-6
    for n in (4, 7):
        sigma = helpers.layer_singular_values(layer, (n, n, 2))[0]
        assert sigma <= 1 + TOL
        assert bound >= sigma * (1 - FLOAT32_SLACK)


def test_aol_conv_channels_first_matches_channels_last():
    kwargs = dict(filters=3, kernel_size=3, strides=2, bias_initializer="ones")
    last = AOLConv2D(data_format="channels_last", **kwargs)
    first = AOLConv2D(data_format="channels_first", **kwargs)
    last.build((None, 7, 6, 2))
    first.build((None, 2, 7, 6))
    first.set_weights(last.get_weights())
    x = np.random.default_rng(0).normal(size=(2, 7, 6, 2)).astype("float32")
    np.testing.assert_allclose(
        helpers.to_numpy(first(x.transpose(0, 3, 1, 2))).transpose(0, 2, 3, 1),
        helpers.to_numpy(last(x)),
        rtol=1e-5,
        atol=1e-5,
    )


# --------------------------------------------------------------- SLLDense
# (inner_dim, activation)
SLL_DENSE_CASES = [(12, "relu"), (3, "tanh")]


def test_sll_dense_is_one_lipschitz_after_large_steps():
    shape = (6,)
    layers = []
    for inner_dim, activation in SLL_DENSE_CASES:
        layer = SLLDense(inner_dim=inner_dim, activation=activation)
        layer.build((None, *shape))
        _assert_one_lipschitz_block(layer, shape)
        layers.append(layer)
    log_qs = [helpers.to_numpy(layer.log_q) for layer in layers]
    changes = _push_layers(layers, [shape] * len(layers))
    for layer, case, change, log_q in zip(
        layers, SLL_DENSE_CASES, changes, log_qs
    ):
        assert change > 0.1, (case, "the push did not move the raw kernel")
        moved = np.max(np.abs(helpers.to_numpy(layer.log_q) - log_q))
        assert moved > 1e-3, (case, "the push did not move log q")
        _assert_one_lipschitz_block(layer, shape)


def test_sll_dense_matches_the_formula():
    """y = x - 2 W T^-1 relu(W^T x + b), t_i = sum_j |W^T W|_ij q_j / q_i."""
    rng = np.random.default_rng(2)
    layer = SLLDense(inner_dim=5)
    layer.build((None, 4))
    log_q = 3.0 * rng.normal(size=5)
    layer.log_q.assign(log_q.astype("float32"))
    layer.bias.assign(rng.normal(size=5).astype("float32"))
    w = helpers.to_numpy(layer.kernel)
    b = helpers.to_numpy(layer.bias)
    q = np.exp(helpers.to_numpy(layer.log_q))
    t = np.abs(w.T @ w) @ q / q + normalizers.AOL_EPSILON
    np.testing.assert_allclose(layer.inverse_t(), 1 / t, rtol=1e-5)
    x = rng.normal(size=(3, 4))
    expected = x - 2 * (np.maximum(x @ w + b, 0) / t) @ w.T
    np.testing.assert_allclose(
        helpers.to_numpy(layer(x.astype("float32"))),
        expected,
        rtol=1e-4,
        atol=1e-5,
    )


# -------------------------------------------------------------- SLLConv2D
# (kernel_size, inner_dim, data_format, input shape)
SLL_CONV_CASES = [
    (3, None, "channels_last", (5, 5, 3)),
    ((3, 5), 5, "channels_first", (3, 5, 4)),
]


def test_sll_conv_is_one_lipschitz_after_large_steps():
    layers, shapes = [], []
    for kernel_size, inner_dim, data_format, shape in SLL_CONV_CASES:
        layer = SLLConv2D(
            kernel_size, inner_dim=inner_dim, data_format=data_format
        )
        layer.build((None, *shape))
        _assert_one_lipschitz_block(layer, shape)
        layers.append(layer)
        shapes.append(shape)
    changes = _push_layers(layers, shapes)
    for layer, shape, case, change in zip(
        layers, shapes, SLL_CONV_CASES, changes
    ):
        assert change > 0.1, (case, "the push did not move the raw kernel")
        _assert_one_lipschitz_block(layer, shape)
        # With a size, the bound is never above the size-free one.
        spatial = shape[:2] if case[2] == "channels_last" else shape[1:]
        assert layer.lipschitz_upper_bound(spatial) <= 1 + 1e-6


def test_sll_conv_matches_the_formula():
    """t from |N(s)| over all shifts, weighted q_j / q_i; exact adjoint."""
    rng = np.random.default_rng(3)
    layer = SLLConv2D(3, inner_dim=4, bias_initializer="random_normal")
    layer.build((None, 5, 6, 2))
    log_q = 3.0 * rng.normal(size=4)
    layer.log_q.assign(log_q.astype("float32"))
    kernel = helpers.to_numpy(layer.kernel)
    b = helpers.to_numpy(layer.bias)
    q = np.exp(helpers.to_numpy(layer.log_q))
    gram = _abs_gram_reference(kernel.transpose(0, 1, 3, 2))
    t = gram @ q / q + normalizers.AOL_EPSILON
    np.testing.assert_allclose(layer.inverse_t(), 1 / t, rtol=1e-5)
    # Explicit operator: y = x - 2 A^T (relu(A x + b) / t).
    from keras_lipschitz import bounds

    a = bounds.conv_operator_matrix(kernel, (5, 6), (1, 1), "same")
    x = rng.normal(size=(2, 5, 6, 2))
    hidden = x.reshape(2, -1) @ a.T + np.tile(b, 30)
    hidden = np.maximum(hidden, 0) / np.tile(t, 30)
    expected = x.reshape(2, -1) - 2 * hidden @ a
    np.testing.assert_allclose(
        helpers.to_numpy(layer(x.astype("float32"))).reshape(2, -1),
        expected,
        rtol=1e-4,
        atol=1e-5,
    )


# ----------------------------------------------------------- SLLAOCConv2D
# (filters, kernel_size, strides, data_format, input shape): even cores
# (3/2 -> 2x2, 5/2 -> 4x4), odd core (4/2 -> 3x3), stride 1 and 3.
SLL_AOC_CASES = [
    (8, 3, 2, "channels_last", (6, 6, 4)),
    (6, 5, 2, "channels_first", (2, 5, 7)),
    (4, 4, 2, "channels_last", (5, 4, 2)),
    (4, 3, 1, "channels_last", (4, 4, 4)),
    (5, 3, 3, "channels_last", (6, 5, 3)),
]


def _assert_sll_aoc_block(layer, shape, data_format):
    """Bound <= 1 + 1e-4 (AOC factors) and >= pairs and Jacobian norms."""
    bound = layer.lipschitz_upper_bound()
    assert 1.0 <= bound <= 1 + 1e-4, bound
    for scale in (0.1, 1.0, 10.0):
        ratio = _pair_ratio(lambda v: layer(v), shape, scale)
        assert ratio <= 1 + TOL, (scale, ratio)
        assert ratio <= bound * (1 + FLOAT32_SLACK)
    for norm in _jacobian_norms(lambda v: layer(v), shape, points=3):
        assert norm <= 1 + TOL, norm
        assert bound >= norm * (1 - FLOAT32_SLACK)


def test_sll_aoc_is_one_lipschitz_after_large_steps():
    layers, shapes = [], []
    for filters, kernel_size, strides, data_format, shape in SLL_AOC_CASES:
        layer = SLLAOCConv2D(
            filters,
            kernel_size,
            strides=strides,
            inner_dim=5,
            data_format=data_format,
            bias_initializer="random_normal",
        )
        layer.build((None, *shape))
        expected = layer.compute_output_shape((None, *shape))
        assert tuple(layer(np.zeros((1, *shape), "float32")).shape) == (
            1, *expected[1:]
        )
        _assert_sll_aoc_block(layer, shape, data_format)
        layers.append(layer)
        shapes.append(shape)
    changes = _push_layers(layers, shapes)
    for layer, shape, case, change in zip(
        layers, shapes, SLL_AOC_CASES, changes
    ):
        assert change > 0.1, (case, "the push did not move the raw kernel")
        _assert_sll_aoc_block(layer, shape, case[3])


@pytest.mark.parametrize("kernel_size", [3, 4, 5])
def test_sll_aoc_matches_the_composition(kernel_size):
    """y = Q(u - 2 A^T (relu(A u + b) / t)), u = P x, with explicit
    operator matrices: checks the even-size padding and its adjoint."""
    from keras_lipschitz import bounds

    rng = np.random.default_rng(kernel_size)
    size, c_in, filters = (6, 5), 3, 4
    layer = SLLAOCConv2D(
        filters, kernel_size, strides=2, inner_dim=4,
        bias_initializer="random_normal",
    )
    layer.build((None, *size, c_in))
    layer.log_q.assign((2.0 * rng.normal(size=4)).astype("float32"))
    core = helpers.to_numpy(layer.kernel)
    assert core.shape[:2] == (kernel_size - 1, kernel_size - 1)
    t = 1.0 / layer.inverse_t().astype(np.float64)
    b = helpers.to_numpy(layer.bias).astype(np.float64)
    pre = bounds.conv_operator_matrix(
        layer.pre_conv.effective_kernel(), size, (1, 1), "same"
    )
    a = bounds.conv_operator_matrix(core, size, (1, 1), "same")
    post = bounds.conv_operator_matrix(
        layer.post_conv.effective_kernel(), size, (2, 2), "same"
    )
    x = rng.normal(size=(2, *size, c_in))
    u = x.reshape(2, -1) @ pre.T
    pixels = size[0] * size[1]
    hidden = np.maximum(u @ a.T + np.tile(b, pixels), 0) / np.tile(t, pixels)
    expected = (u - 2 * hidden @ a) @ post.T
    np.testing.assert_allclose(
        helpers.to_numpy(layer(x.astype("float32"))).reshape(2, -1),
        expected,
        rtol=1e-4,
        atol=1e-5,
    )


# ------------------------------------------------------------ SLL, both
def _sll_layers():
    dense = SLLDense(inner_dim=7)
    dense.build((None, 5))
    conv = SLLConv2D(3, inner_dim=3)
    conv.build((None, 4, 4, 2))
    return [(dense, (5,)), (conv, (4, 4, 2))]


def test_sll_with_q_far_from_one_is_still_one_lipschitz():
    rng = np.random.default_rng(4)
    for layer, shape in _sll_layers():
        before = helpers.to_numpy(layer(np.ones((1, *shape), "float32")))
        # Beyond the clip of log q (+-20) too.
        log_q = 15.0 * rng.normal(size=layer.log_q.shape)
        layer.log_q.assign(log_q.astype("float32"))
        after = helpers.to_numpy(layer(np.ones((1, *shape), "float32")))
        # q is live (a cancelled q, as in the official conv, would not
        # change the output).
        assert np.max(np.abs(after - before)) > 1e-3
        assert np.all(np.isfinite(after))
        _assert_one_lipschitz_block(layer, shape, scales=(0.1, 10.0))


def test_sll_bound_stays_guaranteed_when_t_is_too_small(monkeypatch):
    """With T^-1 four times too large the block is not 1-Lipschitz: the
    reported bound must say so and still cover the measured constant."""
    for layer, shape in _sll_layers():
        original = layer._inverse_t
        monkeypatch.setattr(layer, "_inverse_t", lambda f=original: 4 * f())
        bound = layer.lipschitz_upper_bound()
        measured = max(
            max(_jacobian_norms(lambda v: layer(v), shape, points=6)),
            _pair_ratio(lambda v: layer(v), shape, 1.0),
        )
        assert measured > 1.05, measured
        assert bound >= measured * (1 - FLOAT32_SLACK), (bound, measured)


def test_sll_dead_inner_unit_stays_finite():
    for layer, shape in _sll_layers():
        kernel = helpers.to_numpy(layer.kernel)
        kernel[..., 0] = 0.0
        layer.kernel.assign(kernel.astype("float32"))
        y = helpers.to_numpy(layer(np.ones((2, *shape), "float32")))
        assert np.all(np.isfinite(y))
        assert np.all(np.isfinite(layer.inverse_t()))
        assert layer.lipschitz_upper_bound() <= 1 + 1e-6


# ------------------------------------------------ models, export, saving
def _small_model():
    inputs = keras.Input((6, 6, 2))
    x = AOLConv2D(4, 3)(inputs)
    x = SLLConv2D(3, inner_dim=6)(x)
    x = SLLAOCConv2D(5, strides=2, inner_dim=3)(x)
    x = AOLConv2D(4, 3, strides=2)(x)
    x = keras.layers.Flatten()(x)
    x = AOLDense(8, activation="relu")(x)
    x = SLLDense(inner_dim=10)(x)
    outputs = AOLDense(3)(x)
    return keras.Model(inputs, outputs)


def test_lipschitz_bound_of_a_model_covers_measured_gradients():
    model = _small_model()
    rng = np.random.default_rng(5)
    # Move every weight away from its near-orthogonal initialization.
    for weight in model.trainable_weights:
        weight.assign(rng.normal(size=weight.shape).astype("float32"))
    bound = keras_lipschitz.lipschitz_bound(model)
    assert bound <= 1 + 1e-5, bound
    jacobian = _jacobian_function(lambda v: model(v))
    for _ in range(3):
        matrix = jacobian(rng.normal(size=(1, 6, 6, 2)))
        # The rows are the input gradients of the three outputs.
        gradient_norms = np.linalg.norm(matrix, axis=1)
        assert np.max(gradient_norms) <= bound * (1 + FLOAT32_SLACK)
        sigma = helpers.singular_values(matrix)[0]
        assert sigma <= bound * (1 + FLOAT32_SLACK), (sigma, bound)


def test_vanilla_export_gives_plain_layers_and_keeps_sll_blocks():
    model = _small_model()
    rng = np.random.default_rng(6)
    for weight in model.trainable_weights:
        weight.assign(rng.normal(size=weight.shape).astype("float32"))
    exported = keras_lipschitz.vanilla_export(model)
    kinds = [type(layer).__name__ for layer in exported.layers]
    # AOL layers become plain Conv2D / Dense; SLL blocks stay as they are.
    assert kinds == [
        "InputLayer",
        "Conv2D",
        "SLLConv2D",
        "SLLAOCConv2D",
        "Conv2D",
        "Flatten",
        "Dense",
        "SLLDense",
        "Dense",
    ]
    x = rng.normal(size=(4, 6, 6, 2)).astype("float32")
    np.testing.assert_allclose(
        helpers.to_numpy(exported(x)),
        helpers.to_numpy(model(x)),
        rtol=1e-5,
        atol=1e-6,
    )
    for original, plain in zip(model.layers, exported.layers):
        if isinstance(original, (AOLDense, AOLConv2D)):
            np.testing.assert_array_equal(
                helpers.to_numpy(plain.kernel), original.effective_kernel()
            )


def test_keras_save_load_keeps_outputs_and_bounds(tmp_path):
    model = _small_model()
    rng = np.random.default_rng(7)
    for weight in model.trainable_weights:
        weight.assign(rng.normal(size=weight.shape).astype("float32"))
    loaded = helpers.save_and_load(model, tmp_path)
    x = rng.normal(size=(3, 6, 6, 2)).astype("float32")
    np.testing.assert_allclose(
        helpers.to_numpy(loaded(x)), helpers.to_numpy(model(x)), rtol=1e-6
    )
    for original, revived in zip(model.layers[1:], loaded.layers[1:]):
        if hasattr(original, "lipschitz_upper_bound"):
            assert type(revived) is type(original)
            assert revived.lipschitz_upper_bound() == pytest.approx(
                original.lipschitz_upper_bound(), rel=1e-9
            )


CONFIG_CASES = [
    (AOLDense, dict(units=4, lipschitz=2.0, activation="relu"), (None, 5)),
    (
        AOLDense,
        dict(units=4, kernel_initializer="glorot_uniform", use_bias=False),
        (None, 5),
    ),
    (
        AOLConv2D,
        dict(filters=3, kernel_size=(3, 2), strides=2, padding="valid"),
        (None, 6, 6, 2),
    ),
    (
        SLLDense,
        dict(inner_dim=6, activation="tanh", bias_initializer="zeros"),
        (None, 5),
    ),
    (
        SLLConv2D,
        dict(kernel_size=(3, 5), inner_dim=4, data_format="channels_first"),
        (None, 2, 6, 6),
    ),
    (
        SLLAOCConv2D,
        dict(
            filters=6, kernel_size=5, strides=2, inner_dim=4,
            data_format="channels_first", activation="tanh",
        ),
        (None, 2, 6, 6),
    ),
]


@pytest.mark.parametrize("cls,kwargs,input_shape", CONFIG_CASES)
def test_config_round_trip(cls, kwargs, input_shape):
    layer = cls(name="layer", **kwargs)
    config = layer.get_config()
    revived = cls.from_config(config)
    assert revived.get_config() == config
    layer.build(input_shape)
    revived.build(input_shape)
    assert set(dir(layer)) == set(dir(revived))
    revived.set_weights(layer.get_weights())
    x = np.random.default_rng(0).normal(size=(2, *input_shape[1:]))
    x = x.astype("float32")
    np.testing.assert_allclose(
        helpers.to_numpy(revived(x)), helpers.to_numpy(layer(x)), rtol=1e-6
    )
    if "kernel_initializer" not in kwargs and cls in (AOLDense, AOLConv2D):
        assert config["kernel_initializer"] is None


BAD_ARGUMENTS = [
    (AOLDense, {"units": 0}, "units"),
    (AOLDense, {"units": 3, "lipschitz": -1.0}, "lipschitz"),
    (AOLDense, {"units": 3, "activation": "softmax"}, "activation"),
    (AOLConv2D, {"filters": 0, "kernel_size": 3}, "filters"),
    (AOLConv2D, {"filters": 2, "kernel_size": 0}, "kernel_size"),
    (AOLConv2D, {"filters": 2, "kernel_size": 3, "strides": 0}, "strides"),
    (AOLConv2D, {"filters": 2, "kernel_size": 3, "padding": "full"}, "padding"),
    (
        AOLConv2D,
        {"filters": 2, "kernel_size": 3, "data_format": "nhwc"},
        "data_format",
    ),
    (SLLDense, {"inner_dim": 0}, "inner_dim"),
    (SLLDense, {"inner_dim": 2.5}, "inner_dim"),
    (SLLDense, {"activation": "gelu"}, "activation"),
    (SLLDense, {"activation": "softmax"}, "activation"),
    (SLLDense, {"activation": "no_such_activation"}, "activation"),
    (SLLConv2D, {"kernel_size": 2}, "kernel_size"),
    (SLLConv2D, {"kernel_size": (3, 4)}, "kernel_size"),
    (SLLConv2D, {"kernel_size": 0}, "kernel_size"),
    (SLLConv2D, {"inner_dim": -1}, "inner_dim"),
    (SLLConv2D, {"activation": "silu"}, "activation"),
    (SLLConv2D, {"data_format": "nchw"}, "data_format"),
    (SLLAOCConv2D, {"filters": 0}, "filters"),
    (SLLAOCConv2D, {"filters": 4, "kernel_size": 1}, "kernel_size"),
    (SLLAOCConv2D, {"filters": 4, "strides": 0}, "strides"),
    (SLLAOCConv2D, {"filters": 4, "activation": "gelu"}, "activation"),
]


def test_bad_arguments_raise_value_error_naming_them():
    # One test for all cases: the per-test Keras reset costs more than
    # the checks.
    for cls, kwargs, argument in BAD_ARGUMENTS:
        with pytest.raises(ValueError, match=f"`{argument}`"):
            cls(**kwargs)


def test_build_errors():
    with pytest.raises(ValueError, match="last input dimension"):
        SLLDense().build((None, None))
    with pytest.raises(ValueError, match="rank 4"):
        SLLConv2D().build((None, 5, 3))
    with pytest.raises(ValueError, match="channel dimension"):
        SLLConv2D().build((None, 5, 5, None))


@pytest.mark.parametrize(
    "make,shape",
    [
        (lambda: AOLDense(4), (5,)),
        (lambda: AOLConv2D(3, 3), (5, 5, 2)),
        (lambda: SLLDense(inner_dim=6), (5,)),
        (lambda: SLLConv2D(3, inner_dim=4), (5, 5, 2)),
        (lambda: SLLAOCConv2D(4, inner_dim=4), (6, 6, 2)),
    ],
)
def test_mixed_precision_builds_and_runs(make, shape):
    x = np.random.default_rng(0).normal(size=(2, *shape)).astype("float32")
    reference = make()
    reference.build((None, *shape))
    keras.config.set_dtype_policy("mixed_float16")
    try:
        layer = make()
        layer.build((None, *shape))
        layer.set_weights(reference.get_weights())
        y = layer(x)
        y_training = layer(x, training=True)
    finally:
        keras.config.set_dtype_policy("float32")
    assert keras.backend.standardize_dtype(y.dtype) == "float16"
    assert keras.backend.standardize_dtype(y_training.dtype) == "float16"
    for weight in (layer.kernel, getattr(layer, "log_q", layer.kernel)):
        assert keras.backend.standardize_dtype(weight.dtype) == "float32"
    y = helpers.to_numpy(y)
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(
        y, helpers.to_numpy(reference(x)), rtol=1e-2, atol=1e-2
    )
