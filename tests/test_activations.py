"""Tests of the gradient-norm-preserving activations (GroupSort, Householder).

References are NumPy (float64) re-implementations of the formulas in the
papers, independent of the layer code.
"""

import math

import keras
import numpy as np
import pytest

from keras_lipschitz.layers import FullSort
from keras_lipschitz.layers import GroupSort
from keras_lipschitz.layers import GroupSort2
from keras_lipschitz.layers import Householder
from tests import helpers

BACKEND = keras.config.backend()


def np_group_sort(x, group_size, axis):
    """Ascending sort within contiguous channel groups (None: all channels)."""
    x = np.moveaxis(np.asarray(x, np.float64), axis, -1)
    channels = x.shape[-1]
    group_size = channels if group_size is None else group_size
    grouped = x.reshape(x.shape[:-1] + (channels // group_size, group_size))
    out = np.sort(grouped, axis=-1).reshape(x.shape)
    return np.moveaxis(out, -1, axis)


def np_householder(x, theta, axis):
    """HH1 of Singla et al. (ICLR 2022), the paper's formula, adjacent pairs."""
    x = np.moveaxis(np.asarray(x, np.float64), axis, -1)
    theta = np.asarray(theta, np.float64)
    a, b = x[..., 0::2], x[..., 1::2]
    keep = np.sin(theta / 2) * a - np.cos(theta / 2) * b <= 0
    out = np.empty_like(x)
    out[..., 0::2] = np.where(keep, a, a * np.cos(theta) + b * np.sin(theta))
    out[..., 1::2] = np.where(keep, b, a * np.sin(theta) - b * np.cos(theta))
    return np.moveaxis(out, -1, axis)


def random_input(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def make_layer(group_size, axis=-1):
    if group_size is None:
        return FullSort(axis=axis)
    return GroupSort(group_size=group_size, axis=axis)


def finite_difference_jacobian(fn, x, step):
    """(f(x + step e_i) - f(x)) / step for every basis vector e_i of x[0].

    Exact for a piecewise-linear f when no piece boundary lies within `step`.
    """
    n = x[0].size
    basis = np.eye(n, dtype="float32").reshape((n,) + x.shape[1:])
    shifted = (x[:1] + step * basis).astype("float32")
    out = helpers.to_numpy(fn(shifted)).reshape(n, -1)
    base = helpers.to_numpy(fn(x[:1])).reshape(1, -1)
    return ((out - base) / step).T


SORT_CASES = [
    # (group_size, input shape, axis); None is FullSort.
    (2, (5, 8), -1),
    (3, (5, 9), -1),
    (4, (3, 2, 2, 8), -1),
    (None, (5, 7), -1),
    (2, (2, 6, 3, 3), 1),
    (3, (2, 6, 3, 3), 1),
    (None, (2, 5, 3, 3), 1),
]


# --------------------------------------------------------------- GroupSort


def test_group_sort_matches_numpy():
    # One test over all the cases: keras' per-test reset dominates run time.
    for group_size, shape, axis in SORT_CASES:
        x = random_input(shape)
        y = helpers.to_numpy(make_layer(group_size, axis)(x))
        expected = np_group_sort(x, group_size, axis)
        # The input is not already sorted, so the identity would fail.
        assert not np.array_equal(expected, x)
        # Pairs are sorted as (a - relu(a - b), b + relu(a - b)): exact up
        # to the float32 rounding of a - b.
        np.testing.assert_allclose(
            y,
            expected,
            rtol=0,
            atol=2 * np.finfo(np.float32).eps * np.max(np.abs(x)),
            err_msg=f"group_size={group_size}, axis={axis}",
        )


@pytest.mark.parametrize("group_size", [2, 3, 4, None])
def test_group_sort_is_norm_preserving_and_1_lipschitz(group_size):
    layer = make_layer(group_size)
    x = random_input((64, 12))
    y = helpers.to_numpy(layer(x))
    np.testing.assert_allclose(
        np.linalg.norm(y, axis=1), np.linalg.norm(x, axis=1), rtol=1e-6
    )
    # Each group's multiset of values is preserved (a permutation), up to
    # the float32 rounding of a - b for pairs.
    g = 12 if group_size is None else group_size
    np.testing.assert_allclose(
        np.sort(y.reshape(64, -1, g), axis=-1),
        np.sort(x.reshape(64, -1, g), axis=-1),
        rtol=0,
        atol=2 * np.finfo(np.float32).eps * np.max(np.abs(x)),
    )
    # 1-Lipschitz up to float32 rounding of the outputs (pairs are computed
    # with one subtraction, exact up to eps * |x| per coordinate).
    rng = np.random.default_rng(0)
    a = rng.normal(size=(256, 12)).astype("float32")
    radius = np.exp(rng.uniform(-6, 1, size=(256, 1)))
    b = (a + radius * rng.normal(size=a.shape)).astype("float32")
    gap = np.linalg.norm(
        helpers.to_numpy(layer(a)) - helpers.to_numpy(layer(b)), axis=1
    )
    slack = 4 * np.finfo(np.float32).eps * (
        np.linalg.norm(a, axis=1) + np.linalg.norm(b, axis=1)
    )
    assert np.all(gap <= np.linalg.norm(a - b, axis=1) * (1 + 1e-6) + slack)
    assert layer.lipschitz_upper_bound() == 1.0


@pytest.mark.parametrize("group_size", [2, 3, None])
def test_group_sort_jacobian_is_a_permutation(group_size):
    layer = make_layer(group_size)
    rng = np.random.default_rng(1)
    # Distinct values at least 1 apart: a step of 0.1 never reorders them.
    x = rng.permutation(12).astype("float32")[None] - 6.0
    jac = finite_difference_jacobian(layer, x, step=0.1)
    np.testing.assert_allclose(jac @ jac.T, np.eye(12), atol=1e-5)
    np.testing.assert_allclose(np.abs(jac).sum(axis=0), 1.0, atol=1e-5)


def test_group_sort2_and_full_sort_are_group_sort_special_cases():
    x = random_input((6, 10))
    np.testing.assert_array_equal(
        helpers.to_numpy(GroupSort2()(x)),
        helpers.to_numpy(GroupSort(group_size=2)(x)),
    )
    np.testing.assert_array_equal(
        helpers.to_numpy(FullSort()(x)),
        helpers.to_numpy(GroupSort(group_size=10)(x)),
    )


def test_group_sort_pair_order_is_min_max_of_adjacent_channels():
    x = np.array([[3.0, 1.0, -2.0, 5.0, 0.5, 0.5]], "float32")
    np.testing.assert_array_equal(
        helpers.to_numpy(GroupSort2()(x)), [[1.0, 3.0, -2.0, 5.0, 0.5, 0.5]]
    )


def test_group_sort_with_unknown_spatial_sizes():
    inputs = keras.Input(shape=(None, None, 6))
    outputs = GroupSort(3)(inputs)
    assert tuple(outputs.shape) == (None, None, None, 6)
    model = keras.Model(inputs, outputs)
    for spatial in [(3, 4), (5, 2)]:
        x = random_input((2,) + spatial + (6,))
        np.testing.assert_array_equal(
            helpers.to_numpy(model.predict(x, verbose=0)),
            np_group_sort(x, 3, -1),
        )


# ------------------------------------------------------------- Householder


def test_householder_at_init_is_group_sort2():
    x = random_input((16, 3, 3, 8))
    x[0, 0, 0, :4] = [1.0, 1.0, -0.0, 0.0]  # ties
    x[1, 0, 0, :4] = [1e4, -1e-4, -1e-4, 1e4]  # very different magnitudes
    layer = Householder()
    y = helpers.to_numpy(layer(x))
    np.testing.assert_array_equal(y, np_group_sort(x, 2, -1))
    # GroupSort2 computes min/max as a - relu(a - b), b + relu(a - b): equal
    # up to the rounding of a - b, i.e. 2 eps max(|a|, |b|) per pair.
    pair_max = np.repeat(
        np.max(np.abs(x.reshape(16, 3, 3, 4, 2)), axis=-1), 2, axis=-1
    )
    error = np.abs(y - helpers.to_numpy(GroupSort2()(x)))
    assert np.all(error <= 2 * np.finfo(np.float32).eps * pair_max)
    theta = helpers.to_numpy(layer.theta)
    np.testing.assert_allclose(theta, np.full(4, math.pi / 2), rtol=1e-7)
    assert keras.backend.standardize_dtype(layer.theta.dtype) == "float32"
    assert layer.theta.trainable
    assert len(layer.trainable_weights) == 1


def test_householder_channels_first_pairs_adjacent_channels():
    x = random_input((4, 6, 2, 3))
    y = helpers.to_numpy(Householder(axis=1)(x))
    np.testing.assert_array_equal(y, np_group_sort(x, 2, 1))


def _householder_with_random_theta(channels, axis=-1, seed=0):
    layer = Householder(axis=axis)
    shape = (1, channels) if axis == -1 else (1, channels, 2, 2)
    layer.build(shape)
    theta = np.random.default_rng(seed).uniform(-7.0, 7.0, channels // 2)
    layer.theta.assign(theta.astype("float32"))
    return layer, helpers.to_numpy(layer.theta)


@pytest.mark.parametrize("axis", [-1, 1])
def test_householder_matches_paper_formula(axis):
    layer, theta = _householder_with_random_theta(8, axis=axis)
    shape = (64, 8) if axis == -1 else (16, 8, 2, 2)
    x = 3.0 * random_input(shape, seed=1)
    np.testing.assert_allclose(
        helpers.to_numpy(layer(x)), np_householder(x, theta, axis), atol=1e-5
    )


def test_householder_random_theta_is_1_lipschitz_and_norm_preserving():
    layer, _ = _householder_with_random_theta(10)
    x = 3.0 * random_input((128, 10), seed=2)
    y = helpers.to_numpy(layer(x))
    np.testing.assert_allclose(
        np.linalg.norm(y, axis=1), np.linalg.norm(x, axis=1), rtol=1e-5
    )
    assert helpers.random_pair_ratio(layer, (10,)) <= 1.0 + 1e-5
    # Reflections of both sides actually occur with these angles and inputs.
    assert not np.allclose(y, x)
    assert not np.allclose(y, np_group_sort(x, 2, -1))
    jac = finite_difference_jacobian(layer, x[:1], step=1e-2)
    np.testing.assert_allclose(jac.T @ jac, np.eye(10), atol=2e-3)
    assert layer.lipschitz_upper_bound() == 1.0


def test_householder_is_continuous_across_the_mirror_line():
    layer, theta = _householder_with_random_theta(12, seed=3)
    rng = np.random.default_rng(4)
    radius = rng.uniform(0.5, 3.0, size=(8, 6))
    # z on the line v^T z = 0 (direction (cos θ/2, sin θ/2)); v its normal.
    on_line = np.stack(
        [radius * np.cos(theta / 2), radius * np.sin(theta / 2)], -1
    )
    normal = np.stack([np.sin(theta / 2), -np.cos(theta / 2)], -1)
    normal = np.broadcast_to(normal, on_line.shape)
    delta = 1e-3
    inside = (on_line - delta * normal).reshape(8, 12).astype("float32")
    outside = (on_line + delta * normal).reshape(8, 12).astype("float32")
    y_in = helpers.to_numpy(layer(inside))
    y_out = helpers.to_numpy(layer(outside))
    # The identity side stays put and the other side is mirrored onto it:
    # no jump across the line.
    np.testing.assert_allclose(y_in, inside, atol=1e-6)
    np.testing.assert_allclose(y_out, inside, atol=2e-5)


def test_householder_trains_without_nan():
    inputs = keras.Input(shape=(6,))
    hidden = keras.layers.Dense(8)(inputs)
    layer = Householder()
    outputs = keras.layers.Dense(1)(layer(hidden))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    x = random_input((32, 6))
    y = random_input((32, 1), seed=1) * 5.0
    history = model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    theta = helpers.to_numpy(layer.theta)
    assert np.all(np.isfinite(theta))
    assert not np.allclose(theta, math.pi / 2)  # theta is really trained


# ------------------------------------------------------------- bad inputs


def test_group_sort_rejects_bad_group_size():
    for group_size in [1, 0, 2.5, "2", True, None]:
        with pytest.raises(ValueError, match="group_size"):
            GroupSort(group_size=group_size)


def test_group_sort_rejects_group_size_not_dividing_channels():
    with pytest.raises(ValueError, match=r"group_size.*\b10\b"):
        GroupSort(group_size=4)(np.zeros((1, 10), "float32"))


def test_rejects_bad_axis_and_unknown_channels():
    for cls in [GroupSort, GroupSort2, FullSort, Householder]:
        with pytest.raises(ValueError, match="axis"):
            cls(axis="channels")
        with pytest.raises(ValueError, match="axis"):
            cls(axis=0)(np.zeros((2, 4), "float32"))  # batch axis
        with pytest.raises(ValueError, match="axis"):
            cls(axis=2)(np.zeros((2, 4), "float32"))
        with pytest.raises(ValueError, match="channel"):
            cls()(keras.Input(shape=(3, None)))


def test_householder_rejects_odd_channels():
    with pytest.raises(ValueError, match=r"even.*axis.*\b5\b"):
        Householder()(np.zeros((2, 5), "float32"))
    with pytest.raises(ValueError, match="even"):
        Householder(axis=1)(np.zeros((2, 3, 4, 4), "float32"))


# ----------------------------------------------------- config and saving

CONFIG_CASES = [
    (GroupSort, {"group_size": 3, "axis": 1}, (2, 6, 2)),
    (GroupSort2, {"axis": -1}, (2, 4)),
    (FullSort, {"axis": 1}, (2, 5, 2)),
    (Householder, {"axis": -1}, (2, 6)),
    (
        Householder,
        {"axis": 1, "theta_initializer": keras.initializers.Constant(0.3)},
        (2, 4, 3),
    ),
]


@pytest.mark.parametrize("cls,kwargs,shape", CONFIG_CASES)
def test_config_round_trip(cls, kwargs, shape):
    layer = cls(**kwargs, name="act")
    config = layer.get_config()
    revived = cls.from_config(config)
    assert revived.get_config() == config
    x = random_input(shape)
    y = helpers.to_numpy(layer(x))
    revived.build(shape)
    for w, w_revived in zip(layer.weights, revived.weights):
        w_revived.assign(w)
    np.testing.assert_array_equal(helpers.to_numpy(revived(x)), y)
    assert set(dir(layer)) == set(dir(revived))
    assert layer.compute_output_shape(shape) == shape


def test_householder_custom_initializer_is_used():
    layer = Householder(theta_initializer=keras.initializers.Constant(0.3))
    layer.build((1, 6))
    np.testing.assert_allclose(helpers.to_numpy(layer.theta), 0.3, rtol=1e-6)


def test_save_and_load_round_trip(tmp_path):
    inputs = keras.Input(shape=(4, 4, 6))
    householder = Householder()
    x = householder(inputs)
    x = GroupSort(3)(x)
    x = FullSort(axis=-1)(x)
    x = GroupSort2()(x)
    model = keras.Model(inputs, x)
    householder.theta.assign(np.array([0.1, 2.0, -1.0], "float32"))
    data = random_input((3, 4, 4, 6))
    expected = helpers.to_numpy(model(data))
    loaded = helpers.save_and_load(model, tmp_path)
    np.testing.assert_array_equal(helpers.to_numpy(loaded(data)), expected)
    loaded_hh = [
        layer for layer in loaded.layers if isinstance(layer, Householder)
    ]
    np.testing.assert_array_equal(
        helpers.to_numpy(loaded_hh[0].theta),
        np.array([0.1, 2.0, -1.0], "float32"),
    )


# --------------------------------------------------------- mixed precision


def test_mixed_float16():
    makers = [lambda: GroupSort(3), GroupSort2, FullSort, Householder]
    x = random_input((4, 2, 2, 6))
    expected = [helpers.to_numpy(make()(x)) for make in makers]
    keras.config.set_dtype_policy("mixed_float16")
    for make, want in zip(makers, expected):
        layer = make()
        y = layer(x)
        assert keras.backend.standardize_dtype(y.dtype) == "float16"
        for weight in layer.weights:
            assert keras.backend.standardize_dtype(weight.dtype) == "float32"
        np.testing.assert_allclose(
            helpers.to_numpy(y), want, rtol=2e-3, atol=1e-3
        )
    # Householder's theta is read in float32 too (autocast=False).
    theta = layer.theta.value
    assert keras.backend.standardize_dtype(theta.dtype) == "float32"


def test_group_sort2_with_unknown_spatial_sizes():
    inputs = keras.Input((None, None, 4))
    model = keras.Model(inputs, GroupSort2()(inputs))
    x = random_input((2, 3, 5, 4))
    np.testing.assert_allclose(
        helpers.to_numpy(model(x)),
        np_group_sort(x, 2, -1),
        rtol=0,
        atol=2 * np.finfo(np.float32).eps * np.max(np.abs(x)),
    )
    model.compile(loss="mse", jit_compile=keras.config.backend() != "torch")
    model.fit(x, x, verbose=0)
