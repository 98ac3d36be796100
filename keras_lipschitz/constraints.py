"""Keras weight constraints that bound the norm of a kernel.

A constraint is a projection that Keras applies *itself* to a variable
after every optimizer step (`layer.add_weight(..., constraint=...)`, or the
`kernel_constraint` argument of `keras.layers.Dense` / `Conv2D`). They are
the one place where a trainable weight is overwritten, by Keras, on every
backend. They constrain **plain** layers; the layers of
`keras_lipschitz.layers` derive their constrained kernel in `call` instead
and need none.

What each constraint guarantees is a bound on the *kernel*:

- for a `Dense` kernel $W$ it bounds the layer's ℓ2 Lipschitz constant
  $\\|W\\|_2$ directly;
- for a `Conv2D` kernel it bounds the reshaped matrix
  $R \\in \\mathbb{R}^{(k_hk_wc_{in}) \\times c_{out}}$, and the
  convolution's norm can reach $\\sqrt{\\lceil k_h/s_h\\rceil
  \\lceil k_w/s_w\\rceil}\\,\\|R\\|_2$ (see `BjorckConv2D`).

In both cases the constant to certify with is computed from the actual
weights: `keras_lipschitz.lipschitz_bound(model)` and `certify` read the
kernels of plain `Dense` and `Conv2D` layers and take their exact (or
guaranteed) operator norms, whatever the constraint did.

Every constraint is deterministic and stateless (no power-iteration
vector), serializable, and written with `keras.ops` only.
"""

import math

import keras
from keras import ops

from keras_lipschitz import normalizers
from keras_lipschitz.api_export import keras_lipschitz_export
from keras_lipschitz.layers import _validation

# Gram squarings of the spectral bound (a factor r^(1/512) above sigma_max
# at most for rank r: 1.4 % for r = 1024).
GRAM_ITERATIONS = 8


def _as_matrix(w):
    """`w` reshaped to `(prod(shape[:-1]), shape[-1])` in float32."""
    shape = tuple(w.shape)
    matrix = ops.reshape(ops.cast(w, "float32"), (-1, shape[-1]))
    return matrix, shape


@keras_lipschitz_export
class SpectralConstraint(keras.constraints.Constraint):
    """Projects a kernel to equal singular values `lipschitz` (RKO).

    With $R$ the kernel reshaped to `(-1, units)`:

    $$\\bar R = L\\cdot\\mathrm{Bjorck}\\big(R / \\hat\\sigma(R)\\big),$$

    where $\\hat\\sigma(R) \\ge \\sigma_{max}(R)$ is the guaranteed Gram
    iteration bound (Delattre et al., ICML 2023, 8 squarings) and Björck
    runs `bjorck_iterations` steps of
    $W \\leftarrow (1+\\beta)W - \\beta WW^TW$ (Anil, Lucas, Grosse,
    ICML 2019), which keeps every singular value in $[0, 1]$ and drives
    them to 1. So $\\|\\bar R\\|_2 \\le L$ after every step, whatever the
    convergence, and $\\bar R/L$ is close to orthonormal. With
    `bjorck_iterations=0` it is a (guaranteed) spectral normalization.

    deel-lip's `SpectralConstraint` divides by a power-iteration estimate
    from a random vector at every call (an estimate from below); this one
    divides by an upper bound and is deterministic.

    Applied to a `Dense` kernel the layer is `lipschitz`-Lipschitz; to a
    `Conv2D` kernel only the reshaped matrix is bounded (see the module
    docstring). `keras_lipschitz.lipschitz_bound` computes the bound of the
    constrained layer from its actual weights.

    Args:
        lipschitz: float > 0, $L$.
        bjorck_iterations: int >= 0.
        bjorck_beta: float in (0, 0.5].

    Example:

    >>> import numpy as np
    >>> w = np.random.default_rng(0).normal(size=(6, 4)).astype("float32")
    >>> w_bar = ops.convert_to_numpy(SpectralConstraint()(w))
    >>> s = np.linalg.svd(w_bar, compute_uv=False)
    >>> bool(s.max() <= 1.0 + 1e-6 and s.min() > 0.99)
    True
    """

    def __init__(self, lipschitz=1.0, bjorck_iterations=15, bjorck_beta=0.5):
        self.lipschitz = _validation.validate_positive_number(
            "lipschitz", lipschitz
        )
        self.bjorck_iterations = _validation.validate_positive_int(
            "bjorck_iterations", bjorck_iterations, minimum=0
        )
        self.bjorck_beta = _validation.validate_bjorck_beta(bjorck_beta)

    def __call__(self, w):
        w = ops.convert_to_tensor(w)
        matrix, shape = _as_matrix(w)
        sigma = normalizers.gram_spectral_norm_upper_bound(
            matrix, GRAM_ITERATIONS
        )
        matrix = matrix / sigma
        if self.bjorck_iterations:
            matrix = normalizers.bjorck_orthonormalize(
                matrix, self.bjorck_iterations, self.bjorck_beta
            )
        return ops.cast(ops.reshape(matrix * self.lipschitz, shape), w.dtype)

    def get_config(self):
        return {
            "lipschitz": self.lipschitz,
            "bjorck_iterations": self.bjorck_iterations,
            "bjorck_beta": self.bjorck_beta,
        }


@keras_lipschitz_export
class FrobeniusConstraint(keras.constraints.Constraint):
    """Scales a kernel to Frobenius norm `lipschitz`.

    $$\\bar W = L\\,\\frac{W}{\\|W\\|_F + \\varepsilon},$$

    over all entries (deel-lip's `FrobeniusConstraint`, with $L = 1$).
    Since $\\|W\\|_2 \\le \\|W\\|_F$, a `Dense` layer so constrained is
    $L$-Lipschitz (tight for a rank-1 kernel, e.g. a single output).

    Args:
        lipschitz: float > 0, $L$.
        epsilon: float >= 0 added to the norm (a zero kernel stays zero).

    Example:

    >>> import numpy as np
    >>> w = np.array([[3.0], [4.0]], "float32")
    >>> w_bar = ops.convert_to_numpy(FrobeniusConstraint(epsilon=0.0)(w))
    >>> np.round(w_bar.ravel().astype(float), 4).tolist()
    [0.6, 0.8]
    """

    def __init__(self, lipschitz=1.0, epsilon=1e-7):
        self.lipschitz = _validation.validate_positive_number(
            "lipschitz", lipschitz
        )
        if (
            isinstance(epsilon, bool)
            or not isinstance(epsilon, (int, float))
            or not 0.0 <= epsilon < float("inf")
        ):
            raise ValueError(
                "`epsilon` must be a finite number >= 0. "
                f"Received: epsilon={epsilon!r}"
            )
        self.epsilon = float(epsilon)

    def __call__(self, w):
        w = ops.convert_to_tensor(w)
        norm = ops.sqrt(ops.sum(ops.square(w)))
        return w * (self.lipschitz / (norm + self.epsilon))

    def get_config(self):
        return {"lipschitz": self.lipschitz, "epsilon": self.epsilon}


@keras_lipschitz_export
class WeightClipConstraint(keras.constraints.Constraint):
    """Clips every weight to $[-c, c]$ (WGAN weight clipping).

    Arjovsky, Chintala, Bottou, "Wasserstein GAN", ICML 2017; deel-lip's
    `WeightClipConstraint(c)`. A kernel with $n$ entries in $[-c, c]$ has
    $\\|W\\|_2 \\le \\|W\\|_F \\le c\\sqrt n$: a (loose) Lipschitz bound,
    which `keras_lipschitz.lipschitz_bound` replaces by the exact norm.

    Args:
        clip_value: float > 0, $c$.

    Example:

    >>> import numpy as np
    >>> w = np.array([-3.0, 0.5, 4.0], "float32")
    >>> ops.convert_to_numpy(WeightClipConstraint(2.0)(w)).tolist()
    [-2.0, 0.5, 2.0]
    """

    def __init__(self, clip_value=2.0):
        self.clip_value = _validation.validate_positive_number(
            "clip_value", clip_value
        )

    def __call__(self, w):
        w = ops.convert_to_tensor(w)
        return ops.clip(w, -self.clip_value, self.clip_value)

    def get_config(self):
        return {"clip_value": self.clip_value}


@keras_lipschitz_export
class AutoWeightClipConstraint(keras.constraints.Constraint):
    """Clips every weight to $[-c, c]$ with $c = s/\\sqrt{n}$.

    For a kernel of $n$ entries, $\\|W\\|_F \\le c\\sqrt n = s$, so a
    `Dense` layer so constrained is $s$-Lipschitz: `scale` is a guaranteed
    bound. (deel-lip's `AutoWeightClipConstraint(scale)` clips at
    $1/(\\text{scale}\\sqrt n)$, i.e. our `scale` is the inverse of its;
    `keras_lipschitz.compat.deel_lip` converts.)

    Args:
        scale: float > 0, $s$.

    Example:

    >>> import numpy as np
    >>> w = np.full((2, 2), 5.0, "float32")
    >>> ops.convert_to_numpy(AutoWeightClipConstraint(1.0)(w)).tolist()
    [[0.5, 0.5], [0.5, 0.5]]
    """

    def __init__(self, scale=1.0):
        self.scale = _validation.validate_positive_number("scale", scale)

    def __call__(self, w):
        w = ops.convert_to_tensor(w)
        size = math.prod(int(d) for d in w.shape)
        clip = self.scale / math.sqrt(max(size, 1))
        return ops.clip(w, -clip, clip)

    def get_config(self):
        return {"scale": self.scale}
