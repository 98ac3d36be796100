"""Guaranteed upper bounds on the spectral norm of linear operators.

These run on the host in NumPy float64, from weights converted with
`keras.ops.convert_to_numpy`, so they give the same number on every
backend. Unlike power iteration, which only ever *under*-estimates a norm,
every function here returns a value that is provably at least the true
operator norm (up to float64 rounding): they are what certificates use.
"""

import numpy as np

# Above this many input coordinates the explicit operator matrix is not
# formed; the FFT and reshaped-kernel bounds are used instead.
EXPLICIT_OPERATOR_MAX_INPUT_DIM = 1024


def dense_spectral_norm(kernel):
    """Exact largest singular value of a dense kernel (float64 SVD).

    Args:
        kernel: array of shape `(d_in, d_out)`.

    Returns:
        A Python float.
    """
    kernel = np.asarray(kernel, dtype=np.float64)
    if kernel.size == 0:
        return 0.0
    return float(np.linalg.norm(kernel, ord=2))


def conv_output_size(n, k, s, padding):
    """Spatial output length of a conv, Keras convention."""
    if padding == "valid":
        return (n - k) // s + 1
    return -(-n // s)


def _padding_before(n, k, s, padding):
    if padding == "valid":
        return 0
    out = conv_output_size(n, k, s, padding)
    total = max((out - 1) * s + k - n, 0)
    return total // 2


def conv_operator_matrix(kernel, input_size, strides, padding):
    """Explicit matrix of a zero-padded 2-D convolution (channels last).

    The matrix maps the flattened `(h, w, c_in)` input to the flattened
    `(h_out, w_out, c_out)` output of `keras.ops.conv` with the same
    `strides` and `padding` (cross-correlation, Keras's "same" convention
    with the extra padding at the bottom/right).

    Args:
        kernel: array `(k_h, k_w, c_in, c_out)`.
        input_size: `(h, w)`.
        strides: `(s_h, s_w)`.
        padding: `"same"` or `"valid"`.

    Returns:
        float64 array of shape `(h_out*w_out*c_out, h*w*c_in)`.
    """
    kernel = np.asarray(kernel, dtype=np.float64)
    k_h, k_w, c_in, c_out = kernel.shape
    (h, w), (s_h, s_w) = input_size, strides
    h_out = conv_output_size(h, k_h, s_h, padding)
    w_out = conv_output_size(w, k_w, s_w, padding)
    p_h = _padding_before(h, k_h, s_h, padding)
    p_w = _padding_before(w, k_w, s_w, padding)
    matrix = np.zeros((h_out, w_out, c_out, h, w, c_in))
    for i in range(h_out):
        for j in range(w_out):
            for a in range(k_h):
                ii = i * s_h + a - p_h
                if not 0 <= ii < h:
                    continue
                for b in range(k_w):
                    jj = j * s_w + b - p_w
                    if 0 <= jj < w:
                        matrix[i, j, :, ii, jj, :] = kernel[a, b].T
    return matrix.reshape(h_out * w_out * c_out, h * w * c_in)


def conv_fft_upper_bound(kernel, input_size, strides):
    """Upper bound on a zero-padded, strided conv by the FFT on a padded grid.

    Sedghi, Gupta, Long, "The Singular Values of Convolutional Layers"
    (ICLR 2019) give the exact singular values of a *circular* convolution
    from the 2-D DFT of its kernel. Embedding the `n x n` input in an
    `N x N` zero grid with `N >= n + k - 1` makes the zero-padded conv a
    restriction of the circular conv on that grid, so its norm is at most the
    circular one, for both `"same"` and `"valid"` padding.

    Strides are handled exactly on the grid (`N` a multiple of `s`) by the
    polyphase decomposition: the strided circular conv is block-diagonal in
    the `(N/s)^2` output frequencies, with blocks of size
    `c_out x (s_h s_w c_in)`.

    Args:
        kernel: array `(k_h, k_w, c_in, c_out)`.
        input_size: `(h, w)`, the largest input the bound must hold for.
        strides: `(s_h, s_w)`.

    Returns:
        A Python float, `max_w sigma_max(block(w))`.
    """
    kernel = np.asarray(kernel, dtype=np.float64)
    k_h, k_w, c_in, c_out = kernel.shape
    grids = []
    for n, k, s in zip(input_size, (k_h, k_w), strides):
        big = n + k - 1
        grids.append(-(-big // s))  # M = N / s output frequencies
    (m_h, m_w), (s_h, s_w) = grids, strides
    # Polyphase taps: a = s*q + r.
    q_h, q_w = -(-k_h // s_h), -(-k_w // s_w)
    taps = np.zeros((q_h, q_w, s_h, s_w, c_in, c_out))
    for a in range(k_h):
        for b in range(k_w):
            taps[a // s_h, b // s_w, a % s_h, b % s_w] = kernel[a, b]
    # Circular correlation on Z_M: response sum_q taps[q] e^{+2 pi i w q/M}.
    phase_h = np.exp(2j * np.pi * np.outer(np.arange(m_h), np.arange(q_h)) / m_h)
    phase_w = np.exp(2j * np.pi * np.outer(np.arange(m_w), np.arange(q_w)) / m_w)
    blocks = np.einsum("ua,vb,abrtio->uvrtio", phase_h, phase_w, taps)
    blocks = blocks.reshape(m_h * m_w, s_h * s_w * c_in, c_out)
    return float(np.max(np.linalg.norm(blocks, ord=2, axis=(1, 2))))


def circular_conv_spectral_norm(kernel, input_size, strides=(1, 1)):
    """Exact norm of a strided *circular* 2-D convolution (float64).

    On the torus $\\mathbb{Z}_{n_h} \\times \\mathbb{Z}_{n_w}$, the
    circular cross-correlation $y[j] = \\sum_a K[a]^T x[sj + a - p]$
    (indices mod $n$, any offset $p$: a circular shift is orthogonal and
    does not change the norm) with each $n$ a multiple of its stride $s$
    is block-diagonalized by the DFT on the $M = n/s$ output positions
    (Sedghi, Gupta, Long, ICLR 2019, with the polyphase decomposition
    $a = sq + r$ for the stride): its singular values are those of the
    $c_{out} \\times (s_hs_wc_{in})$ blocks
    $\\sum_q e^{2\\pi i\\langle\\omega, q\\rangle/M} K[sq + r]$, one
    per frequency $\\omega$. Kernels larger than the torus wrap around
    (the phases are periodic), as circular padding does. The largest block
    norm (exact float64 SVDs) is returned with a relative slack of
    $10^{-12}$ for the rounding, so it is never below the true norm.

    Args:
        kernel: array `(k_h, k_w, c_in, c_out)`.
        input_size: `(n_h, n_w)`, each a multiple of its stride.
        strides: `(s_h, s_w)`.

    Returns:
        A Python float.

    Raises:
        ValueError: if a size is not a multiple of its stride.
    """
    kernel = np.asarray(kernel, dtype=np.float64)
    k_h, k_w, c_in, c_out = kernel.shape
    (n_h, n_w), (s_h, s_w) = tuple(input_size), tuple(strides)
    if n_h % s_h or n_w % s_w:
        raise ValueError(
            "A strided circular convolution needs input sizes that are "
            f"multiples of the strides. Received: input_size={input_size}, "
            f"strides={strides}"
        )
    m_h, m_w = n_h // s_h, n_w // s_w
    q_h, q_w = -(-k_h // s_h), -(-k_w // s_w)
    taps = np.zeros((q_h, q_w, s_h, s_w, c_in, c_out))
    for a in range(k_h):
        for b in range(k_w):
            taps[a // s_h, b // s_w, a % s_h, b % s_w] = kernel[a, b]
    phase_h = np.exp(
        2j * np.pi * np.outer(np.arange(m_h), np.arange(q_h)) / m_h
    )
    phase_w = np.exp(
        2j * np.pi * np.outer(np.arange(m_w), np.arange(q_w)) / m_w
    )
    blocks = np.einsum("ua,vb,abrtio->uvrtio", phase_h, phase_w, taps)
    blocks = blocks.reshape(m_h * m_w, s_h * s_w * c_in, c_out)
    if blocks.size == 0:
        return 0.0
    norm = float(np.max(np.linalg.norm(blocks, ord=2, axis=(1, 2))))
    return norm * (1.0 + 1e-12)


def conv_reshaped_upper_bound(kernel):
    """Size-independent bound of Singla & Feizi ("Fantastic Four", ICLR 2021).

    $\\|conv_K\\| \\le \\sqrt{k_h k_w}\\,\\min_i \\|R_i\\|$ over the four
    reshapes of the kernel, valid for zero padding, any input size and any
    stride. Each $\\|R_i\\|$ is an exact SVD.

    Args:
        kernel: array `(k_h, k_w, c_in, c_out)`.

    Returns:
        A Python float.
    """
    kernel = np.asarray(kernel, dtype=np.float64)
    k_h, k_w, c_in, c_out = kernel.shape
    reshapes = [
        kernel.transpose(3, 0, 2, 1).reshape(c_out * k_h, c_in * k_w),
        kernel.transpose(3, 1, 2, 0).reshape(c_out * k_w, c_in * k_h),
        kernel.transpose(3, 2, 0, 1).reshape(c_out, c_in * k_h * k_w),
        kernel.transpose(3, 0, 1, 2).reshape(c_out * k_h * k_w, c_in),
    ]
    best = min(np.linalg.norm(r, ord=2) for r in reshapes)
    return float(np.sqrt(k_h * k_w) * best)


def conv_spectral_norm_upper_bound(kernel, input_size, strides, padding):
    """Guaranteed upper bound on the norm of a zero-padded 2-D convolution.

    The minimum of sound bounds:

    - the exact norm of the explicit operator matrix when the input has at
      most `EXPLICIT_OPERATOR_MAX_INPUT_DIM` coordinates;
    - `conv_fft_upper_bound` on a padded grid (exact up to border effects);
    - `conv_reshaped_upper_bound`.

    Args:
        kernel: array `(k_h, k_w, c_in, c_out)`.
        input_size: `(h, w)` the operator acts on.
        strides: `(s_h, s_w)`.
        padding: `"same"`, `"valid"`, or `"causal"` for a height-1
            kernel (Keras's `Conv1D` as a 2-D conv of height 1).

    Returns:
        A Python float.
    """
    kernel = np.asarray(kernel, dtype=np.float64)
    h, w = input_size
    drop = 0
    if padding == "causal":
        # Conv1D's "causal" (a height-1 kernel): the "valid" conv of the
        # input zero-padded on the left by k_w - 1, i.e. that conv's
        # matrix without the columns of the padded positions.
        drop = (kernel.shape[1] - 1) * kernel.shape[2]
        w = w + kernel.shape[1] - 1
        input_size, padding = (h, w), "valid"
    if h * w * kernel.shape[2] <= EXPLICIT_OPERATOR_MAX_INPUT_DIM:
        matrix = conv_operator_matrix(kernel, input_size, strides, padding)
        matrix = matrix[:, drop:]
        if matrix.size == 0:
            return 0.0
        gram = matrix.T @ matrix
        # eigvalsh is backward stable: rounding error is ~1e-16 * ||G||;
        # add it so the bound stays an upper bound.
        top = float(np.linalg.eigvalsh(gram)[-1])
        slack = 1e-12 * float(np.linalg.norm(gram, ord="fro"))
        return float(np.sqrt(max(top + slack, 0.0)))
    return min(
        conv_fft_upper_bound(kernel, input_size, strides),
        conv_reshaped_upper_bound(kernel),
    )


def dilate_kernel(kernel, dilation):
    """The kernel of a dilated convolution as an ordinary (inflated) one.

    A conv with dilation $d$ reads taps $d\\,a$ apart; it is the ordinary
    conv by the kernel of size $d(k - 1) + 1$ holding $K[a]$ at $d\\,a$ and
    zeros between, with the same padding ("same" pads for that effective
    size in Keras).

    Args:
        kernel: array `(k_h, k_w, c_in, c_out)`.
        dilation: `(d_h, d_w)`, ints >= 1.

    Returns:
        float64 array `(d_h (k_h - 1) + 1, d_w (k_w - 1) + 1, c_in, c_out)`.
    """
    kernel = np.asarray(kernel, dtype=np.float64)
    d_h, d_w = dilation
    if (d_h, d_w) == (1, 1):
        return kernel
    k_h, k_w = kernel.shape[:2]
    inflated = np.zeros(
        (d_h * (k_h - 1) + 1, d_w * (k_w - 1) + 1) + kernel.shape[2:]
    )
    inflated[::d_h, ::d_w] = kernel
    return inflated


def conv_kernel_parts(kernel, groups=1, depthwise=False):
    """The independent blocks of a grouped or depthwise conv kernel.

    Args:
        kernel: array `(k_h, k_w, c_in / groups, c_out)`, or a depthwise
            kernel `(k_h, k_w, c_in, multiplier)`.
        groups: int >= 1 (ignored when `depthwise`).
        depthwise: whether `kernel` is a depthwise kernel.

    Returns:
        A list of ordinary kernels, one per group (per input channel when
        depthwise); the conv's norm is the largest of their norms.
    """
    if depthwise:
        return [kernel[:, :, c : c + 1, :] for c in range(kernel.shape[2])]
    size = kernel.shape[3] // groups
    return [kernel[:, :, :, i * size : (i + 1) * size] for i in range(groups)]


def conv_layer_upper_bound(
    kernel,
    input_size,
    strides=(1, 1),
    padding="same",
    dilation=(1, 1),
    groups=1,
    depthwise=False,
    transpose=False,
):
    """Guaranteed norm bound of a 2-D conv with dilation, groups or
    depthwise channels, or of its transpose.

    - **Dilation**: the conv by the inflated kernel of `dilate_kernel`.
    - **Groups** ($g$ groups, kernel `(k_h, k_w, c_in/g, c_out)`): output
      block $i$ of $c_{out}/g$ channels reads only input block $i$, so the
      operator is block diagonal up to channel permutations and its norm is
      the largest norm of the $g$ group convolutions.
    - **Depthwise** (kernel `(k_h, k_w, c_in, m)`, Keras's
      `DepthwiseConv2D`): input channel $c$ alone gives outputs
      $c\\,m, \\dots, c\\,m + m - 1$: the largest of the $c_{in}$
      single-channel convolutions.
    - **Transpose**: a transposed conv (Keras's `Conv2DTranspose`, kernel
      `(k_h, k_w, c_out, c_in)`) is the adjoint of the conv by the same
      array read as `(k_h, k_w, c_in', c_out')` = `(.., c_out, c_in)`
      acting on the transposed layer's *output* size, and an operator and
      its adjoint have the same norm. Border conventions (padding,
      `output_padding`) only crop or zero-extend the full convolution, so
      the size-robust bounds are used: `conv_fft_upper_bound` on a grid
      holding the output and `conv_reshaped_upper_bound`.

    Otherwise `conv_spectral_norm_upper_bound` (exact on small inputs).

    Args:
        kernel: array, the layer's kernel in Keras's layout.
        input_size: `(h, w)`: the input size of a conv, the *output* size
            of a transposed conv.
        strides: `(s_h, s_w)`.
        padding: `"same"` or `"valid"`.
        dilation: `(d_h, d_w)`.
        groups: int >= 1 dividing the channels.
        depthwise: whether `kernel` is a depthwise kernel.
        transpose: whether the layer is a transposed conv.

    Returns:
        A Python float.
    """
    norms = []
    for part in conv_kernel_parts(
        dilate_kernel(kernel, dilation), groups, depthwise
    ):
        if transpose:
            norms.append(min(
                conv_fft_upper_bound(part, input_size, strides),
                conv_reshaped_upper_bound(part),
            ))
        else:
            norms.append(conv_spectral_norm_upper_bound(
                part, input_size, strides, padding
            ))
    return float(max(norms))
