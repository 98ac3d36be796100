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
        padding: `"same"` or `"valid"`.

    Returns:
        A Python float.
    """
    kernel = np.asarray(kernel, dtype=np.float64)
    h, w = input_size
    if h * w * kernel.shape[2] <= EXPLICIT_OPERATOR_MAX_INPUT_DIM:
        matrix = conv_operator_matrix(kernel, input_size, strides, padding)
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
