"""Conv coverage of the spectral and Björck families (issues 15 and 17).

`groups` and `dilation_rate`, `padding="circular"` (and `"causal"` in
1-D), the 1-D layers and the transposed layers, checked against the
*exact* Jacobian of the layer on a small input (`helpers.linear_jacobian`,
float64 SVD, inference mode), right after construction and after large SGD
steps (`helpers.push_weights`): its largest singular value is at most
`lipschitz (1 + 1e-3)`, and `lipschitz_upper_bound()` is above it (and,
these inputs being small, equal to it up to rounding: the bounds are
exact there). Björck variants have an orthonormal reshaped kernel per
group. The operators are also checked against independent references:
plain Keras layers with the same kernel, and NumPy's wrap padding for the
circular convolutions.
"""

import keras
import numpy as np
import pytest

from keras_lipschitz import bounds
from keras_lipschitz import certify
from keras_lipschitz import lipschitz_bound
from keras_lipschitz import normalizers
from keras_lipschitz import vanilla_export
from keras_lipschitz.certification import layer_lipschitz_bound
from keras_lipschitz.compat import deel_lip as lip
from keras_lipschitz.layers import AOLConv2D
from keras_lipschitz.layers import BjorckConv1D
from keras_lipschitz.layers import BjorckConv2D
from keras_lipschitz.layers import BjorckConv2DTranspose
from keras_lipschitz.layers import FrobeniusConv2D
from keras_lipschitz.layers import SpectralConv1D
from keras_lipschitz.layers import SpectralConv2D
from keras_lipschitz.layers import SpectralConv2DTranspose
from keras_lipschitz.utils import compute_layer_sv
from tests import helpers

TOL = helpers.NORM_TOLERANCE
# Spectral layers are tight: constant at least this fraction of `lipschitz`.
TIGHTNESS = 0.95
# Float32 Jacobian vs float64 norm of the same float32 kernel.
FLOAT32_SLACK = 1e-5


@pytest.fixture(autouse=True, scope="module")
def _single_threaded_torch():
    """Single-threaded torch for these many tiny convolutions (as test_conv)."""
    if keras.config.backend() != "torch":
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# (name, class, kwargs, input shape without batch): every option, on inputs
# small enough for exact Jacobians. Options are combined so that the cases
# stay few (each compiles a training step for `push_weights`).
CASES = [
    ("spectral2d_groups2_dilation2", SpectralConv2D, dict(filters=4, kernel_size=3, groups=2, dilation_rate=2, lipschitz=2.0), (5, 5, 4)),
    ("spectral2d_circular", SpectralConv2D, dict(filters=3, kernel_size=3, padding="circular"), (5, 5, 2)),
    ("spectral1d_causal_dilation2", SpectralConv1D, dict(filters=3, kernel_size=3, padding="causal", dilation_rate=2), (8, 2)),
    ("spectral1d_circular_s2_groups2", SpectralConv1D, dict(filters=4, kernel_size=3, strides=2, padding="circular", groups=2), (8, 4)),
    ("spectral2d_transpose_s1_valid", SpectralConv2DTranspose, dict(filters=2, kernel_size=3, padding="valid"), (4, 4, 3)),
    ("spectral2d_transpose_s2", SpectralConv2DTranspose, dict(filters=2, kernel_size=3, strides=2), (3, 3, 3)),
    ("bjorck2d_groups2_dilation2", BjorckConv2D, dict(filters=4, kernel_size=3, groups=2, dilation_rate=2), (5, 5, 4)),
    ("bjorck2d_circular_s2", BjorckConv2D, dict(filters=3, kernel_size=3, strides=2, padding="circular", lipschitz=2.0), (6, 6, 2)),
    ("bjorck1d_causal_groups2", BjorckConv1D, dict(filters=4, kernel_size=3, padding="causal", groups=2), (8, 2)),
    ("bjorck2d_transpose_s2", BjorckConv2DTranspose, dict(filters=3, kernel_size=2, strides=2), (3, 3, 2)),
    ("aol2d_circular", AOLConv2D, dict(filters=3, kernel_size=3, padding="circular"), (5, 5, 3)),
]


def _case(name):
    for case in CASES:
        if case[0] == name:
            return case
    raise KeyError(name)


def _reshaped_group_matrices(layer):
    """The per-group reshaped kernels `(rows, outputs)` of a Björck layer."""
    kernel = layer.effective_kernel() / (
        layer.correction_factor * layer.lipschitz
    )
    size = kernel.shape[-1] // layer.groups
    return [
        kernel[..., g * size : (g + 1) * size].reshape(-1, size)
        for g in range(layer.groups)
    ]


@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_exact_norm_and_guaranteed_bound(name):
    _, cls, kwargs, shape = _case(name)
    layer = cls(use_bias=False, **kwargs)
    layer.build((None, *shape))
    lip_constant = layer.lipschitz
    spectral = isinstance(
        layer, (SpectralConv1D, SpectralConv2D, SpectralConv2DTranspose)
    )

    def check(final):
        jacobian = helpers.linear_jacobian(
            lambda x: layer(x, training=False), shape
        )
        values = helpers.singular_values(jacobian)
        sigma = values[0]
        assert sigma <= lip_constant * (1 + TOL), sigma / lip_constant
        if spectral:
            assert sigma >= TIGHTNESS * lip_constant, sigma / lip_constant
        bound = layer.lipschitz_upper_bound()
        assert bound >= sigma * (1 - FLOAT32_SLACK), (bound, sigma)
        # Small inputs: the bounds are exact norms (explicit operator, or
        # the DFT on the torus for circular padding).
        assert bound <= sigma * (1 + FLOAT32_SLACK), (bound, sigma)
        if final:
            # The float64 description of the operator is the real one.
            np.testing.assert_allclose(
                layer.operator_matrix(), jacobian, atol=1e-5, rtol=1e-5
            )
        if isinstance(layer, (BjorckConv1D, BjorckConv2D, BjorckConv2DTranspose)):
            for matrix in _reshaped_group_matrices(layer):
                s = helpers.singular_values(matrix)
                np.testing.assert_allclose(s, 1.0, atol=1e-2)
        if name == "bjorck2d_transpose_s2":
            # kernel_size == strides, tall reshaped kernel: an isometry.
            np.testing.assert_allclose(values, 1.0, atol=1e-2)

    check(final=False)
    assert helpers.push_weights(layer, shape) > 0.1
    check(final=True)


def test_circular_padding_is_numpy_wrap_padding():
    """The layer is NumPy's "wrap" padding, then a plain "valid" conv."""
    rng = np.random.default_rng(0)
    for layer, shape, pads in [
        (BjorckConv2D(3, 3, strides=2, padding="circular"), (6, 4, 2),
         ((0, 1), (0, 1))),
        (BjorckConv2D(2, (2, 3), padding="circular"), (5, 5, 2),
         ((0, 1), (1, 1))),
        (BjorckConv1D(2, 3, padding="circular", dilation_rate=2), (7, 3),
         ((2, 2),)),
    ]:
        layer.build((None, *shape))
        x = rng.normal(size=(2, *shape)).astype("float32")
        wrapped = np.pad(x, ((0, 0),) + pads + ((0, 0),), mode="wrap")
        rank = len(shape) - 1
        plain = (keras.layers.Conv1D if rank == 1 else keras.layers.Conv2D)(
            layer.filters,
            layer.kernel_size,
            strides=layer.strides,
            dilation_rate=layer.dilation_rate,
            padding="valid",
        )
        plain.build((None, *wrapped.shape[1:]))
        plain.set_weights(
            [layer.effective_kernel(), helpers.to_numpy(layer.bias)]
        )
        np.testing.assert_allclose(
            helpers.to_numpy(layer(x)),
            helpers.to_numpy(plain(wrapped)),
            rtol=1e-5,
            atol=1e-5,
        )


def test_circular_bound_is_exact():
    """`circular_conv_spectral_norm` against explicit circulant matrices."""
    rng = np.random.default_rng(3)
    kernel = rng.normal(size=(3, 3, 2, 3))
    for size, strides in [((6, 6), (1, 1)), ((5, 7), (1, 1)),
                          ((6, 4), (2, 2)), ((2, 3), (1, 1))]:
        pads = [max(3 - s, 0) for s in strides]
        matrix = bounds.conv_operator_matrix(
            kernel,
            tuple(n + p for n, p in zip(size, pads)),
            strides,
            "valid",
        )
        factors = []
        for n, p in zip(size, pads):
            rows = np.zeros((n + p, n))
            for r, i in enumerate(range(-(p // 2), n + p - p // 2)):
                rows[r, i % n] = 1.0
            factors.append(rows)
        matrix = matrix @ np.kron(np.kron(*factors), np.eye(2))
        exact = np.linalg.norm(matrix, 2)
        value = bounds.circular_conv_spectral_norm(kernel, size, strides)
        assert exact <= value <= exact * (1 + 1e-9), (size, strides)
    with pytest.raises(ValueError, match="multiples"):
        bounds.circular_conv_spectral_norm(kernel, (5, 6), (2, 2))


def test_spectral_u_written_only_in_training_per_group():
    shape = (4, 4, 4)
    layer = SpectralConv2D(
        4, 3, groups=2, padding="circular", eval_power_iterations=10
    )
    layer.build((None, *shape))
    assert tuple(layer.u.shape) == (1, 4, 4, 4)
    rng = np.random.default_rng(1)
    layer.kernel.assign(rng.normal(size=(3, 3, 2, 4)).astype("float32"))
    x = rng.normal(size=(2, *shape)).astype("float32")
    u0 = helpers.to_numpy(layer.u)
    layer(x, training=False)
    np.testing.assert_array_equal(helpers.to_numpy(layer.u), u0)
    layer(x, training=True)
    u1 = helpers.to_numpy(layer.u)
    # Both groups' slices moved.
    assert np.max(np.abs(u1[..., :2] - u0[..., :2])) > 1e-3
    assert np.max(np.abs(u1[..., 2:] - u0[..., 2:])) > 1e-3
    bjorck = BjorckConv2D(4, 3, groups=2)
    bjorck.build((None, 4, 4, 4))
    assert tuple(bjorck.u.shape) == (2, 2)


@pytest.mark.parametrize(
    "cls,kwargs,shape",
    [
        (SpectralConv1D, dict(filters=4, kernel_size=3, groups=2, padding="circular", eval_power_iterations=10), (4, 6)),
        (SpectralConv2DTranspose, dict(filters=2, kernel_size=3, strides=2, eval_power_iterations=10), (2, 3, 2)),
        (BjorckConv2D, dict(filters=4, kernel_size=3, dilation_rate=2, groups=2), (4, 5, 6)),
    ],
)
def test_channels_first_matches_channels_last(cls, kwargs, shape):
    rank = len(shape) - 1
    last = cls(data_format="channels_last", bias_initializer="ones", **kwargs)
    first = cls(data_format="channels_first", bias_initializer="ones", **kwargs)
    channels_last_shape = shape[1:] + shape[:1]
    last.build((None, *channels_last_shape))
    first.build((None, *shape))
    first.kernel.assign(last.kernel)
    u = helpers.to_numpy(last.u)
    if u.ndim == rank + 2:
        u = np.moveaxis(u, -1, 1)
    first.u.assign(u.astype("float32"))
    x = np.random.default_rng(0).normal(size=(2, *shape)).astype("float32")
    y_first = helpers.to_numpy(first(x))
    y_last = helpers.to_numpy(last(np.moveaxis(x, 1, -1)))
    assert y_first.shape == tuple(first.compute_output_shape((2, *shape)))
    np.testing.assert_allclose(
        np.moveaxis(y_first, 1, -1), y_last, rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        first.lipschitz_upper_bound(), last.lipschitz_upper_bound(), rtol=1e-5
    )


def test_output_shapes_match_keras():
    x2 = keras.Input((7, 9, 4), batch_size=2)
    x1 = keras.Input((9, 4), batch_size=2)
    pairs = [
        (BjorckConv2D(4, 3, dilation_rate=2, groups=2, padding="valid"),
         keras.layers.Conv2D(4, 3, dilation_rate=2, groups=2, padding="valid"),
         x2),
        (BjorckConv1D(2, 3, strides=2, padding="causal"),
         keras.layers.Conv1D(2, 3, strides=2, padding="causal"), x1),
        (BjorckConv1D(2, 4, dilation_rate=2, padding="valid"),
         keras.layers.Conv1D(2, 4, dilation_rate=2, padding="valid"), x1),
        (BjorckConv2DTranspose(3, 3, strides=2, padding="valid"),
         keras.layers.Conv2DTranspose(3, 3, strides=2, padding="valid"), x2),
        (BjorckConv2DTranspose(3, 3, strides=(1, 2)),
         keras.layers.Conv2DTranspose(3, 3, strides=(1, 2), padding="same"),
         x2),
        (BjorckConv2DTranspose(3, 2, strides=3, padding="valid"),
         keras.layers.Conv2DTranspose(3, 2, strides=3, padding="valid"), x2),
    ]
    for ours, reference, x in pairs:
        expected = tuple(reference.compute_output_shape(x.shape))
        assert tuple(ours.compute_output_shape(x.shape)) == expected
        assert tuple(ours(x).shape) == expected


# ------------------------------------------------------------- validation
def test_invalid_arguments_name_the_argument():
    cases = [
        (lambda: SpectralConv2D(3, 3, groups=2), "groups"),
        (lambda: BjorckConv1D(4, 3, groups=0), "groups"),
        (lambda: FrobeniusConv2D(4, 3, groups=2), "groups"),
        (lambda: SpectralConv2DTranspose(4, 3, groups=2), "groups"),
        (lambda: SpectralConv2D(3, 3, strides=2, dilation_rate=2), "dilation_rate"),
        (lambda: SpectralConv2DTranspose(2, 3, dilation_rate=2), "dilation_rate"),
        (lambda: AOLConv2D(2, 3, dilation_rate=2), "dilation_rate"),
        (lambda: BjorckConv2D(2, 3, dilation_rate=(1, 0)), "dilation_rate"),
        (lambda: SpectralConv2DTranspose(2, 3, padding="circular"), "padding"),
        (lambda: FrobeniusConv2D(2, 3, padding="circular"), "padding"),
        (lambda: BjorckConv2D(2, 3, padding="causal"), "padding"),
        (lambda: SpectralConv1D(2, 3, padding="full"), "padding"),
        (lambda: SpectralConv1D(2, (3, 3)), "kernel_size"),
        (lambda: BjorckConv1D(2, 3, strides=(1, 1)), "strides"),
        (lambda: SpectralConv2D(4, 3, groups=2).build((None, 6, 6, 3)), "groups"),
        (lambda: BjorckConv2D(2, 3, strides=2, padding="circular").build(
            (None, 7, 6, 2)), "multiple"),
        (lambda: SpectralConv1D(2, 9, padding="circular").build((None, 3, 2)),
         "circular"),
        (lambda: SpectralConv2D(2, 3, dilation_rate=3, padding="valid").build(
            (None, 6, 8, 2)), "kernel_size"),
        (lambda: SpectralConv1D(2, 3).build((None, 6, 6, 2)), "rank 3"),
    ]
    for make, match in cases:
        with pytest.raises(ValueError, match=match):
            make()


def test_circular_layers_refuse_other_sizes():
    layer = BjorckConv2D(2, 3, padding="circular")
    layer.build((None, 6, 6, 2))
    with pytest.raises(ValueError, match="circular"):
        layer(np.zeros((1, 5, 6, 2), "float32"))
    free = BjorckConv1D(2, 3, strides=2, padding="circular")
    free.build((None, None, 2))
    free(np.zeros((1, 6, 2), "float32"))
    with pytest.raises(ValueError, match="multiple"):
        free(np.zeros((1, 7, 2), "float32"))
    # Built without a size: the size-free bound holds for every allowed size.
    bound = free.lipschitz_upper_bound()
    for n in (4, 8):
        sigma = helpers.layer_singular_values(free, (n, 2))[0]
        assert sigma <= bound * (1 + FLOAT32_SLACK)


# ---------------------------------------------------------- serialization
def _model_2d():
    inputs = keras.Input((4, 4, 4))
    x = BjorckConv2D(4, 3, groups=2, dilation_rate=2, name="b2d")(inputs)
    x = BjorckConv2D(4, 3, strides=2, padding="circular", name="b2d_circ")(x)
    x = SpectralConv2DTranspose(3, 3, strides=2, eval_power_iterations=10,
                                name="s2dt")(x)
    x = BjorckConv2DTranspose(2, 2, activation="relu", name="b2dt")(x)
    return keras.Model(inputs, x)


def _model_1d():
    inputs = keras.Input((6, 2))
    x = SpectralConv1D(4, 3, padding="causal", dilation_rate=2,
                       eval_power_iterations=10, name="s1d")(inputs)
    x = BjorckConv1D(4, 2, groups=2, padding="circular", name="b1d_circ")(x)
    x = BjorckConv1D(3, 3, strides=2, name="b1d")(x)
    return keras.Model(inputs, x)


def _randomize(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if hasattr(layer, "kernel"):
            layer.kernel.assign(
                rng.normal(size=layer.kernel.shape).astype("float32")
            )
            if layer.bias is not None:
                layer.bias.assign(
                    rng.normal(size=layer.bias.shape).astype("float32")
                )


@pytest.mark.parametrize("builder", [_model_2d, _model_1d])
def test_config_round_trip_save_load_and_export(builder, tmp_path):
    model = builder()
    _randomize(model)
    x = np.random.default_rng(1).normal(
        size=(2, *model.input_shape[1:])
    ).astype("float32")
    model(x, training=True)  # writes u
    for layer in model.layers[1:]:
        config = layer.get_config()
        revived = type(layer).from_config(config)
        assert revived.get_config() == config
    expected = helpers.to_numpy(model(x))
    bounds_before = {
        layer.name: layer.lipschitz_upper_bound() for layer in model.layers[1:]
    }
    loaded = helpers.save_and_load(model, tmp_path)
    np.testing.assert_allclose(
        helpers.to_numpy(loaded(x)), expected, rtol=1e-5, atol=1e-5
    )
    for original, revived in zip(model.layers[1:], loaded.layers[1:]):
        assert type(revived) is type(original)
        np.testing.assert_array_equal(
            helpers.to_numpy(revived.u), helpers.to_numpy(original.u)
        )
        assert revived.lipschitz_upper_bound() == pytest.approx(
            bounds_before[original.name], rel=1e-9
        )
    exported = vanilla_export(model)
    np.testing.assert_allclose(
        helpers.to_numpy(exported(x)), expected, rtol=1e-4, atol=1e-4
    )
    plain = {
        "b2d": keras.layers.Conv2D,
        "s2dt": keras.layers.Conv2DTranspose,
        "b2dt": keras.layers.Conv2DTranspose,
        "s1d": keras.layers.Conv1D,
        "b1d": keras.layers.Conv1D,
    }
    for layer in exported.layers[1:]:
        if layer.name.endswith("_circ"):
            # No circular padding in Keras: kept as it is.
            assert type(layer) is type(model.get_layer(layer.name))
        else:
            assert type(layer) is plain[layer.name]
    # The plain layers' bounds (dilation, groups, causal: exact; transposed:
    # the size-robust bound of `lipschitz_bound`) agree with ours.
    for layer in model.layers[1:]:
        if layer.name.endswith("_circ"):
            continue
        theirs = layer_lipschitz_bound(
            exported.get_layer(layer.name), tuple(layer.input.shape)
        )
        ours = bounds_before[layer.name]
        if getattr(layer, "_transpose", False):
            assert ours <= theirs * (1 + 1e-9), (layer.name, ours, theirs)
        else:
            assert ours == pytest.approx(theirs, rel=1e-6), layer.name
    if builder is _model_2d:
        assert exported.get_layer("b2d").groups == 2
        assert tuple(exported.get_layer("b2d").dilation_rate) == (2, 2)


# ---------------------------------------------------------- certification
def test_certify_lipschitz_bound_and_singular_values():
    inputs = keras.Input((5, 5, 2))
    x = BjorckConv2D(4, 3, padding="circular", groups=2,
                     activation="relu")(inputs)
    x = BjorckConv2D(4, 3, dilation_rate=2)(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(3)(x)
    model = keras.Model(inputs, outputs)
    layers = model.layers[1:3]
    expected = np.prod([layer.lipschitz_upper_bound() for layer in layers])
    expected *= np.linalg.norm(helpers.to_numpy(model.layers[-1].kernel), 2)
    assert lipschitz_bound(model) == pytest.approx(expected, rel=1e-9)
    # LipLT does not describe circular padding: it refuses, and `certify`
    # falls back to the layer-wise bound.
    with pytest.raises(ValueError, match="circular|'same'"):
        lipschitz_bound(model, method="liplt")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 5, 5, 2)).astype("float32")
    radii = np.asarray(certify(model, x, np.array([0, 1, 2, 0])))
    assert radii.shape == (4,) and np.all(radii >= 0)
    # compute_layer_sv: the exact linear part (its operator matrix,
    # checked against the Jacobian above) times the ReLU's range [0, 1].
    low, high = compute_layer_sv(layers[0])
    exact = np.linalg.norm(layers[0].operator_matrix(), 2)
    assert low == 0.0
    assert high == pytest.approx(exact, rel=1e-9)
    assert high == pytest.approx(layers[0].lipschitz_upper_bound(), rel=1e-9)


# ------------------------------------------------------------------ compat
def test_compat_spectral_conv2d_transpose():
    layer = lip.layers.SpectralConv2DTranspose(
        3, 2, strides=2, k_coef_lip=2.0, maxiter_bjorck=12
    )
    assert isinstance(layer, BjorckConv2DTranspose)
    assert layer.lipschitz == 2.0
    assert layer.bjorck_iterations == 12
    assert layer.padding == "same"
    y = layer(np.ones((1, 3, 3, 4), "float32"))
    assert tuple(y.shape) == (1, 6, 6, 3)
    assert layer.lipschitz_upper_bound() <= 2.0 * (1 + 1e-6)
    spectral = lip.layers.SpectralConv2DTranspose(3, 3, eps_bjorck=None)
    assert isinstance(spectral, SpectralConv2DTranspose)
    for kwargs, match in [
        (dict(padding="valid"), "padding"),
        (dict(dilation_rate=2), "dilation"),
        (dict(output_padding=1), "output_padding"),
        (dict(beta_bjorck=0.7), "beta_bjorck"),
    ]:
        with pytest.raises(ValueError, match=match):
            lip.layers.SpectralConv2DTranspose(3, 3, **kwargs)


def test_deel_lip_transposed_reshape_is_not_a_bound():
    """Why the compat layer orthonormalizes the other reshape.

    deel-lip's RKO makes the `(k_h k_w c_in) x filters` reshape of the
    transposed kernel orthogonal. With kernel_size = strides = 2, one input
    channel and four filters (factor 1), the transposed conv then has norm
    2; the reshape of the conv it is the adjoint of bounds it.
    """
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    # Transposed kernel (k_h, k_w, filters=4, c_in=1): deel-lip's reshape
    # of kernel.transpose(0, 1, 3, 2) is q.
    kernel = q.reshape(2, 2, 1, 4).transpose(0, 1, 3, 2)
    factor = normalizers.rko_correction_factor((2, 2), (2, 2))
    assert factor == 1.0
    norm = np.linalg.norm(
        bounds.conv_operator_matrix(kernel * factor, (4, 4), (2, 2), "same"),
        2,
    )
    assert norm == pytest.approx(2.0, rel=1e-9)
    ours = kernel.reshape(-1, 1)
    ours = ours / np.linalg.norm(ours)
    norm = np.linalg.norm(
        bounds.conv_operator_matrix(
            ours.reshape(kernel.shape) * factor, (4, 4), (2, 2), "same"
        ),
        2,
    )
    assert norm == pytest.approx(1.0, rel=1e-9)
