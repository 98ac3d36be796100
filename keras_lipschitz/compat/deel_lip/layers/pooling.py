"""deel-lip's `deel.lip.layers.pooling`: scaled and invertible pooling."""

from keras_lipschitz import layers as _layers
from keras_lipschitz.compat.deel_lip._classes import deel_lip_class
from keras_lipschitz.compat.deel_lip._mapping import maps_to


@maps_to(
    "layers",
    "`ScaledAveragePooling2D(pool_size, lipschitz=k_coef_lip)`",
    "",
)
@deel_lip_class(_layers.ScaledAveragePooling2D, lipschitz_layer=True)
def ScaledAveragePooling2D(
    pool_size=(2, 2),
    strides=None,
    padding="valid",
    data_format=None,
    k_coef_lip=1.0,
    **kwargs,
):
    """deel-lip's `ScaledAveragePooling2D`: `k_coef_lip` window sum / √n.

    Returns:
        A `keras_lipschitz.layers.ScaledAveragePooling2D`.
    """
    return _layers.ScaledAveragePooling2D(
        pool_size=pool_size,
        strides=strides,
        padding=padding,
        data_format=data_format,
        lipschitz=k_coef_lip,
        **kwargs,
    )


@maps_to(
    "layers",
    "`ScaledL2NormPooling2D(pool_size, epsilon=n·eps_grad_sqrt, "
    "lipschitz=k_coef_lip)`",
    "deel-lip computes $\\sqrt{n}\\sqrt{\\mathrm{avg}(x^2) + \\varepsilon} = "
    "\\sqrt{\\sum x^2 + n\\varepsilon}$; our `epsilon` is added to the sum, so "
    "it is set to $n\\,\\varepsilon$ ($n$ the window size): same outputs. "
    "`eps_grad_sqrt=0` is refused (NaN gradient at 0).",
)
@deel_lip_class(_layers.ScaledL2NormPooling2D, lipschitz_layer=True)
def ScaledL2NormPooling2D(
    pool_size=(2, 2),
    strides=None,
    padding="valid",
    data_format=None,
    k_coef_lip=1.0,
    eps_grad_sqrt=1e-6,
    **kwargs,
):
    """deel-lip's `ScaledL2NormPooling2D`, with its epsilon convention.

    Returns:
        A `keras_lipschitz.layers.ScaledL2NormPooling2D` computing
        `k_coef_lip * sqrt(sum(x^2) + n * eps_grad_sqrt)` per window.
    """
    pool = (pool_size, pool_size) if isinstance(pool_size, int) else pool_size
    window = int(pool[0]) * int(pool[1])
    return _layers.ScaledL2NormPooling2D(
        pool_size=pool_size,
        strides=strides,
        padding=padding,
        data_format=data_format,
        epsilon=window * eps_grad_sqrt,
        lipschitz=k_coef_lip,
        **kwargs,
    )


@maps_to(
    "layers",
    "`ScaledGlobalL2NormPooling2D(epsilon=eps_grad_sqrt, "
    "lipschitz=k_coef_lip)`",
    "",
)
@deel_lip_class(_layers.ScaledGlobalL2NormPooling2D, lipschitz_layer=True)
def ScaledGlobalL2NormPooling2D(
    data_format=None, k_coef_lip=1.0, eps_grad_sqrt=1e-6, **kwargs
):
    """deel-lip's `ScaledGlobalL2NormPooling2D`.

    Returns:
        A `keras_lipschitz.layers.ScaledGlobalL2NormPooling2D`.
    """
    return _layers.ScaledGlobalL2NormPooling2D(
        data_format=data_format,
        epsilon=eps_grad_sqrt,
        lipschitz=k_coef_lip,
        **kwargs,
    )


@maps_to(
    "layers",
    "`ScaledGlobalAveragePooling2D(lipschitz=k_coef_lip)`",
    "",
)
@deel_lip_class(_layers.ScaledGlobalAveragePooling2D, lipschitz_layer=True)
def ScaledGlobalAveragePooling2D(data_format=None, k_coef_lip=1.0, **kwargs):
    """deel-lip's `ScaledGlobalAveragePooling2D`.

    Returns:
        A `keras_lipschitz.layers.ScaledGlobalAveragePooling2D`.
    """
    return _layers.ScaledGlobalAveragePooling2D(
        data_format=data_format, lipschitz=k_coef_lip, **kwargs
    )


@maps_to(
    "layers",
    "`InvertibleDownSampling(pool_size, channel_order=\"pixel_unshuffle\")`",
    "deel-lip's channel order $c\\,p_hp_w + a\\,p_w + b$.",
)
@deel_lip_class(_layers.InvertibleDownSampling)
def InvertibleDownSampling(
    pool_size, data_format="channels_last", name=None, dtype=None, **kwargs
):
    """deel-lip's `InvertibleDownSampling`, with its channel order.

    Returns:
        A `keras_lipschitz.layers.InvertibleDownSampling` with
        `channel_order="pixel_unshuffle"`.
    """
    return _layers.InvertibleDownSampling(
        pool_size=pool_size,
        data_format=data_format,
        channel_order="pixel_unshuffle",
        name=name,
        dtype=dtype,
        **kwargs,
    )


@maps_to(
    "layers",
    "`InvertibleUpSampling(pool_size, channel_order=\"pixel_unshuffle\")`",
    "The exact inverse of `InvertibleDownSampling`; deel-lip's is its "
    "inverse only for square images and pools.",
    status="sound",
)
@deel_lip_class(_layers.InvertibleUpSampling)
def InvertibleUpSampling(
    pool_size, data_format="channels_last", name=None, dtype=None, **kwargs
):
    """deel-lip's `InvertibleUpSampling` (the exact inverse of the above).

    Returns:
        A `keras_lipschitz.layers.InvertibleUpSampling` with
        `channel_order="pixel_unshuffle"`.
    """
    return _layers.InvertibleUpSampling(
        pool_size=pool_size,
        data_format=data_format,
        channel_order="pixel_unshuffle",
        name=name,
        dtype=dtype,
        **kwargs,
    )


__all__ = [
    "InvertibleDownSampling",
    "InvertibleUpSampling",
    "ScaledAveragePooling2D",
    "ScaledGlobalAveragePooling2D",
    "ScaledGlobalL2NormPooling2D",
    "ScaledL2NormPooling2D",
]
