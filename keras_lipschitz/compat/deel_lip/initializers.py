"""deel-lip's `deel.lip.initializers`."""

from keras_lipschitz import initializers as _initializers
from keras_lipschitz.compat.deel_lip._classes import deel_lip_class
from keras_lipschitz.compat.deel_lip._mapping import maps_to


@maps_to(
    "initializers",
    "`SpectralInitializer(base_initializer, lipschitz=k_coef_lip)`",
    "Orthonormalized base kernel (RKO); divided by a guaranteed bound "
    "before a fixed 15 Björck steps (`eps_bjorck=None`: 0 steps). "
    "`eps_spectral`, `eps_bjorck` are tolerances and are not needed.",
)
@deel_lip_class(_initializers.SpectralInitializer)
def SpectralInitializer(
    eps_spectral=1e-3,
    eps_bjorck=1e-3,
    beta_bjorck=0.5,
    k_coef_lip=1.0,
    base_initializer="orthogonal",
):
    """deel-lip's `SpectralInitializer`: our `SpectralInitializer`.

    Args:
        eps_spectral: accepted (no tolerance: the spectral scale is a
            guaranteed bound).
        eps_bjorck: None disables Björck; otherwise accepted.
        beta_bjorck: our `bjorck_beta`.
        k_coef_lip: our `lipschitz`.
        base_initializer: as in deel-lip.

    Returns:
        A `keras_lipschitz.initializers.SpectralInitializer`.
    """
    off = eps_bjorck is None or beta_bjorck is None
    return _initializers.SpectralInitializer(
        base_initializer=base_initializer,
        lipschitz=k_coef_lip,
        bjorck_iterations=0 if off else 15,
        bjorck_beta=0.5 if beta_bjorck is None else beta_bjorck,
    )


__all__ = ["SpectralInitializer"]
