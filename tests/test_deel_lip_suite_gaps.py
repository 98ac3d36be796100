"""What deel-lip's own test suite found missing in the compat layer.

`benchmarks/peers/run_deel_lip_suite.sh` runs deel-lip's tests (its
`keras3` branch) against `keras_lipschitz.compat.deel_lip`; these are our
own tests of what that run required:

- deel-lip's names are classes: `issubclass(..., LipschitzLayer)` follows
  deel-lip's hierarchy, `isinstance`, `from_config`, signatures;
- bad arguments raise errors that are also deel-lip's exception types;
- `multi_gpu=True` and `process_labels_for_multi_gpu` (deel-lip's
  formula), and the hinge-type losses reading labels as `y > 0`;
- `spectral_normalization_conv` with a `pad_func` (circular padding);
- `Sequential` warns for Keras layers that are not 1-Lipschitz with their
  parameters (overlapping max pooling, GELU, a steep leaky ReLU);
- `LorthRegularizer`'s `lambda_lorth` / `dim` and `Lorth2D`'s errors.
"""

import functools
import inspect
import warnings

import keras
import numpy as np
import pytest

from keras_lipschitz import layers as kl_layers
from keras_lipschitz import losses as kl_losses
from keras_lipschitz import regularizers as kl_regularizers
from keras_lipschitz.compat import deel_lip as lip
from keras_lipschitz.compat.deel_lip import _mapping
from keras_lipschitz.compat.deel_lip import normalizers as lip_normalizers
from tests import helpers

L = lip.layers

# deel-lip's class hierarchy (keras3 branch, deel/lip/layers/*.py).
LIPSCHITZ_AND_CONDENSABLE = (
    L.SpectralDense, L.FrobeniusDense, L.SpectralConv2D, L.FrobeniusConv2D,
)
LIPSCHITZ_ONLY = (
    L.ScaledAveragePooling2D, L.ScaledL2NormPooling2D,
    L.ScaledGlobalAveragePooling2D, L.ScaledGlobalL2NormPooling2D,
    L.MaxMin, L.GroupSort, L.GroupSort2, L.FullSort, L.Householder,
)
if isinstance(L.SpectralConv2DTranspose, type):
    LIPSCHITZ_AND_CONDENSABLE += (L.SpectralConv2DTranspose,)
CONDENSABLE_ONLY = (L.unconstrained.PadConv2D,)
NEITHER = (L.InvertibleDownSampling, L.InvertibleUpSampling)


def test_layer_names_are_classes_with_deel_lips_hierarchy():
    for cls in LIPSCHITZ_AND_CONDENSABLE + LIPSCHITZ_ONLY:
        assert isinstance(cls, type)
        assert issubclass(cls, L.LipschitzLayer), cls
    for cls in LIPSCHITZ_AND_CONDENSABLE + CONDENSABLE_ONLY:
        assert issubclass(cls, L.Condensable), cls
    for cls in LIPSCHITZ_ONLY + NEITHER:
        assert not issubclass(cls, L.Condensable), cls
    for cls in CONDENSABLE_ONLY + NEITHER:
        assert not issubclass(cls, L.LipschitzLayer), cls
    # deel-lip's Sequential is a LipschitzLayer, a compat class is not a
    # keras.Sequential (what deel-lip's tests check first).
    for cls in LIPSCHITZ_AND_CONDENSABLE + NEITHER:
        assert not issubclass(cls, keras.Sequential)
    # Usable as dictionary keys and compared by identity.
    table = {L.SpectralDense: 1, L.FrobeniusDense: 2}
    assert table[L.SpectralDense] == 1 and L.SpectralDense != L.FrobeniusDense


def test_every_deel_lip_class_is_a_class():
    functions = {
        "PReLUlip", "bjorck_normalization", "reshaped_kernel_orthogonalization",
        "set_stop_grad_spectral", "spectral_normalization",
        "spectral_normalization_conv", "evaluate_lip_const",
        "evaluate_lip_const_gen", "l2_normalize",
        "process_labels_for_multi_gpu", "compute_layer_sv",
        "compute_model_sv", "vanillaModel", "hinge_margin",
        "multiclass_hinge", "get_conv_operators", "set_swap_memory",
    }
    if not isinstance(L.SpectralConv2DTranspose, type):
        functions.add("SpectralConv2DTranspose")
    for module, name in _mapping.REGISTRY:
        obj = lip
        for part in module.split("."):
            obj = getattr(obj, part)
        obj = getattr(obj, name)
        assert isinstance(obj, type) == (name not in functions), name


def test_calling_a_class_returns_our_layer():
    dense = L.SpectralDense(4, k_coef_lip=2.0)
    assert type(dense) is kl_layers.BjorckDense and dense.lipschitz == 2.0
    assert isinstance(dense, L.SpectralDense)
    assert isinstance(dense, L.LipschitzLayer)
    assert not isinstance(dense, L.FrobeniusDense)
    # With eps_bjorck=None it is our SpectralDense, still deel-lip's class.
    plain = L.SpectralDense(4, eps_bjorck=None)
    assert type(plain) is kl_layers.SpectralDense
    assert isinstance(plain, L.SpectralDense)
    assert type(L.GroupSort(n=4)) is kl_layers.GroupSort
    assert isinstance(L.GroupSort(n=2), L.GroupSort)
    assert isinstance(L.GroupSort(n=None), L.GroupSort)
    assert not isinstance(kl_layers.MaxMin(), L.GroupSort)
    pool = L.ScaledL2NormPooling2D(pool_size=(2, 2), k_coef_lip=3.0)
    assert isinstance(pool, L.ScaledL2NormPooling2D) and pool.lipschitz == 3.0
    assert isinstance(lip.losses.KR(), kl_losses.KR)
    assert isinstance(lip.losses.KR(), lip.losses.KR)
    assert not isinstance(lip.losses.KR(), lip.losses.HingeMargin)
    condense = lip.callbacks.CondenseCallback()
    assert isinstance(condense, lip.callbacks.CondenseCallback)
    plain = keras.callbacks.Callback()
    assert not isinstance(plain, lip.callbacks.CondenseCallback)


def test_signature_docstring_and_from_config():
    parameters = inspect.signature(L.SpectralDense).parameters
    assert list(parameters)[:2] == ["units", "activation"]
    assert parameters["k_coef_lip"].default == 1.0
    assert parameters["maxiter_bjorck"].default == 15
    assert "Björck" in L.SpectralDense.__doc__
    assert L.SpectralDense.__name__ == "SpectralDense"
    # deel-lip's module of the class (`deel.lip.layers.dense`).
    module = "keras_lipschitz.compat.deel_lip.layers.dense"
    assert L.SpectralDense.__module__ == module

    layer = L.SpectralConv2D(3, (3, 3), k_coef_lip=0.5, name="conv")
    clone = L.SpectralConv2D.from_config(layer.get_config())
    assert type(clone) is kl_layers.BjorckConv2D
    assert clone.get_config() == layer.get_config()
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 2)).astype("float32")
    layer.build(x.shape)
    clone.build(x.shape)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(
        helpers.to_numpy(clone(x)), helpers.to_numpy(layer(x)), rtol=1e-6
    )


def test_bad_arguments_raise_deel_lips_exception_types():
    # deel-lip raises RuntimeError here; ours are ValueErrors, and both.
    cases = [
        lambda: L.Householder(data_format="channels_first"),
        lambda: L.SpectralConv2D(2, 3, dilation_rate=2),
        lambda: L.GroupSort(n=2, data_format="channels_middle"),
        lambda: L.SpectralDense(2, beta_bjorck=0.7),
    ]
    for make in cases:
        with pytest.raises(RuntimeError):
            make()
        with pytest.raises(ValueError):
            make()
    # Lorth2D: impossible orthogonal convolutions (RuntimeError in deel-lip)
    # and even kernels (an assert in deel-lip).
    with pytest.raises(RuntimeError, match="Impossible RO"):
        lip.regularizers.Lorth2D((3, 3, 32, 289), stride=4)
    with pytest.raises(RuntimeError, match="Impossible CO"):
        lip.regularizers.Lorth2D((3, 3, 8, 129), stride=4)
    with pytest.raises(AssertionError, match="odd kernel"):
        lip.regularizers.Lorth2D((4, 4, 32, 32), stride=1)
    with pytest.raises(ValueError, match="odd kernel"):
        lip.regularizers.Lorth2D((4, 4, 32, 32), stride=1)
    with pytest.raises(AssertionError, match="odd kernel"):
        lip.regularizers.LorthRegularizer(kernel_shape=(2, 2, 4, 4))
    with pytest.warns(UserWarning, match="hard to optimize"):
        lorth = lip.regularizers.Lorth2D((3, 3, 32, 32), stride=1)
    assert isinstance(lorth, kl_regularizers.Lorth2D)


def test_lorth_regularizer_has_deel_lips_attributes():
    regularizer = lip.regularizers.LorthRegularizer(
        kernel_shape=(3, 3, 16, 32), stride=2, lambda_lorth=0.25
    )
    assert isinstance(regularizer, kl_regularizers.LorthRegularizer)
    assert regularizer.lambda_lorth == 0.25 and regularizer.dim == 2
    assert regularizer.lorth.kernel_shape == (3, 3, 16, 32)
    regularizer.set_kernel_shape((5, 5, 16, 8))
    clone = lip.regularizers.LorthRegularizer.from_config(
        regularizer.get_config()
    )
    assert clone.lorth.kernel_shape == (5, 5, 16, 8)
    assert clone.stride == 2 and clone.lambda_lorth == 0.25
    clone = keras.regularizers.deserialize(
        keras.regularizers.serialize(regularizer)
    )
    assert clone.lambda_lorth == 0.25
    kernel = np.random.default_rng(1).normal(size=(5, 5, 16, 8))
    kernel = kernel.astype("float32")
    np.testing.assert_allclose(
        float(clone(kernel)), float(regularizer(kernel)), rtol=1e-6
    )
    expected = 0.25 * float(
        kl_regularizers.Lorth2D((5, 5, 16, 8), stride=2).compute_lorth(kernel)
    )
    np.testing.assert_allclose(float(regularizer(kernel)), expected, rtol=1e-6)
    with pytest.raises(NotImplementedError):
        lip.regularizers.LorthRegularizer(dim=1)


# --------------------------------------------------------------------------
# multi_gpu=True and pre-processed labels.
# --------------------------------------------------------------------------


def _weights_numpy(labels):
    """deel-lip's documented formula: B/n+ for positives, -B/n- otherwise."""
    positive = (labels > 0).astype("float64")
    batch = labels.shape[0]
    counts = positive.sum(axis=0)
    return batch * (
        positive / (counts + 1e-7) - (1 - positive) / (batch - counts + 1e-7)
    )


BINARY_Y = np.array([1, 1, 0, 0, 0, 1, 0, 1, 1], "float32")[:, None]
BINARY_F = np.array(
    [0.5, 1.5, -0.5, -0.25, -1.5, 0.75, 0.1, -0.2, 2.0], "float32"
)[:, None]
CLASSES = np.array([0, 1, 2, 1, 0, 2, 2, 1, 0])
ONE_HOT = np.eye(3, dtype="float32")[CLASSES]
LOGITS = np.random.default_rng(3).normal(size=(9, 3)).astype("float32")
SEGMENTS = [0, 2, 5, 9]


def test_process_labels_for_multi_gpu():
    for labels in (BINARY_Y, 2 * BINARY_Y - 1, ONE_HOT):
        weights = lip.utils.process_labels_for_multi_gpu(labels)
        np.testing.assert_allclose(
            helpers.to_numpy(weights), _weights_numpy(labels), rtol=1e-6
        )


@pytest.mark.parametrize(
    "name, kwargs, plain, multiclass",
    [
        ("KR", {}, kl_losses.KR(), False),
        ("HKR", {"alpha": 2.5, "min_margin": 1.0},
         kl_losses.HKR(alpha=2.5, min_margin=1.0), False),
        ("MulticlassKR", {}, kl_losses.MulticlassKR(), True),
        ("MulticlassHKR", {"alpha": 5.0, "min_margin": 2.0},
         kl_losses.MulticlassHKR(alpha=5.0, min_margin=2.0), True),
    ],
)
def test_multi_gpu_losses(name, kwargs, plain, multiclass):
    labels, scores = (ONE_HOT, LOGITS) if multiclass else (BINARY_Y, BINARY_F)
    weights = lip.utils.process_labels_for_multi_gpu(labels)
    cls = getattr(lip.losses, name)
    # Mean reduction on the whole batch: the plain loss on the plain labels.
    loss = cls(multi_gpu=True, **kwargs)
    assert isinstance(loss, cls) and loss.name == name
    np.testing.assert_allclose(
        float(loss(weights, scores)), float(plain(labels, scores)), rtol=1e-5
    )
    # Sum reduction: the mini-batches (replicas) add up to the whole batch.
    summed = cls(multi_gpu=True, reduction="sum", **kwargs)
    parts = sum(
        float(summed(weights[a:b], scores[a:b]))
        for a, b in zip(SEGMENTS[:-1], SEGMENTS[1:])
    )
    np.testing.assert_allclose(
        parts, float(summed(weights, scores)), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        float(summed(weights, scores)),
        float(plain(labels, scores)) * len(labels),
        rtol=1e-5,
    )
    clone = keras.losses.deserialize(keras.losses.serialize(loss))
    np.testing.assert_allclose(
        float(clone(weights, scores)), float(loss(weights, scores)), rtol=1e-6
    )


def test_multi_gpu_hinge_only_and_kr_sign():
    weights = lip.utils.process_labels_for_multi_gpu(BINARY_Y)
    hinge_only = lip.losses.HKR(alpha=np.inf, min_margin=1.0, multi_gpu=True)
    np.testing.assert_allclose(
        float(hinge_only(weights, BINARY_F)),
        float(kl_losses.HingeMargin(min_margin=1.0)(BINARY_Y, BINARY_F)),
        rtol=1e-6,
    )
    # KR is to be maximized: E+[f] - E-[f], here by hand.
    f = BINARY_F[:, 0].astype("float64")
    positive = BINARY_Y[:, 0] > 0
    expected = f[positive].mean() - f[~positive].mean()
    kr = lip.losses.KR(multi_gpu=True)
    np.testing.assert_allclose(
        float(kr(weights, BINARY_F)), expected, rtol=1e-5
    )


@pytest.mark.parametrize(
    "name, args, multiclass",
    [
        ("HingeMargin", (1.4,), False),
        ("TauBinaryCrossentropy", (2.0,), False),
        ("MulticlassHinge", (2.0,), True),
        ("MultiMargin", (1.0,), True),
        ("CategoricalHinge", (1.0,), True),
    ],
)
def test_hinge_losses_read_labels_as_positive(name, args, multiclass):
    loss = getattr(lip.losses, name)(*args)
    ours = getattr(kl_losses, name)(*args)
    assert isinstance(loss, type(ours))
    labels, scores = (ONE_HOT, LOGITS) if multiclass else (BINARY_Y, BINARY_F)
    expected = float(ours(labels, scores))
    encodings = [
        labels,
        2 * labels - 1,
        lip.utils.process_labels_for_multi_gpu(labels),
        labels.astype("int32"),
    ]
    if multiclass:
        encodings.append(CLASSES)  # class indices are left as they are
    for encoded in encodings:
        np.testing.assert_allclose(
            float(loss(encoded, scores)), expected, rtol=1e-6
        )
    clone = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(clone) is type(loss)
    np.testing.assert_allclose(
        float(clone(2 * labels - 1, scores)), expected, rtol=1e-6
    )


# --------------------------------------------------------------------------
# spectral_normalization_conv with a padding function.
# --------------------------------------------------------------------------


def test_padding_circular():
    x = np.arange(2 * 4 * 5 * 3, dtype="float32").reshape(2, 4, 5, 3)
    padded = lip.utils._padding_circular(x, (1, 2))
    expected = np.pad(x, ((0, 0), (1, 1), (2, 2), (0, 0)), mode="wrap")
    np.testing.assert_array_equal(helpers.to_numpy(padded), expected)
    assert lip.utils._padding_circular(x, None) is x


def _circular_pad(kernel_size):
    return functools.partial(
        lip.utils._padding_circular,
        circular_paddings=(kernel_size // 2, kernel_size // 2),
    )


@pytest.mark.parametrize(
    "stride, conv_first", [(1, True), (2, True), (2, False)]
)
def test_circular_conv_operators_are_adjoint(stride, conv_first):
    rng = np.random.default_rng(4)
    kernel = rng.normal(size=(3, 3, 2, 3)).astype("float32")
    u_channels = 2 if conv_first else 3
    u = rng.normal(size=(1, 8, 8, u_channels)).astype("float32")
    forward, adjoint = lip_normalizers._conv_operators(
        kernel, u.shape, stride, conv_first, _circular_pad(3)
    )
    y = helpers.to_numpy(forward(u))
    v = rng.normal(size=y.shape).astype("float32")
    back = helpers.to_numpy(adjoint(v))
    assert back.shape == u.shape
    np.testing.assert_allclose(
        np.sum(y * v), np.sum(u * back), rtol=1e-5, atol=1e-4
    )
    # The forward operator is the circular convolution (stride-subsampled).
    padded = np.pad(u, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="wrap")
    if conv_first:
        direct = np.zeros((1, 8, 8, 3))
        for i in range(8):
            for j in range(8):
                direct[0, i, j] = np.einsum(
                    "hwc,hwcm->m", padded[0, i:i + 3, j:j + 3], kernel
                )
        np.testing.assert_allclose(
            y, direct[:, ::stride, ::stride], rtol=1e-5, atol=1e-5
        )


def test_spectral_normalization_conv_with_circular_padding():
    # K[h, w] = a[h, w] A with a >= 0: the circular convolution has the
    # norm sum(a) * ||A||_2 exactly (its constant-image eigenvector); with
    # zero "same" padding the norm is smaller.
    rng = np.random.default_rng(5)
    a = np.array([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
    matrix = rng.normal(size=(2, 3))
    kernel = (a[:, :, None, None] * matrix).astype("float32")
    exact = a.sum() * np.linalg.norm(matrix, 2)
    u = rng.normal(size=(1, 8, 8, 2)).astype("float32")
    w_bar, u_out, sigma = lip.normalizers.spectral_normalization_conv(
        kernel, u, stride=1, conv_first=True, pad_func=_circular_pad(3),
        eps=1e-6, maxiter=60,
    )
    np.testing.assert_allclose(float(sigma), exact, rtol=1e-5)
    np.testing.assert_allclose(
        helpers.to_numpy(w_bar), kernel / (exact + 1e-6), rtol=1e-4
    )
    assert tuple(u_out.shape) == u.shape
    _, _, sigma_zero = lip.normalizers.spectral_normalization_conv(
        kernel, u, stride=1, conv_first=True, eps=1e-6, maxiter=60
    )
    assert float(sigma_zero) < exact * (1 - 1e-3)


# --------------------------------------------------------------------------
# Sequential: which plain Keras layers are 1-Lipschitz.
# --------------------------------------------------------------------------


def _warns(layer):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lip.Sequential([layer])
    return any("not a 1-Lipschitz layer" in str(w.message) for w in caught)


def test_sequential_warns_for_keras_layers_that_are_not_1_lipschitz():
    quiet = [
        keras.layers.MaxPooling2D(pool_size=2),
        keras.layers.MaxPooling2D(pool_size=(2, 3), strides=(2, 3)),
        keras.layers.ReLU(),
        keras.layers.ReLU(negative_slope=0.3),
        keras.layers.Activation("relu"),
        keras.layers.Activation("tanh"),
        keras.layers.Softmax(),
        keras.layers.Flatten(),
        L.SpectralDense(3),
    ]
    for layer in quiet:
        assert not _warns(layer), layer
    loud = [
        keras.layers.MaxPooling2D(pool_size=3, strides=2),  # overlapping
        keras.layers.ReLU(threshold=0.5),
        keras.layers.ReLU(negative_slope=2.0),
        keras.layers.Activation("gelu"),  # slope up to about 1.13
        keras.layers.Dense(3),
        keras.layers.Add(),
    ]
    for layer in loud:
        assert _warns(layer), layer


def test_overlapping_max_pooling_is_not_1_lipschitz():
    # Why the warning: one input in two windows doubles a squared change.
    pool = keras.layers.MaxPooling2D(pool_size=(1, 2), strides=(1, 1))
    x = np.array([[[[0.0], [1.0], [0.0]]]], "float32")
    y = helpers.to_numpy(pool(x))
    assert np.linalg.norm(y) > np.linalg.norm(x) * 1.4
