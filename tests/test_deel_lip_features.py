"""The deel-lip features added by issue 17, in keras-lipschitz's own API.

Losses (`TauBinaryCrossentropy`, `TauSparseCategoricalCrossentropy`,
`MultiMargin`, `CategoricalHinge`, `MulticlassSoftHKR`), the binary and
signed certification metrics, `constraints`, `regularizers`,
`initializers`, the public normalizers, `utils.compute_layer_sv`,
`MonitorCallback` / `LossParamLog`, `FrobeniusConv2D`, `PadConv2D`, the
`lipschitz` factor of the activations and scaled pooling layers, and layers
used as activations.

Expected numbers come from deel-lip's own test suite (deel-ai/deel-lip,
`keras3` branch tests/test_losses.py and test_metrics.py; deel-lip 1.5 for
`MulticlassSoftHKR`) or from NumPy re-implementations written from the
formulas; every Lipschitz claim is checked against exact operator norms.
"""

import math
import warnings

import keras
import numpy as np
import pytest
from keras import ops

import keras_lipschitz
from keras_lipschitz import callbacks
from keras_lipschitz import constraints
from keras_lipschitz import initializers
from keras_lipschitz import losses
from keras_lipschitz import metrics
from keras_lipschitz import normalizers
from keras_lipschitz import regularizers
from keras_lipschitz import bounds
from keras_lipschitz.utils import compute_layer_sv
from keras_lipschitz.utils import compute_model_sv
from keras_lipschitz.layers import BjorckConv2D
from keras_lipschitz.layers import BjorckDense
from keras_lipschitz.layers import FrobeniusConv2D
from keras_lipschitz.layers import FullSort
from keras_lipschitz.layers import GroupSort
from keras_lipschitz.layers import GroupSort2
from keras_lipschitz.layers import Householder
from keras_lipschitz.layers import MaxMin
from keras_lipschitz.layers import PadConv2D
from keras_lipschitz.layers import ScaledAveragePooling2D
from keras_lipschitz.layers import ScaledGlobalAveragePooling2D
from keras_lipschitz.layers import ScaledGlobalL2NormPooling2D
from keras_lipschitz.layers import ScaledL2NormPooling2D
from tests import helpers

# deel-lip tests/test_losses.py data.
Y_TRUE1 = np.array([1.0, 1, 1, 0, 0, 0])[:, None]
Y_PRED1 = np.array([0.5, 1.5, -0.5, -0.5, -1.5, 0.5], "float32")[:, None]
Y_TRUE1B = np.array([1.0, 1, 1, 1, 0, 0, 0, 0])[:, None]
Y_PRED1B = np.array([0.5, 1.1, -0.1, 0.7, -1.3, -0.4, 0.2, -0.9], "float32")[
    :, None
]
Y_TRUE2 = np.eye(3)[[0, 0, 0, 1, 1, 2]]
Y_PRED2 = np.float32(
    [
        [2, 0.2, -0.5],
        [-1, -1.2, 0.3],
        [0.8, 2, 0],
        [0, 1, -0.5],
        [2.4, -0.4, -1.1],
        [-0.1, -1.7, 0.6],
    ]
)
Y_TRUE3 = np.eye(3)[[0, 0, 0, 1, 1, 1, 2, 2]]
Y_PRED3 = np.float32(
    [
        [1.5, 0.2, -0.5],
        [1, -1.2, 0.3],
        [0.8, 2, -2],
        [0, 1, -0.5],
        [-0.8, 2, 0],
        [2.4, -0.4, -1.1],
        [-0.1, -1.7, 0.6],
        [1.2, 1.3, 2.5],
    ]
)
TAU_CAT3 = [0.044275, 0.115109, 1.243572, 0.084923, 0.010887, 2.802300,
            0.114224, 0.076357]


def per_sample(loss, y_true, y_pred):
    return helpers.to_numpy(loss(y_true, y_pred)).reshape(-1)


def signed(one_hot):
    return np.where(one_hot == 1.0, 1.0, -1.0)


# ------------------------------------------------------------------ losses


def test_new_losses_reproduce_deel_lip_expected_values():
    tbce = losses.TauBinaryCrossentropy
    np.testing.assert_allclose(
        float(tbce(2.0)(Y_TRUE1, Y_PRED1)), 0.279185, rtol=1e-5
    )
    np.testing.assert_allclose(
        per_sample(tbce(0.5, reduction="none"), Y_TRUE1B, Y_PRED1B),
        [1.15188, 0.91098, 1.43692, 1.06676, 0.84011, 1.19628, 1.48879,
         0.98650],
        rtol=1e-5,
        atol=5e-6,  # 5 decimals
    )
    np.testing.assert_allclose(
        float(tbce(1.5, reduction="sum")(Y_TRUE1B, Y_PRED1B)),
        2.19262,
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        per_sample(losses.MultiMargin(0.7, reduction="none"), Y_TRUE3, Y_PRED3),
        np.array([0, 0, 19, 0, 0, 35, 0, 0]) / 30,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        float(losses.MultiMargin(0.7, reduction="sum")(Y_TRUE3, Y_PRED3)),
        9 / 5,
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        per_sample(
            losses.CategoricalHinge(1.1, reduction="none"), Y_TRUE3, Y_PRED3
        ),
        [0, 0.4, 2.3, 0.1, 0, 3.9, 0.4, 0],
        atol=1e-6,
    )
    np.testing.assert_allclose(
        per_sample(
            losses.TauSparseCategoricalCrossentropy(2.0, reduction="none"),
            np.argmax(Y_TRUE3, axis=-1),
            Y_PRED3,
        ),
        TAU_CAT3,
        rtol=1e-5,
        atol=5e-7,  # deel-lip's numbers have 6 decimals
    )


def np_tau_binary(y, f, tau):
    s = np.where(y > 0, 1.0, -1.0)
    return np.logaddexp(0.0, -tau * s * f).mean(axis=-1) / tau


def np_multi_margin(one_hot, z, m):
    z_true = (one_hot * z).sum(-1, keepdims=True)
    return ((1 - one_hot) * np.maximum(m - z_true + z, 0)).mean(-1)


def np_categorical_hinge(one_hot, z, m):
    z_true = (one_hot * z).sum(-1)
    z_other = np.where(one_hot > 0, -np.inf, z).max(-1)
    return np.maximum(m - (z_true - z_other), 0)


def test_new_losses_match_numpy_on_random_data():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(64, 5)).astype("float32")
    labels = rng.integers(0, 5, size=64)
    one_hot = np.eye(5)[labels]
    f = rng.normal(size=(64, 1)).astype("float32")
    y = rng.integers(0, 2, size=(64, 1)).astype("float32")
    np.testing.assert_allclose(
        per_sample(losses.TauBinaryCrossentropy(3.0, reduction="none"), y, f),
        np_tau_binary(y, f.astype(np.float64), 3.0),
        rtol=1e-5,
        atol=1e-6,
    )
    for loss, reference in (
        (losses.MultiMargin(0.6, reduction="none"), np_multi_margin),
        (losses.CategoricalHinge(0.6, reduction="none"), np_categorical_hinge),
    ):
        expected = reference(one_hot, z.astype(np.float64), 0.6)
        for labels_form in (labels, one_hot, signed(one_hot)):
            np.testing.assert_allclose(
                per_sample(loss, labels_form, z), expected, atol=1e-5
            )
    # Labels in {-1, +1} and {0, 1}, float and int: the same values.
    tbce = losses.TauBinaryCrossentropy(0.5, reduction="none")
    base = per_sample(tbce, y, f)
    np.testing.assert_array_equal(per_sample(tbce, y.astype("int32"), f), base)
    np.testing.assert_array_equal(per_sample(tbce, 2 * y - 1, f), base)


def test_new_loss_argument_validation_and_config():
    with pytest.raises(ValueError, match="tau"):
        losses.TauBinaryCrossentropy(0.0)
    with pytest.raises(ValueError, match="min_margin"):
        losses.MultiMargin(-1.0)
    with pytest.raises(ValueError, match="min_margin"):
        losses.CategoricalHinge(0.0)
    with pytest.raises(ValueError, match="alpha_mean"):
        losses.MulticlassSoftHKR(alpha_mean=1.0)
    with pytest.raises(ValueError, match="alpha"):
        losses.MulticlassSoftHKR(alpha=0.0)
    for loss in (
        losses.TauBinaryCrossentropy(0.5),
        losses.TauSparseCategoricalCrossentropy(2.0),
        losses.MultiMargin(0.7),
        losses.CategoricalHinge(1.1),
        losses.MulticlassSoftHKR(alpha=5.0, min_margin=0.2, alpha_mean=0.9),
    ):
        clone = keras.losses.deserialize(keras.losses.serialize(loss))
        assert type(clone) is type(loss)
        assert clone.get_config() == loss.get_config()


def test_soft_hkr_reproduces_deel_lip_values():
    loss = losses.MulticlassSoftHKR(alpha=5.0, min_margin=0.2)
    # deel-lip 1.5: the running mean moves, so two calls differ.
    np.testing.assert_allclose(float(loss(Y_TRUE2, Y_PRED2)), 1.0897621, rtol=1e-5)
    np.testing.assert_allclose(float(loss(Y_TRUE2, Y_PRED2)), 1.0834466, rtol=1e-5)
    expected = [-0.10878129, 0.12582462, 2.2788424, -0.17646402, -0.38242298,
                3.4523692, -0.19672059, 1.1028761]
    for labels in (Y_TRUE3, signed(Y_TRUE3), np.argmax(Y_TRUE3, -1)):
        fresh = losses.MulticlassSoftHKR(
            alpha=5.0, min_margin=0.2, reduction="none"
        )
        np.testing.assert_allclose(
            per_sample(fresh, labels, Y_PRED3), expected, rtol=1e-5, atol=5e-6
        )


def np_soft_hkr(one_hot, z, alpha, m, alpha_mean, t, mean):
    """deel-lip 1.5's MulticlassSoftHKR, one call: (values, new mean)."""
    mean = alpha_mean * mean + (1 - alpha_mean) * np.abs(z).mean()
    temperature = np.clip(t * m / np.clip(mean, m, 20000), 0.005, 250)
    others = np.where(one_hot > 0, -np.inf, temperature * z)
    soft = np.exp(others - others.max(-1, keepdims=True))
    soft = soft / soft.sum(-1, keepdims=True)
    weights = np.where(one_hot > 0, 1.0, soft)
    s = 2 * one_hot - 1
    hinge = weights * np.maximum(m / 2 - s * z, 0)
    if alpha == np.inf:
        return hinge.mean(-1), mean
    return (weights * -s * z).sum(-1) / alpha + hinge.sum(-1), mean


@pytest.mark.parametrize("alpha", [2.0, np.inf])
def test_soft_hkr_matches_numpy_over_several_calls(alpha):
    rng = np.random.default_rng(0)
    loss = losses.MulticlassSoftHKR(
        alpha=alpha, min_margin=0.5, alpha_mean=0.7, temperature=2.0,
        reduction="none",
    )
    mean = 0.5
    for _ in range(3):
        z = (3 * rng.normal(size=(16, 4))).astype("float32")
        one_hot = np.eye(4)[rng.integers(0, 4, 16)]
        expected, mean = np_soft_hkr(
            one_hot, z.astype(np.float64), alpha, 0.5, 0.7, 2.0, mean
        )
        np.testing.assert_allclose(
            per_sample(loss, one_hot, z), expected, rtol=1e-5, atol=1e-5
        )
        np.testing.assert_allclose(
            float(helpers.to_numpy(loss.running_mean)), mean, rtol=1e-5
        )


def _classifier(classes=3):
    return keras.Sequential(
        [keras.Input((4,)), BjorckDense(8), GroupSort2(), BjorckDense(classes)]
    )


def test_soft_hkr_trains_and_updates_its_running_mean():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(32, 4)).astype("float32")
    y = np.eye(3)[rng.integers(0, 3, 32)].astype("float32")
    model = _classifier()
    loss = losses.MulticlassSoftHKR(alpha=5.0, min_margin=1.0, alpha_mean=0.5)
    if keras.config.backend() == "jax":
        # The JAX trainer drops updates of variables it does not thread.
        model.compile("sgd", loss=loss)
        with pytest.raises(ValueError, match="attach"):
            model.fit(x, y, batch_size=16, epochs=1, verbose=0)
        model = _classifier()
        loss = losses.MulticlassSoftHKR.for_model(
            model, alpha=5.0, min_margin=1.0, alpha_mean=0.5
        )
    model.compile("sgd", loss=loss)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    if hasattr(model, "jax_state_sync"):
        model.jax_state_sync()
    value = float(helpers.to_numpy(loss.running_mean))
    # Two updates from 1.0 towards mean |f| (< 1 for this small network):
    # mu = 0.25 + 0.25 a + 0.5 b with a, b the batch means of |f|.
    assert value != 1.0 and np.isfinite(value)
    logits = helpers.to_numpy(model(x, training=False))
    assert value < 1.0 and abs(value - 0.25) <= 0.75 * np.abs(logits).max()


# ----------------------------------------------------------------- metrics

DEEL_Y_PRED1 = np.float32([[1, 0, 0], [0.1, 0, 0], [0, 0, 1], [0, 0, 0.1]])
DEEL_Y_TRUE1 = np.float32([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0]])
DEEL_Y_PRED2 = np.float32([1.0, 0.1, 1.0, 0.1, -1.0, -0.1, -1.0, -0.1])
DEEL_Y_TRUE2 = np.float32([1, 1, -1, -1, -1, -1, 1, 1])


def metric_value(metric, y_true, y_pred):
    metric.reset_state()
    metric.update_state(y_true, y_pred)
    return float(helpers.to_numpy(metric.result()))


def test_metrics_reproduce_deel_lip_hardcoded_values():
    np.testing.assert_allclose(
        metric_value(metrics.CertifiedAccuracy(0.25), DEEL_Y_TRUE1, DEEL_Y_PRED1),
        0.25,
    )
    np.testing.assert_allclose(
        metric_value(metrics.MeanCertifiedRadius(), DEEL_Y_TRUE1, DEEL_Y_PRED1),
        0.25 * 1.1 / np.sqrt(2),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        metric_value(
            metrics.BinaryCertifiedAccuracy(0.25), DEEL_Y_TRUE2, DEEL_Y_PRED2
        ),
        0.25,
    )
    np.testing.assert_allclose(
        metric_value(
            metrics.BinaryMeanCertifiedRadius(), DEEL_Y_TRUE2, DEEL_Y_PRED2
        ),
        0.125 * 2.2,
        rtol=1e-6,
    )


def test_negative_robustness_is_the_signed_radius():
    rng = np.random.default_rng(5)
    z = rng.normal(size=(50, 4)).astype("float32")
    labels = rng.integers(0, 4, 50)
    one_hot = np.eye(4)[labels]
    z64 = z.astype(np.float64)
    margin = z64[np.arange(50), labels] - np.where(one_hot > 0, -np.inf, z64).max(-1)
    assert (margin < 0).any() and (margin > 0).any()
    for norm, scale in (("l2", math.sqrt(2) * 2.0), ("linf", 2 * 2.0)):
        signed_radius = helpers.to_numpy(
            metrics.certified_radius(
                labels, z, norm=norm, lipschitz=2.0, negative_robustness=True
            )
        )
        np.testing.assert_allclose(signed_radius, margin / scale, rtol=1e-5, atol=1e-6)
        plain = helpers.to_numpy(
            metrics.certified_radius(labels, z, norm=norm, lipschitz=2.0)
        )
        np.testing.assert_allclose(plain, np.maximum(margin, 0) / scale, rtol=1e-5, atol=1e-6)
    f = rng.normal(size=(40,)).astype("float32")
    y = rng.integers(0, 2, 40)
    s = np.where(y > 0, 1.0, -1.0)
    np.testing.assert_allclose(
        helpers.to_numpy(
            metrics.binary_certified_radius(y, f, 0.5, negative_robustness=True)
        ),
        s * f / 0.5,
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        helpers.to_numpy(metrics.binary_certified_radius(2 * y - 1, f, 0.5)),
        np.maximum(s * f, 0) / 0.5,
        rtol=1e-6,
    )
    # deel-lip: with y_pred == y_true, signed and clipped radii agree.
    for metric_class in (metrics.MeanCertifiedRadius,):
        a = metric_value(metric_class(negative_robustness=True), one_hot, one_hot)
        b = metric_value(metric_class(negative_robustness=False), one_hot, one_hot)
        assert a == b > 0


def test_binary_metrics_config_and_fit():
    for metric in (
        metrics.BinaryCertifiedAccuracy(0.1, lipschitz=2.0),
        metrics.BinaryMeanCertifiedRadius(2.0, negative_robustness=True),
        metrics.MeanCertifiedRadius("linf", 3.0, negative_robustness=True),
    ):
        clone = type(metric).from_config(metric.get_config())
        assert clone.get_config() == metric.get_config()
    model = keras.Sequential([keras.Input((3,)), BjorckDense(1)])
    model.compile(
        "sgd",
        loss=losses.HKR(alpha=10.0),
        metrics=[
            metrics.BinaryCertifiedAccuracy(0.0),
            metrics.BinaryMeanCertifiedRadius(negative_robustness=True),
        ],
    )
    x = np.random.default_rng(0).normal(size=(16, 3)).astype("float32")
    y = (x[:, :1] > 0).astype("float32")
    logs = model.evaluate(x, y, verbose=0, return_dict=True)
    f = helpers.to_numpy(model(x, training=False))
    s = np.where(y > 0, 1.0, -1.0)
    np.testing.assert_allclose(
        logs["binary_certified_accuracy"], np.mean(s * f > 0), atol=1e-6
    )
    np.testing.assert_allclose(
        logs["binary_mean_certified_radius"], np.mean(s * f), atol=1e-5
    )


# ------------------------------------------------- constraints and friends


def random_kernel(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


@pytest.mark.parametrize("shape", [(7, 4), (3, 9), (3, 3, 4, 5)])
def test_spectral_constraint_projects_all_singular_values(shape):
    w = random_kernel(shape)
    for lipschitz, iterations in ((1.0, 15), (2.5, 15), (1.0, 0)):
        projected = helpers.to_numpy(
            constraints.SpectralConstraint(lipschitz, iterations)(w)
        )
        s = helpers.singular_values(projected.reshape(-1, shape[-1]))
        # Division by an upper bound: never above L (float32 rounding).
        assert s.max() <= lipschitz * (1 + 1e-5)
        if iterations:
            np.testing.assert_allclose(s, lipschitz, rtol=1e-3)
        else:
            # Spectral normalization only: the shape of the spectrum stays.
            original = helpers.singular_values(w.reshape(-1, shape[-1]))
            np.testing.assert_allclose(
                s / s.max(), original / original.max(), rtol=1e-4
            )
            assert s.max() >= 0.98 * lipschitz


def test_clip_and_frobenius_constraints():
    w = random_kernel((5, 6), seed=1) * 3
    np.testing.assert_allclose(
        helpers.to_numpy(constraints.WeightClipConstraint(0.5)(w)),
        np.clip(w, -0.5, 0.5),
    )
    clipped = helpers.to_numpy(constraints.AutoWeightClipConstraint(2.0)(w))
    np.testing.assert_allclose(clipped, np.clip(w, -2 / np.sqrt(30), 2 / np.sqrt(30)), rtol=1e-6)
    # The clipping guarantees ||W||_2 <= ||W||_F <= scale.
    assert np.linalg.norm(clipped, 2) <= np.linalg.norm(clipped) <= 2.0 + 1e-6
    scaled = helpers.to_numpy(constraints.FrobeniusConstraint(3.0, 0.0)(w))
    np.testing.assert_allclose(np.linalg.norm(scaled), 3.0, rtol=1e-6)
    np.testing.assert_allclose(scaled / np.linalg.norm(scaled), w / np.linalg.norm(w), rtol=1e-5)
    for bad in (
        lambda: constraints.WeightClipConstraint(0.0),
        lambda: constraints.AutoWeightClipConstraint(-1.0),
        lambda: constraints.FrobeniusConstraint(epsilon=-1.0),
        lambda: constraints.SpectralConstraint(bjorck_beta=0.9),
    ):
        with pytest.raises(ValueError):
            bad()


def test_constrained_plain_dense_is_certified_from_its_weights(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = (10 * x[:, :3]).astype("float32")
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(
                3, kernel_constraint=constraints.SpectralConstraint(0.5)
            ),
        ]
    )
    model.compile(keras.optimizers.SGD(0.5), "mse")
    before = helpers.to_numpy(model.layers[0].kernel)
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    kernel = helpers.to_numpy(model.layers[0].kernel)
    assert np.abs(kernel - before).max() > 1e-2  # the weights moved
    s = helpers.singular_values(kernel)
    np.testing.assert_allclose(s, 0.5, rtol=1e-3)
    bound = keras_lipschitz.lipschitz_bound(model)
    np.testing.assert_allclose(bound, s.max(), rtol=1e-9)
    path = str(tmp_path / "constrained.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(
        loaded.layers[0].kernel_constraint, constraints.SpectralConstraint
    )


def np_orth_dense(w):
    g = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    return np.sum((g - np.eye(g.shape[0])) ** 2)


def np_lorth(kernel, stride):
    """Lorth of Achour et al. by explicit loops (no conv primitive)."""
    k, _, c_in, c_out = kernel.shape
    p = ((k - 1) // stride) * stride
    size = 2 * p // stride + 1
    padded = np.pad(kernel, ((p, p), (p, p), (0, 0), (0, 0)))
    conv = np.zeros((c_out, size, size, c_out))
    for m in range(c_out):
        for i in range(size):
            for j in range(size):
                patch = padded[i * stride : i * stride + k, j * stride : j * stride + k, :, m]
                conv[m, i, j] = np.tensordot(patch, kernel, axes=([0, 1, 2], [0, 1, 2]))
    target = np.zeros_like(conv)
    target[:, size // 2, size // 2, :] = np.eye(c_out)
    delta = max(0, c_out - stride**2 * c_in)
    return np.sum((conv - target) ** 2) - delta


def test_regularizers_match_numpy():
    for shape in ((4, 7), (7, 4)):
        w = random_kernel(shape, seed=3)
        np.testing.assert_allclose(
            float(helpers.to_numpy(regularizers.OrthDenseRegularizer(0.3)(w))),
            0.3 * np_orth_dense(w.astype(np.float64)),
            rtol=1e-5,
        )
    for shape, stride in (((3, 3, 2, 3), 1), ((3, 3, 3, 5), 2), ((5, 5, 2, 4), 2)):
        w = random_kernel(shape, seed=4) * 0.3
        value = regularizers.LorthRegularizer(stride=stride, factor=2.0)(w)
        np.testing.assert_allclose(
            float(helpers.to_numpy(value)),
            2.0 * np_lorth(w.astype(np.float64), stride),
            rtol=1e-4,
        )
    # An orthogonal 1x1 (centred) convolution has Lorth 0.
    identity = np.zeros((3, 3, 4, 2), "float32")
    identity[1, 1] = np.eye(4, 2)
    assert abs(float(helpers.to_numpy(regularizers.LorthRegularizer()(identity)))) < 1e-6


def test_lorth_shape_bookkeeping_matches_deel_lip():
    lorth = regularizers.Lorth2D()
    assert lorth.kernel_shape is None and lorth.delta is None
    lorth.set_kernel_shape((5, 5, 32, 64))
    assert (lorth.delta, lorth.padding) == (32, 4)
    lorth = regularizers.Lorth2D(stride=3)
    lorth.set_kernel_shape((5, 5, 8, 70))
    assert (lorth.delta, lorth.padding) == (0, 3)
    with pytest.raises(ValueError, match="Impossible RO"):
        regularizers.Lorth2D((3, 3, 32, 289), stride=4)
    with pytest.raises(ValueError, match="Impossible CO"):
        regularizers.Lorth2D((3, 3, 8, 129), stride=4)
    with pytest.raises(ValueError, match="odd"):
        regularizers.Lorth2D((4, 4, 32, 32))
    with pytest.warns(UserWarning, match="hard to optimize"):
        regularizers.Lorth2D((3, 3, 32, 32))
    regul = regularizers.LorthRegularizer((3, 3, 16, 32), stride=2, factor=0.5)
    clone = regularizers.LorthRegularizer.from_config(regul.get_config())
    assert clone.kernel_shape == (3, 3, 16, 32) and clone.stride == 2
    assert clone.factor == 0.5


@pytest.mark.parametrize("shape", [(5, 4), (4, 100), (3, 3, 2, 8)])
def test_spectral_initializer(shape):
    init = initializers.SpectralInitializer(
        base_initializer=keras.initializers.Orthogonal(seed=2), lipschitz=2.0
    )
    w = helpers.to_numpy(init(shape))
    s = helpers.singular_values(w.reshape(-1, shape[-1]))
    np.testing.assert_allclose(s, 2.0, rtol=1e-4)
    spectral_only = initializers.SpectralInitializer(
        base_initializer=keras.initializers.RandomNormal(seed=1),
        bjorck_iterations=0,
    )
    s = helpers.singular_values(
        helpers.to_numpy(spectral_only(shape)).reshape(-1, shape[-1])
    )
    assert 0.98 <= s.max() <= 1.0 + 1e-6
    clone = initializers.SpectralInitializer.from_config(init.get_config())
    assert clone.get_config() == init.get_config()


def test_public_normalizers():
    w = random_kernel((9, 5), seed=6)
    exact = np.linalg.norm(w.astype(np.float64), 2)
    w_bar, u, sigma = normalizers.spectral_normalize(w, np.ones((1, 5), "float32"), 200)
    np.testing.assert_allclose(float(helpers.to_numpy(sigma)), exact, rtol=1e-4)
    np.testing.assert_allclose(helpers.to_numpy(w_bar), w / float(helpers.to_numpy(sigma)), rtol=1e-5)
    assert tuple(u.shape) == (1, 5)
    ortho, _, _ = normalizers.reshaped_kernel_orthogonalize(
        random_kernel((3, 3, 2, 4)), np.ones((1, 4), "float32"), 100, 30
    )
    s = helpers.singular_values(helpers.to_numpy(ortho).reshape(-1, 4))
    np.testing.assert_allclose(s, 1.0, rtol=1e-3)
    kernel = random_kernel((3, 3, 2, 3), seed=7)
    for strides, padding in (((1, 1), "same"), ((2, 2), "same"), ((1, 1), "valid")):
        u0 = random_kernel((1, 6, 5, 2), seed=8)
        _, _, sigma = normalizers.spectral_normalize_conv(
            kernel, u0, 300, strides=strides, padding=padding
        )
        exact = np.linalg.norm(
            bounds.conv_operator_matrix(kernel, (6, 5), strides, padding), 2
        )
        np.testing.assert_allclose(float(helpers.to_numpy(sigma)), exact, rtol=1e-3)


# ------------------------------------------------------------ utilities


def test_compute_layer_sv_is_exact_for_small_layers():
    dense = keras.layers.Dense(3, use_bias=False)
    dense.build((None, 4))
    kernel = random_kernel((4, 3), seed=9)
    dense.kernel.assign(kernel)
    s = helpers.singular_values(kernel)
    np.testing.assert_allclose(compute_layer_sv(dense), (s.min(), s.max()), rtol=1e-9)

    conv = BjorckConv2D(3, 3, strides=(2, 2), use_bias=False)
    conv(np.zeros((1, 6, 5, 2), "float32"))
    helpers.push_weights(conv, (6, 5, 2))
    s = helpers.layer_singular_values(conv, (6, 5, 2))
    low, high = compute_layer_sv(conv)
    np.testing.assert_allclose(high, s.max(), rtol=1e-5)
    # The operator maps 60 inputs to 27 outputs: its smallest singular
    # value, as in deel-lip, is the smallest of the 27.
    np.testing.assert_allclose(low, s.min(), rtol=1e-4, atol=1e-6)

    for mode in ("circular", "reflect", "symmetric"):
        pad = PadConv2D(2, 3, padding=mode, use_bias=False)
        pad(np.zeros((1, 5, 4, 2), "float32"))
        s = helpers.layer_singular_values(pad, (5, 4, 2))
        np.testing.assert_allclose(compute_layer_sv(pad), (s.min(), s.max()), rtol=1e-5)

    assert compute_layer_sv(GroupSort2(lipschitz=3.0)) == (3.0, 3.0)
    assert compute_layer_sv(keras.layers.ReLU()) == (0.0, 1.0)
    assert compute_layer_sv(keras.layers.Flatten()) == (None, None)
    assert compute_layer_sv(
        keras.layers.Flatten(), {keras.layers.Flatten: lambda layer, shape: (1.0, 1.0)}
    ) == (1.0, 1.0)


def test_compute_model_sv():
    model = keras.Sequential(
        [
            keras.Input((6, 6, 1)),
            BjorckConv2D(4, 3, activation=GroupSort2()),
            ScaledAveragePooling2D(lipschitz=2.0),
            keras.layers.Flatten(),
            BjorckDense(3),
        ]
    )
    result = compute_model_sv(model)
    assert list(result) == [layer.name for layer in model.layers]
    conv = model.layers[0]
    s = helpers.layer_singular_values(
        lambda x, training=False: _linear_part(conv, x), (6, 6, 1)
    )
    np.testing.assert_allclose(result[conv.name][1], s.max(), rtol=1e-5)
    assert result[model.layers[1].name] == (2.0, 2.0)
    low, high = result[model.layers[3].name]
    assert abs(low - 1) < 1e-2 and abs(high - 1) < 1e-2


def _linear_part(conv, x):
    return ops.conv(
        ops.convert_to_tensor(x),
        ops.convert_to_tensor(conv.effective_kernel()),
        strides=conv.strides,
        padding=conv.padding,
    )


def test_monitor_callback_and_loss_param_log(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(32, 4)).astype("float32")
    y = np.eye(3)[rng.integers(0, 3, 32)].astype("float32")
    model = _classifier()
    model.compile("sgd", loss=losses.MulticlassHKR(alpha=5.0))
    monitor = callbacks.MonitorCallback(
        [model.layers[0].name], target="kernel", logdir=str(tmp_path)
    )
    every = callbacks.MonitorCallback(target="effective", what="all")
    log = callbacks.LossParamLog("alpha", verbose=0)
    history = model.fit(
        x, y, batch_size=16, epochs=2, verbose=0, callbacks=[monitor, every, log]
    )
    key = f"{model.layers[0].name}_kernel_sigma_max"
    assert len(history.history[key]) == 2
    raw = helpers.to_numpy(model.layers[0].kernel)
    np.testing.assert_allclose(
        history.history[key][-1], helpers.singular_values(raw).max(), rtol=1e-5
    )
    assert (tmp_path / "singular_values.jsonl").read_text().count("\n") == 2
    last = every.history[model.layers[-1].name][-1][1]
    np.testing.assert_allclose(
        last,
        helpers.singular_values(model.layers[-1].effective_kernel()),
        rtol=1e-5,
    )
    assert history.history["multiclass_hkr_alpha"] == [5.0, 5.0]
    assert log.values == [(0, 5.0), (1, 5.0)]
    with pytest.raises(ValueError, match="target"):
        callbacks.MonitorCallback(target="wbar")


# ----------------------------------------------------------------- layers


def test_frobenius_conv2d_is_sound_and_exact_in_its_construction(tmp_path):
    for strides, padding in (((1, 1), "same"), ((2, 2), "same"), ((1, 2), "valid")):
        layer = FrobeniusConv2D(3, 3, strides=strides, padding=padding, lipschitz=2.0)
        layer(np.zeros((1, 7, 6, 2), "float32"))
        helpers.push_weights(layer, (7, 6, 2))
        kernel = helpers.to_numpy(layer.kernel)
        factor = normalizers.rko_correction_factor((3, 3), strides)
        np.testing.assert_allclose(
            layer.effective_kernel(),
            2.0 * factor * kernel / np.linalg.norm(kernel),
            rtol=1e-5,
            atol=1e-7,
        )
        s = helpers.layer_singular_values(layer, (7, 6, 2))
        bound = layer.lipschitz_upper_bound()
        assert s.max() <= bound * (1 + 1e-6) and bound <= 2.0 * (1 + 1e-6)
    model = keras.Sequential([keras.Input((7, 6, 2)), layer])
    path = str(tmp_path / "frobenius_conv.keras")
    model.save(path)
    x = random_kernel((2, 7, 6, 2))
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        helpers.to_numpy(loaded(x)), helpers.to_numpy(model(x)), atol=1e-6
    )
    plain = keras_lipschitz.vanilla_export(model)
    assert type(plain.layers[0]) is keras.layers.Conv2D


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_pad_conv2d_matches_numpy_padding_and_its_bound(data_format):
    modes = {"constant": "constant", "reflect": "reflect",
             "symmetric": "symmetric", "circular": "wrap"}
    x = random_kernel((2, 5, 6, 3), seed=11)
    for mode, np_mode in modes.items():
        layer = PadConv2D(4, (3, 5), padding=mode, data_format=data_format, use_bias=False)
        inputs = x if data_format == "channels_last" else x.transpose(0, 3, 1, 2)
        out = helpers.to_numpy(layer(inputs))
        padded = np.pad(x, ((0, 0), (1, 1), (2, 2), (0, 0)), mode=np_mode)
        reference = helpers.to_numpy(
            ops.conv(padded, layer.kernel, padding="valid", data_format="channels_last")
        )
        if data_format == "channels_first":
            reference = reference.transpose(0, 3, 1, 2)
        np.testing.assert_allclose(out, reference, rtol=1e-5, atol=1e-5)
        assert out.shape == layer.compute_output_shape(inputs.shape)
        shape = inputs.shape[1:]
        s = helpers.layer_singular_values(layer, shape)
        np.testing.assert_allclose(layer.lipschitz_upper_bound(), s.max(), rtol=1e-5)
    with pytest.raises(ValueError, match="padding"):
        PadConv2D(2, 3, padding="wrap")


def test_pad_conv2d_large_input_bound_is_above_the_norm():
    layer = PadConv2D(2, 3, padding="reflect", use_bias=False)
    layer(np.zeros((1, 24, 24, 2), "float32"))
    exact = np.linalg.norm(layer.operator_matrix((24, 24)), 2)
    bound = layer.lipschitz_upper_bound()  # 24*24*2 > 1024: product bound
    assert exact <= bound * (1 + 1e-9)
    assert bound <= 2.0 * exact  # the padding doubles at most


SCALED_LAYERS = [
    lambda k: GroupSort2(lipschitz=k),
    lambda k: GroupSort(group_size=4, lipschitz=k),
    lambda k: FullSort(lipschitz=k),
    lambda k: MaxMin(lipschitz=k),
    lambda k: Householder(pairing="halves", lipschitz=k),
    lambda k: ScaledAveragePooling2D(lipschitz=k, data_format="channels_last"),
    lambda k: ScaledL2NormPooling2D(lipschitz=k, data_format="channels_last"),
    lambda k: ScaledGlobalAveragePooling2D(lipschitz=k, data_format="channels_last"),
    lambda k: ScaledGlobalL2NormPooling2D(lipschitz=k, data_format="channels_last"),
]


@pytest.mark.parametrize("make", SCALED_LAYERS)
def test_lipschitz_factor_on_activations_and_pooling(make, tmp_path):
    x = random_kernel((4, 4, 4, 8), seed=12)
    unit, scaled = make(1.0), make(2.5)
    np.testing.assert_allclose(
        helpers.to_numpy(scaled(x)), 2.5 * helpers.to_numpy(unit(x)), rtol=1e-6, atol=1e-6
    )
    assert scaled.lipschitz_upper_bound() == 2.5
    y = x + 1e-2 * random_kernel(x.shape, seed=13)
    ratio = np.linalg.norm(
        (helpers.to_numpy(scaled(x)) - helpers.to_numpy(scaled(y))).reshape(4, -1), axis=1
    ) / np.linalg.norm((x - y).reshape(4, -1), axis=1)
    assert ratio.max() <= 2.5 * (1 + 1e-4)
    model = keras.Sequential([keras.Input(x.shape[1:]), scaled])
    path = str(tmp_path / "scaled.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.layers[0].lipschitz == 2.5
    np.testing.assert_allclose(helpers.to_numpy(loaded(x)), helpers.to_numpy(model(x)), atol=1e-6)
    with pytest.raises(ValueError, match="lipschitz"):
        make(0.0)


def test_layer_activation_on_constrained_layers(tmp_path):
    rng = np.random.default_rng(14)
    x = rng.normal(size=(5, 6)).astype("float32")
    layer = BjorckDense(4, activation=GroupSort2(lipschitz=0.5))
    model = keras.Sequential([keras.Input((6,)), layer])
    kernel = layer.effective_kernel()
    pre = x @ kernel + helpers.to_numpy(layer.bias)
    expected = helpers.to_numpy(GroupSort2(lipschitz=0.5)(pre.astype("float32")))
    np.testing.assert_allclose(helpers.to_numpy(model(x)), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        layer.lipschitz_upper_bound(), 0.5 * np.linalg.norm(kernel.astype(np.float64), 2), rtol=1e-9
    )
    path = str(tmp_path / "activation_layer.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.layers[0].activation, GroupSort2)
    np.testing.assert_allclose(helpers.to_numpy(loaded(x)), helpers.to_numpy(model(x)), atol=1e-6)
    plain = keras_lipschitz.vanilla_export(model)
    np.testing.assert_allclose(helpers.to_numpy(plain(x)), helpers.to_numpy(model(x)), atol=1e-5)
    with pytest.raises(ValueError, match="shape-preserving"):
        BjorckDense(4, activation=MaxMin())
    with pytest.raises(ValueError, match="activation"):
        BjorckDense(4, activation=keras.layers.Dense(4))
