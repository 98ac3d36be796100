"""keras-lipschitz: Lipschitz-constrained layers and certification for Keras 3."""

from keras_lipschitz import bounds
from keras_lipschitz import layers
from keras_lipschitz import normalizers
from keras_lipschitz.version import __version__

__all__ = [
    "__version__",
    "bounds",
    "layers",
    "normalizers",
]
