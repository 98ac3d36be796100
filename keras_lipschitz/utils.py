"""Singular values of layers and models, computed on the host in float64.

`compute_layer_sv(layer)` returns the smallest and largest singular values
of a layer's linear map (or the range of its gradient norms for the
gradient-norm-preserving activations), `compute_model_sv(model)` those of
every layer. They are *exact* (float64 SVDs of the real operator) wherever
the operator fits in memory:

- dense layers (plain `Dense` and every keras-lipschitz layer with
  `effective_kernel()` and `units`): the SVD of the inference-mode kernel
  $W$ ($d_{in} \\times d_{out}$). As in deel-lip, the minimum is over the
  $\\min(d_{in}, d_{out})$ singular values of $W$;
- convolutions (plain `Conv2D` and every keras-lipschitz convolution with
  `effective_kernel()` and `filters`): the SVD of the explicit matrix of
  the zero-padded, strided convolution on the layer's input size
  (`keras_lipschitz.bounds.conv_operator_matrix`, or the layer's own
  `operator_matrix()` where it has one: `PadConv2D`'s padding, and the
  circular or causal padding, dilation, groups and transposition of the
  1-D, 2-D and transposed convolutions). Above `max_input_dim` input
  coordinates the matrix is not formed: the result is `(None, upper)`
  with `upper` the layer's guaranteed bound;
- the sorting and Householder activations and `MaxMin`: gradient norm
  preserving, so `(L, L)` with $L$ their `lipschitz`; `ReLU` `(0, 1)`;
  `BatchNormalization` the extreme absolute scales; `Add` of $n$ inputs
  `(n, n)` (deel-lip's convention: the bound of the sum of $n$ identities);
- the linear pooling layers (`ScaledAveragePooling2D`,
  `ScaledGlobalAveragePooling2D`): `(L, L)` when the spatial size is a
  multiple of the pool (orthogonal rows).

Other layers give `(None, None)` unless `supplementary_type2sv` maps their
type to a function `(layer, input_shape) -> (min, max)`.
"""

import keras
import numpy as np

from keras_lipschitz import bounds
from keras_lipschitz.certification import _common

# Above this many input coordinates, the explicit conv matrix is not formed.
MAX_INPUT_DIM = 4096


def _svd_range(matrix):
    values = np.linalg.svd(np.asarray(matrix, np.float64), compute_uv=False)
    if values.size == 0:
        return (0.0, 0.0)
    return (float(values.min()), float(values.max()))


def _kernel(layer):
    if hasattr(layer, "effective_kernel"):
        return np.asarray(layer.effective_kernel(), np.float64)
    return _common.to_float64(layer.kernel)


def _input_spatial(layer, input_shape):
    data_format = getattr(layer, "data_format", "channels_last")
    axes = (1, 2) if data_format == "channels_last" else (2, 3)
    if input_shape is not None and len(input_shape) == 4:
        size = tuple(input_shape[a] for a in axes)
        if None not in size:
            return size
    built = getattr(layer, "built_spatial_shape", None)
    if built is not None and None not in built:
        return tuple(built)
    return None


def _activation_scale(layer):
    """The activation's gradient-norm range, as a multiplier pair."""
    activation = getattr(layer, "activation", None)
    if activation is None or activation is keras.activations.linear:
        return (1.0, 1.0)
    if isinstance(activation, keras.layers.Layer):
        return _gnp_range(activation) or (None, None)
    if getattr(activation, "__name__", None) == "relu":
        return (0.0, 1.0)
    return (None, None)


def _combine(values, scale):
    low, high = values
    s_low, s_high = scale
    return (
        None if low is None or s_low is None else low * s_low,
        None if high is None or s_high is None else high * s_high,
    )


def _sv_dense(layer, input_shape):
    return _combine(_svd_range(_kernel(layer)), _activation_scale(layer))


def _sv_conv(layer, input_shape, max_input_dim):
    size = _input_spatial(layer, input_shape)
    kernel = _kernel(layer)
    if size is None or int(np.prod(size)) * kernel.shape[-2] > max_input_dim:
        bound = getattr(layer, "lipschitz_upper_bound", None)
        if bound is not None:
            try:
                return (None, float(bound()))
            except ValueError:
                return (None, None)
        if size is None:
            return (None, None)
        upper = bounds.conv_spectral_norm_upper_bound(
            kernel, size, tuple(layer.strides), layer.padding
        )
        return _combine((None, upper), _activation_scale(layer))
    if hasattr(layer, "operator_matrix"):
        matrix = layer.operator_matrix(size)
    else:
        matrix = bounds.conv_operator_matrix(
            kernel, size, tuple(layer.strides), layer.padding
        )
    return _combine(_svd_range(matrix), _activation_scale(layer))


def _gnp_range(layer):
    """`(L, L)` for the gradient-norm-preserving activations, else None."""
    from keras_lipschitz.layers import activations

    gnp = (
        activations.GroupSort,
        activations.Householder,
        activations.MaxMin,
    )
    if isinstance(layer, gnp):
        value = float(layer.lipschitz)
        return (value, value)
    return None


def _sv_pooling(layer, input_shape):
    from keras_lipschitz.layers import pooling

    value = float(layer.lipschitz)
    if isinstance(layer, pooling.ScaledGlobalAveragePooling2D):
        return (value, value)
    size = _input_spatial(layer, input_shape)
    if size is not None and all(
        n % p == 0 for n, p in zip(size, layer.pool_size)
    ):
        return (value, value)
    # Dropped rows or columns: some inputs have no effect.
    return (0.0, value)


def compute_layer_sv(
    layer, supplementary_type2sv=None, max_input_dim=MAX_INPUT_DIM
):
    """Smallest and largest singular values of one layer (see the module).

    Args:
        layer: a built Keras layer (its input shape is read from
            `layer.input` when it has been called in a model).
        supplementary_type2sv: optional dict mapping a layer type to a
            function `(layer, input_shape) -> (min, max)`, used first.
        max_input_dim: int, the largest number of input coordinates for
            which a convolution's explicit matrix is formed.

    Returns:
        A tuple `(min, max)` of Python floats, or `None` entries where the
        value is not known.

    Example:

    >>> import numpy as np
    >>> layer = keras.layers.Dense(2, use_bias=False)
    >>> _ = layer(np.ones((1, 2), "float32"))
    >>> _ = layer.kernel.assign(np.diag([3.0, 0.5]).astype("float32"))
    >>> tuple(round(v, 4) for v in compute_layer_sv(layer))
    (0.5, 3.0)
    """
    from keras_lipschitz.layers import conv
    from keras_lipschitz.layers import pooling

    try:
        input_shape = tuple(layer.input.shape)
    except (AttributeError, ValueError):
        input_shape = None
    for layer_type, function in (supplementary_type2sv or {}).items():
        if isinstance(layer, layer_type):
            return function(layer, input_shape)
    gnp = _gnp_range(layer)
    if gnp is not None:
        return gnp
    if isinstance(
        layer,
        (pooling.ScaledAveragePooling2D, pooling.ScaledGlobalAveragePooling2D),
    ):
        return _sv_pooling(layer, input_shape)
    from keras_lipschitz.layers import dense

    if isinstance(layer, (keras.layers.Dense, dense._LipschitzDense)):
        if getattr(layer, "lora_enabled", False):
            return (None, None)
        return _sv_dense(layer, input_shape)
    is_plain_conv = isinstance(layer, keras.layers.Conv2D) and not isinstance(
        layer, (keras.layers.Conv2DTranspose, keras.layers.DepthwiseConv2D)
    )
    if is_plain_conv and (
        tuple(layer.dilation_rate) != (1, 1) or layer.groups != 1
    ):
        return (None, None)
    if is_plain_conv or isinstance(
        layer, (conv._LipschitzConv2D, conv.PadConv2D)
    ):
        return _sv_conv(layer, input_shape, max_input_dim)
    if isinstance(layer, keras.layers.ReLU):
        if float(layer.negative_slope) == 0.0 and layer.max_value is None:
            return (0.0, 1.0)
        return (None, None)
    if isinstance(layer, keras.layers.Activation):
        return _activation_scale(layer)
    if isinstance(layer, keras.layers.Add):
        count = len(layer.input) if isinstance(layer.input, list) else 1
        return (float(count), float(count))
    if isinstance(layer, keras.layers.BatchNormalization):
        scale = 1.0 / np.sqrt(
            _common.to_float64(layer.moving_variance) + layer.epsilon
        )
        if layer.scale:
            scale = scale * _common.to_float64(layer.gamma)
        scale = np.abs(scale)
        return (float(scale.min()), float(scale.max()))
    return (None, None)


def compute_model_sv(
    model, supplementary_type2sv=None, max_input_dim=MAX_INPUT_DIM
):
    """`compute_layer_sv` for every layer of `model`, nested models included.

    Args:
        model: a built `keras.Model`.
        supplementary_type2sv: see `compute_layer_sv`.
        max_input_dim: see `compute_layer_sv`.

    Returns:
        A dict `{layer name: (min, max)}` in layer order; a nested model
        gets `(None, None)` followed by its own layers.

    Example:

    >>> from keras_lipschitz.layers import BjorckDense
    >>> model = keras.Sequential([keras.Input((3,)), BjorckDense(3)])
    >>> low, high = compute_model_sv(model)[model.layers[0].name]
    >>> bool(abs(low - 1) < 1e-2 and abs(high - 1) < 1e-2)
    True
    """
    result = {}
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            result[layer.name] = (None, None)
            result.update(
                compute_model_sv(layer, supplementary_type2sv, max_input_dim)
            )
        else:
            result[layer.name] = compute_layer_sv(
                layer, supplementary_type2sv, max_input_dim
            )
    return result
