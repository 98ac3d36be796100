"""deel-lip's `deel.lip.layers.convolutional`: the constrained convolutions."""

from keras_lipschitz import layers as _layers
from keras_lipschitz.compat.deel_lip._classes import deel_lip_class
from keras_lipschitz.compat.deel_lip._mapping import maps_to
from keras_lipschitz.compat.deel_lip.layers._common import DEFAULT_BETA_BJORCK
from keras_lipschitz.compat.deel_lip.layers._common import DEFAULT_EPS_BJORCK
from keras_lipschitz.compat.deel_lip.layers._common import DEFAULT_EPS_SPECTRAL
from keras_lipschitz.compat.deel_lip.layers._common import (
    DEFAULT_MAXITER_BJORCK,
)
from keras_lipschitz.compat.deel_lip.layers._common import (
    DEFAULT_MAXITER_SPECTRAL,
)
from keras_lipschitz.compat.deel_lip.layers._common import _bjorck_off
from keras_lipschitz.compat.deel_lip.layers._common import _check_iteration_args
from keras_lipschitz.compat.deel_lip.layers._common import _layer_arguments


def _check_conv_args(name, dilation_rate, groups):
    if dilation_rate not in (1, (1, 1), [1, 1]):
        raise ValueError(f"{name} does not support dilation rate")
    if groups != 1:
        raise ValueError(f"{name} does not support groups != 1")


@maps_to(
    "layers",
    "`BjorckConv2D` (reshaped kernel orthogonalization)",
    "deel-lip's `SpectralConv2D` is RKO: our `BjorckConv2D(filters, "
    "kernel_size, lipschitz=k_coef_lip, bjorck_iterations=maxiter_bjorck)`. "
    "With `eps_bjorck=None` (no Björck) our `SpectralConv2D`, normalized by "
    "the operator norm itself (needs static spatial sizes). **Sound, not "
    "identical:** "
    "the output factor is the worst case $1/\\sqrt{\\lceil k_h/s_h\\rceil"
    "\\lceil k_w/s_w\\rceil}$, where deel-lip's stride-1 factor "
    "($1/\\sqrt{\\text{average patches per pixel}}$) lets the layer exceed "
    "`k_coef_lip` (by 2 % for a 3×3 kernel at 16 px); ported weights give "
    "slightly smaller outputs. `padding=\"valid\"` is accepted too.",
    status="sound",
)
@deel_lip_class(
    _layers.BjorckConv2D,
    _layers.SpectralConv2D,
    lipschitz_layer=True,
    condensable=True,
)
def SpectralConv2D(
    filters,
    kernel_size,
    strides=(1, 1),
    padding="same",
    data_format=None,
    dilation_rate=(1, 1),
    activation=None,
    use_bias=True,
    kernel_initializer=None,
    bias_initializer="zeros",
    kernel_regularizer=None,
    bias_regularizer=None,
    activity_regularizer=None,
    kernel_constraint=None,
    bias_constraint=None,
    k_coef_lip=1.0,
    eps_spectral=DEFAULT_EPS_SPECTRAL,
    eps_bjorck=DEFAULT_EPS_BJORCK,
    beta_bjorck=DEFAULT_BETA_BJORCK,
    maxiter_spectral=DEFAULT_MAXITER_SPECTRAL,
    maxiter_bjorck=DEFAULT_MAXITER_BJORCK,
    *,
    groups=1,
    **kwargs,
):
    """deel-lip's `SpectralConv2D`: `keras_lipschitz.layers.BjorckConv2D`.

    Reshaped kernel orthogonalization (RKO) times a correction factor.
    deel-lip's stride-1 factor $1/\\sqrt{\\text{average patches per pixel}}$
    is an average and lets the convolution exceed `k_coef_lip` (norm 1.02
    for the all-1/3 3×3 kernel at 16 px); ours is the worst case
    $1/\\sqrt{\\lceil k_h/s_h\\rceil\\lceil k_w/s_w\\rceil}$, so the layer is
    `k_coef_lip`-Lipschitz for every input size. The outputs are therefore
    slightly smaller than deel-lip's for the same raw kernel (by the ratio
    of the two factors), never larger than allowed.

    Args:
        filters, kernel_size, strides, padding, data_format: as in
            `keras.layers.Conv2D` (deel-lip only accepts `"same"`).
        dilation_rate: only 1.
        groups: only 1; keyword-only (deel-lip 1.5.0's positional order,
            which has no `groups`).
        k_coef_lip: our `lipschitz`.
        eps_spectral, maxiter_spectral: accepted (see the module).
        eps_bjorck: None disables Björck: the layer is then our
            `SpectralConv2D` (normalized by the norm of the convolution
            operator on the built input size, a tighter and sound
            replacement of the reshaped-kernel normalization; it needs
            static spatial sizes).
        beta_bjorck: our `bjorck_beta`.
        maxiter_bjorck: our `bjorck_iterations`.
        Others: as in `keras.layers.Conv2D`.

    Returns:
        A `keras_lipschitz.layers.BjorckConv2D` (or `SpectralConv2D`).
    """
    _check_conv_args("SpectralConv2D", dilation_rate, groups)
    _check_iteration_args(eps_spectral, eps_bjorck, beta_bjorck)
    common = dict(
        strides=strides,
        padding=padding.lower(),
        data_format=data_format,
        **_layer_arguments(
            k_coef_lip, activation, use_bias, kernel_initializer,
            bias_initializer, kernel_regularizer, bias_regularizer,
            activity_regularizer, kernel_constraint, bias_constraint, kwargs,
        ),
    )
    if _bjorck_off(eps_bjorck, beta_bjorck) or maxiter_bjorck == 0:
        return _layers.SpectralConv2D(filters, kernel_size, **common)
    return _layers.BjorckConv2D(
        filters,
        kernel_size,
        bjorck_iterations=maxiter_bjorck,
        bjorck_beta=beta_bjorck,
        **common,
    )


@maps_to(
    "layers",
    "`FrobeniusConv2D(filters, kernel_size, lipschitz=k_coef_lip)`",
    "$K/\\lVert K\\rVert_F$ times the worst-case factor (deel-lip: the "
    "stride-1 "
    "average factor, see `SpectralConv2D`). Strides are accepted.",
    status="sound",
)
@deel_lip_class(
    _layers.FrobeniusConv2D,
    lipschitz_layer=True,
    condensable=True,
)
def FrobeniusConv2D(
    filters,
    kernel_size,
    strides=(1, 1),
    padding="same",
    data_format=None,
    dilation_rate=(1, 1),
    activation=None,
    use_bias=True,
    kernel_initializer=None,
    bias_initializer="zeros",
    kernel_regularizer=None,
    bias_regularizer=None,
    activity_regularizer=None,
    kernel_constraint=None,
    bias_constraint=None,
    k_coef_lip=1.0,
    *,
    groups=1,
    **kwargs,
):
    """deel-lip's `FrobeniusConv2D`: `keras_lipschitz.layers.FrobeniusConv2D`.

    $K/\\|K\\|_F$ times the worst-case factor of `SpectralConv2D` above
    (deel-lip: its average stride-1 factor, which is not a guarantee).

    Arguments: as in deel-lip; `k_coef_lip` is our `lipschitz`.

    Returns:
        A `keras_lipschitz.layers.FrobeniusConv2D`.
    """
    _check_conv_args("FrobeniusConv2D", dilation_rate, groups)
    return _layers.FrobeniusConv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding.lower(),
        data_format=data_format,
        **_layer_arguments(
            k_coef_lip, activation, use_bias, kernel_initializer,
            bias_initializer, kernel_regularizer, bias_regularizer,
            activity_regularizer, kernel_constraint, bias_constraint, kwargs,
        ),
    )


@maps_to(
    "layers",
    "`BjorckConv2DTranspose` (`SpectralConv2DTranspose` with "
    "`eps_bjorck=None`)",
    "deel-lip's `SpectralConv2DTranspose` is RKO on the transposed kernel: "
    "our `BjorckConv2DTranspose(filters, kernel_size, strides, "
    "lipschitz=k_coef_lip, bjorck_iterations=maxiter_bjorck, "
    "bjorck_beta=beta_bjorck)`; with `eps_bjorck=None` our "
    "`SpectralConv2DTranspose` (normalized by the operator norm on the "
    "built size; needs static spatial sizes). As in deel-lip, only "
    "`padding=\"same\"`, `dilation_rate=1` and `output_padding=None`. "
    "**Sound, not identical:** deel-lip orthonormalizes the "
    "$(k_hk_wc_{in}) \\times \\mathrm{filters}$ reshape and applies its "
    "conv factor, which does not bound the transposed conv (norm 2 with "
    "`kernel_size=strides=2`, one input channel and four filters); we "
    "orthonormalize the reshaped kernel of the conv it is the adjoint of, "
    "$(k_hk_w\\,\\mathrm{filters}) \\times c_{in}$, with the worst-case "
    "factor $1/\\sqrt{\\lceil k_h/s_h\\rceil\\lceil k_w/s_w\\rceil}$.",
    status="sound",
)
@deel_lip_class(
    _layers.BjorckConv2DTranspose,
    _layers.SpectralConv2DTranspose,
    lipschitz_layer=True,
    condensable=True,
)
def SpectralConv2DTranspose(
    filters,
    kernel_size,
    strides=(1, 1),
    padding="same",
    output_padding=None,
    data_format=None,
    dilation_rate=(1, 1),
    activation=None,
    use_bias=True,
    kernel_initializer=None,
    bias_initializer="zeros",
    kernel_regularizer=None,
    bias_regularizer=None,
    activity_regularizer=None,
    kernel_constraint=None,
    bias_constraint=None,
    k_coef_lip=1.0,
    eps_spectral=DEFAULT_EPS_SPECTRAL,
    eps_bjorck=DEFAULT_EPS_BJORCK,
    beta_bjorck=DEFAULT_BETA_BJORCK,
    maxiter_spectral=DEFAULT_MAXITER_SPECTRAL,
    maxiter_bjorck=DEFAULT_MAXITER_BJORCK,
    **kwargs,
):
    """deel-lip's `SpectralConv2DTranspose`: `BjorckConv2DTranspose`.

    Reshaped kernel orthogonalization of the transposed conv's kernel
    (`keras_lipschitz.layers.BjorckConv2DTranspose`). deel-lip
    orthonormalizes the `(k_h k_w c_in) x filters` reshape of its kernel
    and multiplies by its conv factor; a transposed conv is the adjoint of
    the conv by the same kernel read as `(k_h k_w filters) x c_in`, and
    only that reshape, with the worst-case factor, bounds it (deel-lip's
    layer reaches norm 2 with `kernel_size=strides=2`, one input channel
    and four filters). The outputs therefore differ from deel-lip's for the
    same raw kernel; the layer is `k_coef_lip`-Lipschitz.

    Args:
        filters, kernel_size, strides, data_format: as in
            `keras.layers.Conv2DTranspose`.
        padding: only `"same"` (as in deel-lip).
        dilation_rate: only 1.
        output_padding: only None.
        k_coef_lip: our `lipschitz`.
        eps_spectral, maxiter_spectral: accepted (see the module).
        eps_bjorck: None disables Björck: the layer is then our
            `SpectralConv2DTranspose` (normalized by the operator norm on
            the built size; it needs static spatial sizes).
        beta_bjorck: our `bjorck_beta`.
        maxiter_bjorck: our `bjorck_iterations`.
        Others: as in `keras.layers.Conv2DTranspose`.

    Returns:
        A `keras_lipschitz.layers.BjorckConv2DTranspose` (or
        `SpectralConv2DTranspose`).
    """
    if dilation_rate not in (1, (1, 1), [1, 1]):
        raise ValueError(
            "SpectralConv2DTranspose does not support dilation rate"
        )
    if not isinstance(padding, str) or padding.lower() != "same":
        raise ValueError("SpectralConv2DTranspose only supports padding='same'")
    if output_padding is not None:
        raise ValueError(
            "SpectralConv2DTranspose only supports output_padding=None"
        )
    _check_iteration_args(eps_spectral, eps_bjorck, beta_bjorck)
    common = dict(
        strides=strides,
        padding="same",
        data_format=data_format,
        **_layer_arguments(
            k_coef_lip, activation, use_bias, kernel_initializer,
            bias_initializer, kernel_regularizer, bias_regularizer,
            activity_regularizer, kernel_constraint, bias_constraint, kwargs,
        ),
    )
    if _bjorck_off(eps_bjorck, beta_bjorck) or maxiter_bjorck == 0:
        return _layers.SpectralConv2DTranspose(filters, kernel_size, **common)
    return _layers.BjorckConv2DTranspose(
        filters,
        kernel_size,
        bjorck_iterations=maxiter_bjorck,
        bjorck_beta=beta_bjorck,
        **common,
    )


__all__ = [
    "FrobeniusConv2D",
    "SpectralConv2D",
    "SpectralConv2DTranspose",
]
