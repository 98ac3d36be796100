"""deel-lip's layers (`deel.lip.layers`), as keras-lipschitz layers.

Every name is a class with deel-lip's signature whose call returns a layer
of `keras_lipschitz.layers` (`_classes.deel_lip_class`):
`isinstance(x, lip.layers.SpectralDense)` is true for the layers it
returns, and `issubclass(lip.layers.SpectralDense, LipschitzLayer)` follows
deel-lip's hierarchy (`LipschitzLayer` and `Condensable` below also
recognise our own layers). A bad argument raises a `ValueError` that is
also a `RuntimeError`, as deel-lip raises either. Arguments that only tune
deel-lip's iterations are accepted:

- `eps_spectral`, `maxiter_spectral`: our power iteration is warm-started
  and runs one step per training call; in inference the kernel is divided
  by a *guaranteed* upper bound of its spectral norm (Gram iteration), so
  there is no tolerance to set;
- `eps_bjorck`: Björck runs a fixed `maxiter_bjorck` steps (our
  `bjorck_iterations`; a fixed count keeps it differentiable on JAX);
  `eps_bjorck=None` disables it, as in deel-lip;
- `beta_bjorck` is our `bjorck_beta`, `k_coef_lip` our `lipschitz`.

There is nothing to condense: the constrained kernel is derived in every
call (`layer.effective_kernel()`), and `vanilla_export` copies it.
"""

import abc

import keras

from keras_lipschitz import layers as _layers
from keras_lipschitz.compat.deel_lip import initializers as _initializers
from keras_lipschitz.compat.deel_lip._classes import deel_lip_class
from keras_lipschitz.compat.deel_lip._mapping import maps_to
from keras_lipschitz.compat.deel_lip.layers import unconstrained
from keras_lipschitz.compat.deel_lip.layers.activations import FullSort
from keras_lipschitz.compat.deel_lip.layers.activations import GroupSort
from keras_lipschitz.compat.deel_lip.layers.activations import GroupSort2
from keras_lipschitz.compat.deel_lip.layers.activations import Householder
from keras_lipschitz.compat.deel_lip.layers.activations import MaxMin
from keras_lipschitz.compat.deel_lip.layers.activations import PReLUlip

DEFAULT_EPS_SPECTRAL = 1e-3
DEFAULT_EPS_BJORCK = 1e-3
DEFAULT_BETA_BJORCK = 0.5
DEFAULT_MAXITER_SPECTRAL = 10
DEFAULT_MAXITER_BJORCK = 15


def _check_iteration_args(eps_spectral, eps_bjorck, beta_bjorck):
    """deel-lip's argument checks (`_check_RKO_params`), as ValueErrors."""
    if eps_spectral <= 0:
        raise ValueError(
            f"`eps_spectral` must be > 0. Received: eps_spectral={eps_spectral}"
        )
    if eps_bjorck is not None and eps_bjorck <= 0:
        raise ValueError(
            "`eps_bjorck` must be > 0 or None. "
            f"Received: eps_bjorck={eps_bjorck}"
        )
    if beta_bjorck is not None and not 0.0 < beta_bjorck <= 0.5:
        raise ValueError(
            "`beta_bjorck` must be in (0, 0.5]. "
            f"Received: beta_bjorck={beta_bjorck}"
        )


def _check_lora(lora_rank, name):
    if lora_rank is not None:
        raise ValueError(f"lora_rank is not supported for {name}")


def _default_initializer(kernel_initializer):
    if kernel_initializer is None:
        return _initializers.SpectralInitializer()
    return kernel_initializer


def _bjorck_off(eps_bjorck, beta_bjorck):
    return eps_bjorck is None or beta_bjorck is None


class LipschitzLayer(abc.ABC):
    """deel-lip's `LipschitzLayer`, as an abstract class for `isinstance`.

    Any layer with a `lipschitz` factor and a `lipschitz_upper_bound()`
    (every constrained layer, activation and scaled pooling of
    keras-lipschitz) is an instance, and deel-lip's Lipschitz layer classes
    of this module (`SpectralDense`, the activations, the scaled pooling
    layers, ...) are subclasses. There is no `set_klip_factor`: set
    `layer.lipschitz` before the layer is built, or use
    `lip.model.Sequential(k_coef_lip=...)`.
    """

    @classmethod
    def __subclasshook__(cls, subclass):
        if cls is LipschitzLayer:
            if getattr(subclass, "_deel_lip_lipschitz_layer", False):
                return True  # deel-lip's Lipschitz layer classes.
            return issubclass(subclass, keras.layers.Layer) and hasattr(
                subclass, "lipschitz_upper_bound"
            )
        return NotImplemented


class Condensable(abc.ABC):
    """deel-lip's `Condensable`, as an abstract class for `isinstance`.

    Any layer with `effective_kernel()` is an instance: its constrained
    kernel is what `keras_lipschitz.vanilla_export` copies. deel-lip's
    condensable classes of this module (`SpectralDense`, `FrobeniusDense`,
    `SpectralConv2D`, `FrobeniusConv2D`, `PadConv2D`) are subclasses. There
    is no `condense()` (nothing is ever written back to the trainable
    kernel).
    """

    @classmethod
    def __subclasshook__(cls, subclass):
        if cls is Condensable:
            if getattr(subclass, "_deel_lip_condensable", False):
                return True  # deel-lip's Condensable layer classes.
            return hasattr(subclass, "effective_kernel")
        return NotImplemented


maps_to(
    "layers",
    "abstract class",
    "`issubclass` is true for deel-lip's Lipschitz layer classes, "
    "`isinstance` for every layer with `lipschitz_upper_bound()`; no "
    "`set_klip_factor` (set `lipschitz`, or use `Sequential(k_coef_lip)`).",
    status="adapted",
)(LipschitzLayer)
maps_to(
    "layers",
    "abstract class",
    "`issubclass` is true for deel-lip's condensable layer classes, "
    "`isinstance` for layers with `effective_kernel()`; no "
    "`condense()`: nothing to condense, kernels are derived in `call`.",
    status="adapted",
)(Condensable)


@maps_to(
    "layers",
    "`BjorckDense` (`SpectralDense` with `eps_bjorck=None`)",
    "deel-lip's `SpectralDense` is spectral normalization **then Björck**: "
    "our "
    "`BjorckDense(units, lipschitz=k_coef_lip, bjorck_iterations="
    "maxiter_bjorck, bjorck_beta=beta_bjorck)`. Our `SpectralDense` is "
    "spectral normalization only. In inference the kernel is divided by a "
    "guaranteed bound, so the layer never exceeds `k_coef_lip`.",
)
@deel_lip_class(
    _layers.BjorckDense,
    _layers.SpectralDense,
    lipschitz_layer=True,
    condensable=True,
)
def SpectralDense(
    units,
    activation=None,
    use_bias=True,
    kernel_initializer=None,
    bias_initializer="zeros",
    kernel_regularizer=None,
    bias_regularizer=None,
    activity_regularizer=None,
    kernel_constraint=None,
    bias_constraint=None,
    lora_rank=None,
    k_coef_lip=1.0,
    eps_spectral=DEFAULT_EPS_SPECTRAL,
    eps_bjorck=DEFAULT_EPS_BJORCK,
    beta_bjorck=DEFAULT_BETA_BJORCK,
    maxiter_spectral=DEFAULT_MAXITER_SPECTRAL,
    maxiter_bjorck=DEFAULT_MAXITER_BJORCK,
    **kwargs,
):
    """deel-lip's `SpectralDense`: `keras_lipschitz.layers.BjorckDense`.

    Spectral normalization followed by `maxiter_bjorck` Björck steps; with
    `eps_bjorck=None` (deel-lip: no Björck) our `SpectralDense`.
    `activation` may be a string or a shape-preserving layer such as
    `GroupSort2()` (deel-lip's tutorials pass `GroupSort(2)`).

    Args:
        units: int.
        kernel_initializer: default deel-lip's `SpectralInitializer()`.
        **kwargs: `activation`, `use_bias`, `bias_initializer`, the
            regularizers and constraints, as in `keras.layers.Dense`.
        lora_rank: must be None.
        k_coef_lip: our `lipschitz`.
        eps_spectral, maxiter_spectral: accepted (see the module).
        eps_bjorck: None disables Björck; otherwise accepted.
        beta_bjorck: our `bjorck_beta`.
        maxiter_bjorck: our `bjorck_iterations`.
        **kwargs: layer keyword arguments.

    Returns:
        A `BjorckDense` (or `SpectralDense`).
    """
    _check_lora(lora_rank, "SpectralDense")
    _check_iteration_args(eps_spectral, eps_bjorck, beta_bjorck)
    common = dict(
        lipschitz=k_coef_lip,
        activation=activation,
        use_bias=use_bias,
        kernel_initializer=_default_initializer(kernel_initializer),
        bias_initializer=bias_initializer,
        kernel_regularizer=kernel_regularizer,
        bias_regularizer=bias_regularizer,
        kernel_constraint=kernel_constraint,
        bias_constraint=bias_constraint,
        activity_regularizer=activity_regularizer,
        **kwargs,
    )
    if _bjorck_off(eps_bjorck, beta_bjorck) or maxiter_bjorck == 0:
        return _layers.SpectralDense(units, **common)
    return _layers.BjorckDense(
        units,
        bjorck_iterations=maxiter_bjorck,
        bjorck_beta=beta_bjorck,
        **common,
    )


@maps_to(
    "layers",
    "`FrobeniusDense(units, disjoint_neurons, lipschitz=k_coef_lip)`",
    "Same maths (each column, or the whole kernel, scaled to norm "
    "`k_coef_lip`).",
)
@deel_lip_class(_layers.FrobeniusDense, lipschitz_layer=True, condensable=True)
def FrobeniusDense(
    units,
    activation=None,
    use_bias=True,
    kernel_initializer=None,
    bias_initializer="zeros",
    kernel_regularizer=None,
    bias_regularizer=None,
    activity_regularizer=None,
    kernel_constraint=None,
    bias_constraint=None,
    lora_rank=None,
    disjoint_neurons=True,
    k_coef_lip=1.0,
    **kwargs,
):
    """deel-lip's `FrobeniusDense`: `keras_lipschitz.layers.FrobeniusDense`.

    Args:
        units: int.
        disjoint_neurons: bool (default True, as in deel-lip).
        k_coef_lip: our `lipschitz`.
        lora_rank: must be None.
        Others: as in `keras.layers.Dense`.

    Returns:
        A `keras_lipschitz.layers.FrobeniusDense`.
    """
    _check_lora(lora_rank, "FrobeniusDense")
    return _layers.FrobeniusDense(
        units,
        disjoint_neurons=disjoint_neurons,
        lipschitz=k_coef_lip,
        activation=activation,
        use_bias=use_bias,
        kernel_initializer=_default_initializer(kernel_initializer),
        bias_initializer=bias_initializer,
        kernel_regularizer=kernel_regularizer,
        bias_regularizer=bias_regularizer,
        kernel_constraint=kernel_constraint,
        bias_constraint=bias_constraint,
        activity_regularizer=activity_regularizer,
        **kwargs,
    )


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
    groups=1,
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
        dilation_rate, groups: only 1.
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
        lipschitz=k_coef_lip,
        activation=activation,
        use_bias=use_bias,
        kernel_initializer=_default_initializer(kernel_initializer),
        bias_initializer=bias_initializer,
        kernel_regularizer=kernel_regularizer,
        bias_regularizer=bias_regularizer,
        kernel_constraint=kernel_constraint,
        bias_constraint=bias_constraint,
        activity_regularizer=activity_regularizer,
        **kwargs,
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
    groups=1,
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
        lipschitz=k_coef_lip,
        activation=activation,
        use_bias=use_bias,
        kernel_initializer=_default_initializer(kernel_initializer),
        bias_initializer=bias_initializer,
        kernel_regularizer=kernel_regularizer,
        bias_regularizer=bias_regularizer,
        kernel_constraint=kernel_constraint,
        bias_constraint=bias_constraint,
        activity_regularizer=activity_regularizer,
        **kwargs,
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
    output_padding=None,
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
        lipschitz=k_coef_lip,
        activation=activation,
        use_bias=use_bias,
        kernel_initializer=_default_initializer(kernel_initializer),
        bias_initializer=bias_initializer,
        kernel_regularizer=kernel_regularizer,
        bias_regularizer=bias_regularizer,
        kernel_constraint=kernel_constraint,
        bias_constraint=bias_constraint,
        activity_regularizer=activity_regularizer,
        **kwargs,
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
    "Condensable",
    "FrobeniusConv2D",
    "FrobeniusDense",
    "FullSort",
    "GroupSort",
    "GroupSort2",
    "Householder",
    "InvertibleDownSampling",
    "InvertibleUpSampling",
    "LipschitzLayer",
    "MaxMin",
    "PReLUlip",
    "ScaledAveragePooling2D",
    "ScaledGlobalAveragePooling2D",
    "ScaledGlobalL2NormPooling2D",
    "ScaledL2NormPooling2D",
    "SpectralConv2D",
    "SpectralConv2DTranspose",
    "SpectralDense",
    "unconstrained",
]
