"""Bound composition: guaranteed ℓ2 Lipschitz bounds of layers and models.

`layer_lipschitz_bound` bounds one layer; `tensor_bound` walks a model's
graph back from a tensor and composes the layer bounds (products along
chains, sums at `Add`, root-sum-of-squares at `Concatenate`);
`lipschitz_bound` is the public entry. Every certificate that needs a
model's (or a sub-graph's) constant uses this module.

Everything here runs on the host in NumPy float64, from weights converted
with `keras.ops.convert_to_numpy`, so results are identical on every
backend. No power-iteration estimate is ever used: every layer bound is an
exact norm or a guaranteed upper bound (`keras_lipschitz.bounds`).
"""

import math

import keras
import numpy as np

from keras_lipschitz import bounds
from keras_lipschitz import liplt
from keras_lipschitz.certification import _common
from keras_lipschitz.layers import _validation

# Layers that are 1-Lipschitz, or the identity, at inference.
_ONE_LIPSCHITZ = (
    keras.layers.InputLayer,
    keras.layers.Flatten,
    keras.layers.Reshape,
    keras.layers.Permute,
    keras.layers.Identity,
    keras.layers.Dropout,
    keras.layers.SpatialDropout2D,
    keras.layers.GaussianNoise,
    keras.layers.GaussianDropout,
    keras.layers.ZeroPadding2D,
    keras.layers.Cropping2D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.GlobalMaxPooling1D,
)

SUPPORTED_LAYERS = (
    "the layers of keras_lipschitz.layers (anything with "
    "`lipschitz_upper_bound()`), Dense, Conv1D, Conv2D (any stride, "
    "padding, dilation, groups), Conv1DTranspose, Conv2DTranspose, "
    "DepthwiseConv2D, SeparableConv2D, Activation/ReLU/LeakyReLU/"
    "ELU with a known constant, MaxPooling2D, AveragePooling2D, "
    "GlobalAveragePooling2D, GlobalMaxPooling2D, BatchNormalization, "
    "Rescaling, Normalization, Flatten, Reshape, Permute, Dropout, "
    "ZeroPadding2D, Cropping2D, Add, Subtract, Average, Concatenate, "
    "LipResidual, ConcatResidual and nested models"
)


def _unsupported(layer, reason=""):
    return ValueError(
        f"Cannot bound the Lipschitz constant of layer '{layer.name}' "
        f"({type(layer).__name__}){': ' + reason if reason else ''}. "
        f"Supported: {SUPPORTED_LAYERS}."
    )


def _activation_constant(layer, activation):
    name = getattr(activation, "__name__", None)
    if name not in _validation.ACTIVATION_LIPSCHITZ:
        raise _unsupported(layer, f"activation {name!r} has no known constant")
    return _validation.ACTIVATION_LIPSCHITZ[name]


def _pool_window_bound(layer, average):
    pool = tuple(layer.pool_size)
    strides = tuple(layer.strides or pool)
    if layer.padding != "valid":
        raise _unsupported(layer, "only padding='valid' is supported")
    # Number of windows one input pixel belongs to.
    overlap = 1
    for p, s in zip(pool, strides):
        overlap *= -(-p // s)
    if average:
        return math.sqrt(overlap / float(np.prod(pool)))
    return math.sqrt(overlap)


# Plain Keras convolutions bounded by `_conv_bound` (SeparableConv2D as the
# product of its depthwise and pointwise parts).
_PLAIN_CONVS = (
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv2D,
)


def _conv_bound(layer, input_shape):
    """Guaranteed norm of a plain Keras 1-D/2-D convolution (any padding,
    stride, dilation, groups, depthwise, separable or transposed), on its
    real input size when `input_shape` gives it, else a size-free bound.

    1-D layers are 2-D ones of height 1 ("causal" padding included, see
    `bounds.conv_spectral_norm_upper_bound`).
    """
    rank = 1 if isinstance(
        layer, (keras.layers.Conv1D, keras.layers.Conv1DTranspose)
    ) else 2
    transpose = isinstance(
        layer, (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose)
    )
    separable = isinstance(layer, keras.layers.SeparableConv2D)
    depthwise = separable or isinstance(layer, keras.layers.DepthwiseConv2D)
    kernel = _common.to_float64(
        layer.depthwise_kernel if separable else layer.kernel
    )
    strides = tuple(layer.strides)
    dilation = tuple(layer.dilation_rate)
    if getattr(layer, "lora_enabled", False):
        raise _unsupported(layer, "LoRA is not supported")
    spatial = None
    if input_shape is not None:
        axes = (
            tuple(range(1, 1 + rank))
            if layer.data_format == "channels_last"
            else tuple(range(2, 2 + rank))
        )
        spatial = tuple(input_shape[a] for a in axes)
        if transpose and None not in spatial:
            # The transposed conv is the adjoint of a conv on its output.
            out = layer.compute_output_shape(tuple(input_shape))
            spatial = tuple(out[a] for a in axes)
    padding = layer.padding
    if rank == 1:
        kernel = kernel[None]
        strides, dilation = (1,) + strides, (1,) + dilation
        if spatial is not None:
            spatial = (1,) + spatial
    groups = getattr(layer, "groups", 1)
    if spatial is None or None in spatial:
        # Size unknown: the size-free reshaped-kernel bound of each block.
        norm = max(
            bounds.conv_reshaped_upper_bound(part)
            for part in bounds.conv_kernel_parts(
                bounds.dilate_kernel(kernel, dilation), groups, depthwise
            )
        )
    else:
        norm = bounds.conv_layer_upper_bound(
            kernel, spatial, strides, padding, dilation,
            groups=groups, depthwise=depthwise, transpose=transpose,
        )
    if separable:
        pointwise = _common.to_float64(layer.pointwise_kernel)
        norm *= bounds.dense_spectral_norm(
            pointwise.reshape(-1, pointwise.shape[-1])
        )
    return norm


def layer_lipschitz_bound(layer, input_shape=None):
    """Guaranteed upper bound on one layer's ℓ2 Lipschitz constant.

    Args:
        layer: a Keras layer (single input).
        input_shape: the layer's input shape (needed for plain `Conv2D` and
            `GlobalAveragePooling2D`, whose norms depend on the input size).

    Returns:
        A Python float.

    Raises:
        ValueError: naming the layer, if it cannot be bounded.
    """
    if hasattr(layer, "lipschitz_upper_bound"):
        return float(layer.lipschitz_upper_bound())
    if isinstance(layer, keras.Model):
        return lipschitz_bound(layer)
    if isinstance(layer, _ONE_LIPSCHITZ):
        return 1.0
    if isinstance(layer, keras.layers.Dense):
        if getattr(layer, "lora_enabled", False):
            raise _unsupported(layer, "LoRA is not supported")
        return bounds.dense_spectral_norm(
            _common.to_float64(layer.kernel)
        ) * _activation_constant(layer, layer.activation)
    if isinstance(layer, _PLAIN_CONVS):
        return _conv_bound(layer, input_shape) * _activation_constant(
            layer, layer.activation
        )
    if isinstance(layer, keras.layers.Activation):
        return _activation_constant(layer, layer.activation)
    if isinstance(layer, keras.layers.ReLU):
        return max(1.0, abs(float(layer.negative_slope)))
    if isinstance(layer, keras.layers.LeakyReLU):
        return max(1.0, abs(float(layer.negative_slope)))
    if isinstance(layer, keras.layers.ELU):
        return max(1.0, abs(float(layer.alpha)))
    if isinstance(layer, keras.layers.MaxPooling2D):
        return _pool_window_bound(layer, average=False)
    if isinstance(layer, keras.layers.AveragePooling2D):
        return _pool_window_bound(layer, average=True)
    if isinstance(layer, keras.layers.GlobalAveragePooling2D):
        axes = (1, 2) if layer.data_format == "channels_last" else (2, 3)
        if input_shape is None or None in [input_shape[a] for a in axes]:
            raise _unsupported(layer, "spatial size unknown")
        return 1.0 / math.sqrt(input_shape[axes[0]] * input_shape[axes[1]])
    if isinstance(layer, keras.layers.BatchNormalization):
        scale = 1.0 / np.sqrt(_common.to_float64(layer.moving_variance) + layer.epsilon)
        if layer.scale:
            scale = scale * _common.to_float64(layer.gamma)
        return float(np.max(np.abs(scale)))
    if isinstance(layer, keras.layers.Rescaling):
        return float(np.max(np.abs(np.asarray(layer.scale, np.float64))))
    if isinstance(layer, keras.layers.Normalization):
        if getattr(layer, "invert", False):
            raise _unsupported(layer, "invert=True is not supported")
        variance = _common.to_float64(layer.variance)
        return float(1.0 / np.sqrt(np.maximum(np.min(variance), 1e-7)))
    raise _unsupported(layer)


def tensor_bound(tensor, cache=None):
    """Guaranteed bound of the map from the model inputs to `tensor`.

    Args:
        tensor: a symbolic tensor of a functional or Sequential model.
        cache: a dict shared between calls on the same graph (bounds of the
            tensors already visited, by `id`), or None.

    Returns:
        A Python float.

    Raises:
        ValueError: naming the first layer it cannot bound.
    """
    cache = {} if cache is None else cache
    key = id(tensor)
    if key in cache:
        return cache[key]
    operation, inputs = _common.producer(tensor)
    if not inputs:  # a model input
        cache[key] = 1.0
        return 1.0
    input_bounds = [tensor_bound(t, cache) for t in inputs]
    if isinstance(operation, keras.layers.Add):
        result = sum(input_bounds)
    elif isinstance(operation, keras.layers.Subtract):
        result = sum(input_bounds)
    elif isinstance(operation, keras.layers.Average):
        result = sum(input_bounds) / len(input_bounds)
    elif isinstance(operation, keras.layers.Concatenate):
        result = math.sqrt(sum(b * b for b in input_bounds))
    elif len(inputs) > 1 and hasattr(operation, "merge_lipschitz_bound"):
        # Residual combiners of this library (layers/residual.py).
        result = float(operation.merge_lipschitz_bound(input_bounds))
    elif len(inputs) == 1:
        result = input_bounds[0] * layer_lipschitz_bound(
            operation, tuple(inputs[0].shape)
        )
    else:
        raise _unsupported(operation, "multiple inputs")
    cache[key] = result
    return result


def lipschitz_bound(model, method="product"):
    """Guaranteed upper bound on a model's ℓ2 Lipschitz constant.

    The bound composes exact or guaranteed per-layer bounds over the model's
    graph: a product along chains, the *sum* of branch bounds at a residual
    `Add`, and $\\sqrt{\\sum_i L_i^2}$ at a `Concatenate`. Layers of this
    library contribute `lipschitz_upper_bound()` (exact SVD for dense
    kernels, the padded-grid FFT / explicit-operator bound for
    convolutions); plain `Dense` and `Conv2D` contribute the same exact
    norms of their kernels. It never returns a power-iteration estimate.

    With `method="liplt"` the bound is the LipLT recursion of Fazlyab et al.
    (NeurIPS 2023) for feed-forward models of linear layers and monotone
    slope-restricted activations, with exact norms of the layer products
    (`keras_lipschitz.liplt.liplt_lipschitz_bound`), capped by the product
    bound: never larger, often much smaller for unconstrained networks.

    Args:
        model: a built Sequential or functional `keras.Model` with a single
            input and a single output.
        method: `"product"` (layer-wise composition, any supported graph) or
            `"liplt"` (feed-forward chains only; raises `ValueError` naming
            the first unsupported layer).

    Returns:
        A Python float $L$ with
        $\\|f(x) - f(x')\\|_2 \\le L\\|x - x'\\|_2$ for all inputs of the
        built size.

    Raises:
        ValueError: naming the first layer it cannot bound.

    Example:

    >>> import keras
    >>> from keras_lipschitz.layers import SpectralDense, GroupSort2
    >>> model = keras.Sequential(
    ...     [keras.Input((4,)), SpectralDense(8), GroupSort2(), SpectralDense(2)])
    >>> lipschitz_bound(model) <= 1.0 + 1e-6
    True
    """
    if method not in ("product", "liplt"):
        raise ValueError(
            "`method` must be 'product' or 'liplt'. "
            f"Received: method={method!r}"
        )
    outputs = _common.single_tensor(model, "outputs")
    if method == "liplt":
        return min(liplt.liplt_lipschitz_bound(model), tensor_bound(outputs))
    return tensor_bound(outputs)
