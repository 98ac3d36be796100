"""Orthogonality regularizers for plain `Dense` and `Conv2D` kernels.

Soft alternatives to the constrained layers: the penalty pushes the kernel
towards orthogonality during training but guarantees nothing. Certify a
regularized model with `keras_lipschitz.lipschitz_bound` / `certify`,
which compute the norms of the actual kernels.
"""

import warnings

import keras
from keras import ops

from keras_lipschitz.api_export import keras_lipschitz_export
from keras_lipschitz.layers import _validation


def _validate_factor(name, value):
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or value != value
        or value < 0
        or value == float("inf")
    ):
        raise ValueError(
            f"`{name}` must be a finite number >= 0. Received: {name}={value!r}"
        )
    return float(value)


def dense_orthogonality_distance(kernel):
    """$\\|G - I\\|_F^2$ with $G$ the smaller Gram matrix of the kernel.

    For a Keras kernel $W \\in \\mathbb{R}^{d_{in} \\times d_{out}}$,
    $G = WW^T$ if $d_{in} \\le d_{out}$ (orthonormal rows) and $G = W^TW$
    otherwise (orthonormal columns). It is 0 exactly when every singular
    value of $W$ is 1.

    Args:
        kernel: float tensor of rank 2.

    Returns:
        A scalar tensor.

    Example:

    >>> import numpy as np
    >>> float(dense_orthogonality_distance(np.eye(3, 2, dtype="float32")))
    0.0
    >>> float(dense_orthogonality_distance(2 * np.eye(2, dtype="float32")))
    18.0
    """
    kernel = ops.convert_to_tensor(kernel)
    rows, cols = kernel.shape
    if rows <= cols:
        gram = ops.matmul(kernel, ops.transpose(kernel))
    else:
        gram = ops.matmul(ops.transpose(kernel), kernel)
    identity = ops.eye(gram.shape[0], dtype=gram.dtype)
    return ops.sum(ops.square(gram - identity))


@keras_lipschitz_export
class OrthDenseRegularizer(keras.regularizers.Regularizer):
    """$\\lambda\\,\\|G - I\\|_F^2$ on a `Dense` kernel (deel-lip's name).

    See `dense_orthogonality_distance`.

    Args:
        factor: float >= 0, $\\lambda$.

    Example:

    >>> import numpy as np
    >>> float(OrthDenseRegularizer(0.5)(2 * np.eye(2, dtype="float32")))
    9.0
    """

    def __init__(self, factor=1.0):
        self.factor = _validate_factor("factor", factor)

    def __call__(self, x):
        return self.factor * dense_orthogonality_distance(x)

    def get_config(self):
        return {"factor": self.factor}


class Lorth2D:
    """The Lorth orthogonality measure of a 2-D convolution kernel.

    Wang, Chen, Chakraborty, Yu, "Orthogonal Convolutional Neural
    Networks", CVPR 2020; Achour, Malgouyres, Mamalet, "Existence,
    stability and scalability of orthogonal convolutional neural networks",
    JMLR 2022. For a kernel $K$ of size $k \\times k$ (odd), $C$ input and
    $M$ output channels and stride $s$, with padding
    $P = \\lfloor (k-1)/s\\rfloor s$:

    $$L_{orth}(K) = \\big\\|\\mathrm{conv}(K, K, \\text{stride } s,
    \\text{padding } P) - I_{r0}\\big\\|_F^2 - \\delta,$$

    where the convolution of the kernel with itself (the $M$ filters as a
    batch of $k\\times k\\times C$ images) has shape
    $(M, 2P/s + 1, 2P/s + 1, M)$, $I_{r0}$ is the identity $M\\times M$ at
    the central position and zero elsewhere, and
    $\\delta = \\max(0, M - s^2C)$ (0 in the row-orthogonal case
    $M \\le s^2C$, the deficit of rank otherwise). $L_{orth} = 0$ exactly
    when the convolution with circular padding is orthogonal.

    Args:
        kernel_shape: `(k, k, C, M)` or None (taken from the kernel at the
            first call).
        stride: int >= 1, $s$.
        conv_transpose: bool, the kernel is that of a transposed
            convolution ($C$ and $M$ swap roles in $\\delta$, as in
            deel-lip).

    Raises:
        ValueError: if the kernel size is even, or if no orthogonal
            convolution exists with this shape (Achour et al., Th. 1):
            $M > Ck^2$ in the row-orthogonal case, $s > k$ in the
            column-orthogonal case. A warning is issued when
            $M = s^2C$ (hard to optimize).
    """

    dim = 2

    def __init__(self, kernel_shape=None, stride=1, conv_transpose=False):
        self.stride = _validation.validate_positive_int("stride", stride)
        self.conv_transpose = bool(conv_transpose)
        self.set_kernel_shape(kernel_shape)

    def set_kernel_shape(self, shape):
        """Sets the kernel shape and derives `padding` and `delta`."""
        if shape is None:
            self.kernel_shape, self.padding, self.delta = None, None, None
            return
        shape = tuple(int(d) for d in shape)
        if len(shape) != 4 or shape[0] != shape[1]:
            raise ValueError(
                "`kernel_shape` must be (k, k, C, M) with a square kernel. "
                f"Received: kernel_shape={shape}"
            )
        k, c_in, c_out = shape[0], shape[2], shape[3]
        if not k % 2:
            raise ValueError(
                "Lorth needs an odd kernel size. "
                f"Received: kernel_shape={shape}"
            )
        s = self.stride
        if c_in * s**2 >= c_out:  # row-orthogonal
            if c_out > c_in * k**2:
                raise ValueError(
                    "Impossible RO configuration for orthogonal convolution: "
                    f"M = {c_out} > C k^2 = {c_in * k**2}."
                )
        elif s > k:  # column-orthogonal
            raise ValueError(
                "Impossible CO configuration for orthogonal convolution: "
                f"stride {s} > kernel size {k}."
            )
        if c_in * s**2 == c_out:
            warnings.warn(
                "Lorth2D: the configuration C s^2 = M is hard to optimize.",
                stacklevel=2,
            )
        self.kernel_shape = shape
        self.padding = ((k - 1) // s) * s
        if self.conv_transpose:
            self.delta = max(0, c_in - s**2 * c_out)
        else:
            self.delta = max(0, c_out - s**2 * c_in)

    def self_convolution(self, kernel):
        """$\\mathrm{conv}(K, K)$, shape `(M, 2P/s+1, 2P/s+1, M)`."""
        kernel = ops.convert_to_tensor(kernel)
        p = self.padding
        filters = ops.pad(
            ops.transpose(kernel, (3, 0, 1, 2)),
            ((0, 0), (p, p), (p, p), (0, 0)),
        )
        return ops.conv(
            filters,
            kernel,
            strides=self.stride,
            padding="valid",
            data_format="channels_last",
        )

    def compute_lorth(self, kernel):
        """$L_{orth}(K)$ as a scalar tensor."""
        if self.kernel_shape is None:
            self.set_kernel_shape(tuple(kernel.shape))
        conv = self.self_convolution(kernel)
        size = conv.shape[1]
        m = conv.shape[-1]
        row = ops.one_hot(size // 2, size, dtype=conv.dtype)
        centre = ops.reshape(row, (size, 1)) * ops.reshape(row, (1, size))
        target = ops.reshape(
            ops.eye(m, dtype=conv.dtype), (m, 1, 1, m)
        ) * ops.reshape(centre, (1, size, size, 1))
        return ops.sum(ops.square(conv - target)) - self.delta


@keras_lipschitz_export
class LorthRegularizer(keras.regularizers.Regularizer):
    """$\\lambda\\,L_{orth}(K)$ on a `Conv2D` kernel (see `Lorth2D`).

    Args:
        kernel_shape: `(k, k, C, M)` or None (read from the kernel).
        stride: int >= 1, the convolution's stride.
        factor: float >= 0, $\\lambda$.
        conv_transpose: bool.

    Example:

    >>> import numpy as np
    >>> k = np.zeros((3, 3, 4, 2), "float32"); k[1, 1] = np.eye(4, 2)
    >>> float(LorthRegularizer(stride=1)(k))  # an orthogonal 1x1 convolution
    0.0
    """

    def __init__(
        self, kernel_shape=None, stride=1, factor=1.0, conv_transpose=False
    ):
        self.factor = _validate_factor("factor", factor)
        self.lorth = Lorth2D(kernel_shape, stride, conv_transpose)

    @property
    def kernel_shape(self):
        return self.lorth.kernel_shape

    @property
    def stride(self):
        return self.lorth.stride

    @property
    def conv_transpose(self):
        return self.lorth.conv_transpose

    def set_kernel_shape(self, shape):
        """Sets the kernel shape (see `Lorth2D.set_kernel_shape`)."""
        self.lorth.set_kernel_shape(shape)

    def __call__(self, x):
        return self.factor * self.lorth.compute_lorth(x)

    def get_config(self):
        return {
            "kernel_shape": self.kernel_shape,
            "stride": self.stride,
            "factor": self.factor,
            "conv_transpose": self.conv_transpose,
        }
