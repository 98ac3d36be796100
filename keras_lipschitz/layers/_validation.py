"""Argument validation shared by the layers: errors name the argument."""

import numbers

import keras

# Lipschitz constants of the Keras activations a constrained layer accepts
# (with their default parameters).
ACTIVATION_LIPSCHITZ = {
    "linear": 1.0,
    "relu": 1.0,
    "relu6": 1.0,
    "leaky_relu": 1.0,
    "elu": 1.0,
    "tanh": 1.0,
    "softplus": 1.0,
    "softsign": 1.0,
    "sigmoid": 0.25,
    "hard_sigmoid": 1.0 / 6.0,
    "silu": 1.0998,
    "gelu": 1.1290,
    "selu": 1.0507 * 1.6733,
}


def validate_positive_number(name, value):
    """Returns `value` as a float, or raises `ValueError` naming `name`."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not value > 0
        or value != value
        or value == float("inf")
    ):
        raise ValueError(
            f"`{name}` must be a finite number > 0. Received: {name}={value!r}"
        )
    return float(value)


def validate_positive_int(name, value, minimum=1):
    """Returns `value`, or raises `ValueError` if it is not an int >= minimum."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value < minimum
    ):
        raise ValueError(
            f"`{name}` must be an integer >= {minimum}. "
            f"Received: {name}={value!r}"
        )
    return int(value)


def validate_int_tuple(name, value, length=2, minimum=1):
    """Normalizes an int or a tuple of ints to a tuple of `length` ints."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value,) * length
    try:
        value = tuple(value)
    except TypeError:
        value = None
    if (
        value is None
        or len(value) != length
        or any(
            isinstance(v, bool)
            or not isinstance(v, numbers.Integral)
            or v < minimum
            for v in value
        )
    ):
        raise ValueError(
            f"`{name}` must be an integer >= {minimum} or a tuple of "
            f"{length} such integers. Received: {name}={value!r}"
        )
    return tuple(int(v) for v in value)


def validate_choice(name, value, choices):
    """Returns lower-cased `value` if it is one of `choices`."""
    normalized = value.lower() if isinstance(value, str) else value
    if normalized not in choices:
        raise ValueError(
            f"`{name}` must be one of {sorted(choices)}. "
            f"Received: {name}={value!r}"
        )
    return normalized


def validate_data_format(data_format):
    """Resolves `None` to the global image data format."""
    if data_format is None:
        return keras.config.image_data_format()
    return validate_choice(
        "data_format", data_format, {"channels_last", "channels_first"}
    )


def validate_activation(activation):
    """Returns `(activation_fn, lipschitz_constant)` for a supported activation.

    Only activations with a known Lipschitz constant are accepted, so that a
    layer's reported bound covers its activation too. Besides the Keras
    activations of `ACTIVATION_LIPSCHITZ`, a shape-preserving layer of this
    library (e.g. `GroupSort2()`, as deel-lip allows) is accepted: its
    constant is its `lipschitz_upper_bound()`.
    """
    if isinstance(activation, dict):
        activation = keras.saving.deserialize_keras_object(activation)
    if isinstance(activation, keras.layers.Layer):
        return activation, _activation_layer_lipschitz(activation)
    fn = keras.activations.get(activation)
    name = getattr(fn, "__name__", None)
    if name not in ACTIVATION_LIPSCHITZ:
        raise ValueError(
            "`activation` must be None or one of "
            f"{sorted(ACTIVATION_LIPSCHITZ)} (activations with a known "
            f"Lipschitz constant). Received: activation={activation!r}"
        )
    return fn, ACTIVATION_LIPSCHITZ[name]


def validate_bjorck_beta(value):
    """The step β of $W \\leftarrow (1+\\beta)W - \\beta WW^TW$, in (0, 0.5]."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0.0 < value <= 0.5
    ):
        raise ValueError(
            "`bjorck_beta` must be a number in (0, 0.5]. "
            f"Received: bjorck_beta={value!r}"
        )
    return float(value)


def _activation_layer_lipschitz(layer):
    """The Lipschitz constant of a layer used as an activation."""
    bound = getattr(layer, "lipschitz_upper_bound", None)
    probe = (None, 12)
    try:
        same_shape = tuple(layer.compute_output_shape(probe)) == probe
    except Exception:  # A layer that cannot say keeps its shape is refused.
        same_shape = False
    if bound is None or not same_shape:
        raise ValueError(
            "A layer used as `activation` must be a shape-preserving layer "
            "of keras_lipschitz with `lipschitz_upper_bound()` (GroupSort, "
            "GroupSort2, FullSort, Householder). Received: "
            f"activation={layer!r}"
        )
    return float(bound())


def image_shape_or_none(input_shape):
    """`input_shape` as a tuple `(H, W, C)` of positive ints, or None.

    For the model builders, which add their own conditions to the message
    of the `ValueError` they raise on None.
    """
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        return None
    if len(shape) != 3 or min(shape) < 1:
        return None
    return shape


def known_channels(layer, input_shape, ndim, channel_axis):
    """The known channel count of a rank-`ndim` conv input, or `ValueError`.

    Args:
        layer: the layer (its class name and `data_format` go in the
            messages).
        input_shape: the shape passed to `build`.
        ndim: the expected rank.
        channel_axis: the channel axis (-1 or 1).

    Returns:
        An int.
    """
    input_shape = tuple(input_shape)
    name = type(layer).__name__
    if len(input_shape) != ndim:
        raise ValueError(
            f"{name} expects inputs of rank {ndim}. "
            f"Received: input_shape={input_shape}"
        )
    channels = input_shape[channel_axis]
    if channels is None:
        raise ValueError(
            f"{name} needs a known channel dimension "
            f"(data_format={layer.data_format!r}). "
            f"Received: input_shape={input_shape}"
        )
    return int(channels)
