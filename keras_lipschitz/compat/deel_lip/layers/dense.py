"""deel-lip's `deel.lip.layers.dense`: `SpectralDense`, `FrobeniusDense`."""

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
from keras_lipschitz.compat.deel_lip.layers._common import _check_lora
from keras_lipschitz.compat.deel_lip.layers._common import _layer_arguments


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
    k_coef_lip=1.0,
    eps_spectral=DEFAULT_EPS_SPECTRAL,
    eps_bjorck=DEFAULT_EPS_BJORCK,
    beta_bjorck=DEFAULT_BETA_BJORCK,
    maxiter_spectral=DEFAULT_MAXITER_SPECTRAL,
    maxiter_bjorck=DEFAULT_MAXITER_BJORCK,
    *,
    lora_rank=None,
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
        lora_rank: must be None; keyword-only (deel-lip 1.5.0's
            positional order, which has no `lora_rank`).
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
    common = _layer_arguments(
        k_coef_lip, activation, use_bias, kernel_initializer,
        bias_initializer, kernel_regularizer, bias_regularizer,
        activity_regularizer, kernel_constraint, bias_constraint, kwargs,
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
    disjoint_neurons=True,
    k_coef_lip=1.0,
    *,
    lora_rank=None,
    **kwargs,
):
    """deel-lip's `FrobeniusDense`: `keras_lipschitz.layers.FrobeniusDense`.

    Args:
        units: int.
        disjoint_neurons: bool (default True, as in deel-lip).
        k_coef_lip: our `lipschitz`.
        lora_rank: must be None; keyword-only (deel-lip 1.5.0's
            positional order, which has no `lora_rank`).
        Others: as in `keras.layers.Dense`.

    Returns:
        A `keras_lipschitz.layers.FrobeniusDense`.
    """
    _check_lora(lora_rank, "FrobeniusDense")
    return _layers.FrobeniusDense(
        units,
        disjoint_neurons=disjoint_neurons,
        **_layer_arguments(
            k_coef_lip, activation, use_bias, kernel_initializer,
            bias_initializer, kernel_regularizer, bias_regularizer,
            activity_regularizer, kernel_constraint, bias_constraint, kwargs,
        ),
    )


__all__ = [
    "FrobeniusDense",
    "SpectralDense",
]
