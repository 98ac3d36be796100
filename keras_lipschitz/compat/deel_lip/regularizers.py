"""deel-lip's `deel.lip.regularizers`, as `keras_lipschitz.regularizers`."""

from keras_lipschitz import regularizers as _regularizers
from keras_lipschitz.compat.deel_lip._mapping import maps_to
from keras_lipschitz.regularizers import Lorth2D

maps_to(
    "regularizers",
    "`keras_lipschitz.regularizers.Lorth2D`",
    "Same attributes (`kernel_shape`, `padding`, `delta`, `compute_lorth`); "
    "impossible shapes and even kernels raise `ValueError` (deel-lip: "
    "`RuntimeError` / `AssertionError`).",
    status="adapted",
)(Lorth2D)


@maps_to(
    "regularizers",
    "`LorthRegularizer(kernel_shape, stride, factor=lambda_lorth)`",
    "`dim=1` raises `NotImplementedError`, as in deel-lip. The kernel shape "
    "is read from the kernel when not given.",
)
def LorthRegularizer(
    kernel_shape=None, stride=1, lambda_lorth=1.0, dim=2, conv_transpose=False
):
    """deel-lip's `LorthRegularizer`.

    Returns:
        A `keras_lipschitz.regularizers.LorthRegularizer`.
    """
    if dim != 2:
        raise NotImplementedError(
            "Only 2D convolutions are supported for Lorth."
        )
    return _regularizers.LorthRegularizer(
        kernel_shape=kernel_shape,
        stride=stride,
        factor=lambda_lorth,
        conv_transpose=conv_transpose,
    )


@maps_to(
    "regularizers", "`OrthDenseRegularizer(factor=lambda_orth)`", ""
)
def OrthDenseRegularizer(lambda_orth=1.0):
    """deel-lip's `OrthDenseRegularizer`: $\\lambda\\|G - I\\|_F^2$.

    Returns:
        A `keras_lipschitz.regularizers.OrthDenseRegularizer`.
    """
    return _regularizers.OrthDenseRegularizer(factor=lambda_orth)


__all__ = ["Lorth2D", "LorthRegularizer", "OrthDenseRegularizer"]
