"""Certification heads: classifier layers with their own certificate.

A head sits on top of a 1-Lipschitz feature extractor $\\phi$ (the
"backbone") and is certified by `keras_lipschitz.certify` with a
certificate that uses more than its Lipschitz constant.
"""

import math

import keras
import numpy as np
from keras import ops

from keras_lipschitz import bounds
from keras_lipschitz import normalizers
from keras_lipschitz.api_export import keras_lipschitz_export
from keras_lipschitz.layers import _validation

# Power iterations run at build so that the stored vector starts converged.
INITIAL_POWER_ITERATIONS = 50


def _validate_nonnegative(name, value):
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(
            f"`{name}` must be a finite number >= 0. "
            f"Received: {name}={value!r}"
        )
    return float(value)


@keras_lipschitz_export
class CRCLipHead(keras.layers.Layer):
    """One-hidden-layer softplus head with curvature-based certificates.

    The "CRC-Lip" head of Singla & Feizi, "Improved techniques for
    deterministic l2 robustness" (NeurIPS 2022), on features $\\phi$
    (flattened) of a 1-Lipschitz backbone:

    $$f(\\phi) = W_2^T\\,\\mathrm{softplus}_\\beta(W_1^T\\phi + b_1) + b_2,
    \\qquad
    \\mathrm{softplus}_\\beta(t) = \\tfrac1\\beta\\log(1+e^{\\beta t}).$$

    For a class pair $(y, j)$ let $g = f_y - f_j$ and
    $\\Delta = w_{2,y} - w_{2,j}$ (columns of $W_2$). Then

    $$\\nabla g = W_1(\\Delta \\odot \\sigma(\\beta a)),\\qquad
    \\nabla^2 g = W_1\\,\\mathrm{diag}(\\Delta \\odot
    \\mathrm{softplus}_\\beta''(a))\\,W_1^T,\\quad a = W_1^T\\phi + b_1,$$

    with $0 < \\mathrm{softplus}_\\beta'' \\le \\beta/4$, so
    $-m_{yj} I \\preceq \\nabla^2 g \\preceq M_{yj} I$ with

    $$M_{yj} = \\tfrac\\beta4\\,\\lambda_{max}(W_1\\,\\mathrm{diag}(\\Delta^+)
    W_1^T),\\qquad m_{yj} = M_{jy}.$$

    `keras_lipschitz.certify` recognises a model that ends with this layer
    and certifies it with these bounds computed exactly (float64
    `eigvalsh`), see `keras_lipschitz.curvature`.

    **Training.** The layer is unconstrained: its certificate relies on a
    small curvature, which training encourages with the paper's
    regulariser $\\beta_{curv}\\cdot\\operatorname{mean}_{y\\ne j}
    \\tfrac\\beta4\\,\\hat\\sigma(W_1)^2\\max_k(\\Delta_{yj,k})^+$ (its
    "fast" curvature bound, with $\\hat\\sigma(W_1)$ a power-iteration
    estimate differentiable in $W_1$). With `curvature_weight`
    $=\\beta_{curv} > 0$ it is added to the model's losses (`add_loss`)
    on every training call; `curvature_penalty()` returns it for custom
    loops. The estimate is *not* used for certification.

    Args:
        num_classes: int >= 2, number of logits.
        hidden_units: int >= 1, width of the hidden layer (4096 in the
            paper).
        beta: float > 0, the softplus sharpness $\\beta$ (1 in the paper).
        curvature_weight: float >= 0, $\\beta_{curv}$ of the regulariser
            (0 disables it).
        power_iterations: int >= 1, power-iteration steps per training call
            for $\\hat\\sigma(W_1)$ in the regulariser.
        certificate: what `keras_lipschitz.certify` uses for this head:
            `"fast"` (closed form, cheap) or `"crc"` (the fast radius
            refined by a verified dual bound of the exact curvature-based
            radius; slower, see `keras_lipschitz.curvature`).
        kernel_initializer: initializer of $W_1$ and $W_2$.
        bias_initializer: initializer of $b_1$ and $b_2$.

    Input shape:
        `(batch, ...)` with static non-batch dimensions; flattened to
        `(batch, d)`.

    Output shape:
        `(batch, num_classes)`: the logits.

    Example:

    >>> import numpy as np
    >>> head = CRCLipHead(3, hidden_units=8)
    >>> tuple(head(np.ones((2, 5), "float32")).shape)
    (2, 3)
    """

    def __init__(
        self,
        num_classes,
        hidden_units=4096,
        beta=1.0,
        curvature_weight=0.0,
        power_iterations=1,
        certificate="fast",
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_classes = _validation.validate_positive_int(
            "num_classes", num_classes, minimum=2
        )
        self.hidden_units = _validation.validate_positive_int(
            "hidden_units", hidden_units
        )
        self.beta = _validation.validate_positive_number("beta", beta)
        self.curvature_weight = _validate_nonnegative(
            "curvature_weight", curvature_weight
        )
        self.power_iterations = _validation.validate_positive_int(
            "power_iterations", power_iterations
        )
        self.certificate = _validation.validate_choice(
            "certificate", certificate, {"fast", "crc"}
        )
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.input_dim = None
        self.input_spec = keras.layers.InputSpec(min_ndim=2)

    def build(self, input_shape):
        dims = tuple(input_shape[1:])
        if any(d is None for d in dims):
            raise ValueError(
                "CRCLipHead needs static non-batch input dimensions. "
                f"Received: input_shape={input_shape}"
            )
        self.input_dim = int(math.prod(dims))
        self.hidden_kernel = self.add_weight(
            name="hidden_kernel",
            shape=(self.input_dim, self.hidden_units),
            initializer=self.kernel_initializer,
            autocast=False,
        )
        self.hidden_bias = self.add_weight(
            name="hidden_bias",
            shape=(self.hidden_units,),
            initializer=self.bias_initializer,
            autocast=False,
        )
        self.output_kernel = self.add_weight(
            name="output_kernel",
            shape=(self.hidden_units, self.num_classes),
            initializer=self.kernel_initializer,
            autocast=False,
        )
        self.output_bias = self.add_weight(
            name="output_bias",
            shape=(self.num_classes,),
            initializer=self.bias_initializer,
            autocast=False,
        )
        self.u = self.add_weight(
            name="u",
            shape=(1, self.hidden_units),
            initializer=keras.initializers.RandomNormal(seed=0),
            trainable=False,
            autocast=False,
        )
        u, _ = normalizers.power_iteration_dense(
            ops.convert_to_tensor(self.hidden_kernel),
            ops.convert_to_tensor(self.u),
            INITIAL_POWER_ITERATIONS,
        )
        self.u.assign(u)
        self.input_spec = keras.layers.InputSpec(
            min_ndim=2, axes={i + 1: d for i, d in enumerate(dims)}
        )

    def _flatten(self, inputs):
        if len(inputs.shape) == 2:
            return inputs
        return ops.reshape(inputs, (-1, self.input_dim))

    def call(self, inputs, training=None):
        x = self._flatten(inputs)
        dtype = x.dtype
        hidden = ops.matmul(x, ops.cast(self.hidden_kernel, dtype))
        hidden = ops.add(hidden, ops.cast(self.hidden_bias, dtype))
        # softplus_beta(t) = softplus(beta t) / beta (numerically stable).
        hidden = ops.softplus(hidden * self.beta) / self.beta
        logits = ops.matmul(hidden, ops.cast(self.output_kernel, dtype))
        logits = ops.add(logits, ops.cast(self.output_bias, dtype))
        if training and self.curvature_weight > 0:
            self.add_loss(
                self.curvature_weight * self.curvature_penalty(training=True)
            )
        return logits

    def curvature_penalty(self, training=None):
        """The differentiable training curvature estimate (not a bound).

        $\\tfrac\\beta4\\,\\hat\\sigma(W_1)^2\\,\\operatorname{mean}_{y\\ne j}
        \\max_k(w_{2,y,k} - w_{2,j,k})^+$, the NeurIPS'22 code's "fast"
        curvature bound averaged over ordered class pairs (which covers both
        $M_{yj}$ and $m_{yj} = M_{jy}$). $\\hat\\sigma$ is a power-iteration
        estimate, a *lower* bound on $\\|W_1\\|$: certificates use the exact
        bounds of `keras_lipschitz.curvature` instead.

        Args:
            training: when truthy, the persistent power-iteration vector is
                advanced by `power_iterations` steps and stored.

        Returns:
            A float32 scalar tensor.
        """
        kernel1 = ops.cast(self.hidden_kernel, "float32")
        kernel2 = ops.cast(self.output_kernel, "float32")
        steps = self.power_iterations if training else 0
        u, sigma = normalizers.power_iteration_dense(
            kernel1, ops.convert_to_tensor(self.u), steps
        )
        if training:
            self.u.assign(ops.cast(u, self.u.dtype))
        # diff[y, j, k] = w2[k, y] - w2[k, j]; diagonal entries are 0.
        columns = ops.transpose(kernel2)
        diff = columns[:, None, :] - columns[None, :, :]
        largest = ops.max(ops.relu(diff), axis=-1)
        pairs = self.num_classes * (self.num_classes - 1)
        mean_largest = ops.sum(largest) / pairs
        return 0.25 * self.beta * ops.square(sigma) * mean_largest

    def head_weights(self):
        """The head's weights as float64 NumPy arrays.

        Returns:
            `(W1, b1, W2, b2)` with shapes `(d, h)`, `(h,)`, `(h, C)`,
            `(C,)`.
        """
        return tuple(
            np.asarray(ops.convert_to_numpy(w), np.float64)
            for w in (
                self.hidden_kernel,
                self.hidden_bias,
                self.output_kernel,
                self.output_bias,
            )
        )

    def lipschitz_upper_bound(self):
        """Guaranteed bound on the head's ℓ2 Lipschitz constant.

        $\\|W_1\\|_2\\,\\|W_2\\|_2$ (softplus is 1-Lipschitz), exact float64
        SVDs. `certify` does not use it for this head (it uses the curvature
        certificate), but `lipschitz_bound` of a model ending with the head
        does.

        Returns:
            A Python float.
        """
        kernel1, _, kernel2, _ = self.head_weights()
        return bounds.dense_spectral_norm(kernel1) * bounds.dense_spectral_norm(
            kernel2
        )

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "hidden_units": self.hidden_units,
                "beta": self.beta,
                "curvature_weight": self.curvature_weight,
                "power_iterations": self.power_iterations,
                "certificate": self.certificate,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "bias_initializer": keras.initializers.serialize(
                    self.bias_initializer
                ),
            }
        )
        return config
