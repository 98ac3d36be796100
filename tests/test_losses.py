"""Losses against NumPy references of their formulas, on every backend."""

import keras
import numpy as np
import pytest

from keras_lipschitz import layers as kl_layers
from keras_lipschitz import losses
from tests.helpers import to_numpy

RNG = np.random.default_rng(1234)
B, C = 8, 4
EPS = 1e-7  # KR count epsilon.


# --------------------------------------------------------------------------
# NumPy references (float64), written from the formulas.
# --------------------------------------------------------------------------


def np_sign(y):
    return np.where(y > 0, 1.0, -1.0)


def np_kr_terms(y, f):
    """Per-sample KR terms, columns averaged. y, f: (B, k)."""
    pos = (y > 0).astype(float)
    neg = 1.0 - pos
    n_pos, n_neg = pos.sum(0), neg.sum(0)
    batch = len(f)
    w = batch * (pos / (n_pos + EPS) - neg / (n_neg + EPS))
    return (f * w).mean(-1)


def np_kr_value(y, f):
    """The batch KR estimate E_pos[f] - E_neg[f], columns averaged."""
    values = []
    for c in range(f.shape[1]):
        pos = y[:, c] > 0
        values.append(f[pos, c].mean() - f[~pos, c].mean())
    return float(np.mean(values))


def np_hinge(y, f, m):
    return np.maximum(m / 2.0 - np_sign(y) * f, 0.0).mean(-1)


def np_multiclass_hinge(labels, z, m):
    out = []
    for i, y in enumerate(labels):
        others = [j for j in range(z.shape[1]) if j != y]
        value = (len(others)) * max(m / 2 - z[i, y], 0.0)
        value += sum(max(m / 2 + z[i, j], 0.0) for j in others)
        out.append(value / z.shape[1])
    return np.array(out)


def np_logsumexp(a):
    top = a.max(-1, keepdims=True)
    return (top + np.log(np.exp(a - top).sum(-1, keepdims=True)))[:, 0]


def np_ce(labels, logits):
    return np_logsumexp(logits) - logits[np.arange(len(labels)), labels]


def np_cll(labels, z, epsilon, slack, lipschitz, reg, kernel=None):
    n, classes = z.shape
    K = np.full((n, classes), float(lipschitz))
    if kernel is not None:
        for i, y in enumerate(labels):
            for j in range(classes):
                if j != y:
                    K[i, j] = lipschitz * np.linalg.norm(
                        kernel[:, y] - kernel[:, j]
                    )
    z_y = z[np.arange(n), labels][:, None]
    d = (z - z_y) / K
    delta = np.full((n, classes), epsilon)
    delta[np.arange(n), labels] = -epsilon
    sigma = 2 * epsilon / (2 * np.log((2 - slack) / slack))
    return np_ce(labels, (d + delta) / sigma) + reg * K.max() ** 2


# --------------------------------------------------------------------------
# Data.
# --------------------------------------------------------------------------


def multiclass_data(seed=0):
    rng = np.random.default_rng(seed)
    labels = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    rng.shuffle(labels)
    z = rng.normal(size=(B, C)).astype("float32")
    return labels, z


def label_variants(labels):
    """One-hot (B, C), sparse (B,) and (B, 1)."""
    one_hot = np.eye(C, dtype="float32")[labels]
    return {
        "one_hot": one_hot,
        "sparse": labels.astype("int32"),
        "sparse_b1": labels.reshape(-1, 1).astype("int32"),
    }


def binary_data(seed=0):
    rng = np.random.default_rng(seed)
    y01 = np.array([1, 0, 1, 1, 0, 0, 1, 0])
    f = rng.normal(size=(B,)).astype("float32")
    return y01, f


def binary_variants(y01, f):
    """(label, score) pairs: {0,1} and {-1,+1}; (B,) and (B, 1)."""
    ypm = 2 * y01 - 1
    out = {}
    for name, y in (("01", y01), ("pm1", ypm)):
        out[f"{name}_flat"] = (y, f)
        out[f"{name}_col"] = (y.reshape(-1, 1), f.reshape(-1, 1))
        out[f"{name}_mixed"] = (y, f.reshape(-1, 1))
    return out


def per_sample(loss, y, f):
    """A loss object's per-sample values (reduction=None)."""
    config = loss.get_config()
    config["reduction"] = None
    return to_numpy(type(loss).from_config(config)(y, f))


# --------------------------------------------------------------------------
# Binary losses.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(binary_variants(*binary_data())))
def test_binary_losses_match_numpy(variant):
    y01, f = binary_data()
    y, pred = binary_variants(y01, f)[variant]
    y_ref, f_ref = y01.reshape(-1, 1), f.reshape(-1, 1).astype(float)
    kr_ref = np_kr_terms(y_ref, f_ref)
    hinge_ref = np_hinge(y_ref, f_ref, 0.6)

    np.testing.assert_allclose(
        per_sample(losses.KR(), y, pred), kr_ref, rtol=1e-5, atol=1e-6
    )
    # The batch mean is the KR estimate itself.
    np.testing.assert_allclose(
        float(to_numpy(losses.KR()(y, pred))),
        np_kr_value(y_ref, f_ref),
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        per_sample(losses.HingeMargin(min_margin=0.6), y, pred),
        hinge_ref,
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        per_sample(losses.HKR(alpha=3.0, min_margin=0.6), y, pred),
        3.0 * hinge_ref - kr_ref,
        rtol=1e-5,
        atol=1e-5,
    )
    # Functional forms.
    np.testing.assert_allclose(
        to_numpy(losses.hkr(y, pred, alpha=3.0, min_margin=0.6)),
        3.0 * hinge_ref - kr_ref,
        rtol=1e-5,
        atol=1e-5,
    )


def test_binary_multilabel_columns_are_averaged():
    rng = np.random.default_rng(3)
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0], [1, 0], [0, 1]])
    f = rng.normal(size=y.shape).astype("float32")
    np.testing.assert_allclose(
        to_numpy(losses.kr(y, f)),
        np_kr_terms(y, f.astype(float)),
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        to_numpy(losses.hinge_margin(y, f, 1.0)),
        np_hinge(y, f.astype(float), 1.0),
        rtol=1e-5,
        atol=1e-6,
    )


def test_hkr_extreme_alphas_and_margin_convention():
    y01, f = binary_data()
    y = y01.reshape(-1, 1)
    fr = f.reshape(-1, 1).astype(float)
    # alpha = inf: hinge only; alpha = 0: -KR only.
    np.testing.assert_allclose(
        to_numpy(losses.hkr(y, f, alpha=float("inf"))),
        np_hinge(y, fr, 1.0),
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        to_numpy(losses.hkr(y, f, alpha=0.0)),
        -np_kr_terms(y, fr),
        rtol=1e-5,
        atol=1e-5,
    )
    # deel-lip convention: min_margin = 1 leaves no hinge at |f| = 0.5.
    values = to_numpy(losses.hinge_margin([1, 0], np.array([0.5, -0.5]), 1.0))
    np.testing.assert_allclose(values, [0.0, 0.0], atol=1e-7)


# --------------------------------------------------------------------------
# Multiclass losses.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("label_kind", ["one_hot", "sparse", "sparse_b1"])
def test_multiclass_losses_match_numpy(label_kind):
    labels, z = multiclass_data()
    y = label_variants(labels)[label_kind]
    one_hot = np.eye(C)[labels]
    zr = z.astype(float)
    kr_ref = np_kr_terms(one_hot, zr)
    hinge_ref = np_multiclass_hinge(labels, zr, 0.8)

    np.testing.assert_allclose(
        per_sample(losses.MulticlassKR(), y, z), kr_ref, rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        float(to_numpy(losses.MulticlassKR()(y, z))),
        np_kr_value(one_hot, zr),
        rtol=1e-5,
        atol=1e-5,
    )
    np.testing.assert_allclose(
        per_sample(losses.MulticlassHinge(min_margin=0.8), y, z),
        hinge_ref,
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        per_sample(losses.MulticlassHKR(alpha=5.0, min_margin=0.8), y, z),
        5.0 * hinge_ref - kr_ref,
        rtol=1e-5,
        atol=1e-5,
    )
    tau_ref = np_ce(labels, 7.0 * zr) / 7.0
    np.testing.assert_allclose(
        per_sample(losses.TauCategoricalCrossentropy(tau=7.0), y, z),
        tau_ref,
        rtol=1e-5,
        atol=1e-6,
    )
    cll_ref = np_cll(labels, zr, 0.3, 0.1, 2.0, 1e-2)
    np.testing.assert_allclose(
        per_sample(losses.CLL(0.3, slack=0.1, lipschitz=2.0, reg=1e-2), y, z),
        cll_ref,
        rtol=1e-4,
        atol=1e-5,
    )
    np.testing.assert_allclose(
        to_numpy(losses.multiclass_hkr(y, z, alpha=5.0, min_margin=0.8)),
        5.0 * hinge_ref - kr_ref,
        rtol=1e-5,
        atol=1e-5,
    )


def test_multiclass_defaults():
    loss = losses.MulticlassHKR()
    assert (loss.alpha, loss.min_margin) == (10.0, 1.0)
    cll = losses.CLL()
    assert (cll.epsilon, cll.slack, cll.lipschitz, cll.reg) == (
        0.25,
        0.05,
        1.0,
        1e-3,
    )


@pytest.mark.parametrize(
    "reduction", ["sum_over_batch_size", "sum", "mean", None]
)
def test_reductions_and_sample_weight(reduction):
    labels, z = multiclass_data()
    weights = RNG.uniform(0.0, 2.0, size=B).astype("float32")
    ref = np_multiclass_hinge(labels, z.astype(float), 1.0) * weights
    expected = {
        "sum_over_batch_size": ref.sum() / B,
        "mean": ref.sum() / B,
        "sum": ref.sum(),
        None: ref,
    }[reduction]
    loss = losses.MulticlassHinge(reduction=reduction)
    value = to_numpy(loss(labels, z, sample_weight=weights))
    np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------
# Config round trips and validation.
# --------------------------------------------------------------------------

ALL_LOSSES = [
    losses.KR(),
    losses.HingeMargin(min_margin=0.5),
    losses.HKR(alpha=2.0, min_margin=0.5, reduction="sum"),
    losses.MulticlassKR(name="mkr"),
    losses.MulticlassHinge(min_margin=0.7),
    losses.MulticlassHKR(alpha=3.0, min_margin=0.4),
    losses.TauCategoricalCrossentropy(tau=5.0),
    losses.CLL(epsilon=0.1, slack=0.2, lipschitz=2.0, reg=0.0),
]


@pytest.mark.parametrize("loss", ALL_LOSSES, ids=lambda x: type(x).__name__)
def test_config_round_trip(loss):
    config = loss.get_config()
    revived = type(loss).from_config(config)
    assert revived.get_config() == config
    assert set(dir(revived)) == set(dir(loss))
    serialized = keras.saving.serialize_keras_object(loss)
    assert serialized["registered_name"] == (
        f"keras_lipschitz>{type(loss).__name__}"
    )
    revived = keras.saving.deserialize_keras_object(serialized)
    assert type(revived) is type(loss)
    assert revived.get_config() == config


def test_loss_in_saved_model(tmp_path):
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(C)(inputs))
    model.compile("sgd", loss=losses.MulticlassHKR(alpha=4.0, min_margin=0.3))
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.loss, losses.MulticlassHKR)
    assert (loaded.loss.alpha, loaded.loss.min_margin) == (4.0, 0.3)


@pytest.mark.parametrize(
    "factory, match",
    [
        (lambda: losses.HKR(alpha=-1.0), "alpha"),
        (lambda: losses.HKR(alpha=float("nan")), "alpha"),
        (lambda: losses.MulticlassHKR(alpha=-0.1), "alpha"),
        (lambda: losses.HKR(alpha=1.0, min_margin=0.0), "min_margin"),
        (lambda: losses.HingeMargin(min_margin=-1.0), "min_margin"),
        (lambda: losses.MulticlassHinge(min_margin=0), "min_margin"),
        (lambda: losses.TauCategoricalCrossentropy(tau=0.0), "tau"),
        (lambda: losses.TauCategoricalCrossentropy(tau=-2.0), "tau"),
        (lambda: losses.CLL(slack=0.0), "slack"),
        (lambda: losses.CLL(slack=1.0), "slack"),
        (lambda: losses.CLL(epsilon=-0.1), "epsilon"),
        (lambda: losses.CLL(epsilon=0.0), "epsilon"),
        (lambda: losses.CLL(lipschitz=0.0), "lipschitz"),
        (lambda: losses.CLL(reg=-1.0), "reg"),
        (lambda: losses.hkr([1], [0.0], alpha=-1.0), "alpha"),
    ],
)
def test_bad_hyperparameters(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


def test_hyperparameters_validated_when_set():
    loss = losses.HKR(alpha=1.0)
    with pytest.raises(ValueError, match="alpha"):
        loss.alpha = -3.0
    loss.alpha = 2  # ints are accepted and stored as floats
    assert loss.alpha == 2.0 and isinstance(loss.alpha, float)
    cll = losses.CLL()
    with pytest.raises(ValueError, match="slack"):
        cll.slack = 1.5


def test_bad_labels():
    labels, z = multiclass_data()
    loss = losses.MulticlassHinge()
    with pytest.raises(ValueError, match="batch size"):
        loss(labels[:-1], z)
    with pytest.raises(ValueError, match="y_true"):
        loss(np.eye(C + 1)[labels], z)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        loss(np.array([0, 1, 2, 4, 0, 1, 2, 3]), z)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        losses.TauCategoricalCrossentropy(tau=1.0)(-labels, z)
    with pytest.raises(ValueError, match="y_pred"):
        loss(labels, z[:, :, None])
    with pytest.raises(ValueError, match=r"\{0, 1\}"):
        losses.HKR(alpha=1.0)(np.array([0, 1, 2, 1]), np.zeros((4, 1)))
    with pytest.raises(ValueError, match="y_true"):
        losses.KR()(np.zeros((4, 2)), np.zeros((4, 3)))


# --------------------------------------------------------------------------
# CLL with a last linear layer.
# --------------------------------------------------------------------------


def test_pairwise_row_distances_match_numpy():
    kernel = RNG.normal(size=(5, C)).astype("float32")
    ref = np.linalg.norm(kernel[:, :, None] - kernel[:, None, :], axis=0)
    np.fill_diagonal(ref, 1.0)
    np.testing.assert_allclose(
        to_numpy(losses.pairwise_row_distances(kernel)), ref, rtol=1e-5
    )


@pytest.mark.parametrize("layer_kind", ["dense", "lln", "spectral"])
def test_cll_with_kernel_layer_matches_numpy(layer_kind):
    labels, _ = multiclass_data()
    x = RNG.normal(size=(B, 5)).astype("float32")
    layer = {
        "dense": lambda: keras.layers.Dense(
            C, kernel_initializer=keras.initializers.RandomNormal(seed=1)
        ),
        "lln": lambda: kl_layers.FrobeniusDense(C, lipschitz=1.5),
        "spectral": lambda: kl_layers.SpectralDense(C),
    }[layer_kind]()
    model = keras.Sequential([keras.Input((5,)), layer])
    z = to_numpy(model(x))
    if layer_kind == "dense":
        kernel = to_numpy(layer.kernel)
    else:
        kernel = np.asarray(layer.effective_kernel(), np.float64)
        state = [to_numpy(w) for w in layer.non_trainable_weights]
    loss = losses.CLL.for_model(model, epsilon=0.3, lipschitz=2.0, reg=0.1)
    assert loss.kernel_layer is layer
    values = to_numpy(
        type(loss)(
            **{**loss.get_config(), "kernel_layer": layer, "reduction": None}
        )(labels, z)
    )
    ref = np_cll(labels, z, 0.3, 0.05, 2.0, 0.1, kernel=kernel)
    np.testing.assert_allclose(values, ref, rtol=1e-4, atol=1e-5)
    if layer_kind != "dense":
        # Reading the kernel has no side effect on the layer's state.
        for before, w in zip(state, layer.non_trainable_weights):
            np.testing.assert_array_equal(before, to_numpy(w))


def test_cll_attach_errors_and_config():
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(C, activation="softmax")]
    )
    with pytest.raises(ValueError, match="activation"):
        losses.CLL.for_model(model)
    pool_model = keras.Sequential(
        [keras.Input((4, 4, 1)), keras.layers.Flatten()]
    )
    with pytest.raises(ValueError, match="kernel_layer"):
        losses.CLL.for_model(pool_model)
    with pytest.raises(ValueError, match="kernel_layer"):
        losses.CLL(kernel_layer="not a layer").attach(3)

    dense = keras.layers.Dense(C, name="head")
    model = keras.Sequential([keras.Input((3,)), dense])
    loss = losses.CLL(kernel_layer=dense)
    config = loss.get_config()
    assert config["kernel_layer"] == "head"
    revived = losses.CLL.from_config(config)
    labels, z = multiclass_data()
    with pytest.raises(ValueError, match="attach"):
        revived(labels, z)
    revived.attach(model.get_layer("head"))
    np.testing.assert_allclose(
        to_numpy(revived(labels, z)), to_numpy(loss(labels, z)), rtol=1e-6
    )
    with pytest.raises(ValueError, match="kernel"):
        losses.cll(labels, z, kernel=np.ones((3, C + 1), "float32"))


def _np_reg_only_sgd(kernel, labels_per_step, reg, lipschitz, lr):
    """SGD on reg * (L * max_{i, j} ||w_{y_i} - w_j||)^2 (max K > L)."""
    kernel = kernel.astype(np.float64).copy()
    for labels in labels_per_step:
        best, pair = -1.0, None
        for y in set(labels.tolist()):
            for j in range(kernel.shape[1]):
                if j != y:
                    dist = np.linalg.norm(kernel[:, y] - kernel[:, j])
                    if dist > best:
                        best, pair = dist, (y, j)
        y, j = pair
        grad = np.zeros_like(kernel)
        diff = kernel[:, y] - kernel[:, j]
        grad[:, y] = 2 * reg * lipschitz**2 * diff
        grad[:, j] = -2 * reg * lipschitz**2 * diff
        kernel -= lr * grad
    return kernel


def test_cll_penalty_trains_the_current_kernel_in_fit():
    """With zero inputs the kernel's only gradient is the penalty's.

    The cross-entropy sees the kernel only through the logits (x = 0 gives
    no kernel gradient) and through K, which it detaches. Three SGD steps
    in `fit` must then move the kernel exactly as NumPy's gradient of
    reg * (max K)^2, recomputed from the *current* kernel at each step: a
    stale (trace-time) kernel or a missing gradient both fail.
    """
    # Compiled on TF (XLA) and JAX (jit); torch runs its default eager step.
    jit_compile = keras.config.backend() != "torch"
    rng = np.random.default_rng(7)
    kernel0 = rng.normal(size=(3, C)).astype("float32") * 2.0
    dense = keras.layers.Dense(C)
    model = keras.Sequential([keras.Input((3,)), dense])
    dense.kernel.assign(kernel0)
    reg, lipschitz, lr = 0.05, 1.5, 0.1
    loss = losses.CLL.for_model(model, reg=reg, lipschitz=lipschitz)
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=lr),
        loss=loss,
        jit_compile=jit_compile,
    )
    labels = np.array([0, 1, 2, 3, 0, 1, 0, 0, 2, 2, 3, 0])
    x = np.zeros((len(labels), 3), "float32")
    model.fit(x, labels, batch_size=4, epochs=1, shuffle=False, verbose=0)
    expected = _np_reg_only_sgd(
        kernel0,
        [labels[i : i + 4] for i in range(0, 12, 4)],
        reg,
        lipschitz,
        lr,
    )
    after = to_numpy(dense.kernel)
    assert np.abs(after - kernel0).max() > 1e-3  # The penalty has a gradient.
    np.testing.assert_allclose(after, expected, rtol=1e-5, atol=1e-6)


def test_cll_trains_lln_model_in_fit():
    """End to end: a FrobeniusDense (LLN) head, compiled on TF/JAX."""
    jit = keras.config.backend() != "torch"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    labels = (x[:, 0] > 0).astype("int32") + 2 * (x[:, 1] > 0)
    model = keras.Sequential(
        [
            keras.Input((6,)),
            kl_layers.SpectralDense(16, activation="relu"),
            kl_layers.FrobeniusDense(C),
        ]
    )
    loss = losses.CLL.for_model(model, epsilon=0.1, reg=1e-2)
    model.compile(keras.optimizers.Adam(1e-2), loss=loss, jit_compile=jit)
    history = model.fit(x, labels, batch_size=16, epochs=3, verbose=0)
    values = history.history["loss"]
    assert np.all(np.isfinite(values)) and values[-1] < values[0]
