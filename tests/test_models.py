"""Whole models: compiled training, composed bounds, real MNIST."""

import keras
import numpy as np
import pytest

from keras_lipschitz import layers
from tests import helpers
from tests import model_zoo


def _product_bound(model):
    bound = 1.0
    for layer in model.layers:
        if hasattr(layer, "lipschitz_upper_bound"):
            bound *= layer.lipschitz_upper_bound()
        else:
            assert not layer.weights, f"no bound for {layer.name}"
    return bound


def test_sequential_model_trains_under_jit_and_keeps_its_bound():
    model = model_zoo.sequential_model()
    jit = keras.config.backend() != "torch"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64,) + model_zoo.INPUT_SHAPE).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 3, 64), 3)
    model.compile(
        optimizer=keras.optimizers.Adam(0.05),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
        jit_compile=jit,
    )
    history = model.fit(x, y, epochs=3, batch_size=16, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    bound = _product_bound(model)
    # Every layer guarantees 1; the guaranteed bounds can exceed it only
    # by the slack of the sound conv bound on these tiny 8x8 inputs.
    assert bound <= 1.25
    ratio = helpers.random_pair_ratio(
        lambda v: model(v, training=False), model_zoo.INPUT_SHAPE, pairs=128
    )
    assert ratio <= bound * (1 + 1e-5)


def test_functional_model_trains_under_jit():
    model = model_zoo.functional_model()
    jit = keras.config.backend() != "torch"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64,) + model_zoo.INPUT_SHAPE).astype("float32")
    y = rng.normal(size=(64, 3)).astype("float32")
    model.compile(optimizer="adam", loss="mse", jit_compile=jit)
    history = model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    # Residual Add: the bound of a sum is the sum of the branch bounds.
    ratio = helpers.random_pair_ratio(
        lambda v: model(v, training=False), model_zoo.INPUT_SHAPE, pairs=128
    )
    assert ratio <= 2.0 * 1.25


def _tutorial_model():
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            layers.SpectralConv2D(16, 3),
            layers.GroupSort2(),
            layers.ScaledL2NormPooling2D(2),
            layers.SpectralConv2D(32, 3),
            layers.GroupSort2(),
            layers.ScaledL2NormPooling2D(2),
            keras.layers.Flatten(),
            layers.SpectralDense(64),
            layers.GroupSort2(),
            layers.SpectralDense(10),
        ]
    )


def test_deel_lip_tutorial_model_learns_real_mnist(mnist_path):
    with np.load(mnist_path) as data:
        x_train = data["x_train"][:12000].astype("float32")[..., None] / 255
        y_train = data["y_train"][:12000]
        x_test = data["x_test"][:1000].astype("float32")[..., None] / 255
        y_test = data["y_test"][:1000]
    model = _tutorial_model()

    def tau_cross_entropy(y_true, logits):
        # 1-Lipschitz logits are small: a temperature makes CE informative.
        return keras.losses.sparse_categorical_crossentropy(
            y_true, 100.0 * logits, from_logits=True
        )

    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=tau_cross_entropy,
        metrics=["accuracy"],
    )
    model.fit(
        x_train,
        y_train,
        epochs=1,
        batch_size=128,
        verbose=0,
    )
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    # 94 steps: far from converged, far above chance (0.1).
    assert accuracy > 0.8
    bound = _product_bound(model)
    assert bound <= 1.0 + 0.1
