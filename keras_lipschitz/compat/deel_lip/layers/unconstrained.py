"""deel-lip's unconstrained layers (`deel.lip.layers.unconstrained`)."""

from keras_lipschitz import layers as _layers
from keras_lipschitz.compat.deel_lip._classes import deel_lip_class
from keras_lipschitz.compat.deel_lip._mapping import maps_to


@maps_to(
    "layers.unconstrained",
    "`PadConv2D(filters, kernel_size, padding=...)`",
    "Same paddings (`same`, `valid`, `constant`, `reflect`, `symmetric`, "
    "`circular`), `channels_first` too. Not constrained; its "
    "`lipschitz_upper_bound()` is guaranteed (exact norm of padding + "
    "convolution for small inputs).",
)
@deel_lip_class(_layers.PadConv2D, condensable=True)
def PadConv2D(
    filters,
    kernel_size,
    strides=(1, 1),
    padding="same",
    data_format=None,
    dilation_rate=(1, 1),
    activation=None,
    use_bias=True,
    kernel_initializer="glorot_uniform",
    bias_initializer="zeros",
    kernel_regularizer=None,
    bias_regularizer=None,
    activity_regularizer=None,
    kernel_constraint=None,
    bias_constraint=None,
    **kwargs,
):
    """deel-lip's `PadConv2D`: `keras_lipschitz.layers.PadConv2D`.

    Args:
        filters, kernel_size, strides, padding, data_format: as in deel-lip.
        dilation_rate: only 1.
        activation, use_bias, kernel_initializer, bias_initializer,
        kernel_regularizer, bias_regularizer, activity_regularizer,
        kernel_constraint, bias_constraint: as in `keras.layers.Conv2D`.
        **kwargs: layer keyword arguments.

    Returns:
        A `keras_lipschitz.layers.PadConv2D`.
    """
    if dilation_rate not in (1, (1, 1), [1, 1]):
        raise ValueError(
            f"PadConv2D does not support dilation. Received: {dilation_rate}"
        )
    return _layers.PadConv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding.lower(),
        data_format=data_format,
        activation=activation,
        use_bias=use_bias,
        kernel_initializer=kernel_initializer,
        bias_initializer=bias_initializer,
        kernel_regularizer=kernel_regularizer,
        bias_regularizer=bias_regularizer,
        kernel_constraint=kernel_constraint,
        bias_constraint=bias_constraint,
        activity_regularizer=activity_regularizer,
        **kwargs,
    )
