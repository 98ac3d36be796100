"""Backend-agnostic normalizers shared by every constrained layer.

Everything here is a pure function of tensors written with `keras.ops` only:
no layer state, no backend import. Layers own the persistent state (the
power-iteration vectors) and decide when to write it.

All functions expect float32 inputs; layers cast before calling them so that
mixed-precision policies never run these iterations in float16.
"""

import math

import numpy as np
from keras import ops

from keras_lipschitz import _backend

EPSILON = 1e-12

# Floor on squared norms in the Lanczos normalization (float32-safe).
_TINY = 1e-30
# Relative residual below which a Lanczos step is a breakdown (float32
# rounding of the projections is ~1e-7 relative).
_BREAKDOWN = 1e-4


def l2_normalize(x, epsilon=EPSILON):
    """Returns `x / ||x||_2` over all entries, safe at zero."""
    return x * ops.rsqrt(ops.maximum(ops.sum(ops.square(x)), epsilon))


def _norm(x):
    """Differentiable ℓ2 norm of all entries, with a finite gradient at 0."""
    return ops.sqrt(ops.maximum(ops.sum(ops.square(x)), EPSILON))


def _normalized_and_norm(t):
    """Returns `(t / ||t||, ||t||)` from one sum of squares.

    The unit vector is gradient-stopped (the next warm start); the norm is
    the differentiable estimate.
    """
    sigma = _norm(t)
    return ops.stop_gradient(t / sigma), sigma


def power_iteration_dense(kernel, u, iterations):
    """Power iteration for the largest singular value of a dense kernel.

    For a Keras kernel `W` of shape `(d_in, d_out)` (so `y = x W`) and a row
    vector `u` of shape `(1, d_out)`, one step is

    $$v \\leftarrow \\frac{u W^T}{\\|u W^T\\|},\\qquad
      u \\leftarrow \\frac{v W}{\\|v W\\|},$$

    and the estimate is $\\hat\\sigma = \\|v W\\|$ from the last step,
    whose numerator is computed with the differentiable kernel. With `v`
    gradient-stopped, the gradient of $\\hat\\sigma$ with respect to `W`
    is $v^T u$, the gradient of $\\sigma_{max}$ at convergence (Miyato et
    al., ICLR 2018). Reusing the last half-step for the estimate saves one
    matmul (and its gradient) per call.

    Every iterate satisfies $\\hat\\sigma \\le \\sigma_{max}(W)$ since
    $\\|v\\| = 1$: the result is a lower bound, tight once converged. Use
    `gram_spectral_norm_upper_bound` where a guarantee is needed.

    Args:
        kernel: float tensor of shape `(d_in, d_out)`.
        u: float tensor of shape `(1, d_out)`, the warm start (any nonzero
            norm).
        iterations: Python int, the fixed number of steps. With 0, the
            estimate is $\\|u W^T\\|$ for the normalized `u`.

    Returns:
        `(u_new, sigma)`: the gradient-stopped new vector, shape
        `(1, d_out)`, and the differentiable scalar estimate.
    """
    return _power_iteration(
        lambda x, k: ops.matmul(x, ops.transpose(k)),
        ops.matmul,
        kernel,
        u,
        iterations,
    )


def _power_iteration(forward, adjoint, kernel, u, iterations):
    """The loop shared by `power_iteration_dense` and `power_iteration_conv`.

    `forward(x, k)` applies the operator of kernel `k` and `adjoint(y, k)`
    its transpose. The loop runs on the gradient-stopped kernel; the last
    half-step uses `kernel` itself, so the estimate is differentiable.
    """
    u = ops.stop_gradient(u)
    if iterations == 0:
        u = l2_normalize(u)
        return u, _norm(forward(u, kernel))
    w = ops.stop_gradient(kernel)
    for _ in range(iterations - 1):
        v = l2_normalize(forward(u, w))
        u = l2_normalize(adjoint(v, w))
    v = l2_normalize(forward(u, w))
    return _normalized_and_norm(adjoint(v, kernel))


def conv_transpose_output_padding(
    input_size, kernel_size, strides, padding
):
    """The `output_padding` that makes `ops.conv_transpose` the adjoint.

    `ops.conv_transpose` with the same kernel, strides and padding is the
    exact adjoint of `ops.conv` only when it returns the conv's input shape
    (reference P16); by default it can be one pixel too large. This returns,
    per spatial axis, the explicit padding that restores the input shape, or
    `None` for the whole argument when the default already does.

    Args:
        input_size: tuple of spatial input sizes of the forward conv.
        kernel_size: tuple of kernel sizes.
        strides: tuple of strides.
        padding: `"same"` or `"valid"`.

    Returns:
        `None` or a tuple of ints.
    """
    defaults = []
    explicit = []
    for n, k, s in zip(input_size, kernel_size, strides):
        if padding == "valid":
            m = (n - k) // s + 1
            default = m * s + max(k - s, 0)
            base = (m - 1) * s + k
        else:
            m = -(-n // s)
            default = m * s
            base = (m - 1) * s + k - 2 * (k // 2)
        defaults.append(default == n)
        explicit.append(n - base)
    if all(defaults):
        return None
    return tuple(explicit)


def power_iteration_conv(
    kernel,
    u,
    iterations,
    strides,
    padding,
    data_format,
    output_padding,
):
    """Power iteration for the operator norm of a 2-D convolution.

    The operator is $A x = \\mathrm{conv}(x, K)$ with the layer's own strides
    and zero padding, acting on inputs of `u`'s shape, and $A^T$ is
    `ops.conv_transpose` with the same kernel (its exact adjoint given the
    right `output_padding`). One step is $v \\leftarrow Au/\\|Au\\|$,
    $u \\leftarrow A^Tv/\\|A^Tv\\|$ and the estimate is
    $\\hat\\sigma = \\|A^Tv\\|$ from the last step, computed with the
    differentiable kernel; its gradient is that of $v^TAu$ with `u` and `v`
    fixed, as in Miyato et al. (ICLR 2018).

    As for dense kernels, $\\hat\\sigma$ is a lower bound on $\\|A\\|$
    ($\\|v\\| = 1$).

    Args:
        kernel: float tensor `(k_h, k_w, c_in, c_out)`.
        u: float tensor of the layer's input shape with batch size 1.
        iterations: Python int, fixed number of steps.
        strides: tuple of 2 ints.
        padding: `"same"` or `"valid"`.
        data_format: `"channels_last"` or `"channels_first"`.
        output_padding: value from `conv_transpose_output_padding`.

    Returns:
        `(u_new, sigma)` as in `power_iteration_dense`.
    """

    def forward(x, k):
        return ops.conv(
            x, k, strides=strides, padding=padding, data_format=data_format
        )

    def adjoint(y, k):
        return ops.conv_transpose(
            y,
            k,
            strides=strides,
            padding=padding,
            output_padding=output_padding,
            data_format=data_format,
        )

    return _power_iteration(forward, adjoint, kernel, u, iterations)


def gram_spectral_norm_upper_bound(matrix, iterations):
    """Guaranteed upper bound on the spectral norm by Gram iteration.

    Delattre, Barthélemy, Araujo, Allauzen, "Efficient Bound of Lipschitz
    Constant for Convolutional Layers by Gram Iteration", ICML 2023. With
    $G_0 = W^TW$ (or $WW^T$, whichever is smaller) and
    $G_{t+1} = G_t^2$,

    $$\\sigma_{max}(W) \\le \\|G_t\\|_F^{1/2^{t+1}},$$

    at *every* t, and the bound decreases to $\\sigma_{max}$: it exceeds it
    by at most a factor $r^{1/2^{t+1}}$ for a kernel of rank r. Each
    $G_t$ is rescaled by its Frobenius norm, with the log-scale carried, so
    nothing overflows. The result is differentiable in `matrix`.

    Args:
        matrix: float tensor of rank 2.
        iterations: Python int, number of squarings t.

    Returns:
        A scalar tensor.
    """
    rows, cols = matrix.shape
    if rows is not None and cols is not None and rows < cols:
        gram = ops.matmul(matrix, ops.transpose(matrix))
    else:
        gram = ops.matmul(ops.transpose(matrix), matrix)
    # log(sigma_max^2) <= log_scale + 2^-t log ||G_t||_F, accumulated.
    log_bound = ops.convert_to_tensor(0.0, dtype=matrix.dtype)
    for t in range(iterations):
        norm = _norm(gram)
        log_bound = log_bound + ops.log(norm) / (2.0**t)
        gram = gram / norm
        gram = ops.matmul(gram, gram)
    norm = _norm(gram)
    log_bound = log_bound + ops.log(norm) / (2.0**iterations)
    # log_bound bounds log(sigma_max^2).
    return ops.exp(0.5 * log_bound)


def bjorck_orthonormalize(matrix, iterations, beta=0.5):
    """Björck orthonormalization of order 1 with a fixed iteration count.

    Björck & Bowie (SIAM J. Numer. Anal., 1971); Anil, Lucas, Grosse,
    "Sorting out Lipschitz function approximation", ICML 2019:

    $$W_{t+1} = (1 + \\beta) W_t - \\beta W_t W_t^T W_t.$$

    Each singular value evolves as $\\sigma \\mapsto (1+\\beta)\\sigma -
    \\beta\\sigma^3$: with $\\beta = 1/2$ any $\\sigma \\in (0, \\sqrt3)$
    converges to 1, and one step maps $[0, 2]$ into $[-1, 1]$, so the output
    has spectral norm at most 1 whenever the input's is at most 2. The
    product is associated as $W(W^TW)$ or $(WW^T)W$, whichever is cheaper.

    A fixed count (no tolerance-based stop) keeps the function
    reverse-differentiable on JAX.

    A tensor of rank above 2 is a batch of matrices (the last two axes),
    each orthonormalized independently (`batched_power_iteration` gives
    the matching pre-scaling).

    Args:
        matrix: float tensor of rank >= 2, pre-scaled so that the spectral
            norm of each matrix is at most 1 (at most 2 keeps the output
            1-Lipschitz).
        iterations: Python int, number of steps.
        beta: float in (0, 0.5].

    Returns:
        A tensor of the same shape.
    """
    rows, cols = matrix.shape[-2:]
    tall = rows is None or cols is None or rows >= cols
    w = matrix
    for _ in range(iterations):
        if tall:
            w = (1.0 + beta) * w - beta * ops.matmul(
                w, ops.matmul(ops.swapaxes(w, -1, -2), w)
            )
        else:
            w = (1.0 + beta) * w - beta * ops.matmul(
                ops.matmul(w, ops.swapaxes(w, -1, -2)), w
            )
    return w


def batched_power_iteration(matrices, u, iterations):
    """`power_iteration_dense` on a batch of matrices, one vector each.

    For matrices $W_b$ on the last two axes of `matrices` (shape
    `(..., m, n)`, Keras convention $y = xW_b$) and row vectors $u_b$ of
    shape `(..., 1, n)`, each step is
    $v_b \\leftarrow u_bW_b^T/\\|u_bW_b^T\\|$,
    $u_b \\leftarrow v_bW_b/\\|v_bW_b\\|$ (norms per matrix), and the
    estimate is $\\hat\\sigma_b = \\|v_bW_b\\|$ from the last step, computed
    with the differentiable `matrices` while $v_b$ is gradient-stopped (its
    gradient is $v_b^Tu_b$ at convergence, as in Miyato et al., ICLR 2018).
    Each $\\hat\\sigma_b \\le \\sigma_{max}(W_b)$: a lower bound, tight
    once converged.

    Args:
        matrices: float tensor `(..., m, n)`.
        u: float tensor `(..., 1, n)`, the warm starts (any nonzero norms).
        iterations: Python int >= 1, the fixed number of steps.

    Returns:
        `(u_new, sigma)`: the gradient-stopped new vectors `(..., 1, n)`
        and the differentiable estimates `(..., 1, 1)`.
    """

    def normalize(x):
        return x * ops.rsqrt(
            ops.maximum(ops.sum(ops.square(x), axis=-1, keepdims=True), EPSILON)
        )

    matrices = ops.convert_to_tensor(matrices)
    w = ops.stop_gradient(matrices)
    u = normalize(ops.stop_gradient(ops.convert_to_tensor(u)))
    for _ in range(iterations - 1):
        v = normalize(ops.matmul(u, ops.swapaxes(w, -1, -2)))
        u = normalize(ops.matmul(v, w))
    v = normalize(ops.matmul(u, ops.swapaxes(w, -1, -2)))
    t = ops.matmul(v, matrices)
    sigma = ops.sqrt(
        ops.maximum(ops.sum(ops.square(t), axis=-1, keepdims=True), EPSILON)
    )
    return ops.stop_gradient(t / sigma), sigma


def rko_correction_factor(kernel_size, strides):
    """Factor that makes a conv with an orthonormal reshaped kernel 1-Lipschitz.

    If the reshaped kernel $R \\in \\mathbb{R}^{(k_h k_w c_{in}) \\times
    c_{out}}$ has $\\|R\\| \\le 1$, then
    $\\|\\mathrm{conv}_K x\\|^2 \\le \\|R\\|^2 \\sum_{patches}\\|patch\\|^2
    \\le \\nu \\|x\\|^2$, with $\\nu$ the largest number of patches that
    contain one input pixel: $\\lceil k_h/s_h\\rceil\\lceil k_w/s_w\\rceil$
    for any zero padding. Multiplying the kernel by $1/\\sqrt\\nu$ therefore
    guarantees a 1-Lipschitz convolution.

    deel-lip's stride-1 factor is $1/\\sqrt{\\text{average patches per pixel}}$,
    which exceeds this worst case on finite images (its operator can reach
    norm 1.02); we use the worst case.

    Args:
        kernel_size: tuple `(k_h, k_w)`.
        strides: tuple `(s_h, s_w)`.

    Returns:
        A Python float.
    """
    nu = 1
    for k, s in zip(kernel_size, strides):
        nu *= -(-k // s)
    return 1.0 / math.sqrt(nu)


def spectral_normalize(kernel, u, iterations):
    """Spectral normalization of a dense kernel by power iteration.

    Miyato, Kataoka, Koyama, Yoshida, "Spectral Normalization for
    Generative Adversarial Networks", ICLR 2018:
    $\\bar W = W/\\hat\\sigma(W)$ with $\\hat\\sigma$ from
    `power_iteration_dense` (`iterations` steps from `u`). $\\hat\\sigma$
    is a *lower* bound of $\\sigma_{max}(W)$, tight once converged, so
    $\\|\\bar W\\|_2 \\ge 1$ can hold by the remaining error; divide by
    `gram_spectral_norm_upper_bound` where a guarantee is needed.

    Args:
        kernel: float tensor `(d_in, d_out)`.
        u: float tensor `(1, d_out)`, the warm start.
        iterations: Python int >= 0.

    Returns:
        `(normalized_kernel, u_new, sigma)`; `sigma` is differentiable in
        `kernel`, `u_new` is gradient-stopped.

    Example:

    >>> import numpy as np
    >>> w = np.diag([3.0, 1.0]).astype("float32")
    >>> w_bar, _, sigma = spectral_normalize(w, np.ones((1, 2), "float32"), 50)
    >>> round(float(sigma), 4)
    3.0
    """
    kernel = ops.convert_to_tensor(kernel)
    u = ops.convert_to_tensor(u)
    u, sigma = power_iteration_dense(kernel, u, iterations)
    return kernel * ops.reciprocal(sigma), u, sigma


def spectral_normalize_conv(
    kernel,
    u,
    iterations,
    strides=(1, 1),
    padding="same",
    data_format="channels_last",
):
    """Spectral normalization of a 2-D convolution by its operator norm.

    $\\bar K = K/\\hat\\sigma(A_K)$ with $A_K$ the zero-padded, strided
    convolution acting on inputs of `u`'s shape and $\\hat\\sigma$ from
    `power_iteration_conv` (`ops.conv` and its exact adjoint
    `ops.conv_transpose`). As in `spectral_normalize`, $\\hat\\sigma$ is a
    lower bound of $\\|A_K\\|$; `keras_lipschitz.bounds` gives guaranteed
    ones.

    Args:
        kernel: float tensor `(k_h, k_w, c_in, c_out)`.
        u: float tensor of the input shape with batch size 1, e.g.
            `(1, H, W, c_in)` for `channels_last`.
        iterations: Python int >= 0.
        strides: tuple of 2 ints.
        padding: `"same"` or `"valid"`.
        data_format: `"channels_last"` or `"channels_first"`.

    Returns:
        `(normalized_kernel, u_new, sigma)`.
    """
    kernel = ops.convert_to_tensor(kernel)
    u = ops.convert_to_tensor(u)
    strides = tuple(int(s) for s in (
        (strides, strides) if isinstance(strides, int) else strides
    ))
    spatial = (1, 2) if data_format == "channels_last" else (2, 3)
    output_padding = conv_transpose_output_padding(
        tuple(int(u.shape[a]) for a in spatial),
        tuple(int(k) for k in kernel.shape[:2]),
        strides,
        padding,
    )
    u, sigma = power_iteration_conv(
        kernel,
        u,
        iterations,
        strides=strides,
        padding=padding,
        data_format=data_format,
        output_padding=output_padding,
    )
    return kernel * ops.reciprocal(sigma), u, sigma


def reshaped_kernel_orthogonalize(
    kernel, u, power_iterations, bjorck_iterations, beta=0.5
):
    """Reshaped kernel orthogonalization (RKO): spectral norm, then Björck.

    The kernel is reshaped to $R \\in \\mathbb{R}^{(\\prod_{i<n} d_i)
    \\times d_n}$ (a dense kernel is unchanged), scaled by the power
    iteration estimate of `spectral_normalize`, orthonormalized by
    `bjorck_iterations` steps of `bjorck_orthonormalize`, and reshaped
    back (Anil, Lucas, Grosse, ICML 2019; deel-lip's
    `reshaped_kernel_orthogonalization`). No correction factor is applied:
    for a convolution multiply by `rko_correction_factor` (the layers do).

    Björck keeps every singular value of its input in $[0, 1]$ when they
    start there, so with an estimate that is slightly low the result can
    exceed 1 by that error; the layers divide by a guaranteed bound at
    inference instead.

    Args:
        kernel: float tensor of rank >= 2, output units last.
        u: float tensor `(1, d_out)`.
        power_iterations: Python int >= 0.
        bjorck_iterations: Python int >= 0 (0: spectral normalization only).
        beta: float in (0, 0.5].

    Returns:
        `(orthonormalized_kernel, u_new, sigma)`.
    """
    kernel = ops.convert_to_tensor(kernel)
    shape = tuple(kernel.shape)
    matrix = ops.reshape(kernel, (-1, shape[-1]))
    matrix, u, sigma = spectral_normalize(matrix, u, power_iterations)
    if bjorck_iterations:
        matrix = bjorck_orthonormalize(matrix, bjorck_iterations, beta)
    return ops.reshape(matrix, shape), u, sigma


def lanczos_top_vector(apply_gram, u, steps):
    """Approximate top eigenvector of a PSD operator by Lanczos (no state).

    Lanczos with full reorthogonalization (Golub & Van Loan, *Matrix
    Computations*, §10.1): the Krylov basis $q_0 = u/\\|u\\|$,
    $q_{j+1} = w_j/\\beta_j$ with $w_j = Bq_j$ orthogonalized against all
    previous vectors (classical Gram-Schmidt, twice),
    $\\alpha_j = q_j^TBq_j$ and $\\beta_j = \\|w_j\\|$. The top
    eigenvector $y$ of the tridiagonal $T = Q^TBQ$ (`ops.eigh` of a
    `steps x steps` matrix) gives the Ritz vector $x = Q^Ty$, returned
    normalized with `u`'s shape.

    The Krylov space contains the power-iteration iterates
    $u, Bu, \\dots, B^{steps-1}u$, so the Rayleigh quotient $x^TBx$ is at
    least that of `steps - 1` power-iteration steps from `u`, and it
    converges much faster when the top of the spectrum is clustered, which
    is typical of convolutions (error roughly squared compared with power
    iteration for the same number of operator applications). Whatever the
    rounding, the caller computes $\\hat\\sigma = \\|Ax\\|$ for a unit
    $x$, which is never above $\\|A\\|$.

    Memory: `steps` vectors of `u`'s size.

    Args:
        apply_gram: function mapping a tensor of `u`'s shape to $B$ applied
            to it ($B = A^TA$).
        u: float32 tensor, the start vector (gradient already stopped).
        steps: Python int >= 1, the number of applications of $B$.

    Returns:
        A float32 tensor of `u`'s shape with unit norm.
    """
    shape = tuple(u.shape)
    size = int(np.prod(shape))
    steps = max(1, min(steps, size))
    # A fixed-count loop over fixed-shape buffers (rows filled through
    # one-hot masks): XLA and TF compile one step instead of `steps`
    # unrolled copies, and eager JAX does not compile a kernel per step.
    diagonal = np.eye(steps, dtype="float32")
    upper = np.eye(steps, k=1, dtype="float32")

    def step(j, state):
        basis, q, alphas, betas = state
        row = ops.reshape(ops.one_hot(j, steps, dtype="float32"), (steps, 1))
        basis = basis + row * q
        w = ops.reshape(apply_gram(ops.reshape(q, shape)), (1, size))
        alphas = alphas + row[:, 0] * ops.sum(q * w)
        scale = ops.sqrt(ops.sum(ops.square(w)))
        # Unfilled rows are zero and do not contribute.
        for _ in range(2):
            coefficients = ops.matmul(w, ops.transpose(basis))
            w = w - ops.matmul(coefficients, basis)
        # Breakdown: when the residual is at the level of the rounding of
        # the projections, the Krylov space is (numerically) invariant, its
        # Ritz vectors are already exact, and the residual's direction is
        # noise inside the span of the basis: normalizing it would break the
        # orthonormality that the projected problem relies on. From then on
        # the new vectors are zero, which only adds zero rows and columns
        # to T. (No `l2_normalize` floor either: a real residual of norm
        # 1e-6 must still become a unit vector.)
        norm_sq = ops.sum(ops.square(w))
        norm = ops.sqrt(norm_sq)
        keep = ops.cast(
            ops.greater(norm, _BREAKDOWN * scale + _TINY), "float32"
        )
        # beta_j couples q_j and q_{j+1}; the last one is never used.
        betas = betas + row[:, 0] * (keep * norm)
        q = keep * w * ops.rsqrt(ops.maximum(norm_sq, _TINY))
        return basis, q, alphas, betas

    state = (
        ops.zeros((steps, size), dtype="float32"),
        ops.reshape(l2_normalize(u), (1, size)),
        ops.zeros((steps,), dtype="float32"),
        ops.zeros((steps,), dtype="float32"),
    )
    basis, _, alphas, betas = ops.fori_loop(0, steps, step, state)
    off = ops.reshape(betas, (steps, 1)) * upper
    tridiagonal = (
        ops.reshape(alphas, (steps, 1)) * diagonal + off + ops.transpose(off)
    )
    _, vectors = ops.eigh(tridiagonal)
    top = ops.reshape(vectors[:, steps - 1], (1, steps))
    x = ops.matmul(top, basis)
    return ops.reshape(l2_normalize(x), shape)


# ----------------------------------------------------------------------- SOC
def conv_adjoint_kernel(kernel):
    """Kernel of the adjoint of a stride-1, zero "same" conv with odd sizes.

    For a Keras kernel $K \\in \\mathbb{R}^{k_h \\times k_w \\times c_{in}
    \\times c_{out}}$ with odd $k_h, k_w$, the cross-correlation with
    $T(K)[a, b, i, o] = K[k_h-1-a,\\, k_w-1-b,\\, o,\\, i]$ (channels
    swapped, space flipped) is the exact adjoint of the cross-correlation
    with $K$, on any input size (Singla & Feizi, "Skew Orthogonal
    Convolutions", ICML 2021).

    Args:
        kernel: tensor `(k_h, k_w, c_in, c_out)`.

    Returns:
        A tensor `(k_h, k_w, c_out, c_in)`.
    """
    transposed = ops.transpose(kernel, (0, 1, 3, 2))
    return ops.flip(ops.flip(transposed, axis=0), axis=1)


def skew_symmetric_conv_kernel(kernel):
    """$L = \\tfrac12(M - T(M))$: a conv kernel whose operator is skew.

    With $T$ of `conv_adjoint_kernel`, the stride-1, zero "same" conv by
    $L$ satisfies $J^T = -J$ exactly, on every input size, for odd kernel
    sizes and $c_{in} = c_{out}$. The float32 result is exactly skew:
    $\\mathrm{fl}(a - b) = -\\mathrm{fl}(b - a)$.

    Args:
        kernel: square-channel tensor `(k_h, k_w, c, c)`.

    Returns:
        A tensor of the same shape.
    """
    return 0.5 * (kernel - conv_adjoint_kernel(kernel))


def fantastic_four_vector_shapes(kernel_shape):
    """Shapes of the `(u, v)` power-iteration pairs of the four reshapes.

    For a Keras kernel `(k_h, k_w, c_in, c_out)` the four matrices of
    Singla & Feizi ("Fantastic Four", ICLR 2021) have rows / columns
    $(c_{out}k_h) \\times (c_{in}k_w)$, $(c_{out}k_w) \\times (c_{in}k_h)$,
    $c_{out} \\times (c_{in}k_hk_w)$ and $(c_{out}k_hk_w) \\times c_{in}$.
    Each vector is kept with the kernel's rank (size-1 axes broadcast), so
    that $u^TR_iv$ is `sum(kernel * u * v)`.

    Args:
        kernel_shape: tuple `(k_h, k_w, c_in, c_out)`.

    Returns:
        A tuple of four `(u_shape, v_shape)` pairs (u: column side,
        v: row side).
    """
    k_h, k_w, c_in, c_out = kernel_shape
    return (
        ((1, k_w, c_in, 1), (k_h, 1, 1, c_out)),
        ((k_h, 1, c_in, 1), (1, k_w, 1, c_out)),
        ((k_h, k_w, c_in, 1), (1, 1, 1, c_out)),
        ((1, 1, c_in, 1), (k_h, k_w, 1, c_out)),
    )


def fantastic_four_power_iteration(kernel, vectors, iterations):
    """Power iteration on the four reshaped kernels; returns the min norm.

    As in the official SOC code: for each reshape $R_i$ of
    `fantastic_four_vector_shapes`, `iterations` steps of
    $v \\leftarrow R_iu/\\|R_iu\\|$, $u \\leftarrow R_i^Tv/\\|R_i^Tv\\|$ on
    the gradient-stopped kernel, then
    $\\hat\\sigma = \\min_i v_i^TR_iu_i$, differentiable in `kernel` with
    the vectors held constant.

    Every $v^TR_iu$ is at most $\\|R_i\\|$, so $\\hat\\sigma$ is an estimate
    (a lower bound of $\\min_i\\|R_i\\|$ once converged), used only to
    *scale* the SOC kernel; soundness never depends on it. It is floored
    at `EPSILON`. With `iterations=0` the stored vectors are used as they
    are (they are unit vectors whenever this function wrote them).

    Args:
        kernel: float32 tensor `(k_h, k_w, c_in, c_out)`.
        vectors: sequence of four `(u, v)` float32 tensors with the shapes
            of `fantastic_four_vector_shapes`.
        iterations: Python int >= 0, fixed number of steps.

    Returns:
        `(new_vectors, sigma)`: a list of four gradient-stopped `(u, v)`
        pairs and the scalar estimate.
    """
    w = ops.stop_gradient(kernel)
    new_vectors = []
    sigma = None
    for u, v in vectors:
        u_axes = tuple(a for a in range(4) if u.shape[a] == 1)
        v_axes = tuple(a for a in range(4) if v.shape[a] == 1)
        u = ops.stop_gradient(u)
        v = ops.stop_gradient(v)
        if iterations:
            u = l2_normalize(u)
        for _ in range(iterations):
            v = l2_normalize(ops.sum(w * u, axis=v_axes, keepdims=True))
            u = l2_normalize(ops.sum(w * v, axis=u_axes, keepdims=True))
        u = ops.stop_gradient(u)
        v = ops.stop_gradient(v)
        new_vectors.append((u, v))
        estimate = ops.sum(kernel * u * v)
        sigma = estimate if sigma is None else ops.minimum(sigma, estimate)
    return new_vectors, ops.maximum(sigma, EPSILON)


def taylor_exponential(x, apply, terms):
    """$S_n(J)x = \\sum_{i=0}^{n} J^ix/i!$ by Horner's rule.

    $z \\leftarrow x$, then for $i = n, \\dots, 1$:
    $z \\leftarrow x + J z / i$; `n` applications of $J$.

    For a skew-symmetric $J$ (normal, imaginary spectrum),
    $\\|\\exp(J) - S_n(J)\\| \\le \\|J\\|^{n+1}/(n+1)!$, hence
    $\\|S_n(J)\\| \\le 1 + \\|J\\|^{n+1}/(n+1)!$ (the Lagrange remainder of
    $e^{i\\theta}$ on each eigenvalue).

    Args:
        x: tensor.
        apply: function mapping a tensor of `x`'s shape to $J$ applied to
            it.
        terms: Python int $n \\ge 0$, the highest power (the identity is
            not counted).

    Returns:
        A tensor of `x`'s shape.
    """
    z = x
    for i in range(terms, 0, -1):
        z = x + apply(z) / float(i)
    return z


def conv_kernel_gradient(inputs, upstream, kernel_size):
    """Gradient of $\\langle \\mathrm{conv}(x, K), g\\rangle$ in the kernel.

    For a stride-1, zero "same" cross-correlation (odd sizes, channels
    last),

    $$\\frac{\\partial}{\\partial K[a, b, i, o]} =
      \\sum_{n,h,w} x_{pad}[n, h + a, w + b, i]\\, g[n, h, w, o],$$

    a cross-correlation of $x_{pad}$ with $g$ over the spatial axes that
    contracts the batch axis. It is computed as **one** valid convolution
    in which the input channels play the batch and the batch plays the
    channels: the input is $x_{pad}$ as `(c_in, H + k_h - 1, W + k_w - 1,
    N)`, the kernel is $g$ as `(H, W, N, c_out)`, the output
    `(c_in, k_h, k_w, c_out)`. A $1 \\times 1$ kernel is one matrix
    product. (Per-tap tensordots, one per kernel offset, are $k_hk_w$
    small ops: slower on every backend, most on eager torch.)

    Args:
        inputs: tensor `(N, H, W, c_in)`.
        upstream: tensor `(N, H, W, c_out)`.
        kernel_size: `(k_h, k_w)`, odd.

    Returns:
        A tensor `(k_h, k_w, c_in, c_out)`.
    """
    k_h, k_w = kernel_size
    if k_h == 1 and k_w == 1:
        grad = ops.tensordot(inputs, upstream, axes=([0, 1, 2], [0, 1, 2]))
        return ops.reshape(grad, (1, 1, grad.shape[0], grad.shape[1]))
    # (c_in, H, W, N): the channels become the batch, the batch the channels.
    swapped = ops.transpose(inputs, (3, 1, 2, 0))
    swapped = ops.pad(
        swapped, ((0, 0), (k_h // 2, k_h // 2), (k_w // 2, k_w // 2), (0, 0))
    )
    grad = ops.conv(
        swapped,
        ops.transpose(upstream, (1, 2, 0, 3)),
        strides=1,
        padding="valid",
        data_format="channels_last",
    )
    return ops.transpose(grad, (1, 2, 0, 3))


def conv_same(x, kernel):
    """Stride-1, zero "same" cross-correlation, channels last, odd sizes.

    `ops.conv`, except where the image is smaller than the kernel and
    `_backend.small_image_conv_is_slow` says the backend's convolution is
    slow there (XLA on CPU, JAX's default: 40x slower at 2x2 than the same
    arithmetic at 4x4). Then the taps that can reach the image are gathered
    and the conv is one matrix product (`conv_same_by_matmul`).

    Args:
        x: tensor `(N, H, W, c_in)` with static `H`, `W`.
        kernel: tensor `(k_h, k_w, c_in, c_out)`, odd sizes.

    Returns:
        A tensor `(N, H, W, c_out)`.
    """
    if _backend.small_image_conv_is_slow(x.shape[1:3], kernel.shape[:2]):
        return conv_same_by_matmul(x, kernel)
    # Explicit layout: the global `image_data_format` must not change it.
    return ops.conv(
        x, kernel, strides=1, padding="same", data_format="channels_last"
    )


def conv_same_by_matmul(x, kernel):
    """`conv_same` as one matrix product over the taps that reach the image.

    A tap at offset $d$ from the kernel centre only ever multiplies zero
    padding when $|d| \\ge H$, so the kernel is first cropped to offsets
    below the image size (exact). The remaining $t_h \\times t_w$ shifted
    copies of the padded image are concatenated on the channel axis and
    multiplied by the reshaped kernel $(t_ht_wc_{in}) \\times c_{out}$
    (im2col). Meant for images smaller than the kernel, where it costs at
    most $k_hk_w$ copies of a small image.

    Args:
        x: tensor `(N, H, W, c_in)` with static `H`, `W`.
        kernel: tensor `(k_h, k_w, c_in, c_out)`, odd sizes.

    Returns:
        A tensor `(N, H, W, c_out)`.
    """
    height, width = int(x.shape[1]), int(x.shape[2])
    k_h, k_w, c_in, c_out = kernel.shape
    reach_h = min(k_h // 2, height - 1)
    reach_w = min(k_w // 2, width - 1)
    kernel = kernel[
        k_h // 2 - reach_h : k_h // 2 + reach_h + 1,
        k_w // 2 - reach_w : k_w // 2 + reach_w + 1,
    ]
    padded = ops.pad(
        x, ((0, 0), (reach_h, reach_h), (reach_w, reach_w), (0, 0))
    )
    taps = [
        padded[:, a : a + height, b : b + width, :]
        for a in range(2 * reach_h + 1)
        for b in range(2 * reach_w + 1)
    ]
    columns = taps[0] if len(taps) == 1 else ops.concatenate(taps, axis=-1)
    rows = ops.reshape(columns, (-1, len(taps) * c_in))
    outputs = ops.matmul(rows, ops.reshape(kernel, (len(taps) * c_in, c_out)))
    return ops.reshape(outputs, (-1, height, width, c_out))


def skew_conv_exponential(x, kernel, terms, fast_backward=False):
    """SOC: $S_n(J)x$ for $J = \\mathrm{conv}(\\cdot, L)$, channels last.

    $J$ is the stride-1, zero "same" conv by `kernel` (odd sizes). With
    `fast_backward=False` this is `taylor_exponential` and autodiff
    differentiates through the `terms` convolutions. With
    `fast_backward=True` the backward pass is the one of Singla & Feizi,
    "Improved techniques for deterministic l2 robustness" (NeurIPS 2022),
    through `keras.ops.custom_gradient`:

    - the forward keeps only $z_2 = \\sum_{i=0}^{n-1} J^ix/(i+1)!$, with
      $y = x + Jz_2$;
    - the input gradient is $S_n(J)^Tg = S_n(J^T)g$, by the same Horner
      recursion with the adjoint kernel (`conv_adjoint_kernel`, which is
      $-L$ for a skew $L$): **exact** for the truncated polynomial;
    - the kernel gradient is that of $\\langle \\mathrm{conv}(z_2, L),
      g_2\\rangle$ with $g_2 = \\sum_{i=0}^{n-1}(J^T)^ig/(i+1)!$, one conv
      weight gradient instead of $n$. It is an **approximation**: the
      coefficient of $(J^T)^a g\\,(J^bx)^T$ is $1/((a+1)!(b+1)!)$ instead
      of $1/(a+b+1)!$. Both agree for $a + b \\le 1$, so the error is
      $O(\\|J\\|^2)$ relative to the leading term.

    Args:
        x: tensor `(N, H, W, c)`.
        kernel: tensor `(k_h, k_w, c, c)` of `x`'s dtype.
        terms: Python int $n \\ge 1$, the highest power.
        fast_backward: bool.

    Returns:
        A tensor of `x`'s shape.
    """

    x = ops.convert_to_tensor(x)
    kernel = ops.convert_to_tensor(kernel, dtype=x.dtype)
    if not fast_backward:
        return taylor_exponential(x, lambda t: conv_same(t, kernel), terms)
    kernel_size = tuple(kernel.shape[:2])

    @ops.custom_gradient
    def exponential(x, kernel):
        z = x
        for i in range(terms, 1, -1):
            z = x + conv_same(z, kernel) / float(i)
        outputs = x + conv_same(z, kernel)

        def grad(*args, upstream=None):
            # torch passes (x, kernel, upstream=g); JAX and TF pass (g,).
            if upstream is None:
                upstream = args[0]
            adjoint = conv_adjoint_kernel(kernel)
            g = upstream
            for i in range(terms, 1, -1):
                g = upstream + conv_same(g, adjoint) / float(i)
            grad_kernel = conv_kernel_gradient(z, g, kernel_size)
            grad_x = upstream + conv_same(g, adjoint)
            return grad_x, grad_kernel

        return outputs, grad

    return exponential(x, kernel)


# ------------------------------------------------------------- AOL and SLL
# Added to every row sum before the inverse square root, as in the official
# AOL code: it keeps a dead column finite and can only shrink the scale.
AOL_EPSILON = 1e-6
# SLL's log q is clipped to [-LOG_Q_LIMIT, LOG_Q_LIMIT] before use: ratios
# q_j / q_i up to e^40 keep every product finite in float32, and the
# clipped value is itself a valid q, so the guarantee is unchanged.
LOG_Q_LIMIT = 20.0


def _weighted_row_sums(abs_gram, log_q):
    """$r_i = \\sum_j A_{ij}\\,q_j/q_i$ with $q = e^{\\mathrm{clip}(\\log q)}$.

    Without `log_q`, the plain row sums $\\sum_j A_{ij}$.
    """
    if log_q is None:
        return ops.sum(abs_gram, axis=1)
    log_q = ops.clip(
        ops.cast(log_q, abs_gram.dtype), -LOG_Q_LIMIT, LOG_Q_LIMIT
    )
    # (A q)_i / q_i: two length-n exponentials, no n x n one.
    return ops.exp(-log_q) * ops.matmul(abs_gram, ops.exp(log_q))


def aol_rescaling_dense(kernel, log_q=None, epsilon=AOL_EPSILON):
    """The AOL rescaling of the rows of a dense Keras kernel.

    Prach & Lampert, "Almost-Orthogonal Layers for Efficient
    General-Purpose Lipschitz Networks", ECCV 2022. For a Keras kernel
    $W$ of shape `(d_in, d_out)` (so $y = xW$) and $G = WW^T$,

    $$d_i = \\Big(\\sum_j |G_{ij}|\\,\\frac{q_j}{q_i} + \\varepsilon
      \\Big)^{-1/2},\\qquad \\|\\mathrm{diag}(d)\\,W\\|_2 \\le 1,$$

    for any $q > 0$ (by default $q \\equiv 1$, the paper's form). Proof
    (weighted Schur test): for a symmetric $G$,
    $u^TGu \\le \\sum_{ij}|G_{ij}||u_i||u_j| \\le \\sum_i u_i^2
    \\sum_j|G_{ij}|q_j/q_i$, using $2|u_iu_j| \\le (q_j/q_i)u_i^2 +
    (q_i/q_j)u_j^2$; hence $G \\preceq \\mathrm{diag}(d)^{-2}$. The
    inequality is exact (no iteration, no convergence), and $\\varepsilon$
    only shrinks $d$.

    The SLL layers reuse it: with $W$ the transposed SLL kernel, $d_i^2$ is
    the $T^{-1}$ of Araujo et al. (ICLR 2023).

    Args:
        kernel: float tensor `(d_in, d_out)`.
        log_q: None or float tensor `(d_in,)`, $\\log q$ (clipped to
            `[-LOG_Q_LIMIT, LOG_Q_LIMIT]`).
        epsilon: float >= 0 added to every row sum.

    Returns:
        A tensor `(d_in,)`, differentiable in `kernel` and `log_q`.
    """
    gram = ops.matmul(kernel, ops.transpose(kernel))
    sums = _weighted_row_sums(ops.abs(gram), log_q)
    return ops.rsqrt(sums + epsilon)


def conv_input_gram(kernel):
    """The input-side Gram kernel of a 2-D convolution, for every shift.

    For a Keras kernel $K$ of shape `(k_h, k_w, c_in, c_out)`, the kernel
    of $K^T \\circledast K$ (the composition of the convolution with its
    adjoint, on the infinite plane):

    $$M_{ij}(u, v) = \\sum_{a, b, o} K[a + u, b + v, i, o]\\,K[a, b, j, o],
      \\quad |u| < k_h,\\ |v| < k_w.$$

    Computed as one "valid" convolution of the kernel with itself: the
    input channels play the batch, the kernel is zero-padded by
    $k - 1$ on each side.

    Args:
        kernel: float tensor `(k_h, k_w, c_in, c_out)`.

    Returns:
        A tensor `(c_in, 2k_h - 1, 2k_w - 1, c_in)` whose entry
        `[i, u + k_h - 1, v + k_w - 1, j]` is $M_{ij}(u, v)$.
    """
    k_h, k_w, c_in = kernel.shape[0], kernel.shape[1], kernel.shape[2]
    if c_in == 1:
        # A batch of one image hits torch's slow_conv2d, whose backward
        # fails ("grad_weight must be contiguous"): add a zero input
        # channel, which adds only zero entries, and drop it again.
        padded = ops.pad(kernel, ((0, 0), (0, 0), (0, 1), (0, 0)))
        return conv_input_gram(padded)[:1, :, :, :1]
    as_batch = ops.transpose(kernel, (2, 0, 1, 3))
    as_batch = ops.pad(
        as_batch, ((0, 0), (k_h - 1, k_h - 1), (k_w - 1, k_w - 1), (0, 0))
    )
    return ops.conv(
        as_batch,
        ops.transpose(kernel, (0, 1, 3, 2)),
        strides=1,
        padding="valid",
        data_format="channels_last",
    )


def aol_rescaling_conv(kernel, log_q=None, epsilon=AOL_EPSILON):
    """The AOL rescaling of the input channels of a conv kernel.

    Prach & Lampert (ECCV 2022), convolutional form: with $M_{ij}(s)$ the
    input-side Gram kernel of `conv_input_gram` (all $(2k-1)^2$ shifts),

    $$d_i = \\Big(\\sum_j\\sum_s |M_{ij}(s)|\\,\\frac{q_j}{q_i} +
      \\varepsilon\\Big)^{-1/2},$$

    and the convolution by $K[:, :, i, :]\\,d_i$ has operator norm at most
    1 on the infinite plane (the Schur test of `aol_rescaling_dense`
    applied to the block-Toeplitz operator $K^TK$, with weights constant
    over positions). Zero padding ("same" or "valid"), any input size and
    any stride only restrict or subsample that operator, so the bound
    holds for all of them.

    Args:
        kernel: float tensor `(k_h, k_w, c_in, c_out)`.
        log_q: None or float tensor `(c_in,)`, $\\log q$ (clipped to
            `[-LOG_Q_LIMIT, LOG_Q_LIMIT]`).
        epsilon: float >= 0 added to every row sum.

    Returns:
        A tensor `(c_in,)`, differentiable in `kernel` and `log_q`.
    """
    gram = ops.sum(ops.abs(conv_input_gram(kernel)), axis=(1, 2))
    sums = _weighted_row_sums(gram, log_q)
    return ops.rsqrt(sums + epsilon)


# ------------------------------------------------------- CPL and LiResNet
def add_conv_identity(kernel):
    """$K + \\delta$: the kernel of the residual map $I + \\mathrm{conv}_K$.

    $\\delta$ is the Dirac kernel: the identity matrix at the centre tap,
    zero elsewhere. For odd sizes, stride 1 and zero "same" padding, the
    convolution by $K + \\delta$ is exactly $x \\mapsto x + K \\star x$, on
    every input size (LiResNet, Hu et al., NeurIPS 2023).

    Args:
        kernel: float tensor `(k_h, k_w, c, c)` with odd `k_h`, `k_w`.

    Returns:
        A tensor of the same shape and dtype.
    """
    k_h, k_w, c_in, c_out = kernel.shape
    identity = ops.reshape(
        ops.eye(c_in, c_out, dtype=kernel.dtype), (1, 1, c_in, c_out)
    )
    identity = ops.pad(
        identity,
        ((k_h // 2, k_h // 2), (k_w // 2, k_w // 2), (0, 0), (0, 0)),
    )
    return kernel + identity


def conv_tap_norm_sum(kernel):
    """$\\sum_{a,b}\\|K[a, b]\\|_F$: a size-free bound on a conv's norm.

    The convolution is $\\sum_{a,b} S_{a,b}\\,K[a, b]$ with $S_{a,b}$ a
    zero-padded shift (norm at most 1), so its operator norm is at most
    $\\sum_{a,b}\\|K[a,b]\\|_2 \\le \\sum_{a,b}\\|K[a,b]\\|_F$, for any
    input size, zero padding and stride. Each tap's norm is computed after
    division by the largest entry, so tiny kernels do not underflow to 0.

    Args:
        kernel: float tensor `(k_h, k_w, c_in, c_out)`.

    Returns:
        A scalar tensor.
    """
    scale = ops.max(ops.abs(kernel))
    safe = ops.where(scale > 0, scale, ops.ones_like(scale))
    taps = ops.sqrt(ops.sum(ops.square(kernel / safe), axis=(2, 3)))
    return scale * ops.sum(taps)
