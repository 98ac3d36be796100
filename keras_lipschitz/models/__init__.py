"""Model builders of the papers' architectures."""

from keras_lipschitz.models.soc import LipConvNet

__all__ = [
    "LipConvNet",
]
