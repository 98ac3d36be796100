"""Export of Lipschitz models to plain Keras layers for fast inference."""

import keras
import numpy as np


def _plain_dense(layer):
    kernel = layer.effective_kernel()
    plain = keras.layers.Dense(
        layer.units,
        activation=layer.activation,
        use_bias=layer.use_bias,
        name=layer.name,
        dtype=layer.dtype_policy,
    )
    plain.build((None, kernel.shape[0]))
    return plain, kernel


def _plain_conv(layer):
    """A plain `Conv2D`, `Conv1D` or `Conv2DTranspose` twin of `layer`."""
    kernel = layer.effective_kernel()
    rank = len(layer.kernel_size)
    common = dict(
        strides=layer.strides,
        padding=layer.padding,
        data_format=layer.data_format,
        activation=layer.activation,
        use_bias=layer.use_bias,
        name=layer.name,
        dtype=layer.dtype_policy,
    )
    if getattr(layer, "_transpose", False):
        plain = keras.layers.Conv2DTranspose(
            layer.filters, layer.kernel_size, **common
        )
        channels = kernel.shape[-1]
    else:
        groups = getattr(layer, "groups", 1)
        conv = keras.layers.Conv1D if rank == 1 else keras.layers.Conv2D
        plain = conv(
            layer.filters,
            layer.kernel_size,
            dilation_rate=getattr(layer, "dilation_rate", 1),
            groups=groups,
            **common,
        )
        channels = kernel.shape[-2] * groups
    if layer.data_format == "channels_first":
        plain.build((None, channels) + (None,) * rank)
    else:
        plain.build((None,) + (None,) * rank + (channels,))
    return plain, kernel


def _exporter(layer):
    """Returns the function that builds `layer`'s plain twin, or None."""
    # Imported here: the layer modules import this package's submodules.
    from keras_lipschitz.layers import dense

    if isinstance(layer, dense._LipschitzDense):
        return _plain_dense
    if hasattr(layer, "_vanilla_twin"):
        # Layers that build their own plain twin (`(plain, kernel)`, e.g.
        # the orthogonal convolutions); those that cannot (circular
        # padding) are kept as they are.
        if not layer._vanilla_exportable:
            return None
        return type(layer)._vanilla_twin
    from keras_lipschitz.layers import conv

    if isinstance(layer, conv._LipschitzConv2D):
        # Keras has no circular padding: such a layer stays as it is.
        if layer.padding == "circular":
            return None
        return _plain_conv
    return None


def vanilla_export(model):
    """Returns an equivalent model made of plain Keras layers.

    Every constrained dense layer becomes a `keras.layers.Dense`, and every
    constrained convolution a `keras.layers.Conv2D` (`Conv1D`,
    `Conv2DTranspose`, with its dilation and groups), carrying the
    constrained kernel the layer uses in inference mode (`effective_kernel()`)
    and the same bias and activation. Keras has no circular padding, so a
    convolution with `padding="circular"` is kept as it is (cloned with its
    weights and state): its outputs are the same, but it still runs its
    normalization at inference. Other layers (activations, pooling,
    `Flatten`, nested models, ...) are cloned with their weights. The
    exported model has no power-iteration state and no normalization work,
    so inference runs at the speed of a plain model, and it needs nothing
    from this library except the stateless layers it contains.

    Its outputs equal the original's in inference mode (within float32
    rounding). Guaranteed Lipschitz bounds can be recomputed from the
    exported kernels.

    Args:
        model: a built `keras.Model` (Sequential or functional; nested models
            are exported recursively).

    Returns:
        A new `keras.Model`.

    Raises:
        ValueError: if the model is not built.

    Example:

    >>> import numpy as np, keras
    >>> from keras_lipschitz.layers import SpectralDense
    >>> model = keras.Sequential([keras.Input((3,)), SpectralDense(2)])
    >>> plain = vanilla_export(model)
    >>> type(plain.layers[0]).__name__
    'Dense'
    >>> x = np.ones((1, 3), "float32")
    >>> bool(np.allclose(model.predict(x, verbose=0),
    ...                  plain.predict(x, verbose=0), atol=1e-5))
    True
    """
    if not isinstance(model, keras.Model):
        raise ValueError(
            "`model` must be a keras.Model. "
            f"Received: model of type {type(model).__name__}"
        )
    if not model.built:
        raise ValueError(
            "`model` must be built (call it on data or give it an Input) "
            "before export."
        )
    pairs = []

    def clone_function(layer):
        exporter = _exporter(layer)
        if exporter is not None:
            plain, kernel = exporter(layer)
            plain.kernel.assign(kernel.astype(np.float32))
            if layer.use_bias:
                plain.bias.assign(keras.ops.convert_to_numpy(layer.bias))
            return plain
        clone = layer.__class__.from_config(layer.get_config())
        pairs.append((layer, clone))
        return clone

    exported = keras.models.clone_model(
        model, clone_function=clone_function, recursive=True
    )
    for original, clone in pairs:
        if original.weights:
            clone.set_weights(original.get_weights())
    return exported
