"""deel-lip's activation layers (`deel.lip.layers.activations`).

Each name returns a layer of `keras_lipschitz.layers`. deel-lip's
`data_format` becomes our `axis` (-1 for `"channels_last"`, 1 for
`"channels_first"`), `k_coef_lip` our `lipschitz`.
"""

import warnings

import keras

from keras_lipschitz import layers as _layers
from keras_lipschitz.compat.deel_lip._classes import deel_lip_class
from keras_lipschitz.compat.deel_lip._mapping import maps_to


def _axis(data_format):
    if data_format == "channels_last":
        return -1
    if data_format == "channels_first":
        return 1
    raise ValueError(
        "`data_format` must be 'channels_last' or 'channels_first'. "
        f"Received: data_format={data_format!r}"
    )


@maps_to(
    "layers",
    "`MaxMin(axis, lipschitz=k_coef_lip)`",
    "$[\\mathrm{ReLU}(x), \\mathrm{ReLU}(-x)]$, doubles the channels.",
)
@deel_lip_class(_layers.MaxMin, lipschitz_layer=True)
def MaxMin(data_format="channels_last", k_coef_lip=1.0, **kwargs):
    """deel-lip's `MaxMin`: `keras_lipschitz.layers.MaxMin`.

    Args:
        data_format: `"channels_last"` or `"channels_first"` (our `axis`).
        k_coef_lip: our `lipschitz`, a factor on the output.
        **kwargs: layer keyword arguments (`name`, `dtype`, ...).

    Returns:
        A `keras_lipschitz.layers.MaxMin`.
    """
    return _layers.MaxMin(
        axis=_axis(data_format), lipschitz=k_coef_lip, **kwargs
    )


@maps_to(
    "layers",
    "`GroupSort(group_size=n)`, `FullSort()` for `n=None`",
    "Same `(min, max)`/ascending order on adjacent channels. deel-lip "
    "replaces an `n` larger than the channel count by that count; here `n` "
    "must divide it. `channels_first` works (axis 1).",
)
@deel_lip_class(
    _layers.GroupSort,
    _layers.GroupSort2,
    _layers.FullSort,
    lipschitz_layer=True,
)
def GroupSort(n=None, data_format="channels_last", k_coef_lip=1.0, **kwargs):
    """deel-lip's `GroupSort(n)`: `GroupSort(group_size=n)` or `FullSort`.

    Args:
        n: int group size, or None to sort all channels.
        data_format: `"channels_last"` or `"channels_first"`.
        k_coef_lip: our `lipschitz`.
        **kwargs: layer keyword arguments.

    Returns:
        A `keras_lipschitz.layers.GroupSort`, `GroupSort2` (n = 2) or
        `FullSort` (n = None).
    """
    axis = _axis(data_format)
    if n is None:
        return _layers.FullSort(axis=axis, lipschitz=k_coef_lip, **kwargs)
    if n == 2:
        return _layers.GroupSort2(axis=axis, lipschitz=k_coef_lip, **kwargs)
    return _layers.GroupSort(
        group_size=n, axis=axis, lipschitz=k_coef_lip, **kwargs
    )


def _pop_fixed_group_size(kwargs, group_size, name):
    """Removes deel-lip's `n` from `kwargs`; it must equal `group_size`."""
    n = kwargs.pop("n", group_size)
    if n != group_size:
        raise ValueError(
            f"{name} has a fixed group size: `n` may only be {group_size} "
            "(deel-lip overrides any other value; use GroupSort(n) for "
            f"another group size). Received: n={n!r}"
        )


@maps_to("layers", "`GroupSort2(axis, lipschitz=k_coef_lip)`", "")
@deel_lip_class(_layers.GroupSort2, lipschitz_layer=True)
def GroupSort2(data_format="channels_last", k_coef_lip=1.0, **kwargs):
    """deel-lip's `GroupSort2`: `keras_lipschitz.layers.GroupSort2`.

    Args:
        data_format: `"channels_last"` or `"channels_first"`.
        k_coef_lip: our `lipschitz`.
        **kwargs: layer keyword arguments. deel-lip's configs carry
            `n=2`, which is accepted; deel-lip silently replaces any other
            `n` by 2, which raises here instead.

    Returns:
        A `keras_lipschitz.layers.GroupSort2`.
    """
    _pop_fixed_group_size(kwargs, 2, "GroupSort2")
    return _layers.GroupSort2(
        axis=_axis(data_format), lipschitz=k_coef_lip, **kwargs
    )


@maps_to("layers", "`FullSort(axis, lipschitz=k_coef_lip)`", "")
@deel_lip_class(_layers.FullSort, lipschitz_layer=True)
def FullSort(data_format="channels_last", k_coef_lip=1.0, **kwargs):
    """deel-lip's `FullSort`: `keras_lipschitz.layers.FullSort`.

    Args:
        data_format: `"channels_last"` or `"channels_first"`.
        k_coef_lip: our `lipschitz`.
        **kwargs: layer keyword arguments. deel-lip's configs carry
            `n=None`, which is accepted; deel-lip silently replaces any
            other `n` by None, which raises here instead.

    Returns:
        A `keras_lipschitz.layers.FullSort`.
    """
    _pop_fixed_group_size(kwargs, None, "FullSort")
    return _layers.FullSort(
        axis=_axis(data_format), lipschitz=k_coef_lip, **kwargs
    )


@maps_to(
    "layers",
    "`Householder(pairing=\"halves\")`",
    "deel-lip's channel pairing ($i$ with $i + C/2$) and angle convention, so "
    "its $\\theta$ give its outputs. deel-lip stores `k_coef_lip` but never "
    "applies it; it is ignored here too (with a warning when not 1), so the "
    "outputs match. Use `keras_lipschitz.layers.Householder(lipschitz=...)` "
    "for a scaled one.",
)
@deel_lip_class(_layers.Householder, lipschitz_layer=True)
def Householder(
    data_format="channels_last",
    k_coef_lip=1.0,
    theta_initializer=None,
    **kwargs,
):
    """deel-lip's `Householder`: `Householder(pairing="halves")`.

    deel-lip's layer stores `k_coef_lip` but does not multiply its output by
    it; to give deel-lip's outputs, it is ignored here as well (a warning
    says so when it is not 1). The layer is 1-Lipschitz.

    Args:
        data_format: only `"channels_last"`, as in deel-lip.
        k_coef_lip: accepted and ignored, as in deel-lip.
        theta_initializer: initializer of the angles (default $\\pi/2$).
        **kwargs: layer keyword arguments.

    Returns:
        A `keras_lipschitz.layers.Householder` with `pairing="halves"`.
    """
    if data_format != "channels_last":
        raise ValueError(
            "deel-lip's Householder only supports data_format="
            "'channels_last' (use keras_lipschitz.layers.Householder(axis=1) "
            f"for channels_first). Received: data_format={data_format!r}"
        )
    if k_coef_lip != 1.0:
        warnings.warn(
            "deel-lip's Householder ignores k_coef_lip; so does this "
            "compat layer (use keras_lipschitz.layers.Householder("
            "lipschitz=...) to scale the output).",
            stacklevel=2,
        )
    layer = _layers.Householder(
        axis=-1, theta_initializer=theta_initializer, pairing="halves", **kwargs
    )
    # deel-lip's Sequential(k_coef_lip) counts it among its Lipschitz
    # layers but the layer never applies its share.
    layer._deel_lip_ignores_k_coef_lip = True
    return layer


@maps_to(
    "layers",
    "`keras.layers.PReLU(alpha_constraint=MinMaxNorm(-k, k))`",
    "Returned as in deel-lip: a plain Keras `PReLU`. `MinMaxNorm` bounds the "
    "norm of the slope vector, not each slope; `certify` and "
    "`lipschitz_bound` do not support `PReLU`.",
    status="adapted",
)
def PReLUlip(k_coef_lip=1.0):
    """deel-lip's `PReLUlip`: a Keras `PReLU` with a norm-constrained slope.

    Args:
        k_coef_lip: bound of the `MinMaxNorm` constraint on the slopes.

    Returns:
        A `keras.layers.PReLU`.
    """
    return keras.layers.PReLU(
        alpha_constraint=keras.constraints.MinMaxNorm(
            min_value=-k_coef_lip, max_value=k_coef_lip
        )
    )
