"""Defaults and argument checks shared by the compat dense and conv layers."""

from keras_lipschitz.compat.deel_lip import initializers as _initializers

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


def _layer_arguments(
    k_coef_lip,
    activation,
    use_bias,
    kernel_initializer,
    bias_initializer,
    kernel_regularizer,
    bias_regularizer,
    activity_regularizer,
    kernel_constraint,
    bias_constraint,
    kwargs,
):
    """The Keras layer arguments every compat dense and conv layer passes
    on: `k_coef_lip` as our `lipschitz`, deel-lip's default initializer."""
    return dict(
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


def _bjorck_off(eps_bjorck, beta_bjorck):
    return eps_bjorck is None or beta_bjorck is None
