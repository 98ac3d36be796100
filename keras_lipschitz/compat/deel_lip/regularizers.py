"""deel-lip's `deel.lip.regularizers`, as `keras_lipschitz.regularizers`."""

import abc

import keras

from keras_lipschitz import regularizers as _regularizers
from keras_lipschitz.compat.deel_lip._classes import DeelLipAssertionError
from keras_lipschitz.compat.deel_lip._classes import DeelLipValueError
from keras_lipschitz.compat.deel_lip._classes import deel_lip_class
from keras_lipschitz.compat.deel_lip._classes import reraise_as
from keras_lipschitz.compat.deel_lip._mapping import maps_to


def _reraise_shape_error(error):
    # deel-lip asserts odd kernels and raises RuntimeError for impossible
    # orthogonal convolutions; both stay ValueErrors here.
    if "odd kernel" in str(error):
        reraise_as(DeelLipAssertionError, error)
    reraise_as(DeelLipValueError, error)


@maps_to(
    "regularizers",
    "abstract base of the compat `Lorth2D`",
    "Cannot be instantiated, as in deel-lip; `isinstance(Lorth2D(...), "
    "Lorth)` holds. A new rank is written by subclassing "
    "`keras_lipschitz.regularizers.Lorth2D`'s maths, not this class.",
    status="adapted",
)
class Lorth(abc.ABC):
    """deel-lip's `Lorth`: the abstract base of the $L_{orth}$ terms.

    Achour et al., "Existence, Stability and Scalability of Orthogonal
    Convolutional Neural Networks", JMLR 2022. Only the 2-D term exists
    (`Lorth2D`, registered as a subclass); this class keeps deel-lip's
    signature and abstract methods so that `isinstance` checks and
    `Lorth(...)` (a `TypeError`) behave as in deel-lip.

    Args:
        dim: rank of the convolution.
        kernel_shape: the kernel's shape, or None.
        stride: int stride of the convolution.
        conv_transpose: whether the kernel is a transposed convolution's.
    """

    def __init__(self, dim, kernel_shape=None, stride=1, conv_transpose=False):
        self.dim = dim
        self.stride = stride
        self.conv_transpose = conv_transpose
        self.set_kernel_shape(kernel_shape)

    @abc.abstractmethod
    def set_kernel_shape(self, shape):
        """Sets the kernel shape and the quantities derived from it."""

    @abc.abstractmethod
    def _compute_conv_kk(self, w):
        """The convolution of the kernel with itself."""

    @abc.abstractmethod
    def _compute_target(self, w, output_shape):
        """The target of `_compute_conv_kk` for an orthogonal convolution."""


@maps_to(
    "regularizers",
    "`keras_lipschitz.regularizers.Lorth2D` subclass",
    "Same attributes (`kernel_shape`, `padding`, `delta`, `compute_lorth`). "
    "Impossible shapes raise an error that is both a `ValueError` (ours) "
    "and deel-lip's `RuntimeError`; even kernels, a `ValueError` that is "
    "also deel-lip's `AssertionError`.",
)
class Lorth2D(_regularizers.Lorth2D):
    """deel-lip's `Lorth2D`: `keras_lipschitz.regularizers.Lorth2D`.

    Only the exception types differ from our class: an impossible
    orthogonal convolution raises `DeelLipValueError` (a `ValueError` and a
    `RuntimeError`, as in deel-lip), an even kernel size
    `DeelLipAssertionError` (a `ValueError` and an `AssertionError`).

    Args:
        kernel_shape: `(k, k, C, M)` or None.
        stride: int >= 1.
        conv_transpose: bool.
    """

    def set_kernel_shape(self, shape):
        """Sets the kernel shape; deel-lip's exception types."""
        try:
            super().set_kernel_shape(shape)
        except ValueError as error:
            _reraise_shape_error(error)


Lorth.register(Lorth2D)


@keras.saving.register_keras_serializable(
    package="keras_lipschitz", name="DeelLipLorthRegularizer"
)
class _LorthRegularizer(_regularizers.LorthRegularizer):
    """Our `LorthRegularizer` with deel-lip's attribute names.

    `lambda_lorth` is our `factor` and `dim` is 2; `lorth` is the compat
    `Lorth2D` (deel-lip's exception types).
    """

    def __init__(
        self, kernel_shape=None, stride=1, factor=1.0, conv_transpose=False
    ):
        super().__init__(
            kernel_shape=None,
            stride=stride,
            factor=factor,
            conv_transpose=conv_transpose,
        )
        self.lorth = Lorth2D(kernel_shape, stride, conv_transpose)

    @property
    def lambda_lorth(self):
        """deel-lip's name of `factor`."""
        return self.factor

    @property
    def dim(self):
        """Always 2 (deel-lip's `dim=1` raises `NotImplementedError`)."""
        return 2


@maps_to(
    "regularizers",
    "`LorthRegularizer(kernel_shape, stride, factor=lambda_lorth)`",
    "A subclass with deel-lip's `lambda_lorth` and `dim` attributes and "
    "exception types (see `Lorth2D`). `dim=1` raises "
    "`NotImplementedError`, as in deel-lip. The kernel shape is read from "
    "the kernel when not given. A negative `lambda_lorth` raises "
    "`ValueError` (deel-lip accepts it; it would reward non-orthogonality).",
    status="adapted",
)
@deel_lip_class(_LorthRegularizer, _regularizers.LorthRegularizer)
def LorthRegularizer(
    kernel_shape=None, stride=1, lambda_lorth=1.0, dim=2, conv_transpose=False
):
    """deel-lip's `LorthRegularizer`: $\\lambda\\,L_{orth}(K)$.

    Args:
        kernel_shape: `(k, k, C, M)` or None (read from the kernel).
        stride: int >= 1.
        lambda_lorth: float >= 0, our `factor` (deel-lip also accepts a
            negative one).
        dim: only 2.
        conv_transpose: bool.

    Returns:
        A subclass of `keras_lipschitz.regularizers.LorthRegularizer` with
        deel-lip's `lambda_lorth` and `dim` attributes.
    """
    if dim != 2:
        raise NotImplementedError(
            "Only 2D convolutions are supported for Lorth."
        )
    return _LorthRegularizer(
        kernel_shape=kernel_shape,
        stride=stride,
        factor=lambda_lorth,
        conv_transpose=conv_transpose,
    )


@maps_to(
    "regularizers", "`OrthDenseRegularizer(factor=lambda_orth)`", ""
)
@deel_lip_class(_regularizers.OrthDenseRegularizer)
def OrthDenseRegularizer(lambda_orth=1.0):
    """deel-lip's `OrthDenseRegularizer`: $\\lambda\\|G - I\\|_F^2$.

    Returns:
        A `keras_lipschitz.regularizers.OrthDenseRegularizer`.
    """
    return _regularizers.OrthDenseRegularizer(factor=lambda_orth)


__all__ = ["Lorth", "Lorth2D", "LorthRegularizer", "OrthDenseRegularizer"]
