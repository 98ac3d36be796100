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
    kernel = layer.effective_kernel()
    plain = keras.layers.Conv2D(
        layer.filters,
        layer.kernel_size,
        strides=layer.strides,
        padding=layer.padding,
        data_format=layer.data_format,
        activation=layer.activation,
        use_bias=layer.use_bias,
        name=layer.name,
        dtype=layer.dtype_policy,
    )
    channels = kernel.shape[2]
    if layer.data_format == "channels_first":
        plain.build((None, channels, None, None))
    else:
        plain.build((None, None, None, channels))
    return plain, kernel


def _exporter(layer):
    """Returns the function that builds `layer`'s plain twin, or None."""
    # Imported here: the layer modules import this package's submodules.
    from keras_lipschitz.layers import dense

    if isinstance(layer, dense._LipschitzDense):
        return _plain_dense
    from keras_lipschitz.layers import conv

    if isinstance(layer, conv._LipschitzConv2D):
        return _plain_conv
    return None


def vanilla_export(model):
    """Returns an equivalent model made of plain Keras layers.

    Every constrained dense layer becomes a `keras.layers.Dense`, and every
    constrained convolution a `keras.layers.Conv2D`, carrying the
    constrained kernel the layer uses in inference mode (`effective_kernel()`)
    and the same bias and activation. Other layers (activations, pooling,
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
