"""keras-lipschitz: Lipschitz-constrained layers and certification for Keras 3.

Set `KERAS_BACKEND` (tensorflow, jax or torch) before importing Keras; the
library never chooses the backend.
"""

from keras_lipschitz import attacks
from keras_lipschitz import bounds
from keras_lipschitz import callbacks
from keras_lipschitz import certification
from keras_lipschitz import compat
from keras_lipschitz import constraints
from keras_lipschitz import curvature
from keras_lipschitz import initializers
from keras_lipschitz import layers
from keras_lipschitz import liplt
from keras_lipschitz import losses
from keras_lipschitz import metrics
from keras_lipschitz import models
from keras_lipschitz import normalizers
from keras_lipschitz import regularizers
from keras_lipschitz import utils
from keras_lipschitz.certification import certified_accuracy
from keras_lipschitz.certification import certify
from keras_lipschitz.certification import lipschitz_bound
from keras_lipschitz.empirical import empirical_lipschitz
from keras_lipschitz.export import vanilla_export
from keras_lipschitz.version import __version__

__all__ = [
    "__version__",
    "attacks",
    "bounds",
    "callbacks",
    "certification",
    "certified_accuracy",
    "certify",
    "compat",
    "constraints",
    "curvature",
    "empirical_lipschitz",
    "initializers",
    "lipschitz_bound",
    "layers",
    "liplt",
    "losses",
    "metrics",
    "models",
    "normalizers",
    "regularizers",
    "utils",
    "vanilla_export",
]
