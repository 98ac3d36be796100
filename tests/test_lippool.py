"""LipPool: the signed distance to a learnable wedge (NeurIPS'22 "lip1")."""

import math

import keras
import numpy as np
import pytest

import keras_lipschitz
from keras_lipschitz import _backend
from keras_lipschitz import certification
from keras_lipschitz import layers
from tests import helpers


def _reference(x, y, theta):
    """The three-region formula of the paper, with atan2 (NumPy float64)."""
    phi = np.mod(np.arctan2(y, x), 2 * np.pi)
    s, c = np.sin(theta / 2), np.cos(theta / 2)
    first = -x * s + y * c
    third = -x * s - y * c
    norm = np.sqrt(x * x + y * y)
    return np.where(
        phi < (theta + np.pi) / 2,
        first,
        np.where(phi < (3 * np.pi - theta) / 2, norm, third),
    )


def _layer(channels, theta, data_format="channels_last"):
    layer = layers.LipPool(data_format=data_format)
    shape = (1, 3, 3, channels) if data_format == "channels_last" else (
        1, channels, 3, 3)
    layer.build(shape)
    layer.theta.assign(np.asarray(theta, "float32"))
    return layer


THETAS = np.array([0.0, 0.3, np.pi / 2, 2.5, np.pi])


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_matches_the_three_region_formula(data_format):
    rng = np.random.default_rng(0)
    layer = _layer(2 * len(THETAS), THETAS, data_format)
    x = rng.normal(size=(16, 3, 3, 2 * len(THETAS)))
    x[0] = 0.0  # the apex
    if data_format == "channels_first":
        x_in = np.transpose(x, (0, 3, 1, 2))
    else:
        x_in = x
    out = helpers.to_numpy(layer(x_in.astype("float32")))
    if data_format == "channels_first":
        out = np.transpose(out, (0, 2, 3, 1))
    first, second = x[..., : len(THETAS)], x[..., len(THETAS):]
    expected = _reference(first, second, THETAS)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    # Closed forms: theta = pi is -x; theta = 0 the distance to the ray.
    np.testing.assert_allclose(out[..., -1], -first[..., -1], atol=1e-5)
    ray = np.where(
        first[..., 0] >= 0,
        np.abs(second[..., 0]),
        np.hypot(first[..., 0], second[..., 0]),
    )
    np.testing.assert_allclose(out[..., 0], ray, atol=1e-5)
    # Negative strictly inside the wedge, positive outside, 0 at the apex.
    angle = np.abs(np.arctan2(second, first))
    inside = (angle < THETAS / 2 - 1e-3)[1:]
    outside = (angle > THETAS / 2 + 1e-3)[1:]
    assert np.all(out[1:][inside] < 0) and np.all(out[1:][outside] > 0)
    assert np.all(out[0] == 0)


@pytest.mark.parametrize("scale", [1e-3, 1.0])
def test_one_lipschitz_on_random_pairs(scale):
    rng = np.random.default_rng(1)
    thetas = np.concatenate([THETAS, rng.uniform(0, np.pi, 5)])
    layer = _layer(2 * len(thetas), thetas)
    ratio = helpers.random_pair_ratio(
        lambda v: layer(v), (2, 2, 2 * len(thetas)), pairs=512, scale=scale
    )
    assert ratio <= 1.0 + 1e-4
    # Worst case: with theta = pi the map is -x, so pairs that differ only
    # in x reach ratio 1 exactly: the bound is tight and the check can fail.
    layer = _layer(2, [np.pi])
    a = rng.normal(size=(64, 1, 1, 2)).astype("float32")
    b = a.copy()
    b[..., 0] += rng.normal(size=(64, 1, 1)).astype("float32")
    diff = helpers.to_numpy(layer(a)) - helpers.to_numpy(layer(b))
    ratios = np.abs(diff.ravel()) / np.abs((a - b)[..., 0].ravel())
    np.testing.assert_allclose(ratios, 1.0, rtol=1e-4)


def test_pairs_across_region_boundaries():
    """Points on both sides of the rays and of the apex."""
    rng = np.random.default_rng(2)
    thetas = rng.uniform(0, np.pi, 8)
    layer = _layer(16, thetas)
    n = 400
    angle = (thetas[None, :] + np.pi) / 2 + rng.normal(scale=0.05, size=(n, 8))
    radius = rng.uniform(0, 2, size=(n, 8))
    pts = np.concatenate(
        [radius * np.cos(angle), radius * np.sin(angle)], axis=-1
    )
    a = pts.reshape(n, 1, 1, 16)
    b = a + rng.normal(scale=0.05, size=a.shape)
    fa = helpers.to_numpy(layer(a.astype("float32"))).reshape(n, -1)
    fb = helpers.to_numpy(layer(b.astype("float32"))).reshape(n, -1)
    num = np.linalg.norm(fa - fb, axis=1)
    den = np.linalg.norm(
        (a.astype("float32") - b.astype("float32")).reshape(n, -1), axis=1
    )
    assert np.max(num / den) <= 1.0 + 1e-4


def test_gradient_is_finite_at_zero():
    layer = _layer(4, [0.0, np.pi / 3])
    x = np.zeros((2, 3, 3, 4), "float32")
    x[1, 0, 0, 0] = -1.0  # another point with y = 0 (norm branch)
    _, grad = _backend.value_and_input_gradient(
        lambda v: keras.ops.sum(layer(v)), x
    )
    grad = helpers.to_numpy(grad)
    assert np.all(np.isfinite(grad))
    # Gradients flow to theta too, and stay finite, in a fit step at 0.
    model = keras.Sequential([keras.Input((3, 3, 4)), layer])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.fit(x, np.ones((2, 3, 3, 2), "float32"), epochs=1, verbose=0)
    theta = helpers.to_numpy(layer.theta)
    assert np.all(np.isfinite(theta))
    assert np.all(np.isfinite(helpers.to_numpy(model(x))))


def test_theta_is_clipped_and_initialised_in_range():
    layer = layers.LipPool(data_format="channels_last", seed=3)
    layer.build((None, 64))
    theta = helpers.to_numpy(layer.theta)
    assert np.all((theta >= 0) & (theta <= np.pi)) and np.std(theta) > 0.3
    # Raw angles outside [0, pi] act as the clipped ones.
    rng = np.random.default_rng(3)
    x = rng.normal(size=(8, 4)).astype("float32")
    clipped = _layer(4, [0.0, np.pi])
    out = helpers.to_numpy(clipped(x.reshape(8, 1, 1, 4)))
    raw = layers.LipPool(data_format="channels_last")
    raw.build((None, 4))
    raw.theta.assign(np.array([-1.0, 5.0], "float32"))
    np.testing.assert_allclose(helpers.to_numpy(raw(x)), out.reshape(8, 2))


def test_certification_sees_a_one_lipschitz_layer():
    layer = _layer(6, [0.1, 1.0, 3.0])
    assert certification.layer_lipschitz_bound(layer) == 1.0
    model = keras.Sequential(
        [
            keras.Input((4,)),
            layers.SpectralDense(6),
            layers.LipPool(data_format="channels_last"),
            layers.SpectralDense(2),
        ]
    )
    assert keras_lipschitz.lipschitz_bound(model) <= 1.0 + 1e-3


def test_bad_arguments():
    with pytest.raises(ValueError, match="channels"):
        layers.LipPool(data_format="channels_last").build((None, 3, 3, 5))
    with pytest.raises(ValueError, match="channels"):
        layers.LipPool(data_format="channels_last").build((None, None))
    with pytest.raises(ValueError, match="data_format"):
        layers.LipPool(data_format="nhwc")
    with pytest.raises(ValueError, match="seed"):
        layers.LipPool(seed=-1)


def test_save_load_and_config(tmp_path):
    model = keras.Sequential(
        [keras.Input((2, 2, 4)), layers.LipPool(data_format="channels_last")]
    )
    x = np.random.default_rng(4).normal(size=(3, 2, 2, 4)).astype("float32")
    loaded = helpers.save_and_load(model, tmp_path)
    np.testing.assert_allclose(
        helpers.to_numpy(loaded(x)), helpers.to_numpy(model(x)), atol=1e-6
    )
    layer = model.layers[-1]
    revived = layers.LipPool.from_config(layer.get_config())
    assert revived.get_config() == layer.get_config()
    assert layer.compute_output_shape((None, 2, 2, 4)) == (None, 2, 2, 2)
    assert math.isclose(layer.lipschitz_upper_bound(), 1.0)
