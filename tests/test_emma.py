"""EMMA loss against a NumPy reference of the official formula, every backend.

The reference follows hukkai/liresnet (`models/margin_layer.py`,
`emma_loss`): shift the logits by the true one, K = L * ||w_y - w_j||,
ratio = clip(-gap / max(eps * K, 1e-8), 0.01, 1) detached, cross-entropy of
gap + ratio * eps * K.
"""

import keras
import numpy as np
import pytest
from keras import ops

from keras_lipschitz import _backend
from keras_lipschitz import layers as kl_layers
from keras_lipschitz import losses
from keras_lipschitz.callbacks import LossParamScheduler
from tests.helpers import to_numpy

B, C, D = 12, 5, 4
# TF (XLA) and JAX compile the train step; torch runs its default step.
JIT = keras.config.backend() != "torch"


# --------------------------------------------------------------------------
# NumPy reference (float64) of the official code, and its gradients.
# --------------------------------------------------------------------------


def np_pair_constants(labels, lipschitz, kernel, classes):
    """K[i, j] = L ||w_{y_i} - w_j|| (0 on the true class, as officially)."""
    n = len(labels)
    if kernel is None:
        constants = np.full((n, classes), float(lipschitz))
        constants[np.arange(n), labels] = 0.0
        return constants
    head = kernel.T  # (C, d): the torch layout of the official code
    diff = head[labels][:, None, :] - head[None, :, :]
    return lipschitz * np.linalg.norm(diff, axis=-1)


def np_emma_parts(labels, z, epsilon, lipschitz=1.0, kernel=None):
    """Per-sample loss, offset logits, ratios and constants."""
    z = np.asarray(z, np.float64)
    n, classes = z.shape
    gaps = z - z[np.arange(n), labels][:, None]
    constants = np_pair_constants(labels, lipschitz, kernel, classes)
    ratio = np.clip(
        -gaps / np.maximum(constants * epsilon, 1e-8), 0.01, 1.0
    )
    offset_logits = gaps + ratio * epsilon * constants
    top = offset_logits.max(-1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(offset_logits - top).sum(-1))
    loss = lse - offset_logits[np.arange(n), labels]
    return loss, offset_logits, ratio, constants


def np_emma(labels, z, epsilon, lipschitz=1.0, kernel=None):
    return np_emma_parts(labels, z, epsilon, lipschitz, kernel)[0]


def np_softmax(a):
    e = np.exp(a - a.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_logit_gradient(labels, z, epsilon, lipschitz=1.0, kernel=None):
    """d loss_i / d z_i with the ratio held constant: softmax(z') - e_y."""
    _, offset_logits, _, _ = np_emma_parts(
        labels, z, epsilon, lipschitz, kernel
    )
    return np_softmax(offset_logits) - np.eye(z.shape[1])[labels]


def np_kernel_gradient(labels, z, epsilon, lipschitz, kernel, weights):
    """d sum_i weights_i loss_i / d kernel, logits fixed, ratio constant.

    d loss / d K_j = p'_j r_j eps, and K_j = L ||w_y - w_j|| moves w_y and
    w_j along +-(w_y - w_j) / ||w_y - w_j||.
    """
    _, offset_logits, ratio, _ = np_emma_parts(
        labels, z, epsilon, lipschitz, kernel
    )
    probs = np_softmax(offset_logits)
    grad = np.zeros_like(kernel, dtype=np.float64)
    for i, y in enumerate(labels):
        for j in range(kernel.shape[1]):
            if j == y:
                continue
            diff = kernel[:, y] - kernel[:, j]
            unit = diff / np.linalg.norm(diff)
            coeff = weights[i] * probs[i, j] * ratio[i, j] * epsilon
            grad[:, y] += coeff * lipschitz * unit
            grad[:, j] -= coeff * lipschitz * unit
    return grad


# --------------------------------------------------------------------------
# Data.
# --------------------------------------------------------------------------


def emma_data(seed=0, epsilon=0.3, lipschitz=1.7):
    """Labels, logits and a kernel whose ratios hit all three regimes."""
    rng = np.random.default_rng(seed)
    labels = np.arange(B) % C
    rng.shuffle(labels)
    kernel = rng.normal(size=(D, C)).astype("float32")
    z = (0.6 * rng.normal(size=(B, C))).astype("float32")
    _, _, ratio, _ = np_emma_parts(labels, z, epsilon, lipschitz, kernel)
    others = np.eye(C)[labels] == 0
    # The data must exercise both clip edges and the unclipped middle.
    assert np.any(ratio[others] == 0.01)
    assert np.any(ratio[others] == 1.0)
    middle = (ratio > 0.011) & (ratio < 0.99) & others
    assert middle.sum() >= 5
    return labels, z, kernel


def label_variants(labels):
    return {
        "one_hot": np.eye(C, dtype="float32")[labels],
        "sparse": labels.astype("int32"),
        "sparse_b1": labels.reshape(-1, 1).astype("int32"),
    }


# --------------------------------------------------------------------------
# Values.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("with_kernel", [False, True])
@pytest.mark.parametrize("label_kind", ["one_hot", "sparse", "sparse_b1"])
def test_emma_matches_numpy_reference(label_kind, with_kernel):
    epsilon, lipschitz = 0.3, 1.7
    labels, z, kernel = emma_data(epsilon=epsilon, lipschitz=lipschitz)
    kernel = kernel if with_kernel else None
    y = label_variants(labels)[label_kind]
    ref = np_emma(labels, z, epsilon, lipschitz, kernel)
    values = to_numpy(losses.emma(y, z, epsilon, lipschitz, kernel=kernel))
    np.testing.assert_allclose(values, ref, rtol=1e-5, atol=1e-6)
    # The class, per sample and reduced.
    loss = losses.EMMA(epsilon, lipschitz=lipschitz, reduction=None)
    if with_kernel:
        dense = keras.layers.Dense(C)
        model = keras.Sequential([keras.Input((D,)), dense])
        dense.kernel.assign(kernel)
        loss.attach(model.layers[-1])
    np.testing.assert_allclose(
        to_numpy(loss(y, z)), ref, rtol=1e-5, atol=1e-6
    )
    mean = losses.EMMA(epsilon, lipschitz=lipschitz)
    if with_kernel:
        mean.attach(loss.kernel_layer)
    np.testing.assert_allclose(
        float(to_numpy(mean(y, z))), ref.mean(), rtol=1e-5
    )


def test_emma_clip_edges_are_the_official_losses():
    """Certified classes get eps * K (the GloRo margin loss), others 0.01."""
    labels = np.array([0, 1])
    # Sample 0: gaps -3, -4 (radius > eps = 0.5): ratio 1.
    # Sample 1: gaps +1, +2 (misclassified): ratio 0.01.
    z = np.array([[3.0, 0.0, -1.0], [2.0, 1.0, 3.0]], "float32")
    values = to_numpy(losses.emma(labels, z, epsilon=0.5, lipschitz=2.0))
    gloro = np.array([[0.0, -3.0 + 1.0, -4.0 + 1.0]])
    small = np.array([[1.0 + 0.01, 0.0, 2.0 + 0.01]])
    expected = [
        np.log(np.exp(gloro).sum()) - gloro[0, 0],
        np.log(np.exp(small).sum()) - small[0, 1],
    ]
    np.testing.assert_allclose(values, expected, rtol=1e-6)


def test_emma_float16_and_float64_logits():
    labels, z, kernel = emma_data()
    ref = np_emma(labels, z, 0.3, 1.7, kernel)
    half = losses.emma(labels, z.astype("float16"), 0.3, 1.7, kernel=kernel)
    assert keras.backend.standardize_dtype(half.dtype) == "float16"
    np.testing.assert_allclose(to_numpy(half), ref, rtol=2e-2, atol=2e-2)
    # JAX without x64 holds float64 inputs as float32.
    z64 = ops.convert_to_tensor(z.astype("float64"))
    double = losses.emma(labels, z64, 0.3, 1.7, kernel=kernel)
    assert double.dtype == z64.dtype
    np.testing.assert_allclose(to_numpy(double), ref, rtol=1e-5)


# --------------------------------------------------------------------------
# Gradients: the ratio is stopped, K is not.
# --------------------------------------------------------------------------


def test_logit_gradient_has_the_ratio_stopped():
    epsilon, lipschitz = 0.3, 1.7
    labels, z, kernel = emma_data(epsilon=epsilon, lipschitz=lipschitz)
    weights = np.random.default_rng(5).uniform(0.5, 1.5, size=B)
    w = ops.convert_to_tensor(weights, "float32")
    k = ops.convert_to_tensor(kernel)
    _, grad = _backend.value_and_input_gradient(
        lambda v: ops.sum(
            losses.emma(labels, v, epsilon, lipschitz, kernel=k) * w
        ),
        z,
    )
    grad = to_numpy(grad)
    assert np.all(np.isfinite(grad))
    expected = weights[:, None] * np_logit_gradient(
        labels, z, epsilon, lipschitz, kernel
    )
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)
    # The full derivative (ratio differentiated, by central differences)
    # is clearly different: the check above can fail.
    step = 1e-5
    full = np.zeros_like(expected)
    for i in range(B):
        for j in range(C):
            delta = np.zeros(z.shape)
            delta[i, j] = step
            plus = np_emma(labels, z + delta, epsilon, lipschitz, kernel)
            minus = np_emma(labels, z - delta, epsilon, lipschitz, kernel)
            full[i, j] = weights[i] * (plus[i] - minus[i]) / (2 * step)
    assert np.abs(full - expected).max() > 0.1


def test_kernel_gradient_flows_through_the_offsets():
    epsilon, lipschitz = 0.3, 1.7
    labels, z, kernel = emma_data(epsilon=epsilon, lipschitz=lipschitz)
    weights = np.random.default_rng(6).uniform(0.5, 1.5, size=B)
    w = ops.convert_to_tensor(weights, "float32")
    zt = ops.convert_to_tensor(z)
    _, grad = _backend.value_and_input_gradient(
        lambda k: ops.sum(
            losses.emma(labels, zt, epsilon, lipschitz, kernel=k) * w
        ),
        kernel,
    )
    grad = to_numpy(grad)
    expected = np_kernel_gradient(
        labels, z, epsilon, lipschitz, kernel.astype(np.float64), weights
    )
    assert np.abs(expected).max() > 0.05  # K is not detached.
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------
# Compiled `fit`.
# --------------------------------------------------------------------------


def test_emma_moves_kernel_and_bias_exactly_in_fit():
    """With zero inputs, z = b and only K sees the kernel.

    Three SGD steps in compiled `fit` must move the kernel along the
    gradient of the offsets (ratio constant, K from the *current* kernel)
    and the bias along softmax(z') - e_y, as NumPy does step by step.
    """
    epsilon, lipschitz, lr = 0.4, 1.3, 0.5
    rng = np.random.default_rng(11)
    kernel = rng.normal(size=(3, C)).astype("float32")
    bias = (0.3 * rng.normal(size=C)).astype("float32")
    dense = keras.layers.Dense(C)
    model = keras.Sequential([keras.Input((3,)), dense])
    dense.kernel.assign(kernel)
    dense.bias.assign(bias)
    loss = losses.EMMA.for_model(model, epsilon, lipschitz=lipschitz)
    model.compile(
        keras.optimizers.SGD(learning_rate=lr), loss=loss, jit_compile=JIT
    )
    labels = np.array([0, 1, 2, 3, 4, 0, 1, 1, 2, 4, 3, 0])
    x = np.zeros((len(labels), 3), "float32")
    model.fit(x, labels, batch_size=4, epochs=1, shuffle=False, verbose=0)

    k, b = kernel.astype(np.float64), bias.astype(np.float64)
    for start in range(0, 12, 4):
        batch = labels[start : start + 4]
        z = np.tile(b, (len(batch), 1))
        mean = np.full(len(batch), 1.0 / len(batch))
        grad_k = np_kernel_gradient(batch, z, epsilon, lipschitz, k, mean)
        grad_b = np_logit_gradient(batch, z, epsilon, lipschitz, k).mean(0)
        k, b = k - lr * grad_k, b - lr * grad_b
    assert np.abs(k - kernel).max() > 1e-2
    np.testing.assert_allclose(to_numpy(dense.kernel), k, atol=2e-5)
    np.testing.assert_allclose(to_numpy(dense.bias), b, atol=2e-5)


def lipschitz_model(seed=0, body="spectral"):
    """A 1-Lipschitz body and an LLN head (the official head)."""
    keras.utils.set_random_seed(seed)
    first = {
        "spectral": lambda: kl_layers.SpectralDense(16),
        # Same map in training and inference (no power iteration).
        "fixed": lambda: kl_layers.FrobeniusDense(16, disjoint_neurons=False),
    }[body]()
    return keras.Sequential(
        [
            keras.Input((6,)),
            first,
            kl_layers.GroupSort2(),
            kl_layers.FrobeniusDense(C),
        ]
    )


def classification_data(seed=0, n=64):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype("float32")
    labels = (np.argmax(x[:, :C], axis=-1)).astype("int32")
    return x, labels


def test_emma_trains_lipschitz_model_in_fit():
    x, labels = classification_data()
    model = lipschitz_model()
    loss = losses.EMMA.for_model(model, epsilon=0.1)
    assert loss.kernel_layer is model.layers[-1]
    model.compile(keras.optimizers.Adam(1e-2), loss=loss, jit_compile=JIT)
    history = model.fit(x, labels, batch_size=16, epochs=4, verbose=0)
    values = history.history["loss"]
    assert np.all(np.isfinite(values)) and values[-1] < 0.9 * values[0]
    # The compiled test step reads the current head: it matches NumPy with
    # the head's current inference-mode kernel.
    evaluated = model.evaluate(x, labels, batch_size=len(x), verbose=0)
    head = model.layers[-1]
    ref = np_emma(
        labels,
        to_numpy(model(x, training=False)),
        0.1,
        1.0,
        np.asarray(head.effective_kernel(), np.float64),
    )
    np.testing.assert_allclose(evaluated, ref.mean(), rtol=1e-4)


def test_scheduled_epsilon_reaches_the_compiled_step():
    """lr = 0 keeps the model fixed: each epoch's loss is EMMA at its eps."""
    x, labels = classification_data(seed=1, n=16)
    model = lipschitz_model(seed=1, body="fixed")
    radii = [0.01, 0.1, 0.3]
    loss = losses.EMMA.for_model(model, epsilon=radii[0])
    model.compile(
        keras.optimizers.SGD(learning_rate=0.0), loss=loss, jit_compile=JIT
    )
    scheduler = LossParamScheduler("epsilon", lambda epoch: radii[epoch])
    history = model.fit(
        x,
        labels,
        batch_size=len(x),
        epochs=3,
        verbose=0,
        callbacks=[scheduler],
    )
    assert loss.epsilon == radii[-1]
    z = to_numpy(model(x, training=False))
    kernel = np.asarray(model.layers[-1].effective_kernel(), np.float64)
    expected = [np_emma(labels, z, r, 1.0, kernel).mean() for r in radii]
    assert min(np.abs(np.diff(expected))) > 1e-2
    np.testing.assert_allclose(history.history["loss"], expected, rtol=1e-4)


# --------------------------------------------------------------------------
# Arguments and configs.
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "factory, match",
    [
        (lambda: losses.EMMA(epsilon=0.0), "epsilon"),
        (lambda: losses.EMMA(epsilon=-0.1), "epsilon"),
        (lambda: losses.EMMA(epsilon=float("nan")), "epsilon"),
        (lambda: losses.EMMA(epsilon=float("inf")), "epsilon"),
        (lambda: losses.EMMA(epsilon="0.1"), "epsilon"),
        (lambda: losses.EMMA(epsilon=True), "epsilon"),
        (lambda: losses.EMMA(0.1, lipschitz=0.0), "lipschitz"),
        (lambda: losses.EMMA(0.1, lipschitz=-2.0), "lipschitz"),
        (lambda: losses.EMMA(0.1, kernel_layer=3), "kernel_layer"),
        (lambda: losses.emma([0], np.zeros((1, C)), epsilon=-1.0), "epsilon"),
        (
            lambda: losses.emma(
                [0], np.zeros((1, C)), 0.1, kernel=np.ones((3, C + 1))
            ),
            "kernel",
        ),
        (lambda: losses.emma([0, C], np.zeros((2, C)), 0.1), r"\[0, 5\)"),
        (lambda: losses.emma([0], np.zeros((1, C, 1)), 0.1), "y_pred"),
    ],
)
def test_bad_arguments(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


def test_hyperparameters_validated_when_set_and_layer_checks():
    loss = losses.EMMA(0.2)
    assert (loss.lipschitz, loss.name) == (1.0, "emma")
    with pytest.raises(ValueError, match="epsilon"):
        loss.epsilon = 0.0
    loss.epsilon = 1  # ints are stored as floats
    assert loss.epsilon == 1.0 and isinstance(loss.epsilon, float)
    softmax_head = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(C, activation="softmax")]
    )
    with pytest.raises(ValueError, match="activation"):
        losses.EMMA.for_model(softmax_head, 0.1)
    flatten = keras.Sequential([keras.Input((2, 2)), keras.layers.Flatten()])
    with pytest.raises(ValueError, match="kernel_layer"):
        losses.EMMA.for_model(flatten, 0.1)
    unbuilt = keras.layers.Dense(C)
    with pytest.raises(ValueError, match="built"):
        losses.EMMA(0.1, kernel_layer=unbuilt)([0], np.zeros((1, C)))


@pytest.mark.parametrize(
    "loss",
    [
        losses.EMMA(0.3),
        losses.EMMA(0.1, lipschitz=2.5, reduction="sum", name="e"),
    ],
    ids=["default", "custom"],
)
def test_config_round_trip(loss):
    config = loss.get_config()
    assert config["epsilon"] == loss.epsilon
    assert config["kernel_layer"] is None
    revived = losses.EMMA.from_config(config)
    assert revived.get_config() == config
    serialized = keras.saving.serialize_keras_object(loss)
    assert serialized["registered_name"] == "keras_lipschitz>EMMA"
    revived = keras.saving.deserialize_keras_object(serialized)
    assert type(revived) is losses.EMMA
    assert revived.get_config() == config


def test_saved_model_keeps_emma_and_needs_the_layer_again(tmp_path):
    labels, z, kernel = emma_data()
    dense = keras.layers.Dense(C, name="head")
    model = keras.Sequential([keras.Input((D,)), dense])
    dense.kernel.assign(kernel)
    loss = losses.EMMA.for_model(model, 0.3, lipschitz=1.7)
    assert loss.get_config()["kernel_layer"] == "head"
    model.compile("sgd", loss=loss)
    path = str(tmp_path / "emma.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    revived = loaded.loss
    assert isinstance(revived, losses.EMMA)
    assert (revived.epsilon, revived.lipschitz) == (0.3, 1.7)
    with pytest.raises(ValueError, match="attach"):
        revived(labels, z)
    revived.attach(loaded.get_layer("head"))
    np.testing.assert_allclose(
        to_numpy(revived(labels, z)),
        np_emma(labels, z, 0.3, 1.7, kernel).mean(),
        rtol=1e-5,
    )
