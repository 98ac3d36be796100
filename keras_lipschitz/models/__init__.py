"""Model builders of the papers' architectures."""

from keras_lipschitz.models.aoc import AOCNet
from keras_lipschitz.models.liresnet import LiResNet
from keras_lipschitz.models.linf import linf_dist_net
from keras_lipschitz.models.linf import recompute_running_means
from keras_lipschitz.models.sll import SLLNet
from keras_lipschitz.models.soc import LipConvNet

__all__ = [
    "AOCNet",
    "LiResNet",
    "LipConvNet",
    "linf_dist_net",
    "recompute_running_means",
    "SLLNet",
]
