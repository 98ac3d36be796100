"""Arguments shared by every layer with a kernel (dense and conv).

One place resolves, validates and serializes `lipschitz`, `activation`,
`use_bias` and the kernel/bias initializers, regularizers and constraints,
so that the layers accept exactly the same arguments as `keras.layers.Dense`
and `keras.layers.Conv2D` and round-trip them identically.
"""

import keras
from keras import ops

from keras_lipschitz.layers import _validation


def set_kernel_arguments(
    layer,
    lipschitz,
    activation,
    use_bias,
    kernel_initializer,
    bias_initializer,
    kernel_regularizer,
    bias_regularizer,
    kernel_constraint,
    bias_constraint,
):
    """Validates and stores the shared arguments on `layer`."""
    layer.lipschitz = _validation.validate_positive_number(
        "lipschitz", lipschitz
    )
    layer.activation, layer._activation_lipschitz = (
        _validation.validate_activation(activation)
    )
    layer.use_bias = bool(use_bias)
    layer.kernel_initializer = keras.initializers.get(kernel_initializer)
    layer.bias_initializer = keras.initializers.get(bias_initializer)
    layer.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
    layer.bias_regularizer = keras.regularizers.get(bias_regularizer)
    layer.kernel_constraint = keras.constraints.get(kernel_constraint)
    layer.bias_constraint = keras.constraints.get(bias_constraint)


def weight_arguments_config(layer):
    """`layer`'s kernel/bias initializers, regularizers and constraints,
    serialized for `get_config` (None stays None)."""
    config = {}
    for kind, module in (
        ("initializer", keras.initializers),
        ("regularizer", keras.regularizers),
        ("constraint", keras.constraints),
    ):
        for weight in ("kernel", "bias"):
            name = f"{weight}_{kind}"
            config[name] = module.serialize(getattr(layer, name))
    return config


def kernel_arguments_config(layer):
    """The shared arguments of `layer`, serialized for `get_config`."""
    config = {
        "lipschitz": layer.lipschitz,
        "activation": keras.activations.serialize(layer.activation),
        "use_bias": layer.use_bias,
    }
    config.update(weight_arguments_config(layer))
    return config


def add_kernel_and_bias(layer, kernel_shape, bias_units=None):
    """Creates `layer.kernel` (float32, raw) and `layer.bias` (or None).

    The raw kernel is kept in float32 under mixed precision
    (`autocast=False`) so the normalization maths never runs in float16.
    The bias has one entry per output: `bias_units`, by default the
    kernel's last dimension (a transposed conv's outputs are not).
    """
    layer.kernel = layer.add_weight(
        name="kernel",
        shape=tuple(kernel_shape),
        initializer=layer.kernel_initializer,
        regularizer=layer.kernel_regularizer,
        constraint=layer.kernel_constraint,
        autocast=False,
    )
    layer.bias = None
    if layer.use_bias:
        layer.bias = layer.add_weight(
            name="bias",
            shape=(kernel_shape[-1] if bias_units is None else bias_units,),
            initializer=layer.bias_initializer,
            regularizer=layer.bias_regularizer,
            constraint=layer.bias_constraint,
        )


def scale_by_lipschitz(layer, kernel):
    """`kernel * layer.lipschitz`, with no op at the default 1.0.

    A Python-level check, so the default adds no kernel-sized multiply (nor
    its gradient) to the training step.
    """
    if layer.lipschitz == 1.0:
        return kernel
    return kernel * layer.lipschitz


def add_channel_bias(outputs, bias, data_format):
    """`outputs` plus a per-channel `bias`, on the channel axis of `data_format`.

    Written with `+`, not `ops.add`: on TensorFlow, Keras 3.15's `ops.add`
    of a `(1, C, 1, 1)` tensor to a channels-first batch whose *last* axis
    also has size C is rewritten to `tf.nn.bias_add` on the last axis, which
    adds the bias along the width instead of the channels.
    """
    bias = ops.cast(bias, outputs.dtype)
    if data_format == "channels_first":
        shape = (1, -1) + (1,) * (len(outputs.shape) - 2)
        bias = ops.reshape(bias, shape)
    return outputs + bias
