"""Lipschitz-constrained dense layers.

Each layer keeps a raw, unconstrained trainable `kernel` and derives the
constrained kernel $\\bar W$ from it inside `call`, so gradients flow through
the normalization and nothing is ever assigned to a trainable weight (which
JAX's `fit` would silently discard). Only non-trainable state (the
power-iteration vector) is written, and only when `training` is true.
"""

import keras
from keras import ops

from keras_lipschitz import bounds
from keras_lipschitz import normalizers
from keras_lipschitz.api_export import keras_lipschitz_export
from keras_lipschitz.layers import _kernel_arguments
from keras_lipschitz.layers import _validation

# Power iterations run at build so that the stored vector starts converged.
INITIAL_POWER_ITERATIONS = 100


class _LipschitzDense(keras.layers.Layer):
    """Shared machinery of the dense layers: weights, bias, config.

    Subclasses implement `_constrain(kernel, training)`, which maps the raw
    float32 kernel to the constrained one (before the `lipschitz` factor).
    """

    def __init__(
        self,
        units,
        lipschitz=1.0,
        activation=None,
        use_bias=True,
        kernel_initializer="orthogonal",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.units = _validation.validate_positive_int("units", units)
        _kernel_arguments.set_kernel_arguments(
            self,
            lipschitz,
            activation,
            use_bias,
            kernel_initializer,
            bias_initializer,
            kernel_regularizer,
            bias_regularizer,
            kernel_constraint,
            bias_constraint,
        )
        self.input_spec = keras.layers.InputSpec(min_ndim=2)
        self.supports_masking = True

    def build(self, input_shape):
        input_dim = input_shape[-1]
        if input_dim is None:
            raise ValueError(
                f"{type(self).__name__} needs a known last input dimension. "
                f"Received: input_shape={input_shape}"
            )
        _kernel_arguments.add_kernel_and_bias(
            self, (input_dim, self.units)
        )
        self._build_state(input_dim)
        self.input_spec = keras.layers.InputSpec(
            min_ndim=2, axes={-1: input_dim}
        )

    def _build_state(self, input_dim):
        """Creates the layer's non-trainable state, if any."""

    def _constrain(self, kernel, training):
        raise NotImplementedError

    def _constrained_kernel(self, training):
        kernel = ops.cast(self.kernel, "float32")
        return _kernel_arguments.scale_by_lipschitz(
            self, self._constrain(kernel, training)
        )

    def call(self, inputs, training=None):
        kernel = ops.cast(self._constrained_kernel(training), inputs.dtype)
        outputs = ops.matmul(inputs, kernel)
        if self.bias is not None:
            outputs = ops.add(outputs, self.bias)
        return self.activation(outputs)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def effective_kernel(self):
        """The constrained kernel used in inference mode, as a NumPy array.

        This is what `vanilla_export` copies into a plain `keras.layers.Dense`.
        """
        return ops.convert_to_numpy(self._constrained_kernel(training=False))

    def lipschitz_upper_bound(self):
        """Guaranteed upper bound on the layer's current ℓ2 Lipschitz constant.

        Computed from the inference-mode kernel by an exact float64 SVD,
        times the activation's Lipschitz constant. It holds whatever the state
        of training or of the power iteration.

        Returns:
            A Python float.
        """
        return (
            bounds.dense_spectral_norm(self.effective_kernel())
            * self._activation_lipschitz
        )

    def get_config(self):
        config = super().get_config()
        config["units"] = self.units
        config.update(_kernel_arguments.kernel_arguments_config(self))
        return config


class _PowerIterationDense(_LipschitzDense):
    """Dense layer that tracks the kernel's top singular vector."""

    def __init__(
        self, units, power_iterations=1, eval_gram_iterations=8, **kwargs
    ):
        super().__init__(units, **kwargs)
        self.power_iterations = _validation.validate_positive_int(
            "power_iterations", power_iterations
        )
        self.eval_gram_iterations = _validation.validate_positive_int(
            "eval_gram_iterations", eval_gram_iterations
        )

    def _build_state(self, input_dim):
        self.u = self.add_weight(
            name="u",
            shape=(1, self.units),
            initializer=keras.initializers.RandomNormal(seed=0),
            trainable=False,
            autocast=False,
        )
        # Start from a converged vector so the first training steps are
        # already normalized by a tight estimate.
        u, _ = normalizers.power_iteration_dense(
            ops.cast(self.kernel, "float32"),
            ops.convert_to_tensor(self.u),
            INITIAL_POWER_ITERATIONS,
        )
        self.u.assign(u)

    def _sigma(self, kernel, training):
        """Scale for the kernel: an estimate in training, a bound otherwise."""
        if training:
            u, sigma = normalizers.power_iteration_dense(
                kernel, ops.convert_to_tensor(self.u), self.power_iterations
            )
            self.u.assign(ops.cast(u, self.u.dtype))
            return sigma
        # Inference: a guaranteed upper bound, so the layer is never more
        # than `lipschitz`-Lipschitz, whatever the state of `u`.
        return normalizers.gram_spectral_norm_upper_bound(
            kernel, self.eval_gram_iterations
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "power_iterations": self.power_iterations,
                "eval_gram_iterations": self.eval_gram_iterations,
            }
        )
        return config


@keras_lipschitz_export
class SpectralDense(_PowerIterationDense):
    """Dense layer with a spectrally normalized kernel.

    $$y = \\phi\\Big(x\\,\\frac{L\\,W}{\\sigma(W)} + b\\Big),$$

    where $L$ is `lipschitz` and $\\sigma(W)$ the largest singular value of
    the raw kernel (Miyato et al., "Spectral Normalization for Generative
    Adversarial Networks", ICLR 2018).

    - **Training**: $\\sigma(W)$ is estimated by `power_iterations` steps of
      power iteration from a persistent vector `u` (a non-trainable float32
      weight, warm-started at every step, written only when training, its
      gradient stopped). The gradient flows through the estimate.
    - **Inference**: $\\sigma(W)$ is replaced by the Gram-iteration upper
      bound $\\|G_t\\|_F^{1/2^{t+1}}$ (Delattre et al., ICML 2023) with
      `eval_gram_iterations` squarings, which is never below
      $\\sigma(W)$. The layer is therefore at most `lipschitz`-Lipschitz
      whenever it is called in inference mode, right after construction,
      after any training, and after loading. The bound is within a factor
      $r^{2^{-(t+1)}}$ of $\\sigma(W)$ for a rank-$r$ kernel (at most 1.4 %
      for $r \\le 1024$ with the default $t = 8$).

    Args:
        units: positive int, output dimension.
        lipschitz: positive float, the Lipschitz constant the layer
            guarantees (before the activation).
        activation: None or a Keras activation with a known Lipschitz
            constant (`relu`, `tanh`, ...).
        use_bias: bool.
        kernel_initializer: initializer of the raw kernel (default
            `"orthogonal"`).
        bias_initializer: initializer of the bias.
        kernel_regularizer, bias_regularizer: optional regularizers.
        kernel_constraint, bias_constraint: optional constraints.
        power_iterations: int >= 1, power-iteration steps per training call.
        eval_gram_iterations: int >= 1, Gram squarings at inference.

    Input shape:
        `(..., input_dim)`.

    Output shape:
        `(..., units)`.

    Example:

    >>> import numpy as np
    >>> layer = SpectralDense(4)
    >>> y = layer(np.ones((2, 3), "float32"))
    >>> tuple(y.shape)
    (2, 4)
    >>> layer.lipschitz_upper_bound() <= 1.0 + 1e-4
    True
    """

    def _constrain(self, kernel, training):
        return kernel * ops.reciprocal(self._sigma(kernel, training))


@keras_lipschitz_export
class BjorckDense(_PowerIterationDense):
    """Dense layer with an orthonormalized kernel (spectral norm + Björck).

    The raw kernel is first scaled to spectral norm about 1 (as in
    `SpectralDense`), then `bjorck_iterations` steps of order-1 Björck
    orthonormalization with $\\beta$ = `bjorck_beta` drive all of its singular
    values to 1 (Anil, Lucas, Grosse, "Sorting out Lipschitz function
    approximation", ICML 2019):

    $$W_{t+1} = (1+\\beta)W_t - \\beta W_tW_t^TW_t.$$

    The result has orthonormal columns (or rows), so the layer is
    `lipschitz`-Lipschitz *and* gradient-norm preserving.

    At inference the pre-scaling uses a guaranteed upper bound on
    $\\sigma(W)$, so every singular value starts in $[0, 1]$ and Björck
    keeps it there: the guarantee does not depend on convergence.

    Args:
        units: positive int.
        lipschitz: positive float.
        bjorck_iterations: int >= 1, fixed number of Björck steps (a fixed
            count keeps it differentiable on JAX).
        bjorck_beta: float in (0, 0.5].
        power_iterations, eval_gram_iterations: as in `SpectralDense`.
        **kwargs: the other `SpectralDense` arguments.

    Example:

    >>> import numpy as np
    >>> layer = BjorckDense(3)
    >>> _ = layer(np.ones((1, 3), "float32"))
    >>> s = np.linalg.svd(layer.effective_kernel(), compute_uv=False)
    >>> bool(np.all(np.abs(s - 1.0) < 1e-2))
    True
    """

    def __init__(
        self, units, bjorck_iterations=15, bjorck_beta=0.5, **kwargs
    ):
        super().__init__(units, **kwargs)
        self.bjorck_iterations = _validation.validate_positive_int(
            "bjorck_iterations", bjorck_iterations
        )
        self.bjorck_beta = _validation.validate_bjorck_beta(bjorck_beta)

    def _constrain(self, kernel, training):
        scaled = kernel / self._sigma(kernel, training)
        return normalizers.bjorck_orthonormalize(
            scaled, self.bjorck_iterations, self.bjorck_beta
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "bjorck_iterations": self.bjorck_iterations,
                "bjorck_beta": self.bjorck_beta,
            }
        )
        return config


@keras_lipschitz_export
class FrobeniusDense(_LipschitzDense):
    """Dense layer normalized by Frobenius norms.

    - `disjoint_neurons=True`: each output neuron's weight vector (a column
      of the Keras kernel) is scaled to norm `lipschitz`, so *each output* is
      `lipschitz`-Lipschitz on its own. Used as the last layer, this is the
      "last layer normalization" (LLN) of Singla, Singla & Feizi (ICLR 2022):
      certify it with the pairwise radius
      $\\min_{j\\ne y}(z_y-z_j)/(L\\|w_y-w_j\\|)$, not with a global bound.
      The map as a whole can then have a Lipschitz constant up to
      $L\\sqrt{units}$, which `lipschitz_upper_bound` reports exactly.
    - `disjoint_neurons=False`: the whole kernel is scaled to Frobenius norm
      `lipschitz`; since $\\|W\\|_2 \\le \\|W\\|_F$ the map is
      `lipschitz`-Lipschitz.

    No state and no iteration: the normalization is exact.

    Args:
        units: positive int.
        disjoint_neurons: bool, see above.
        lipschitz: positive float.
        **kwargs: the other `SpectralDense` arguments.

    Example:

    >>> import numpy as np
    >>> layer = FrobeniusDense(3)
    >>> _ = layer(np.ones((1, 5), "float32"))
    >>> np.linalg.norm(layer.effective_kernel(), axis=0).round(4).tolist()
    [1.0, 1.0, 1.0]
    """

    def __init__(self, units, disjoint_neurons=True, **kwargs):
        super().__init__(units, **kwargs)
        self.disjoint_neurons = bool(disjoint_neurons)

    def _constrain(self, kernel, training):
        axis = 0 if self.disjoint_neurons else None
        norm = ops.sqrt(
            ops.sum(ops.square(kernel), axis=axis, keepdims=True)
        )
        return kernel / ops.maximum(norm, normalizers.EPSILON)

    def get_config(self):
        config = super().get_config()
        config["disjoint_neurons"] = self.disjoint_neurons
        return config

