"""Certification of single-output (binary, HKR-style) models."""

import keras
import numpy as np
import pytest

import keras_lipschitz
from keras_lipschitz import attacks
from keras_lipschitz import layers
from keras_lipschitz import losses
from tests import helpers


def _two_blobs(n=128, dim=4, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = np.where(y[:, None] > 0, 1.0, -1.0) + 0.7 * rng.normal(size=(n, dim))
    return x.astype("float32"), y


def _as_two_logits(model):
    """`[-f, f]`: argmax is class 1 iff f > 0, for the multiclass attack."""
    inputs = keras.Input(model.input_shape[1:])
    score = model(inputs)
    logits = keras.layers.Concatenate()(
        [keras.layers.Rescaling(-1.0)(score), score]
    )
    return keras.Model(inputs, logits)


def test_linear_binary_radius_is_the_exact_distance_to_the_boundary():
    x, y = _two_blobs(n=32)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    w = np.array([[0.5], [-1.0], [2.0], [0.25]], "float32")
    model.layers[-1].set_weights([w, np.array([0.3], "float32")])
    labels = np.where(y > 0, 1, -1)  # {-1, +1} labels are accepted too
    radius = keras_lipschitz.certify(model, x, labels)
    f = x.astype(np.float64) @ w[:, 0].astype(np.float64) + 0.3
    norm = np.linalg.norm(w.astype(np.float64))
    expected = np.where(labels * f > 0, np.abs(f) / norm, 0.0)
    np.testing.assert_allclose(radius, expected, rtol=1e-5, atol=1e-7)
    assert np.any(radius == 0) and np.any(radius > 0)
    # The radius is tight: the boundary is at distance |f| / ||w||.
    ok = radius > 0
    direction = -np.sign(f[ok])[:, None] * (w[:, 0] / norm)[None, :]
    inside = x[ok] + 0.999 * radius[ok, None] * direction
    beyond = x[ok] + 1.001 * radius[ok, None] * direction
    score_inside = helpers.to_numpy(model(inside.astype("float32")))[:, 0]
    score_beyond = helpers.to_numpy(model(beyond.astype("float32")))[:, 0]
    assert np.all(np.sign(score_inside) == np.sign(f[ok]))
    assert np.all(np.sign(score_beyond) == -np.sign(f[ok]))
    # certified_accuracy agrees with the radii; (N, 1) labels work.
    acc = keras_lipschitz.certified_accuracy(model, x, y[:, None], [0.0, 0.5])
    np.testing.assert_allclose(acc, [np.mean(radius > 0), np.mean(radius > 0.5)])


def test_pgd_never_beats_a_binary_certificate():
    x, y = _two_blobs()
    model = keras.Sequential(
        [
            keras.Input((4,)),
            layers.SpectralDense(16),
            layers.GroupSort2(),
            layers.BjorckDense(16),
            layers.GroupSort2(),
            layers.SpectralDense(1),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(0.02),
        loss=losses.HKR(alpha=10.0, min_margin=1.0),
    )
    model.fit(x, y, epochs=15, batch_size=64, verbose=0)
    radius = keras_lipschitz.certify(model, x, y)
    certified = radius > 0
    assert certified.mean() > 0.5, "too few certified points to test"
    wrapped = _as_two_logits(model)
    x, y, radius = x[certified][:48], y[certified][:48], radius[certified][:48]
    _, success = attacks.pgd_l2(wrapped, x, y, 0.999 * radius, steps=15)
    assert not np.any(success), "an attack beat a binary certificate"
    # The attack is strong enough to fail the check above if it were unsound.
    _, success = attacks.pgd_l2(wrapped, x, y, 3.0 * radius + 0.2, steps=15)
    assert np.any(success)


@pytest.mark.parametrize(
    "y, match",
    [
        (np.array([0, 1, 2, 1]), "binary labels"),
        (np.zeros((4, 2)), "shape"),
        (np.zeros(3), "shape"),
    ],
)
def test_binary_certify_rejects_bad_labels(y, match):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    x = np.zeros((4, 2), "float32")
    with pytest.raises(ValueError, match=match):
        keras_lipschitz.certify(model, x, y)
