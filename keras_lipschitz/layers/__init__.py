"""Lipschitz-constrained Keras layers."""

from keras_lipschitz.layers.activations import FullSort
from keras_lipschitz.layers.activations import GroupSort
from keras_lipschitz.layers.activations import GroupSort2
from keras_lipschitz.layers.activations import Householder
from keras_lipschitz.layers.activations import MaxMin
from keras_lipschitz.layers.aol import AOLConv2D
from keras_lipschitz.layers.aol import AOLDense
from keras_lipschitz.layers.cayley import CayleyConv2D
from keras_lipschitz.layers.conv import BjorckConv1D
from keras_lipschitz.layers.conv import BjorckConv2D
from keras_lipschitz.layers.conv import BjorckConv2DTranspose
from keras_lipschitz.layers.conv import FrobeniusConv2D
from keras_lipschitz.layers.conv import PadConv2D
from keras_lipschitz.layers.conv import SpectralConv1D
from keras_lipschitz.layers.conv import SpectralConv2D
from keras_lipschitz.layers.conv import SpectralConv2DTranspose
from keras_lipschitz.layers.cpl import CPLConv2D
from keras_lipschitz.layers.cpl import CPLDense
from keras_lipschitz.layers.dense import BjorckDense
from keras_lipschitz.layers.dense import FrobeniusDense
from keras_lipschitz.layers.dense import SpectralDense
from keras_lipschitz.layers.heads import CRCLipHead
from keras_lipschitz.layers.linf import LinfDistDense
from keras_lipschitz.layers.linf import LogitScale
from keras_lipschitz.layers.linf import SortNetDense
from keras_lipschitz.layers.liresnet import LiResConv2D
from keras_lipschitz.layers.orthogonal_conv import AOCConv2D
from keras_lipschitz.layers.orthogonal_conv import AOCConv2DTranspose
from keras_lipschitz.layers.orthogonal_conv import BCOPConv2D
from keras_lipschitz.layers.normalization import BatchCentering
from keras_lipschitz.layers.normalization import BatchLipNorm
from keras_lipschitz.layers.normalization import LayerCentering
from keras_lipschitz.layers.pooling import InvertibleDownSampling
from keras_lipschitz.layers.pooling import InvertibleUpSampling
from keras_lipschitz.layers.pooling import LipPool
from keras_lipschitz.layers.pooling import ScaledAveragePooling2D
from keras_lipschitz.layers.pooling import ScaledGlobalAveragePooling2D
from keras_lipschitz.layers.pooling import ScaledGlobalL2NormPooling2D
from keras_lipschitz.layers.pooling import ScaledL2NormPooling2D
from keras_lipschitz.layers.reshaping import ChannelZeroPadding
from keras_lipschitz.layers.residual import ConcatResidual
from keras_lipschitz.layers.residual import LipResidual
from keras_lipschitz.layers.sll import SLLAOCConv2D
from keras_lipschitz.layers.sll import SLLConv2D
from keras_lipschitz.layers.sll import SLLDense
from keras_lipschitz.layers.soc import SOCConv2D
from keras_lipschitz.layers.soc import SOCDense

__all__ = [
    "AOCConv2D",
    "AOCConv2DTranspose",
    "AOLConv2D",
    "AOLDense",
    "BatchCentering",
    "BatchLipNorm",
    "BCOPConv2D",
    "BjorckConv1D",
    "BjorckConv2D",
    "BjorckConv2DTranspose",
    "BjorckDense",
    "CayleyConv2D",
    "ChannelZeroPadding",
    "ConcatResidual",
    "CPLConv2D",
    "CPLDense",
    "CRCLipHead",
    "FrobeniusConv2D",
    "FrobeniusDense",
    "FullSort",
    "GroupSort",
    "GroupSort2",
    "Householder",
    "InvertibleDownSampling",
    "InvertibleUpSampling",
    "LayerCentering",
    "LinfDistDense",
    "LipPool",
    "LipResidual",
    "LiResConv2D",
    "LogitScale",
    "MaxMin",
    "PadConv2D",
    "ScaledAveragePooling2D",
    "ScaledGlobalAveragePooling2D",
    "ScaledGlobalL2NormPooling2D",
    "ScaledL2NormPooling2D",
    "SLLAOCConv2D",
    "SLLConv2D",
    "SLLDense",
    "SOCConv2D",
    "SOCDense",
    "SortNetDense",
    "SpectralConv1D",
    "SpectralConv2D",
    "SpectralConv2DTranspose",
    "SpectralDense",
]
