"""ℓ∞-distance nets and SortNet: layers, schedule, loss, certificates."""

import keras
import numpy as np
import pytest
from keras import ops

import keras_lipschitz as kl
from keras_lipschitz import _backend
from keras_lipschitz.attacks import pgd_linf
from keras_lipschitz.callbacks import PNormScheduler
from keras_lipschitz.callbacks import p_norm_schedule
from keras_lipschitz.layers import LinfDistDense
from keras_lipschitz.layers import LogitScale
from keras_lipschitz.layers import SortNetDense
from keras_lipschitz.layers import linf
from keras_lipschitz.linf_certification import split_linf_model
from keras_lipschitz.losses import LinfDistHinge
from keras_lipschitz.losses import linf_dist_hinge
from keras_lipschitz.models import linf_dist_net
from keras_lipschitz.models import recompute_running_means
from tests.helpers import save_and_load
from tests.helpers import to_numpy

BACKEND = keras.config.backend()
JIT = BACKEND != "torch"
INF = float("inf")


def np_pnorm(x, kernel, p):
    z = np.abs(x[:, :, None].astype(np.float64) - kernel[None])
    m = z.max(axis=1)
    if np.isinf(p):
        return m
    return m * ((z / np.maximum(m[:, None], 1e-300)) ** p).sum(axis=1) ** (
        1 / p
    )


def np_sorted(x, kernel, weights):
    z = np.abs(x[:, :, None].astype(np.float64) - kernel[None])
    top = -np.sort(-z, axis=1)[:, : len(weights)]
    return np.einsum("bkn,k->bn", top, np.asarray(weights))


def gradients(fn, x, kernel):
    """Gradients of sum(fn(x, kernel) * g) w.r.t. x and kernel."""
    g = ops.convert_to_tensor(
        np.random.default_rng(1).normal(size=(x.shape[0], kernel.shape[1])),
        "float32",
    )
    k = ops.convert_to_tensor(kernel)
    xt = ops.convert_to_tensor(x)
    _, gx = _backend.value_and_input_gradient(
        lambda v: ops.sum(fn(v, k) * g), xt
    )
    _, gk = _backend.value_and_input_gradient(
        lambda v: ops.sum(fn(xt, v) * g), k
    )
    return to_numpy(gx), to_numpy(gk)


# --------------------------------------------------------------------------
# The chunked kernels.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("p", [1.0, 2.5, 1000.0, INF])
def test_chunked_equals_unchunked_values_and_gradients(p):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 37)).astype("float32")
    kernel = rng.normal(size=(37, 6)).astype("float32")
    reference = np_pnorm(x, kernel, p)
    # 10 chunks (loop), 1 chunk.
    for chunk in (4, 37):
        y = to_numpy(linf.pnorm_distances(x, kernel, p, chunk_size=chunk))
        np.testing.assert_allclose(y, reference, rtol=2e-6, atol=1e-6)
    # p held in a tensor (the training path; may hold inf).
    y = to_numpy(
        linf.pnorm_distances(x, kernel, ops.convert_to_tensor(p), 8)
    )
    np.testing.assert_allclose(y, reference, rtol=2e-6, atol=1e-6)

    naive = gradients(
        lambda a, b: linf.naive_pnorm_distances(a, b, p), x, kernel
    )
    # Loop (10 chunks) and unrolled (5 chunks, p in a tensor) backward.
    for chunk, p_arg in ((4, p), (8, ops.convert_to_tensor(p))):
        chunked = gradients(
            lambda a, b: linf.pnorm_distances(a, b, p_arg, chunk), x, kernel
        )
        for ours, ref in zip(chunked, naive):
            np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)


def test_sorted_distances_match_numpy_and_gradients():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 23)).astype("float32")
    kernel = rng.normal(size=(23, 5)).astype("float32")
    weights = linf.sorted_distance_weights(0.6, 4)
    assert abs(sum(weights) - 1.0) < 1e-12
    reference = np_sorted(x, kernel, weights)
    for chunk in (2, 50):  # 12 chunks (loop) and 1
        y = to_numpy(linf.sorted_distances(x, kernel, weights, chunk))
        np.testing.assert_allclose(y, reference, rtol=1e-6, atol=1e-6)
    chunked = gradients(
        lambda a, b: linf.sorted_distances(a, b, weights, 2), x, kernel
    )
    whole = gradients(
        lambda a, b: linf.sorted_distances(a, b, weights, 50), x, kernel
    )
    for ours, ref in zip(chunked, whole):
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------
# Layers.
# --------------------------------------------------------------------------


def test_linf_dist_dense_training_and_inference_norms():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 9)).astype("float32")
    layer = LinfDistDense(4, p=8.0, mean_shift=False, chunk_size=4)
    layer.build((None, 9))
    kernel = to_numpy(layer.kernel)
    np.testing.assert_allclose(
        to_numpy(layer(x, training=True)), np_pnorm(x, kernel, 8.0), rtol=1e-5
    )
    # Inference is always p = inf, whatever the training p.
    np.testing.assert_allclose(
        to_numpy(layer(x, training=False)), np_pnorm(x, kernel, INF), rtol=1e-6
    )
    layer.set_p(INF)
    assert layer.current_p == INF
    np.testing.assert_allclose(
        to_numpy(layer(x, training=True)), np_pnorm(x, kernel, INF), rtol=1e-6
    )


def test_identity_like_initialization():
    layer = LinfDistDense(7, identity_value=10.0)
    layer.build((None, 3))
    kernel = to_numpy(layer.kernel)
    for i in range(7):
        assert kernel[i % 3, i] == -10.0
    assert np.sum(kernel == -10.0) == 7
    # Near-identity: unit i is x_{i mod 3} + 10 for small inputs.
    x = np.random.default_rng(0).uniform(size=(4, 3)).astype("float32")
    y = to_numpy(LinfDistDense(7, mean_shift=False)(x))
    assert y.shape == (4, 7)
    wide = LinfDistDense(2, identity_value=10.0)
    wide.build((None, 5))  # D > N: plain N(0, 1).
    assert np.all(np.abs(to_numpy(wide.kernel)) < 10.0)


def test_mean_shift_and_running_mean():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 5)).astype("float32")
    layer = LinfDistDense(3, momentum=0.1)
    layer.build((None, 5))
    u = np_pnorm(x, to_numpy(layer.kernel), 8.0)
    y = to_numpy(layer(x, training=True))
    np.testing.assert_allclose(y, u - u.mean(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        to_numpy(layer.running_mean), 0.1 * u.mean(axis=0), rtol=1e-5
    )
    # Inference subtracts the running mean and writes nothing.
    before = to_numpy(layer.running_mean)
    y = to_numpy(layer(x, training=False))
    u_inf = np_pnorm(x, to_numpy(layer.kernel), INF)
    np.testing.assert_allclose(y, u_inf - before, rtol=1e-5, atol=1e-5)
    to_numpy(layer(x))
    np.testing.assert_array_equal(to_numpy(layer.running_mean), before)
    assert layer.running_mean.dtype == "float32"
    assert not layer.running_mean.trainable


def test_sortnet_dense():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 12)).astype("float32")
    layer = SortNetDense(4, q=0.5, truncate=3, mean_shift=False, chunk_size=5)
    layer.build((None, 12))
    kernel = to_numpy(layer.kernel)
    weights = [0.5, 0.25, 0.125]
    weights = [w / sum(weights) for w in weights]
    np.testing.assert_allclose(
        to_numpy(layer(x, training=False)),
        np_sorted(x, kernel, weights),
        rtol=1e-5,
    )
    # Training: the p-distance over a random subset of the coordinates.
    layer.set_p(INF)
    y = to_numpy(layer(x, training=True))
    full = np_pnorm(x, kernel, INF)
    assert np.all(y <= full + 1e-6)
    subsets = [
        np_pnorm(x[:, mask], kernel[mask], INF)
        for mask in (np.arange(12) == j for j in range(12))
    ]
    assert np.all(y >= np.min(subsets, axis=0) - 1e-6) or np.all(y == 0)
    # Without subsampling (first layer) and q = 1 it is the ℓ∞-dist neuron.
    plain = SortNetDense(4, q=1.0, subsample=False, mean_shift=False)
    plain.build((None, 12))
    np.testing.assert_allclose(
        to_numpy(plain(x, training=False)),
        np_pnorm(x, to_numpy(plain.kernel), INF),
        rtol=1e-6,
    )
    # K larger than the input dimension: capped and renormalized.
    assert len(SortNetDense(2, truncate=10).sorted_weights(3)) == 3


def masked_naive(x, kernel, keep, p):
    """The masked distance by a full broadcast (autodiff reference)."""
    z = ops.abs(ops.expand_dims(x, -1) - ops.expand_dims(kernel, 0))
    z = z * ops.expand_dims(ops.convert_to_tensor(keep, "float32"), -1)
    if np.isinf(p):
        return ops.max(z, axis=1)
    return ops.power(ops.sum(ops.power(z, p), axis=1), 1.0 / p)


def test_keep_masks_are_per_group_of_32():
    """The official sampling: one count, one uniform subset per 32 samples."""
    dim = 40
    keep = to_numpy(linf.sample_keep_masks(70, dim, 0.6, seed=1))
    assert keep.shape == (70, dim) and set(np.unique(keep)) <= {0.0, 1.0}
    groups = [keep[0:32], keep[32:64], keep[64:70]]  # last group: 6 rows
    for group in groups:
        assert (group == group[0]).all()
    # One count per call, shared by the groups; different subsets.
    assert len({row.sum() for row in keep}) == 1
    rows = [g[0] for g in groups]
    assert not any(
        np.array_equal(rows[i], rows[j]) for i in range(3) for j in range(i)
    )
    assert to_numpy(linf.sample_keep_masks(5, dim, 1.0, seed=1)).all()
    # The layer uses them: identical samples get identical outputs inside
    # a group, and the two groups of a batch of 64 differ.
    layer = SortNetDense(8, q=0.6, mean_shift=False, chunk_size=7, seed=2)
    x = np.repeat(np.random.default_rng(0).normal(size=(1, 12)), 64, axis=0)
    layer.build((None, 12))
    layer.set_p(INF)
    y = to_numpy(layer(x.astype("float32"), training=True))
    assert (y[:32] == y[0]).all() and (y[32:] == y[32]).all()
    assert not np.array_equal(y[0], y[32])


@pytest.mark.parametrize("p, chunk_size", [(2.5, 5), (INF, 1)])
def test_masked_distances_values_and_gradients(p, chunk_size):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 12)).astype("float32")
    kernel = rng.normal(size=(12, 3)).astype("float32")
    keep = to_numpy(linf.sample_keep_masks(40, 12, 0.5, seed=4))
    ours = lambda a, b: linf.pnorm_distances(a, b, p, chunk_size, keep=keep)
    naive = lambda a, b: masked_naive(a, b, keep, p)
    np.testing.assert_allclose(
        to_numpy(ours(x, kernel)), to_numpy(naive(x, kernel)), rtol=1e-5
    )
    for a, b in zip(gradients(ours, x, kernel), gradients(naive, x, kernel)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_sortnet_training_mean_is_the_order_statistic_neuron():
    """E over the random subsets = sum_k q(1-q)^(k-1)|z|_(k) (p = inf).

    Each call draws one count and 64 group subsets; calls are independent,
    so the standard error comes from the spread of the per-call means.
    """
    q, dim, calls, group = 0.7, 12, 20, 32
    rng = np.random.default_rng(0)
    layer = SortNetDense(
        8, q=q, truncate=dim, mean_shift=False, identity_value=None,
        chunk_size=4, seed=0,
    )
    layer.build((None, dim))
    layer.set_p(INF)
    x0 = rng.normal(size=(1, dim)).astype("float32")
    batch = np.repeat(x0, 64 * group, axis=0)
    per_call = np.stack(
        [to_numpy(layer(batch, training=True))[::group].mean(0)
         for _ in range(calls)]
    )
    mean = per_call.mean(0)
    stderr = per_call.std(0, ddof=1) / np.sqrt(calls)
    kernel = to_numpy(layer.kernel).astype(np.float64)
    ordered = -np.sort(-np.abs(x0.T - kernel), axis=0)  # (D, N)
    expected = np.einsum("kn,k->n", ordered, q * (1 - q) ** np.arange(dim))
    deterministic = to_numpy(layer(x0, training=False))[0]
    # The deterministic neuron is the same sum renormalized by
    # 1 - (1 - q)^K: an exact, tiny gap.
    gap = np.abs(deterministic - expected)
    np.testing.assert_allclose(gap, expected * (1 - q) ** dim, rtol=1e-4,
                               atol=1e-6)
    assert np.all(stderr > 0)
    assert np.all(np.abs(mean - deterministic) <= 5 * stderr + gap + 1e-6)
    # Resolving power: the keep/drop probabilities swapped would be caught.
    swapped = np.einsum("kn,k->n", ordered, (1 - q) * q ** np.arange(dim))
    assert np.all(np.abs(swapped - expected) > 10 * stderr)


def test_sortnet_training_is_1_lipschitz_with_fixed_subsets():
    """Training mode at p = inf with the same random subsets (same seed
    state) for x and x': every output moves by at most ||x - x'||_inf."""
    rng = np.random.default_rng(1)
    dim = 10
    layer = SortNetDense(
        6, q=0.6, mean_shift=False, use_bias=True, chunk_size=4, seed=5
    )
    layer.build((None, dim))
    layer.set_p(INF)
    for moved in (False, True):
        if moved:
            layer.kernel.assign(3.0 * rng.normal(size=(dim, 6)))
            layer.bias.assign(rng.normal(size=(6,)))
        x = rng.normal(size=(96, dim)).astype("float32")
        radius = np.exp(rng.uniform(-5, 1, size=(96, 1)))
        x2 = (x + radius * rng.uniform(-1, 1, size=x.shape)).astype("float32")
        state = to_numpy(layer.seed_generator.state)
        fx = to_numpy(layer(x, training=True))
        layer.seed_generator.state.assign(state)
        fx_again = to_numpy(layer(x, training=True))
        layer.seed_generator.state.assign(state)
        fx2 = to_numpy(layer(x2, training=True))
        np.testing.assert_array_equal(fx, fx_again)  # same subsets
        # The subsets are active: training differs from inference.
        assert np.abs(fx - to_numpy(layer(x, training=False))).max() > 1e-3
        change = np.abs(fx - fx2).max(axis=1)
        distance = np.abs(x.astype(np.float64) - x2).max(axis=1)
        rounding = 4 * np.finfo(np.float32).eps * np.abs(fx).max(axis=1)
        assert np.all(change <= distance + rounding)
        assert (change / distance).max() > 0.5


@pytest.mark.parametrize("cls", [LinfDistDense, SortNetDense])
def test_each_output_is_1_lipschitz_in_linf(cls):
    rng = np.random.default_rng(0)
    dim = 10
    layer = cls(6, chunk_size=4)
    model = keras.Sequential([keras.Input((dim,)), layer, cls(3, chunk_size=4)])
    for moved in (False, True):
        if moved:
            # Weights and shifts far from their initial values, as after
            # training (the property is structural: any weights).
            for variable in model.weights:
                if variable.name != "train_p":
                    shape = tuple(variable.shape)
                    variable.assign(3.0 * rng.normal(size=shape))
        x = rng.normal(size=(200, dim)).astype("float32")
        radius = np.exp(rng.uniform(-5, 1, size=(200, 1)))
        x2 = (x + radius * rng.uniform(-1, 1, size=x.shape)).astype("float32")
        fx = to_numpy(model(x, training=False))
        fx2 = to_numpy(model(x2, training=False))
        change = np.abs(fx - fx2).max(axis=1)
        distance = np.abs(x.astype(np.float64) - x2).max(axis=1)
        # Allowance for the float32 rounding of the outputs themselves.
        rounding = 4 * np.finfo(np.float32).eps * np.abs(fx).max(axis=1)
        assert np.all(change <= distance + rounding)
        assert (change / distance).max() > 0.5  # nearly reached


def test_exact_max_case():
    """A step δ along the arg-max coordinate moves the output by exactly δ."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 8)).astype("float64")
    layer = LinfDistDense(5, mean_shift=False)
    layer.build((None, 8))
    kernel = to_numpy(layer.kernel)
    y = to_numpy(layer(x.astype("float32"), training=False))
    delta = 0.25
    for b in range(3):
        for i in range(5):
            z = x[b] - kernel[:, i]
            k = int(np.argmax(np.abs(z)))
            moved = x[b].copy()
            moved[k] += delta * np.sign(z[k])
            y2 = to_numpy(layer(moved[None].astype("float32"), training=False))
            assert abs(y2[0, i] - y[b, i] - delta) < 1e-5


def test_bad_arguments():
    with pytest.raises(ValueError, match="`p`"):
        LinfDistDense(4, p=0.5)
    layer = LinfDistDense(4)
    layer.build((None, 3))
    with pytest.raises(ValueError, match="`p`"):
        layer.set_p(0.9)
    for q in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="`q`"):
            SortNetDense(4, q=q)
    with pytest.raises(ValueError, match="`units`"):
        LinfDistDense(0)
    with pytest.raises(ValueError, match="`chunk_size`"):
        LinfDistDense(3, chunk_size=0)
    with pytest.raises(ValueError, match="`truncate`"):
        SortNetDense(3, truncate=0)
    with pytest.raises(ValueError, match="`group_size`"):
        SortNetDense(3, group_size=0)
    with pytest.raises(ValueError, match="`lr_multiplier`"):
        LogitScale(lr_multiplier=0.0)
    with pytest.raises(ValueError, match="`scale`.*LogitScale"):
        LinfDistHinge(0.3, scale="learned")
    with pytest.raises(ValueError, match="`scale`.*scalar tensor"):
        linf_dist_hinge([0], np.zeros((1, 2), "float32"), 0.3, scale="s")
    for cls in (LinfDistDense, SortNetDense):
        with pytest.raises(ValueError, match="[Ff]latten"):
            cls(3).build((None, 4, 4))
    with pytest.raises(ValueError, match="p_end"):
        PNormScheduler(0, 1, p_start=8, p_end=4)
    with pytest.raises(ValueError, match="end_epoch"):
        PNormScheduler(2, 1)


def test_config_and_save_load(tmp_path):
    rng = np.random.default_rng(0)
    model = keras.Sequential(
        [
            keras.Input((4, 3)),
            keras.layers.Flatten(),
            LinfDistDense(8, p=4.0, chunk_size=5),
            SortNetDense(6, q=0.8, truncate=3, seed=3, group_size=4),
            LinfDistDense(3, mean_shift=False, use_bias=True, negate=True),
            LogitScale(lr_multiplier=0.5),
        ]
    )
    model.layers[-1].raw_scale.assign(3.0)
    x = rng.normal(size=(16, 4, 3)).astype("float32")
    model(x, training=True)  # moves the running means
    model.layers[1].set_p(123.0)
    for layer in model.layers[1:]:
        revived = type(layer).from_config(layer.get_config())
        assert revived.get_config() == layer.get_config()
    loaded = save_and_load(model, tmp_path)
    np.testing.assert_allclose(
        to_numpy(loaded(x, training=False)),
        to_numpy(model(x, training=False)),
        rtol=1e-6,
    )
    assert loaded.layers[1].current_p == 123.0
    assert loaded.layers[2].group_size == 4
    assert float(to_numpy(loaded.layers[-1].scale)) == 1.5
    np.testing.assert_array_equal(
        to_numpy(loaded.layers[1].running_mean),
        to_numpy(model.layers[1].running_mean),
    )


# --------------------------------------------------------------------------
# p schedule: reaches the compiled train step.
# --------------------------------------------------------------------------


class BatchLogger(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.losses = []

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append(float(logs["loss"]))


def test_schedule_formula():
    assert p_norm_schedule(0.0) == 8.0
    assert p_norm_schedule(-1.0) == 8.0
    assert abs(p_norm_schedule(0.5) - 8.0 * (1000.0 / 8.0) ** 0.5) < 1e-9
    assert p_norm_schedule(1.0) == INF
    scheduler = PNormScheduler(2, 6)
    assert scheduler.p_at(4.0) == p_norm_schedule(0.5)


def test_p_schedule_reaches_compiled_step(jit=JIT):
    """Frozen model: the batch loss is ||(1, 1) - 0||_p = 2^(1/p)."""
    x = np.ones((8, 2), "float32")
    layer = LinfDistDense(
        1, mean_shift=False, kernel_initializer="zeros", identity_value=None
    )
    model = keras.Sequential([keras.Input((2,)), layer])
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.0),
        loss="mae",
        jit_compile=jit,
    )
    logger = BatchLogger()
    # 4 batches per epoch: r = (epoch + batch / 4) / 1.75 = k / 7.
    scheduler = PNormScheduler(0.0, 1.75, p_start=1.0, p_end=64.0)
    model.fit(
        x,
        np.zeros((8, 1), "float32"),
        batch_size=2,
        epochs=2,
        shuffle=False,
        verbose=0,
        callbacks=[scheduler, logger],
    )
    ps = [scheduler.p_at(e + b / 4) for e in range(2) for b in range(4)]
    assert ps[0] == 1.0 and ps[-1] == INF and len(set(ps)) == 8
    batch = np.array([2.0 ** (1.0 / p) for p in ps])
    expected = np.concatenate(
        [np.cumsum(part) / np.arange(1, 5) for part in (batch[:4], batch[4:])]
    )
    np.testing.assert_allclose(logger.losses, expected, rtol=1e-5)
    assert layer.current_p == INF


# --------------------------------------------------------------------------
# Loss.
# --------------------------------------------------------------------------


def np_linf_loss(labels, z, epsilon, ce_weight, scale):
    z = z.astype(np.float64)
    n = len(labels)
    z_y = z[np.arange(n), labels]
    others = z.copy()
    others[np.arange(n), labels] = -np.inf
    hinge = np.clip((others.max(1) - z_y) / (2 * epsilon) + 1, 0, 1)
    s = scale * z
    log_softmax = s - s.max(1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(1, keepdims=True))
    return hinge - ce_weight * log_softmax[np.arange(n), labels]


def test_loss_matches_numpy_and_schedules():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(16, 4))
    labels = rng.integers(0, 4, size=16)
    # Margins 1.0 (hinge 0), 0.3 (hinge 0.5) and -0.5 (hinge 1).
    z[:3] = [[1.0, 0, 0, 0], [0.3, 0, 0, 0], [0, 0.5, 0, 0]]
    labels[:3] = 0
    z = z.astype("float32")
    expected = np_linf_loss(labels, z, 0.3, 0.1, 2.0)
    ours = to_numpy(linf_dist_hinge(labels, z, 0.3, ce_weight=0.1, scale=2.0))
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)
    # The hinge takes all three regimes in this sample.
    hinge = np_linf_loss(labels, z, 0.3, 0.0, 1.0)
    assert (hinge == 0).any() and (hinge == 1).any()
    assert ((hinge > 0) & (hinge < 1)).any()
    loss = LinfDistHinge(epsilon=0.3, ce_weight=0.1, scale=2.0)
    np.testing.assert_allclose(
        float(loss(np.eye(4)[labels], z)), expected.mean(), rtol=1e-5
    )
    assert LinfDistHinge.from_config(loss.get_config()).get_config() == (
        loss.get_config()
    )
    with pytest.raises(ValueError, match="epsilon"):
        LinfDistHinge(epsilon=0.0)
    with pytest.raises(ValueError, match="ce_weight"):
        loss.ce_weight = -1.0
    # λ reaches the compiled step: zero logits give 1 + λ ln 2 (the hinge
    # of a zero margin is 1).
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(
                2, kernel_initializer="zeros", bias_initializer="zeros"
            ),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.0),
        loss=LinfDistHinge(epsilon=1.0, ce_weight=1.0),
        jit_compile=JIT,
    )
    history = model.fit(
        np.ones((4, 3), "float32"),
        np.array([0, 1, 0, 1]),
        epochs=2,
        verbose=0,
        callbacks=[
            kl.callbacks.LossParamScheduler(
                "ce_weight", lambda e: [1.0, 0.01][e]
            )
        ],
    )
    np.testing.assert_allclose(
        history.history["loss"],
        [1.0 + np.log(2.0), 1.0 + 0.01 * np.log(2.0)],
        rtol=1e-5,
    )


def test_learned_logit_scale():
    """The papers' learned s: only in the CE term, moved by the optimizer
    at lr_multiplier x the learning rate, never in outputs."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3)).astype("float32")
    labels = rng.integers(0, 2, size=8)
    scale = LogitScale()  # m = 0.2, s = 1
    model = keras.Sequential(
        [
            keras.Input((3,)),
            LinfDistDense(
                2, p=INF, mean_shift=False, use_bias=True, negate=True
            ),
            scale,
        ]
    )
    z = to_numpy(model.layers[0](x, training=False))
    np.testing.assert_array_equal(to_numpy(model(x, training=False)), z)
    scale.raw_scale.assign(2.5 / 0.2)  # s = 2.5
    loss = LinfDistHinge(epsilon=0.3, ce_weight=1.0, scale=scale)
    np.testing.assert_allclose(
        to_numpy(loss(labels, z)),
        np_linf_loss(labels, z, 0.3, 1.0, 2.5).mean(),
        rtol=1e-5,
    )
    assert loss.get_config()["scale"] == pytest.approx(2.5)
    # One Adam step moves s by m * lr (Adam's first step is lr * sign(g)).
    scale.raw_scale.assign(1.0 / 0.2)
    model.compile(
        keras.optimizers.Adam(0.03, epsilon=1e-10), loss, jit_compile=JIT
    )
    history = model.fit(x, labels, batch_size=8, epochs=1, verbose=0)
    np.testing.assert_allclose(
        history.history["loss"][0],
        np_linf_loss(labels, z, 0.3, 1.0, 1.0).mean(),
        rtol=1e-5,
    )
    step = abs(float(to_numpy(scale.scale)) - 1.0)
    np.testing.assert_allclose(step, 0.2 * 0.03, rtol=1e-3)
    # Certificates use z: the same radii whatever s.
    radius = kl.certify(model, x, labels, norm="linf")
    scale.raw_scale.assign(-40.0)
    np.testing.assert_array_equal(
        kl.certify(model, x, labels, norm="linf"), radius
    )
    z = to_numpy(model.layers[0](x, training=False))
    top2 = np.sort(z, axis=1)
    expected = np.where(
        z.argmax(1) == labels, (top2[:, -1] - top2[:, -2]) / 2, 0.0
    )
    np.testing.assert_allclose(np.maximum(radius, 0), expected, rtol=1e-5,
                               atol=1e-6)


# --------------------------------------------------------------------------
# Certification.
# --------------------------------------------------------------------------


def blobs(n=64, dim=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.uniform(-1, 1, size=(classes, dim))
    labels = rng.integers(0, classes, size=n)
    x = centers[labels] + 0.1 * rng.normal(size=(n, dim))
    return x.astype("float32"), labels


_TRAINED = {}


def trained_net(head_units=None, neuron="linf"):
    """A small net trained on blobs; SortNet gets the trained ℓ∞-dist weights.

    SortNet's stochastic training is too noisy for 40 steps on 64 points;
    what the tests need is its inference path with sensible weights. Nets
    are cached for the module (tests must not modify them).
    """
    key = (head_units, neuron)
    if key in _TRAINED:
        return _TRAINED[key]
    if neuron == "sortnet":
        model, x, y = trained_net(head_units)
        sortnet = linf_dist_net(
            (6,), 3, depth=2, width=12, neuron="sortnet", q=0.9, truncate=4,
            head_units=head_units,
        )
        for source, target in zip(model.layers, sortnet.layers):
            for a, b in zip(source.weights, target.weights):
                b.assign(a)
        recompute_running_means(sortnet, x)
        _TRAINED[key] = sortnet, x, y
        return _TRAINED[key]
    x, y = blobs()
    model = linf_dist_net((6,), 3, depth=2, width=12, head_units=head_units)
    model.compile(
        keras.optimizers.Adam(0.1),
        LinfDistHinge(epsilon=0.3, ce_weight=0.1),
    )
    model.fit(
        x,
        y,
        epochs=20,
        batch_size=32,
        verbose=0,
        callbacks=[PNormScheduler(0, 10)],
    )
    _TRAINED[key] = model, x, y
    return model, x, y


@pytest.mark.parametrize(
    "head_units, neuron",
    [(None, "linf"), (None, "sortnet"), (8, "linf")],
    ids=["linf", "sortnet", "linf+mlp_head"],
)
def test_pgd_never_beats_the_certificate(head_units, neuron):
    model, x, y = trained_net(head_units, neuron)
    radius = kl.certify(model, x, y, norm="linf")
    certified = radius > 0
    # A real classifier (not a constant one, which PGD could never flip).
    predicted = np.argmax(to_numpy(model(x, training=False)), axis=1)
    assert np.mean(predicted == y) >= 0.9
    assert certified.sum() >= 32
    # Inside the certified radius: never a flip.
    x_adv, success = pgd_linf(
        model,
        x[certified],
        y[certified],
        0.999 * radius[certified],
        steps=8,
        restarts=2,
    )
    assert not success.any()
    assert np.all(
        np.abs(x_adv - x[certified]).max(axis=1)
        <= 0.999 * radius[certified] + 1e-6
    )
    # The attack works: at a clearly larger radius (the data span [-1, 1])
    # it flips most points.
    _, success = pgd_linf(
        model, x[certified], y[certified], 2.0, steps=8, restarts=3
    )
    assert success.mean() > 0.8
    if head_units is None:
        # Margin / 2 from the logits, and the metric agrees.
        logits = to_numpy(model(x, training=False))
        for eps in (0.0, 0.05, 0.1):
            metric = kl.metrics.CertifiedAccuracy(eps, norm="linf")
            metric.update_state(y, logits)
            np.testing.assert_allclose(
                float(metric.result()),
                kl.certified_accuracy(model, x, y, eps, norm="linf")[0],
                atol=1e-6,
            )


def test_certification_refuses_unknown_layers():
    plain = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8), LinfDistDense(3)]
    )
    with pytest.raises(ValueError, match="1-Lipschitz"):
        kl.certify(plain, np.zeros((2, 4)), [0, 1], norm="linf")
    relu_first = keras.Sequential(
        [keras.Input((4,)), keras.layers.ReLU(), LinfDistDense(3)]
    )
    with pytest.raises(ValueError, match="1-Lipschitz"):
        split_linf_model(relu_first)
    no_body = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="ℓ∞-distance body"):
        split_linf_model(no_body)


def test_recompute_running_means():
    # The SortNet copy of the trained net had its means recomputed on x.
    model, x, _ = trained_net(neuron="sortnet")
    first = model.layers[1]
    features = model.layers[0](x)
    u = to_numpy(first.distances(features))
    np.testing.assert_allclose(
        to_numpy(first.running_mean), u.mean(axis=0), rtol=1e-5, atol=1e-5
    )
    # Hence the inference-mode features are centred on x.
    h = to_numpy(first(features, training=False))
    np.testing.assert_allclose(h.mean(axis=0), 0.0, atol=1e-4)
    # And the distances are the SortNet ones, not the ℓ∞ ones.
    weights = first.sorted_weights(x.shape[1])
    np.testing.assert_allclose(
        u, np_sorted(to_numpy(features), to_numpy(first.kernel), weights),
        rtol=1e-5,
    )
