"""Tests of the explicit-kernel orthogonal convolutions (BCOPConv2D,
AOCConv2D, AOCConv2DTranspose).

The layers are linear: their exact Lipschitz constant and all their
singular values come from the real Jacobian on a small input in inference
mode (`helpers.linear_jacobian`, float64 SVD). With circular padding every
singular value must be 1 (to 1e-3), right after construction and after
large SGD steps; with zero padding the largest one must be at most 1. The
reported `lipschitz_upper_bound()` must never be below what is measured.
Biases are off in the Jacobian checks: after large steps they reach 1e5,
and `f(e_i) - f(0)` would lose the Jacobian to float32 cancellation.
"""

import keras
import numpy as np
import pytest
from keras import ops

import keras_lipschitz
from keras_lipschitz import normalizers
from keras_lipschitz.layers import AOCConv2D
from keras_lipschitz.layers import AOCConv2DTranspose
from keras_lipschitz.layers import BCOPConv2D
from tests import helpers

TOL = helpers.NORM_TOLERANCE
# The float32 Jacobian can exceed the float64 norm of the same float32
# kernel by rounding only.
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


def _push_layers(layers, shapes, steps=5, learning_rate=5.0, seed=0):
    """Large SGD steps on several layers at once (one compiled `fit`).

    As `helpers.push_weights`, with the layers as the branches of one
    multi-input, multi-output model. Returns each first raw weight's
    relative change.
    """
    rng = np.random.default_rng(seed)
    inputs = [keras.Input(shape) for shape in shapes]
    outputs = [layer(x) for layer, x in zip(layers, inputs)]
    model = keras.Model(inputs, outputs)
    raws = [layer.trainable_weights[0] for layer in layers]
    before = [helpers.to_numpy(raw) for raw in raws]
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
        float(np.linalg.norm(helpers.to_numpy(raw) - old) / np.linalg.norm(old))
        for raw, old in zip(raws, before)
    ]


# (name, class, arguments, input shape (H, W, C)); circular padding.
ORTHOGONAL_CASES = [
    ("bcop", BCOPConv2D, dict(filters=4, kernel_size=3), (6, 6, 4)),
    (
        "aoc_groups_dilation",
        AOCConv2D,
        dict(filters=4, kernel_size=3, groups=2, dilation_rate=2),
        (6, 6, 4),
    ),
    (
        "aoc_stride2_groups2",
        AOCConv2D,
        dict(filters=4, kernel_size=3, strides=2, groups=2),
        (6, 6, 4),
    ),
    # BCOP(2) then RKO(2) from 2 to 8 channels: square, orthogonal.
    (
        "aoc_stride2_up",
        AOCConv2D,
        dict(filters=8, kernel_size=3, strides=2),
        (6, 6, 2),
    ),
    # RKO alone (k = s), dilation coprime with the stride (inflated kernel).
    (
        "aoc_rko_dilated",
        AOCConv2D,
        dict(filters=4, kernel_size=2, strides=2, dilation_rate=3),
        (6, 6, 4),
    ),
    (
        "aoc_transpose_groups2",
        AOCConv2DTranspose,
        dict(filters=4, kernel_size=3, strides=2, groups=2),
        (3, 3, 4),
    ),
]

# Zero padding: 1-Lipschitz, not orthogonal at the borders.
ZERO_PADDING_CASES = [
    ("bcop_same_up", BCOPConv2D, dict(filters=6, kernel_size=3,
                                      padding="same"), (6, 6, 4)),
    ("aoc_same_stride2", AOCConv2D, dict(filters=4, kernel_size=3, strides=2,
                                         padding="same"), (6, 6, 4)),
    ("aoc_transpose_same", AOCConv2DTranspose, dict(
        filters=4, kernel_size=3, strides=2, padding="same"), (3, 3, 4)),
]


def _check(layer, shape, name, orthogonal):
    values = helpers.layer_singular_values(layer, shape)
    sigma = values[0]
    if orthogonal:
        assert np.max(np.abs(values - 1.0)) <= TOL, (name, values[[0, -1]])
    else:
        assert sigma <= 1 + TOL, (name, sigma)
    bound = layer.lipschitz_upper_bound()
    assert bound >= sigma * (1 - FLOAT32_SLACK), (name, bound, sigma)
    # Guaranteed for every input size, and tight.
    assert bound <= 1 + 1e-4, (name, bound)
    sized = layer.lipschitz_upper_bound(input_size=shape[:2])
    assert sigma * (1 - FLOAT32_SLACK) <= sized <= bound, (name, sized)
    return values


def test_singular_values_before_and_after_large_steps():
    cases = ORTHOGONAL_CASES + ZERO_PADDING_CASES
    layers = []
    for name, cls, kwargs, shape in cases:
        layer = cls(use_bias=False, **kwargs)
        layer.build((None, *shape))
        layers.append(layer)
    for layer, (name, _, kwargs, shape) in zip(layers, cases):
        values = _check(layer, shape, name, kwargs.get("padding") is None)
        assert values[0] >= 1 - TOL, (name, "not norm 1 at construction")
    changes = _push_layers(layers, [case[3] for case in cases])
    for layer, (name, _, kwargs, shape), change in zip(layers, cases, changes):
        assert change > 0.3, (name, "the push did not move the raw weights")
        _check(layer, shape, name, kwargs.get("padding") is None)


def test_transpose_is_the_adjoint_of_the_forward_conv():
    """The transposed layer's Jacobian is the transpose of the forward
    conv's (same kernel, padding, strides), for the fold and the crop."""
    for padding in ("circular", "same"):
        layer = AOCConv2DTranspose(
            4, 3, strides=2, padding=padding, use_bias=False
        )
        layer.build((None, 3, 3, 2))
        kernel = ops.convert_to_tensor(layer.effective_kernel())
        transposed = helpers.linear_jacobian(
            lambda x: layer(x, training=False), (3, 3, 2)
        )
        forward = helpers.linear_jacobian(
            lambda x: layer._forward_conv(x, kernel, (1, 1)), (6, 6, 4)
        )
        assert transposed.shape == (144, 18)
        np.testing.assert_allclose(transposed, forward.T, atol=1e-6)


def test_fewer_bjorck_steps_break_orthogonality():
    """The orthogonality test can fail: 4 Björck steps are not enough after
    large steps (the default 20 are, see above)."""
    layer = AOCConv2D(8, 3, strides=2, use_bias=False, bjorck_iterations=4)
    layer.build((None, 6, 6, 4))
    _push_layers([layer], [(6, 6, 4)], learning_rate=30.0)
    values = helpers.layer_singular_values(layer, (6, 6, 4))
    assert np.max(np.abs(values - 1.0)) > 10 * TOL
    # Still sound: the bound covers the largest value.
    assert layer.lipschitz_upper_bound() >= values[0] * (1 - FLOAT32_SLACK)


def test_batched_normalizers_match_per_matrix_results():
    rng = np.random.default_rng(0)
    matrices = rng.normal(size=(2, 3, 5, 3)).astype("float32")
    u = rng.normal(size=(2, 3, 1, 3)).astype("float32")
    u_new, sigma = normalizers.batched_power_iteration(matrices, u, 5)
    u_new, sigma = helpers.to_numpy(u_new), helpers.to_numpy(sigma)
    exact = np.linalg.norm(matrices.astype(np.float64), ord=2, axis=(2, 3))
    assert np.all(sigma[..., 0, 0] <= exact * (1 + 1e-6))
    for i in range(2):
        for j in range(3):
            u_one, sigma_one = normalizers.power_iteration_dense(
                ops.convert_to_tensor(matrices[i, j]),
                ops.convert_to_tensor(u[i, j]),
                5,
            )
            np.testing.assert_allclose(
                u_new[i, j], helpers.to_numpy(u_one), atol=1e-6
            )
            np.testing.assert_allclose(
                sigma[i, j, 0, 0], helpers.to_numpy(sigma_one), rtol=1e-6
            )
    exact = exact.astype("float32")
    scaled = matrices / exact[..., None, None].astype("float32")
    batched = helpers.to_numpy(
        normalizers.bjorck_orthonormalize(ops.convert_to_tensor(scaled), 15)
    )
    for i in range(2):
        for j in range(3):
            single = helpers.to_numpy(
                normalizers.bjorck_orthonormalize(
                    ops.convert_to_tensor(scaled[i, j]), 15
                )
            )
            np.testing.assert_allclose(batched[i, j], single, atol=1e-6)
    gram = np.einsum("ijkl,ijkm->ijlm", batched, batched)
    np.testing.assert_allclose(gram, np.broadcast_to(np.eye(3), gram.shape),
                               atol=1e-5)


def test_channels_first_matches_channels_last():
    rng = np.random.default_rng(1)
    for cls, kwargs, shape in [
        (AOCConv2D, dict(filters=4, kernel_size=3, strides=2, groups=2),
         (6, 6, 4)),
        (AOCConv2DTranspose, dict(filters=2, kernel_size=3, strides=2),
         (3, 3, 4)),
    ]:
        last = cls(data_format="channels_last", bias_initializer="ones",
                   **kwargs)
        first = cls(data_format="channels_first", bias_initializer="ones",
                    **kwargs)
        last.build((None, *shape))
        first.build((None, shape[2], shape[0], shape[1]))
        first.set_weights(last.get_weights())
        x = rng.normal(size=(2, *shape)).astype("float32")
        np.testing.assert_allclose(
            helpers.to_numpy(first(x.transpose(0, 3, 1, 2))).transpose(
                0, 2, 3, 1
            ),
            helpers.to_numpy(last(x)),
            atol=1e-5,
        )


def test_lipschitz_factor_activation_and_even_kernel():
    linear = BCOPConv2D(4, 2, lipschitz=2.0, use_bias=False)
    linear.build((None, 4, 4, 4))
    values = helpers.layer_singular_values(linear, (4, 4, 4))
    assert np.max(np.abs(values - 2.0)) <= 2.0 * TOL
    bound = linear.lipschitz_upper_bound()
    assert values[0] * (1 - FLOAT32_SLACK) <= bound <= 2.0 * (1 + 1e-4)
    with_activation = BCOPConv2D(
        4, 2, lipschitz=2.0, use_bias=False, activation="sigmoid"
    )
    with_activation.build((None, 4, 4, 4))
    with_activation.set_weights(linear.get_weights())
    assert with_activation.lipschitz_upper_bound() == pytest.approx(
        0.25 * bound
    )


def test_dynamic_spatial_sizes():
    """Built with unknown sizes: one model serves several sizes, and the
    size-free bound holds on each."""
    inputs = keras.Input((None, None, 2))
    down = AOCConv2D(4, 3, strides=2, use_bias=False)
    up = AOCConv2DTranspose(2, 3, strides=2, use_bias=False)
    model = keras.Model(inputs, up(down(inputs)))
    rng = np.random.default_rng(4)
    for n in (4, 6):
        x = rng.normal(size=(2, n, n, 2)).astype("float32")
        expected = helpers.to_numpy(up(down(x)))
        np.testing.assert_allclose(
            model.predict(x, verbose=0), expected, atol=1e-5
        )
    values = helpers.layer_singular_values(down, (6, 6, 2))
    assert np.max(np.abs(values - 1.0)) <= TOL
    assert down.lipschitz_upper_bound() >= values[0] * (1 - FLOAT32_SLACK)


def test_output_shapes():
    x = np.zeros((1, 6, 6, 4), "float32")
    cases = [
        (AOCConv2D(8, 3, strides=2), (1, 3, 3, 8), False),
        (AOCConv2D(4, 3, padding="valid", dilation_rate=2), (1, 2, 2, 4),
         True),
        (AOCConv2D(4, 3, strides=(2, 1), padding="same"), (1, 3, 6, 4),
         True),
        (AOCConv2DTranspose(2, 3, strides=2), (1, 12, 12, 2), False),
        (AOCConv2DTranspose(2, 3, strides=2, padding="valid"),
         (1, 13, 13, 2), True),
        (BCOPConv2D(2, 3, padding="valid"), (1, 4, 4, 2), False),
    ]
    for layer, expected, run in cases:
        layer.build(x.shape)
        assert tuple(layer.compute_output_shape(x.shape)) == expected
        if run:  # (each call compiles the kernel construction on JAX)
            assert tuple(layer(x).shape) == expected


@pytest.mark.parametrize(
    "build, argument",
    [
        (lambda: AOCConv2D(4, 1, strides=2), "kernel_size"),
        (lambda: AOCConv2D(4, 3, strides=2, dilation_rate=2),
         "dilation_rate"),
        (lambda: AOCConv2D(4, 4, strides=2, dilation_rate=(1, 4)),
         "dilation_rate"),
        (lambda: AOCConv2D(3, 3, groups=2), "groups"),
        (lambda: AOCConv2D(4, 3, padding="reflect"), "padding"),
        (lambda: AOCConv2D(4, 3, groups=0), "groups"),
        (lambda: AOCConv2DTranspose(4, 2, strides=3), "kernel_size"),
        (lambda: BCOPConv2D(4, 3, bjorck_beta=0.7), "bjorck_beta"),
        (lambda: BCOPConv2D(4, 3, power_iterations=0), "power_iterations"),
        (lambda: BCOPConv2D(0, 3), "filters"),
    ],
)
def test_invalid_arguments_name_the_argument(build, argument):
    with pytest.raises(ValueError, match=argument):
        build()


def test_invalid_inputs_are_refused_at_build():
    with pytest.raises(ValueError, match="groups"):
        AOCConv2D(4, 3, groups=2).build((None, 6, 6, 3))
    # Circular padding with a stride needs sizes divisible by it.
    with pytest.raises(ValueError, match="circular"):
        AOCConv2D(4, 3, strides=2).build((None, 7, 6, 4))
    with pytest.raises(ValueError, match="valid"):
        AOCConv2D(4, 3, padding="valid", dilation_rate=3).build(
            (None, 6, 6, 4)
        )
    with pytest.raises(ValueError, match="rank 4"):
        BCOPConv2D(4, 3).build((None, 6, 4))


def test_config_round_trip():
    layers = [
        BCOPConv2D(3, (3, 2), padding="same", lipschitz=2.0,
                   activation="relu", bjorck_iterations=7),
        AOCConv2D(4, 3, strides=2, groups=2, dilation_rate=(1, 3),
                  kernel_initializer="glorot_uniform"),
        AOCConv2DTranspose(4, 3, strides=2, padding="valid",
                           power_iterations=2),
    ]
    for layer in layers:
        config = layer.get_config()
        clone = type(layer).from_config(config)
        assert clone.get_config() == config
    assert layers[0].get_config()["kernel_initializer"] is None
    assert "strides" not in layers[0].get_config()


def _model():
    """Zero-padded layers (exportable) and circular ones (kept)."""
    inputs = keras.Input((6, 6, 4))
    x = AOCConv2D(4, 3, strides=2, groups=2, padding="same",
                  bias_initializer="ones")(inputs)
    x = AOCConv2DTranspose(4, 3, strides=2, padding="same",
                           activation="relu")(x)
    x = BCOPConv2D(6, 3, padding="valid", bias_initializer="ones")(x)
    # Stride and dilation: the inflated kernel, exported without dilation.
    x = AOCConv2D(6, 3, strides=(2, 1), dilation_rate=(1, 2),
                  padding="same")(x)
    x = AOCConv2D(4, 3)(x)  # circular
    x = AOCConv2DTranspose(4, 2, strides=2, groups=2)(x)  # circular
    return keras.Model(inputs, x)


def test_save_load_and_vanilla_export_give_the_same_outputs(tmp_path):
    model = _model()
    x = np.random.default_rng(2).normal(size=(3, 6, 6, 4)).astype("float32")
    expected = helpers.to_numpy(model(x, training=False))
    loaded = helpers.save_and_load(model, tmp_path)
    np.testing.assert_allclose(
        helpers.to_numpy(loaded(x, training=False)), expected, atol=1e-6
    )
    exported = keras_lipschitz.vanilla_export(model)
    kinds = [type(layer).__name__ for layer in exported.layers[1:]]
    assert kinds == [
        "Conv2D",
        "Conv2DTranspose",
        "Conv2D",
        "Conv2D",
        "AOCConv2D",
        "AOCConv2DTranspose",
    ]
    np.testing.assert_allclose(
        helpers.to_numpy(exported(x, training=False)), expected, atol=1e-5
    )


def test_lipschitz_bound_and_certify_handle_the_layers():
    inputs = keras.Input((6, 6, 2))
    x = AOCConv2D(4, 3, use_bias=False)(inputs)
    x = AOCConv2D(8, 3, strides=2, use_bias=False, padding="same")(x)
    x = AOCConv2DTranspose(4, 3, strides=2, use_bias=False)(x)
    x = BCOPConv2D(2, 3, use_bias=False)(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(3, use_bias=False)(x)
    model = keras.Model(inputs, outputs)
    bound = keras_lipschitz.lipschitz_bound(model)
    head = np.linalg.norm(helpers.to_numpy(model.layers[-1].kernel), 2)
    # The product of the layers' bounds, each within 1e-4 of 1.
    assert bound <= head * (1 + 1e-3)
    sigma = helpers.singular_values(
        helpers.linear_jacobian(lambda v: model(v, training=False),
                                (6, 6, 2))
    )[0]
    assert bound >= sigma * (1 - FLOAT32_SLACK)
    x = np.random.default_rng(3).normal(size=(8, 6, 6, 2)).astype("float32")
    labels = np.argmax(helpers.to_numpy(model(x, training=False)), axis=1)
    radii = np.asarray(keras_lipschitz.certify(model, x, labels))
    assert radii.shape == (8,) and np.all(radii > 0)
