"""Lipschitz-constrained Keras layers."""

from keras_lipschitz.layers.dense import BjorckDense
from keras_lipschitz.layers.dense import FrobeniusDense
from keras_lipschitz.layers.dense import SpectralDense

__all__ = [
    "BjorckDense",
    "FrobeniusDense",
    "SpectralDense",
]
