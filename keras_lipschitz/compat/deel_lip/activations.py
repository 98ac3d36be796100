"""deel-lip's `deel.lip.activations` (the same layers as `layers`)."""

from keras_lipschitz.compat.deel_lip._mapping import alias
from keras_lipschitz.compat.deel_lip.layers.activations import FullSort
from keras_lipschitz.compat.deel_lip.layers.activations import GroupSort
from keras_lipschitz.compat.deel_lip.layers.activations import GroupSort2
from keras_lipschitz.compat.deel_lip.layers.activations import Householder
from keras_lipschitz.compat.deel_lip.layers.activations import MaxMin
from keras_lipschitz.compat.deel_lip.layers.activations import PReLUlip
from keras_lipschitz.compat.deel_lip.layers.base_layer import LipschitzLayer

for _name, _obj in (
    ("FullSort", FullSort),
    ("GroupSort", GroupSort),
    ("GroupSort2", GroupSort2),
    ("Householder", Householder),
    ("MaxMin", MaxMin),
    ("PReLUlip", PReLUlip),
):
    alias("activations", _name, _obj)

__all__ = [
    "FullSort",
    "GroupSort",
    "GroupSort2",
    "Householder",
    "LipschitzLayer",
    "MaxMin",
    "PReLUlip",
]
