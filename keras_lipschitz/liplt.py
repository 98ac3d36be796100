"""LipLT: Lipschitz bounds by loop transformation (Fazlyab et al., 2023).

Fazlyab, Entesari, Roy, Chellappa, "Certified Robustness via Dynamic Margin
Maximization and Improved Lipschitz Regularization", NeurIPS 2023 (official
code: o4lc/CRM-LipLT).

For a feed-forward network $z_k = W_k\\phi_{k-1}(z_{k-1})$, $z_1 = W_1x$,
whose activations are slope-restricted in $[\\alpha_l, \\beta_l]$, write
$\\phi_l = a_l\\,\\mathrm{id} + b_l\\,\\psi_l$ with $a_l = (\\alpha_l +
\\beta_l)/2$, $b_l = (\\beta_l - \\alpha_l)/2$ and $\\psi_l$ 1-Lipschitz.
Unrolling the loop gives

$$z_k = A_{1,k-1}W_k\\cdots W_1x + \\sum_{j=1}^{k-1} b_j A_{j+1,k-1}
W_k\\cdots W_{j+1}\\,\\psi_j(z_j),\\qquad A_{p,q} = \\prod_{l=p}^{q} a_l,$$

so $m_k = \\mathrm{Lip}(x \\mapsto z_k)$ is bounded by the recursion

$$m_1 = \\|W_1\\|,\\qquad m_k = A_{1,k-1}\\|W_k\\cdots W_1\\| +
\\sum_{j=1}^{k-1} b_jA_{j+1,k-1}\\|W_k\\cdots W_{j+1}\\|\\,m_j.$$

For ReLU ($a = b = 1/2$) this is the paper's
$m_k = 2^{1-k}\\|W_k\\cdots W_1\\| + \\sum_j 2^{j-k}\\|W_k\\cdots W_{j+1}\\|m_j$.
Replacing every product norm by the product of the layer norms gives back
$\\prod_k\\|W_k\\|\\prod_l\\beta_l$, so the bound is never worse than the
layer-wise product. The pairwise constant $L_{pq}$ of the logit difference
$z_p - z_q$ uses the same recursion with the last layer replaced by
$(e_p - e_q)^TW_n$: its products are row vectors, whose norms are exact.

Here a "linear block" $W_k$ is everything between two activations: `Dense`,
`Conv2D` (and the dense and conv layers of this library, through their
inference-mode constrained kernel), `BatchNormalization` (inference
statistics, folded into the preceding kernel), `Rescaling`, `Flatten` and
`Reshape`, composed.

Two implementations:

- `liplt_lipschitz_bound` / `liplt_pairwise_bounds`: the certificate, on the
  host in NumPy float64. Product norms are exact (eigenvalues of the Gram
  matrix of the composed operator, with a rounding margin) whenever the
  composed operator is small enough to be formed; otherwise they are bounded
  by the smallest product of exact or guaranteed bounds of sub-products
  (`keras_lipschitz.bounds` for convolutions). Never a power-iteration
  estimate.
- `LipLTBound`: the training-time estimate, in `keras.ops`, differentiable in
  the weights. Product norms come from a warm-started batched power
  iteration (a *lower* estimate of each norm until it converges), so it must
  not be used to certify.
"""

import math

import keras
import numpy as np
from keras import ops

from keras_lipschitz import bounds
from keras_lipschitz import normalizers
from keras_lipschitz.layers import _validation

# Largest number of entries of an explicit (composed) operator matrix.
EXPLICIT_MAX_ENTRIES = 2**24
# Largest side of the Gram matrix whose top eigenvalue is computed.
EXPLICIT_MAX_GRAM_DIM = 4096
# Rows of pairwise vectors propagated at once on the host.
_PAIR_CHUNK = 256

SUPPORTED_LAYERS = (
    "Dense, Conv2D (channels_last, no dilation or groups), the dense and conv "
    "layers of keras_lipschitz.layers, BatchNormalization (last axis), "
    "Rescaling, Flatten, Reshape, InputLayer, Dropout-like layers, and "
    "monotone slope-restricted activations (Activation/ReLU/LeakyReLU/ELU "
    "layers or the `activation` of a Dense/Conv2D layer: linear, relu, "
    "relu6, leaky_relu, elu, selu, tanh, sigmoid, hard_sigmoid, hard_tanh, "
    "softplus, softsign, log_sigmoid), in a single chain without skips or "
    "branches"
)

# Slope bounds [alpha, beta] of elementwise activations (default arguments
# of the Keras functions).
ACTIVATION_SLOPES = {
    "linear": (1.0, 1.0),
    "relu": (0.0, 1.0),
    "relu6": (0.0, 1.0),
    "leaky_relu": (0.2, 1.0),
    "elu": (0.0, 1.0),
    "selu": (0.0, 1.0507009873554805 * 1.6732632423543772),
    "tanh": (0.0, 1.0),
    "hard_tanh": (0.0, 1.0),
    "sigmoid": (0.0, 0.25),
    "hard_sigmoid": (0.0, 1.0 / 6.0),
    "softplus": (0.0, 1.0),
    "softsign": (0.0, 1.0),
    "log_sigmoid": (0.0, 1.0),
}

_IDENTITY_LAYERS = (
    keras.layers.InputLayer,
    keras.layers.Identity,
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.GaussianNoise,
    keras.layers.GaussianDropout,
    keras.layers.AlphaDropout,
    keras.layers.ActivityRegularization,
)


def _unsupported(layer, reason=""):
    return ValueError(
        f"The LipLT bound does not support layer '{layer.name}' "
        f"({type(layer).__name__}){': ' + reason if reason else ''}. "
        f"Supported: {SUPPORTED_LAYERS}. Use method='product' for other "
        "models."
    )


# --------------------------------------------------------------------------
# Parsing a model into linear blocks and activations.
# --------------------------------------------------------------------------


class _Op:
    """One linear operation of a block, acting on inputs of `in_shape`.

    `kind` is "dense", "conv", "scale" or "reshape". Dense and conv ops may
    carry `post_scales`: the per-channel scales of the BatchNormalization /
    Rescaling layers that follow them, folded into the kernel.
    """

    def __init__(self, kind, layer, in_shape, out_shape):
        self.kind = kind
        self.layer = layer
        self.in_shape = tuple(int(d) for d in in_shape)
        self.out_shape = tuple(int(d) for d in out_shape)
        self.post_scales = []
        self.strides = getattr(layer, "strides", None)
        self.padding = getattr(layer, "padding", None)

    @property
    def in_dim(self):
        return int(np.prod(self.in_shape))

    @property
    def out_dim(self):
        return int(np.prod(self.out_shape))

    # ---- weights as tensors (differentiable) and as float64 arrays
    def _raw_tensor(self):
        layer = self.layer
        if self.kind in ("dense", "conv"):
            if hasattr(layer, "_constrained_kernel"):
                return layer._constrained_kernel(training=False)
            return ops.cast(ops.convert_to_tensor(layer.kernel), "float32")
        return _scale_tensor(layer)

    def tensor(self):
        """The (folded) parameter as a float32 tensor, or None."""
        if self.kind == "reshape":
            return None
        value = ops.cast(self._raw_tensor(), "float32")
        for scale_layer in self.post_scales:
            value = value * ops.cast(_scale_tensor(scale_layer), "float32")
        return value

    def array(self):
        """The (folded) parameter as a float64 NumPy array, or None."""
        if self.kind == "reshape":
            return None
        layer = self.layer
        if self.kind in ("dense", "conv"):
            if hasattr(layer, "effective_kernel"):
                value = np.asarray(layer.effective_kernel(), np.float64)
            else:
                value = _np(layer.kernel)
        else:
            value = _scale_array(layer)
        for scale_layer in self.post_scales:
            value = value * _scale_array(scale_layer)
        return value


def _np(x):
    return np.asarray(ops.convert_to_numpy(x), np.float64)


def _scale_tensor(layer):
    if isinstance(layer, keras.layers.BatchNormalization):
        variance = ops.cast(
            ops.convert_to_tensor(layer.moving_variance), "float32"
        )
        scale = ops.rsqrt(variance + layer.epsilon)
        if layer.scale:
            scale = scale * ops.cast(ops.convert_to_tensor(layer.gamma), "float32")
        return scale
    return ops.convert_to_tensor(np.asarray(layer.scale, np.float32))


def _scale_array(layer):
    if isinstance(layer, keras.layers.BatchNormalization):
        scale = 1.0 / np.sqrt(_np(layer.moving_variance) + layer.epsilon)
        if layer.scale:
            scale = scale * _np(layer.gamma)
        return scale
    return np.asarray(layer.scale, np.float64)


def _activation_slopes(layer, activation):
    name = getattr(activation, "__name__", None)
    if name not in ACTIVATION_SLOPES:
        raise _unsupported(
            layer,
            f"activation {name!r} is not a monotone slope-restricted "
            "activation with known slopes",
        )
    return ACTIVATION_SLOPES[name]


def _layer_items(layer, in_shape, out_shape):
    """The (kind, payload) items a layer contributes to the chain."""
    in_shape, out_shape = tuple(in_shape[1:]), tuple(out_shape[1:])
    if None in in_shape or None in out_shape:
        raise _unsupported(layer, "its input shape must be fully known")
    if isinstance(layer, _IDENTITY_LAYERS):
        return []
    is_library_dense = hasattr(layer, "effective_kernel") and hasattr(
        layer, "units"
    )
    is_library_conv = hasattr(layer, "effective_kernel") and hasattr(
        layer, "filters"
    )
    if is_library_dense or isinstance(layer, keras.layers.Dense):
        if getattr(layer, "lora_enabled", False):
            raise _unsupported(layer, "LoRA is not supported")
        if len(in_shape) != 1:
            raise _unsupported(layer, "only rank-2 inputs (batch, features)")
        items = [("op", _Op("dense", layer, in_shape, out_shape))]
        return items + _activation_item(layer, layer.activation)
    conv_types = (keras.layers.Conv2DTranspose, keras.layers.DepthwiseConv2D)
    if is_library_conv or (
        isinstance(layer, keras.layers.Conv2D)
        and not isinstance(layer, conv_types)
    ):
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            raise _unsupported(layer, "only data_format='channels_last'")
        if is_library_conv and (
            len(getattr(layer, "kernel_size", ())) != 2
            or getattr(layer, "_transpose", False)
            or getattr(layer, "padding", "same") not in ("same", "valid")
        ):
            raise _unsupported(
                layer,
                "only 2-D, non-transposed convolutions with 'same' or "
                "'valid' zero padding",
            )
        if tuple(getattr(layer, "dilation_rate", (1, 1))) != (1, 1) or (
            getattr(layer, "groups", 1) != 1
        ):
            raise _unsupported(layer, "dilation and groups are not supported")
        items = [("op", _Op("conv", layer, in_shape, out_shape))]
        return items + _activation_item(layer, layer.activation)
    if isinstance(layer, keras.layers.BatchNormalization):
        if layer.axis not in (-1, len(in_shape)):
            raise _unsupported(layer, "only axis=-1 is supported")
        return [("op", _Op("scale", layer, in_shape, out_shape))]
    if isinstance(layer, keras.layers.Rescaling):
        scale = np.asarray(layer.scale, np.float64)
        if scale.ndim > 1 or (scale.ndim == 1 and scale.size not in (1, in_shape[-1])):
            raise _unsupported(layer, "scale must be a scalar or per-channel")
        return [("op", _Op("scale", layer, in_shape, out_shape))]
    if isinstance(layer, (keras.layers.Flatten, keras.layers.Reshape)):
        return [("op", _Op("reshape", layer, in_shape, out_shape))]
    if isinstance(layer, keras.layers.Activation):
        return _activation_item(layer, layer.activation)
    if isinstance(layer, keras.layers.ReLU):
        slope = float(layer.negative_slope)
        if float(layer.threshold) != 0.0 or not 0.0 <= slope <= 1.0:
            raise _unsupported(
                layer, "only threshold=0 and 0 <= negative_slope <= 1"
            )
        low = 0.0 if layer.max_value is not None else slope
        return [("act", (low, 1.0))]
    if isinstance(layer, keras.layers.LeakyReLU):
        slope = float(layer.negative_slope)
        if slope < 0.0:
            raise _unsupported(layer, "negative_slope must be >= 0")
        return [("act", (min(slope, 1.0), max(slope, 1.0)))]
    if isinstance(layer, keras.layers.ELU):
        alpha = float(layer.alpha)
        if alpha < 0.0:
            raise _unsupported(layer, "alpha must be >= 0")
        return [("act", (0.0, max(1.0, alpha)))]
    raise _unsupported(layer)


def _activation_item(layer, activation):
    slopes = _activation_slopes(layer, activation)
    return [] if slopes == (1.0, 1.0) else [("act", slopes)]


def _chain_layers(model):
    """`(layer, input_shape, output_shape)` from the input to the output."""
    if not isinstance(model, keras.Model):
        raise ValueError(
            "`model` must be a keras.Model. "
            f"Received: model of type {type(model).__name__}"
        )
    if not model.built or not getattr(model, "outputs", None):
        raise ValueError(
            "`model` must be a built functional or Sequential model (give it "
            "a keras.Input)."
        )
    if len(model.outputs) != 1 or len(model.inputs) != 1:
        raise ValueError(
            "The LipLT bound needs a model with a single input and a single "
            "output."
        )
    chain = []
    tensor = model.outputs[0]
    while True:
        operation, node_index, _ = tensor._keras_history
        node = operation._inbound_nodes[node_index]
        inputs = list(node.input_tensors)
        if not inputs:
            break
        if len(inputs) != 1:
            raise _unsupported(
                operation, "layers with several inputs (skips, branches)"
            )
        if isinstance(operation, keras.Model):
            chain.extend(reversed(_chain_layers(operation)))
        else:
            chain.append((operation, tuple(inputs[0].shape), tuple(tensor.shape)))
        tensor = inputs[0]
    chain.reverse()
    return chain


class _Network:
    """A model as linear blocks separated by slope-restricted activations.

    Attributes:
        blocks: list of lists of `_Op` (each list a linear block $W_k$).
        slopes: `[(alpha, beta)]` of the activation after each block but
            the last.
        lead: Lipschitz factor of activations before the first block.
        trail: Lipschitz factor of activations after the last block (the
            pairwise bounds need it to be absent).
    """

    def __init__(self, model):
        items = []
        for layer, in_shape, out_shape in _chain_layers(model):
            items.extend(_layer_items(layer, in_shape, out_shape))
        self.blocks, self.slopes = [], []
        self.lead, self.trail = 1.0, None
        current, pending = [], None
        for kind, payload in items:
            if kind == "act":
                pending = (
                    payload
                    if pending is None
                    # A composition of monotone slope-restricted maps.
                    else (pending[0] * payload[0], pending[1] * payload[1])
                )
                continue
            if pending is not None:
                if current:
                    self.blocks.append(current)
                    self.slopes.append(pending)
                    current = []
                else:  # activations before the first linear op
                    self.lead *= pending[1]
                pending = None
            op = payload
            if (
                op.kind == "scale"
                and current
                and current[-1].kind in ("dense", "conv")
            ):
                current[-1].post_scales.append(op.layer)
                current[-1].out_shape = op.out_shape
                continue
            current.append(op)
        if current:
            self.blocks.append(current)
        if pending is not None:
            self.trail = pending[1]
        if not any(
            op.kind in ("dense", "conv") for block in self.blocks for op in block
        ):
            raise ValueError(
                "The LipLT bound needs at least one Dense or Conv2D layer in "
                f"`model`. Supported: {SUPPORTED_LAYERS}."
            )
        self.output_shape = self.blocks[-1][-1].out_shape

    @property
    def depth(self):
        return len(self.blocks)

    def block_in_shape(self, k):
        return self.blocks[k][0].in_shape

    def block_out_shape(self, k):
        return self.blocks[k][-1].out_shape

    def coefficients(self):
        """`a_l, b_l` of the activations after each block but the last."""
        return (
            [(lo + hi) / 2.0 for lo, hi in self.slopes],
            [(hi - lo) / 2.0 for lo, hi in self.slopes],
        )


def _recursion(products, a, b, scale=1.0):
    """The LipLT recursion on product norms (numbers or tensors).

    `products[j][k]` bounds $\\|W_k\\cdots W_j\\|$ (0-indexed, j <= k).
    Returns `[m_0, ..., m_{n-1}]`.
    """
    m = []
    for k in range(len(products)):
        value = _a_product(a, 0, k) * products[0][k]
        for j in range(k):
            value = value + (
                b[j] * _a_product(a, j + 1, k) * products[j + 1][k] * m[j]
            )
        m.append(value)
    return m


def _a_product(a, start, stop):
    """$\\prod_{l=start}^{stop-1} a_l$ (activations between blocks)."""
    result = 1.0
    for l in range(start, stop):
        result *= a[l]
    return result


def _pairwise_combination(row_norms, m, a, b, lead):
    """$L_c$ from exact row norms `row_norms[j]` $= \\|c^TW_n\\cdots W_j\\|$."""
    n = len(row_norms)
    value = _a_product(a, 0, n - 1) * row_norms[0]
    for j in range(n - 1):
        value = value + b[j] * _a_product(a, j + 1, n - 1) * row_norms[j + 1] * m[j]
    return lead * value


def _pairs(num_classes):
    return [
        (p, q) for p in range(num_classes) for q in range(p + 1, num_classes)
    ]


# --------------------------------------------------------------------------
# NumPy float64 implementation (certificates).
# --------------------------------------------------------------------------


def _np_conv(x, kernel, strides, padding):
    """`ops.conv` (channels_last, cross-correlation) in NumPy."""
    k_h, k_w, _, c_out = kernel.shape
    batch, h, w, c_in = x.shape
    (s_h, s_w) = strides
    o_h = bounds.conv_output_size(h, k_h, s_h, padding)
    o_w = bounds.conv_output_size(w, k_w, s_w, padding)
    p_h = bounds._padding_before(h, k_h, s_h, padding)
    p_w = bounds._padding_before(w, k_w, s_w, padding)
    n_h, n_w = (o_h - 1) * s_h + k_h, (o_w - 1) * s_w + k_w
    padded = np.zeros((batch, max(n_h, p_h + h), max(n_w, p_w + w), c_in))
    padded[:, p_h : p_h + h, p_w : p_w + w] = x
    out = np.zeros((batch, o_h, o_w, c_out))
    for a in range(k_h):
        for b in range(k_w):
            window = padded[
                :, a : a + (o_h - 1) * s_h + 1 : s_h, b : b + (o_w - 1) * s_w + 1 : s_w
            ]
            out += window @ kernel[a, b]
    return out


def _np_conv_adjoint(g, kernel, strides, padding, input_size):
    """The exact adjoint of `_np_conv`, returning inputs of `input_size`."""
    k_h, k_w, c_in, _ = kernel.shape
    batch, o_h, o_w, _ = g.shape
    h, w = input_size
    (s_h, s_w) = strides
    p_h = bounds._padding_before(h, k_h, s_h, padding)
    p_w = bounds._padding_before(w, k_w, s_w, padding)
    n_h, n_w = (o_h - 1) * s_h + k_h, (o_w - 1) * s_w + k_w
    padded = np.zeros((batch, max(n_h, p_h + h), max(n_w, p_w + w), c_in))
    for a in range(k_h):
        for b in range(k_w):
            padded[
                :, a : a + (o_h - 1) * s_h + 1 : s_h, b : b + (o_w - 1) * s_w + 1 : s_w
            ] += g @ kernel[a, b].T
    return padded[:, p_h : p_h + h, p_w : p_w + w]


def _np_adjoint(op, g, param):
    """Applies op^T to a batch `g` of shape `(rows,) + op.out_shape`."""
    if op.kind == "dense":
        return g @ param.T
    if op.kind == "conv":
        return _np_conv_adjoint(
            g, param, tuple(op.strides), op.padding, op.in_shape[:2]
        )
    if op.kind == "scale":
        return g * param
    return g.reshape((g.shape[0],) + op.in_shape)


def _np_forward(op, x, param):
    if op.kind == "dense":
        return x @ param
    if op.kind == "conv":
        return _np_conv(x, param, tuple(op.strides), op.padding)
    if op.kind == "scale":
        return x * param
    return x.reshape((x.shape[0],) + op.out_shape)


def _op_matrix(op, param):
    """Explicit `(out_dim, in_dim)` matrix of an op, or None (identity)."""
    if op.kind == "dense":
        return param.T
    if op.kind == "conv":
        return bounds.conv_operator_matrix(
            param, op.in_shape[:2], tuple(op.strides), op.padding
        )
    if op.kind == "scale":
        return np.diag(np.broadcast_to(param, op.out_shape).reshape(-1))
    return None


def _op_norm_bound(op, param):
    """Guaranteed bound on one op's norm (exact for dense and scale)."""
    if op.kind == "dense":
        return bounds.dense_spectral_norm(param)
    if op.kind == "conv":
        return bounds.conv_spectral_norm_upper_bound(
            param, op.in_shape[:2], tuple(op.strides), op.padding
        )
    if op.kind == "scale":
        return float(np.max(np.abs(param))) if np.size(param) else 0.0
    return 1.0


def _gram_top_norm(matrix):
    """Largest singular value of `matrix`, rounded up (float64)."""
    if matrix.size == 0:
        return 0.0
    if matrix.shape[0] < matrix.shape[1]:
        gram = matrix @ matrix.T
    else:
        gram = matrix.T @ matrix
    top = float(np.linalg.eigvalsh(gram)[-1])
    # eigvalsh is backward stable: its error is ~1e-16 ||G||; add a margin
    # so the result stays an upper bound.
    slack = 1e-12 * float(np.linalg.norm(gram, ord="fro"))
    return math.sqrt(max(top + slack, 0.0))


class _HostNetwork:
    """Float64 evaluation of the LipLT quantities of a `_Network`."""

    def __init__(self, network):
        self.net = network
        self.params = [[op.array() for op in block] for block in network.blocks]
        self._matrices = {}

    def _block_ops(self, j, k):
        for block in range(j, k + 1):
            for op, param in zip(self.net.blocks[block], self.params[block]):
                yield op, param

    def _explicit_product(self, j, k):
        """The exact norm of blocks j..k, or None if too large to form."""
        ops_ = list(self._block_ops(j, k))
        in_dim, out_dim = ops_[0][0].in_dim, ops_[-1][0].out_dim
        if min(in_dim, out_dim) > EXPLICIT_MAX_GRAM_DIM:
            return None
        for op, _ in ops_:
            if op.kind == "reshape":
                continue
            # The op's own matrix and the partial product it creates.
            partial = (
                out_dim * op.in_dim if out_dim <= in_dim else op.out_dim * in_dim
            )
            if max(op.in_dim * op.out_dim, partial) > EXPLICIT_MAX_ENTRIES:
                return None
        matrix = None
        if out_dim <= in_dim:  # multiply from the left: rows stay out_dim
            for op, param in reversed(ops_):
                factor = self._matrix(op, param)
                if factor is None:
                    continue
                matrix = factor if matrix is None else matrix @ factor
        else:
            for op, param in ops_:
                factor = self._matrix(op, param)
                if factor is None:
                    continue
                matrix = factor if matrix is None else factor @ matrix
        if matrix is None:
            return 1.0
        return _gram_top_norm(matrix)

    def _matrix(self, op, param):
        if op.kind == "reshape":
            return None
        key = id(op)
        if key not in self._matrices:
            self._matrices[key] = _op_matrix(op, param)
        return self._matrices[key]

    def products(self, n=None):
        """`P[j][k]`, guaranteed bounds on $\\|W_k\\cdots W_j\\|$, k < n."""
        n = self.net.depth if n is None else n
        table = [[None] * n for _ in range(n)]
        for span in range(n):
            for j in range(n - span):
                k = j + span
                best = self._explicit_product(j, k)
                if span == 0 and best is None:
                    layerwise = 1.0
                    for op, param in self._block_ops(j, j):
                        layerwise *= _op_norm_bound(op, param)
                    best = layerwise if best is None else min(best, layerwise)
                for split in range(j, k):
                    candidate = table[j][split] * table[split + 1][k]
                    best = candidate if best is None else min(best, candidate)
                table[j][k] = best
        return table

    def row_norms(self, rows):
        """`norms[j][r]` $= \\|c_r^TW_n\\cdots W_j\\|$ for rows `c_r`."""
        n = self.net.depth
        norms = [None] * n
        g = rows
        for k in range(n - 1, -1, -1):
            for op, param in reversed(
                list(zip(self.net.blocks[k], self.params[k]))
            ):
                g = _np_adjoint(op, g, param)
            norms[k] = np.linalg.norm(g.reshape(g.shape[0], -1), axis=1)
        return norms


def liplt_lipschitz_bound(model):
    """Guaranteed ℓ2 Lipschitz bound of a feed-forward model by LipLT.

    See the module docstring for the recursion. Every product norm
    $\\|W_k\\cdots W_j\\|$ is exact (float64 eigenvalues of the Gram matrix
    of the composed operator, plus a rounding margin) when that operator has
    at most `EXPLICIT_MAX_GRAM_DIM` inputs or outputs and can be formed;
    otherwise it is the smallest product of exact or guaranteed bounds of
    sub-products (convolutions: `keras_lipschitz.bounds`). The result is at
    most the layer-wise product bound.

    Args:
        model: a built single-input, single-output `keras.Model` made of the
            supported layers (`SUPPORTED_LAYERS`) in one chain.

    Returns:
        A Python float.

    Raises:
        ValueError: naming the first unsupported layer.
    """
    network = _Network(model)
    host = _HostNetwork(network)
    a, b = network.coefficients()
    m = _recursion(host.products(), a, b)
    trail = 1.0 if network.trail is None else network.trail
    return float(network.lead * trail * m[-1])


def liplt_pairwise_bounds(model):
    """Guaranteed bounds $L_{pq}$ on the Lipschitz constants of $z_p - z_q$.

    The recursion of `liplt_lipschitz_bound` with the last layer replaced by
    $(e_p - e_q)^TW_n$; the products that end with that row are vectors,
    so their norms are exact.

    Args:
        model: as in `liplt_lipschitz_bound`, returning logits `(N, C)` from a
            linear last block (no activation after the last layer).

    Returns:
        float64 array `(C, C)`, symmetric, zero on the diagonal.

    Raises:
        ValueError: for unsupported layers, or if the output is not a vector
            of logits produced by a linear layer.
    """
    network = _Network(model)
    if network.trail is not None or len(network.output_shape) != 1:
        raise ValueError(
            "Pairwise LipLT bounds need a model whose output is a vector of "
            "logits `(N, C)` produced by a linear layer (no activation after "
            "the last Dense layer)."
        )
    host = _HostNetwork(network)
    a, b = network.coefficients()
    n = network.depth
    m = _recursion(host.products(n - 1), a, b)
    num_classes = network.output_shape[0]
    pairs = _pairs(num_classes)
    result = np.zeros((num_classes, num_classes))
    for start in range(0, len(pairs), _PAIR_CHUNK):
        chunk = pairs[start : start + _PAIR_CHUNK]
        rows = np.zeros((len(chunk), num_classes))
        for r, (p, q) in enumerate(chunk):
            rows[r, p], rows[r, q] = 1.0, -1.0
        norms = host.row_norms(rows)
        values = _pairwise_combination(norms, m, a, b, network.lead)
        for r, (p, q) in enumerate(chunk):
            # Rounding margin of the float64 propagation.
            result[p, q] = result[q, p] = values[r] * (1.0 + 1e-12)
    return result


def liplt_supported(model):
    """True if `liplt_pairwise_bounds(model)` applies to `model`."""
    try:
        network = _Network(model)
    except ValueError:
        return False
    return network.trail is None and len(network.output_shape) == 1


# --------------------------------------------------------------------------
# Differentiable estimate for training.
# --------------------------------------------------------------------------


def _row_norms(x):
    rows = x.shape[0]
    return ops.sqrt(
        ops.maximum(
            ops.sum(ops.square(ops.reshape(x, (rows, -1))), axis=1),
            normalizers.EPSILON,
        )
    )


def _normalize_rows(x):
    norms = _row_norms(x)
    return x / ops.reshape(norms, (x.shape[0],) + (1,) * (len(x.shape) - 1))


def _ops_forward(op, x, param):
    if op.kind == "dense":
        return ops.matmul(x, param)
    if op.kind == "conv":
        return ops.conv(
            x,
            param,
            strides=tuple(op.strides),
            padding=op.padding,
            data_format="channels_last",
        )
    if op.kind == "scale":
        return x * param
    return ops.reshape(x, (x.shape[0],) + op.out_shape)


def _ops_adjoint(op, g, param):
    if op.kind == "dense":
        return ops.matmul(g, ops.transpose(param))
    if op.kind == "conv":
        output_padding = normalizers.conv_transpose_output_padding(
            op.in_shape[:2], param.shape[:2], tuple(op.strides), op.padding
        )
        return ops.conv_transpose(
            g,
            param,
            strides=tuple(op.strides),
            padding=op.padding,
            output_padding=output_padding,
            data_format="channels_last",
        )
    if op.kind == "scale":
        return g * param
    return ops.reshape(g, (g.shape[0],) + op.in_shape)


class LipLTBound(keras.metrics.Metric):
    """Differentiable LipLT estimate of a model's Lipschitz constants.

    Gives, as `keras.ops` tensors differentiable in the model's weights, the
    LipLT bound $m_n$ (`lipschitz()`) and the pairwise constants $L_{pq}$ of
    the logit differences (`pairwise()`), see `keras_lipschitz.liplt`. It is
    what `keras_lipschitz.losses.CRM` regularizes.

    **Power iteration.** The norm of every product $W_k\\cdots W_j$ comes from
    a batched power iteration with persistent vectors: one float32 state
    variable per first block $j$, holding one vector per end block $k$,
    warm-started from step to step and detached (gradient-stopped). With
    `update=True` (as the `CRM` loss calls it) each call advances the vectors
    by `iterations` steps and writes them back; the estimate
    $\\|W_k\\cdots W_ju\\|$ is then differentiable in the weights with $u$
    constant. The products that end with the pairwise row
    $(e_p - e_q)^TW_n$ are vectors and their norms are exact.

    **Not a certificate.** A power-iteration norm is a *lower* estimate of
    the true norm until converged, so this estimate can be below the true
    LipLT bound. Certify with `keras_lipschitz.certify` /
    `keras_lipschitz.lipschitz_bound(model, method="liplt")`, which compute
    every norm exactly on the host.

    **State.** The object is a `keras.metrics.Metric` that attaches itself
    to `model` (attribute `_liplt_bound`), so its vectors are part of the
    model's metric state: the compiled train step carries their updates on
    every backend (on JAX the trainer threads metric variables through the
    jitted step). Create it *before* the model's first `fit`. Its `result()`
    is the last pairwise estimate $\\max_{p\\ne q}L_{pq}$ written during
    training, so it shows in the progress bar as `liplt`. Keras resets
    metrics every epoch; this one keeps its state. A Keras loss has no
    `training` flag, so the `CRM` loss also advances the vectors when it is
    evaluated in `model.evaluate`: this never changes the model's outputs,
    only the warm start of the estimate.

    Args:
        model: a built Keras model supported by `liplt_lipschitz_bound`.
        iterations: int >= 1, power-iteration steps per call with
            `update=True` (official code: 1; README runs: 5 on CIFAR-10,
            10 on MNIST).
        seed: seed of the random initial vectors.
        name: metric name.

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.Input((4,)),
    ...     keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)])
    >>> bound = LipLTBound(model, iterations=5)
    >>> tuple(bound.pairwise().shape)
    (3, 3)
    """

    def __init__(self, model, iterations=1, seed=0, name="liplt"):
        super().__init__(name=name, dtype="float32")
        self.iterations = _validation.validate_positive_int(
            "iterations", iterations
        )
        self._network = _Network(model)
        self.num_classes = (
            self._network.output_shape[0]
            if len(self._network.output_shape) == 1
            else None
        )
        rng = np.random.default_rng(seed)
        n = self._network.depth
        self.vectors = []
        for j in range(n):
            shape = (n - j,) + self._network.block_in_shape(j)
            value = rng.normal(size=shape)
            norms = np.linalg.norm(value.reshape(n - j, -1), axis=1)
            value = value / norms.reshape((n - j,) + (1,) * (len(shape) - 1))
            self.vectors.append(
                self.add_variable(
                    shape=shape,
                    initializer=keras.initializers.Constant(
                        value.astype("float32")
                    ),
                    dtype="float32",
                    name=f"vectors_{j}",
                )
            )
        self.estimate = self.add_variable(
            shape=(), initializer="zeros", dtype="float32", name="estimate"
        )
        pairs = _pairs(self.num_classes or 0)
        self._pair_rows = np.zeros((len(pairs), self.num_classes or 0), "float32")
        self._pair_scatter = np.zeros(
            (len(pairs), (self.num_classes or 0) ** 2), "float32"
        )
        for r, (p, q) in enumerate(pairs):
            self._pair_rows[r, p], self._pair_rows[r, q] = 1.0, -1.0
            self._pair_scatter[r, p * self.num_classes + q] = 1.0
            self._pair_scatter[r, q * self.num_classes + p] = 1.0
        # Tracked by the model as metric state (see the class docstring).
        model._liplt_bound = self

    # Metric API: the state is not a running statistic.
    def update_state(self, *args, **kwargs):
        return None

    def reset_state(self):
        return None

    def result(self):
        return ops.convert_to_tensor(self.estimate)

    def _params(self):
        return [[op.tensor() for op in block] for block in self._network.blocks]

    def _forward_block(self, k, x, params):
        for op, param in zip(self._network.blocks[k], params[k]):
            x = _ops_forward(op, x, param)
        return x

    def _adjoint_block(self, k, g, params):
        for op, param in reversed(list(zip(self._network.blocks[k], params[k]))):
            g = _ops_adjoint(op, g, param)
        return g

    def _products(self, last, update):
        """Estimated `P[j][k]` for `k <= last`; writes the vectors if asked."""
        params = self._params()
        frozen = [[ops.stop_gradient(p) if p is not None else None
                   for p in block] for block in params]
        table = [[None] * (last + 1) for _ in range(last + 1)]
        for j in range(last + 1):
            stored = ops.convert_to_tensor(self.vectors[j])
            rows = last - j + 1
            u = ops.stop_gradient(stored[:rows])
            for _ in range(self.iterations):
                u = _normalize_rows(u)
                h, finished = u, []
                for k in range(j, last + 1):
                    h = self._forward_block(k, h, frozen)
                    finished.append(h[:1])
                    h = h[1:]
                g = None
                for k in range(last, j - 1, -1):
                    row = finished[k - j]
                    g = row if g is None else ops.concatenate([row, g], axis=0)
                    g = self._adjoint_block(k, g, frozen)
                u = g
            u = ops.stop_gradient(_normalize_rows(u))
            h = u
            for k in range(j, last + 1):
                h = self._forward_block(k, h, params)
                table[j][k] = _row_norms(h[:1])[0]
                h = h[1:]
            if update:
                new = u
                if rows < stored.shape[0]:
                    new = ops.concatenate([u, stored[rows:]], axis=0)
                self.vectors[j].assign(ops.cast(new, "float32"))
        return table, params

    def lipschitz(self, update=False):
        """The LipLT estimate of the model's Lipschitz constant.

        Args:
            update: advance and store the power-iteration vectors (training).

        Returns:
            A scalar float32 tensor, differentiable in the weights.
        """
        n = self._network.depth
        table, _ = self._products(n - 1, update)
        a, b = self._network.coefficients()
        m = _recursion(table, a, b)
        trail = 1.0 if self._network.trail is None else self._network.trail
        return m[-1] * (self._network.lead * trail)

    def pairwise(self, update=False):
        """Estimated pairwise constants $L_{pq}$ of $z_p - z_q$.

        Args:
            update: advance and store the power-iteration vectors (training),
                and record $\\max L_{pq}$ as the metric's result.

        Returns:
            A float32 tensor `(C, C)`, symmetric with a zero diagonal,
            differentiable in the weights.
        """
        network = self._network
        if network.trail is not None or self.num_classes is None:
            raise ValueError(
                "Pairwise LipLT bounds need a model whose output is a vector "
                "of logits `(N, C)` produced by a linear layer (no activation "
                "after the last Dense layer)."
            )
        n = network.depth
        a, b = network.coefficients()
        if n > 1:
            table, params = self._products(n - 2, update)
            m = _recursion(table, a, b)
        else:
            params, m = self._params(), []
        g = ops.convert_to_tensor(self._pair_rows)
        row_norms = [None] * n
        for k in range(n - 1, -1, -1):
            g = self._adjoint_block(k, g, params)
            row_norms[k] = _row_norms(g)
        values = _pairwise_combination(row_norms, m, a, b, network.lead)
        matrix = ops.reshape(
            ops.matmul(
                ops.reshape(values, (1, -1)),
                ops.convert_to_tensor(self._pair_scatter),
            ),
            (self.num_classes, self.num_classes),
        )
        if update:
            self.estimate.assign(
                ops.cast(ops.stop_gradient(ops.max(values)), "float32")
            )
        return matrix
