"""Small models using every layer family, shared by export and saving tests."""

import keras
import numpy as np

from keras_lipschitz import layers

INPUT_SHAPE = (8, 8, 2)


def functional_model(seed=0):
    """A functional model with a residual `Add` and every layer family."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(INPUT_SHAPE)
    x = layers.SpectralConv2D(4, 3, padding="same")(inputs)
    x = layers.GroupSort2()(x)
    x = layers.BjorckConv2D(4, 3, padding="same")(x)
    x = layers.Householder()(x)
    x = layers.ScaledL2NormPooling2D(2)(x)
    x = layers.SpectralConv2D(8, 2, strides=2, padding="valid")(x)
    x = layers.FullSort()(x)
    x = layers.InvertibleDownSampling(2)(x)
    x = layers.ScaledGlobalL2NormPooling2D()(x)
    a = layers.SpectralDense(8)(x)
    b = layers.BjorckDense(8)(x)
    x = keras.layers.Add()([a, b])
    x = layers.GroupSort(4)(x)
    outputs = layers.FrobeniusDense(3)(x)
    return keras.Model(inputs, outputs)


def sequential_model(seed=0):
    """The deel-lip tutorial stack, scaled down."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input(INPUT_SHAPE),
            layers.SpectralConv2D(4, 3),
            layers.GroupSort2(),
            layers.ScaledAveragePooling2D(2),
            layers.BjorckConv2D(4, 3),
            layers.GroupSort2(),
            layers.ScaledGlobalAveragePooling2D(),
            layers.SpectralDense(6),
            layers.GroupSort2(),
            layers.FrobeniusDense(3, disjoint_neurons=False),
        ]
    )


def train_a_little(model, seed=0, steps=3):
    """A few training steps so that power-iteration state has moved."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(32,) + INPUT_SHAPE).astype("float32")
    y = rng.normal(size=(32, 3)).astype("float32")
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    model.fit(x, y, epochs=steps, batch_size=32, verbose=0)
    return model


def probe_inputs(seed=1, n=5):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n,) + INPUT_SHAPE).astype("float32")
