"""deel-lip's `deel.lip.normalizers`, with its signatures.

Built on `keras_lipschitz.normalizers` (`power_iteration_dense`,
`power_iteration_conv`, `bjorck_orthonormalize`). Every loop runs its
`maxiter` steps: the `eps` stopping tolerances of deel-lip's
`while_loop`s are accepted, and `eps` keeps its other role, the safety
margin of the division `kernel / (sigma + eps)`, as in deel-lip. The
power-iteration vector is always gradient-stopped
(`set_stop_grad_spectral(True)`, deel-lip's default).
"""

import keras
from keras import ops

from keras_lipschitz import normalizers as _normalizers
from keras_lipschitz.compat.deel_lip._mapping import maps_to

DEFAULT_BETA_BJORCK = 0.5
DEFAULT_EPS_SPECTRAL = 1e-3
DEFAULT_EPS_BJORCK = 1e-3
DEFAULT_MAXITER_BJORCK = 15
DEFAULT_MAXITER_SPECTRAL = 10
STOP_GRAD_SPECTRAL = True
SWAP_MEMORY = True


@maps_to(
    "normalizers",
    "—",
    "Only `True` (the default): the power-iteration vector is always "
    "gradient-stopped (Miyato et al.); `False` raises.",
    status="adapted",
)
def set_stop_grad_spectral(value):
    """Accepts `True` only (the vector is always gradient-stopped)."""
    if not value:
        raise ValueError(
            "keras_lipschitz always stops the gradient through the power "
            "iteration vector; set_stop_grad_spectral(False) is not supported."
        )


def _initial_vector(kernel, u):
    if u is None:
        return keras.random.uniform((1, kernel.shape[-1]), 0.0, 1.0)
    return ops.convert_to_tensor(u)


@maps_to(
    "normalizers",
    "`keras_lipschitz.normalizers.power_iteration_dense`",
    "Returns `(kernel / (sigma + eps), u, sigma)`; `maxiter` steps from `u` "
    "(random when None).",
)
def spectral_normalization(
    kernel, u, eps=DEFAULT_EPS_SPECTRAL, maxiter=DEFAULT_MAXITER_SPECTRAL
):
    """deel-lip's `spectral_normalization` of a 2-D kernel.

    Returns:
        `(kernel / (sigma + eps), u, sigma)` with `sigma` of shape `(1, 1)`.
    """
    kernel = ops.convert_to_tensor(kernel)
    u, sigma = _normalizers.power_iteration_dense(
        kernel, _initial_vector(kernel, u), maxiter
    )
    return kernel / (sigma + eps), u, ops.reshape(sigma, (1, 1))


@maps_to(
    "normalizers",
    "`keras_lipschitz.normalizers.bjorck_orthonormalize`",
    "A fixed `maxiter` steps (deel-lip stops earlier at `eps`).",
)
def bjorck_normalization(
    w,
    eps=DEFAULT_EPS_BJORCK,
    beta=DEFAULT_BETA_BJORCK,
    maxiter=DEFAULT_MAXITER_BJORCK,
):
    """deel-lip's `bjorck_normalization`."""
    return _normalizers.bjorck_orthonormalize(
        ops.convert_to_tensor(w), maxiter, beta
    )


@maps_to(
    "normalizers",
    "`keras_lipschitz.normalizers.reshaped_kernel_orthogonalize`",
    "Spectral normalization (by `sigma + eps_spectral`) and Björck of the "
    "reshaped kernel, times `adjustment_coef`; `eps_bjorck=None` skips "
    "Björck.",
)
def reshaped_kernel_orthogonalization(
    kernel,
    u,
    adjustment_coef,
    eps_spectral=DEFAULT_EPS_SPECTRAL,
    eps_bjorck=DEFAULT_EPS_BJORCK,
    beta=DEFAULT_BETA_BJORCK,
    maxiter_spectral=DEFAULT_MAXITER_SPECTRAL,
    maxiter_bjorck=DEFAULT_MAXITER_BJORCK,
):
    """deel-lip's `reshaped_kernel_orthogonalization`.

    Returns:
        `(W_bar, u, sigma)`.
    """
    kernel = ops.convert_to_tensor(kernel)
    shape = tuple(kernel.shape)
    matrix = ops.reshape(kernel, (-1, shape[-1]))
    w_bar, u, sigma = spectral_normalization(
        matrix, u, eps=eps_spectral, maxiter=maxiter_spectral
    )
    if eps_bjorck is not None and beta is not None:
        w_bar = _normalizers.bjorck_orthonormalize(w_bar, maxiter_bjorck, beta)
    return ops.reshape(w_bar * adjustment_coef, shape), u, sigma


def _zero_upscale(x, stride):
    """Inserts `stride - 1` zeros after every pixel (channels last)."""
    if stride == 1:
        return x
    batch, height, width, channels = (int(d) for d in x.shape)
    zeros = ops.zeros_like(x)
    # Rows: (B, H, 1, W, C) with zero rows after each -> (B, H s, W, C).
    x = ops.stack([x] + [zeros] * (stride - 1), axis=2)
    x = ops.reshape(x, (batch, height * stride, width, channels))
    zeros = ops.zeros_like(x)
    x = ops.stack([x] + [zeros] * (stride - 1), axis=3)
    return ops.reshape(x, (batch, height * stride, width * stride, channels))


def _conv_operators(kernel, u_shape, stride, conv_first, pad_func):
    """deel-lip's `get_conv_operators`: the convolution and its adjoint."""
    k = tuple(int(d) for d in kernel.shape[:2])

    if pad_func is None:

        def conv(x):
            return ops.conv(x, kernel, stride, "same", "channels_last")

        def conv_t(y, size):
            padding = _normalizers.conv_transpose_output_padding(
                size, k, (stride, stride), "same"
            )
            return ops.conv_transpose(
                y, kernel, stride, "same", output_padding=padding,
                data_format="channels_last",
            )

    else:

        def conv(x):
            return ops.conv(
                pad_func(x), kernel, stride, "valid", "channels_last"
            )

        # deel-lip's adjoint: zero upscaling, then the padded convolution
        # with the flipped transposed kernel (the exact adjoint for circular
        # padding).
        flipped = ops.flip(ops.transpose(kernel, (0, 1, 3, 2)), axis=(0, 1))

        def conv_t(y, size):
            y = pad_func(_zero_upscale(y, stride))
            return ops.conv(y, flipped, 1, "valid", "channels_last")

    if conv_first:
        size = tuple(int(d) for d in u_shape[1:3])
        return conv, lambda y: conv_t(y, size)
    size = tuple(int(d) * stride for d in u_shape[1:3])
    return (lambda y: conv_t(y, size)), conv


@maps_to(
    "normalizers",
    "the operators of `keras_lipschitz.normalizers.power_iteration_conv`",
    "`(linear_op, adjoint_op)`: the convolution (\"same\" zero padding, or "
    "`pad_func` then \"valid\") and its adjoint; with `conv_first=False` "
    "the transposed convolution and the convolution. Channels last.",
    status="adapted",
)
def get_conv_operators(
    kernel, u_shape, stride=1.0, conv_first=True, pad_func=None
):
    """deel-lip's `get_conv_operators`: a convolution and its adjoint.

    Args:
        kernel: `(k_h, k_w, c_in, c_out)`.
        u_shape: shape of the operator's input, `(1, H, W, c)`.
        stride: int stride (deel-lip's float default 1.0 is accepted).
        conv_first: the operator is the convolution (True) or its
            transpose (False).
        pad_func: None (zero "same" padding) or a function padding a
            channels-last tensor before a "valid" convolution.

    Returns:
        `(linear_op, adjoint_op)`, two functions of one tensor.
    """
    if float(stride) != int(stride) or int(stride) < 1:
        raise ValueError(
            f"`stride` must be a positive integer. Received: stride={stride}"
        )
    return _conv_operators(
        ops.convert_to_tensor(kernel), tuple(int(d) for d in u_shape),
        int(stride), conv_first, pad_func,
    )


@maps_to(
    "normalizers",
    "no-op",
    "deel-lip 1.5.0's `tf.while_loop` memory option; our iterations are "
    "fixed-count loops, so the value is only stored in `SWAP_MEMORY`.",
    status="adapted",
)
def set_swap_memory(value):
    """deel-lip 1.5.0's `set_swap_memory`: stored, without effect here.

    Our power and Björck iterations are fixed-count Python loops, not
    `tf.while_loop`s, so there is no swap option to set.

    Args:
        value: bool.
    """
    global SWAP_MEMORY
    SWAP_MEMORY = bool(value)


@maps_to(
    "normalizers",
    "`keras_lipschitz.normalizers.power_iteration_conv`",
    "Zero \"same\" padding, or deel-lip's `pad_func` then a \"valid\" "
    "convolution (its adjoint, as in deel-lip, is exact for circular "
    "padding); `conv_first=False` (the transposed operator) is supported. "
    "`eps < 0` returns the kernel unchanged, as in deel-lip; `maxiter` "
    "steps, and no random jitter is added to `u`.",
    status="adapted",
)
def spectral_normalization_conv(
    kernel,
    u,
    stride=1.0,
    conv_first=True,
    pad_func=None,
    eps=DEFAULT_EPS_SPECTRAL,
    maxiter=DEFAULT_MAXITER_SPECTRAL,
):
    """deel-lip's `spectral_normalization_conv` (channels last).

    Power iteration on the convolution operator (or its transpose) from
    `u`; `sigma` estimates its largest singular value from below.

    Args:
        kernel: `(k_h, k_w, c_in, c_out)`.
        u: `(1, H, W, c_in)` if `conv_first`, else `(1, H, W, c_out)`.
        stride: int stride.
        conv_first: whether the operator is the convolution (else its
            transpose).
        pad_func: None (zero "same" padding) or a function padding a
            channels-last tensor before a "valid" convolution (deel-lip's
            convention; e.g. `partial(lip.utils._padding_circular,
            circular_paddings=(k_h // 2, k_w // 2))`). The adjoint is
            deel-lip's (zero upscaling, then the padded convolution with
            the flipped kernel), exact for circular padding.
        eps: safety margin of the division; `eps < 0` returns the kernel.
        maxiter: number of power-iteration steps.

    Returns:
        `(kernel / (sigma + eps), u, sigma)`.
    """
    if eps < 0:
        return kernel, u, 1.0
    kernel = ops.convert_to_tensor(kernel)
    u = ops.convert_to_tensor(u)
    forward, adjoint = _conv_operators(
        kernel, tuple(u.shape), int(stride), conv_first, pad_func
    )
    u = _normalizers.l2_normalize(ops.stop_gradient(u))
    for _ in range(maxiter):
        u = _normalizers.l2_normalize(adjoint(forward(u)))
    u = ops.stop_gradient(u)
    sigma = ops.sqrt(ops.sum(ops.square(forward(u))))
    return kernel / (sigma + eps), u, sigma


__all__ = [
    "DEFAULT_BETA_BJORCK",
    "DEFAULT_EPS_BJORCK",
    "DEFAULT_EPS_SPECTRAL",
    "DEFAULT_MAXITER_BJORCK",
    "DEFAULT_MAXITER_SPECTRAL",
    "STOP_GRAD_SPECTRAL",
    "SWAP_MEMORY",
    "bjorck_normalization",
    "get_conv_operators",
    "reshaped_kernel_orthogonalization",
    "set_stop_grad_spectral",
    "set_swap_memory",
    "spectral_normalization",
    "spectral_normalization_conv",
]
