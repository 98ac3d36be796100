"""Model builders of the papers' architectures."""

from keras_lipschitz.models.linf import linf_dist_net
from keras_lipschitz.models.linf import recompute_running_means
from keras_lipschitz.models.soc import LipConvNet

__all__ = [
    "LipConvNet",
    "linf_dist_net",
    "recompute_running_means",
]
