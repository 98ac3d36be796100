"""deel-lip's layers (`deel.lip.layers`), as keras-lipschitz layers.

Every name is a class with deel-lip's signature whose call returns a layer
of `keras_lipschitz.layers` (`_classes.deel_lip_class`):
`isinstance(x, lip.layers.SpectralDense)` is true for the layers it
returns, and `issubclass(lip.layers.SpectralDense, LipschitzLayer)` follows
deel-lip's hierarchy (`LipschitzLayer` and `Condensable` below also
recognise our own layers). A bad argument raises a `ValueError` that is
also a `RuntimeError`, as deel-lip raises either. Arguments that only tune
deel-lip's iterations are accepted:

- `eps_spectral`, `maxiter_spectral`: our power iteration is warm-started
  and runs one step per training call; in inference the kernel is divided
  by a *guaranteed* upper bound of its spectral norm (Gram iteration), so
  there is no tolerance to set;
- `eps_bjorck`: Björck runs a fixed `maxiter_bjorck` steps (our
  `bjorck_iterations`; a fixed count keeps it differentiable on JAX);
  `eps_bjorck=None` disables it, as in deel-lip;
- `beta_bjorck` is our `bjorck_beta`, `k_coef_lip` our `lipschitz`.

There is nothing to condense: the constrained kernel is derived in every
call (`layer.effective_kernel()`), and `vanilla_export` copies it.
"""

from keras_lipschitz.compat.deel_lip.layers import base_layer
from keras_lipschitz.compat.deel_lip.layers import convolutional
from keras_lipschitz.compat.deel_lip.layers import dense
from keras_lipschitz.compat.deel_lip.layers import pooling
from keras_lipschitz.compat.deel_lip.layers import unconstrained
from keras_lipschitz.compat.deel_lip.layers._common import DEFAULT_BETA_BJORCK
from keras_lipschitz.compat.deel_lip.layers._common import DEFAULT_EPS_BJORCK
from keras_lipschitz.compat.deel_lip.layers._common import DEFAULT_EPS_SPECTRAL
from keras_lipschitz.compat.deel_lip.layers._common import (
    DEFAULT_MAXITER_BJORCK,
)
from keras_lipschitz.compat.deel_lip.layers._common import (
    DEFAULT_MAXITER_SPECTRAL,
)
from keras_lipschitz.compat.deel_lip.layers.activations import FullSort
from keras_lipschitz.compat.deel_lip.layers.activations import GroupSort
from keras_lipschitz.compat.deel_lip.layers.activations import GroupSort2
from keras_lipschitz.compat.deel_lip.layers.activations import Householder
from keras_lipschitz.compat.deel_lip.layers.activations import MaxMin
from keras_lipschitz.compat.deel_lip.layers.activations import PReLUlip
from keras_lipschitz.compat.deel_lip.layers.base_layer import Condensable
from keras_lipschitz.compat.deel_lip.layers.base_layer import LipschitzLayer
from keras_lipschitz.compat.deel_lip.layers.convolutional import (
    FrobeniusConv2D,
)
from keras_lipschitz.compat.deel_lip.layers.convolutional import SpectralConv2D
from keras_lipschitz.compat.deel_lip.layers.convolutional import (
    SpectralConv2DTranspose,
)
from keras_lipschitz.compat.deel_lip.layers.dense import FrobeniusDense
from keras_lipschitz.compat.deel_lip.layers.dense import SpectralDense
from keras_lipschitz.compat.deel_lip.layers.pooling import (
    InvertibleDownSampling,
)
from keras_lipschitz.compat.deel_lip.layers.pooling import InvertibleUpSampling
from keras_lipschitz.compat.deel_lip.layers.pooling import (
    ScaledAveragePooling2D,
)
from keras_lipschitz.compat.deel_lip.layers.pooling import (
    ScaledGlobalAveragePooling2D,
)
from keras_lipschitz.compat.deel_lip.layers.pooling import (
    ScaledGlobalL2NormPooling2D,
)
from keras_lipschitz.compat.deel_lip.layers.pooling import (
    ScaledL2NormPooling2D,
)

__all__ = [
    "Condensable",
    "FrobeniusConv2D",
    "FrobeniusDense",
    "FullSort",
    "GroupSort",
    "GroupSort2",
    "Householder",
    "InvertibleDownSampling",
    "InvertibleUpSampling",
    "LipschitzLayer",
    "MaxMin",
    "PReLUlip",
    "ScaledAveragePooling2D",
    "ScaledGlobalAveragePooling2D",
    "ScaledGlobalL2NormPooling2D",
    "ScaledL2NormPooling2D",
    "SpectralConv2D",
    "SpectralConv2DTranspose",
    "SpectralDense",
    "base_layer",
    "convolutional",
    "dense",
    "pooling",
    "unconstrained",
]
