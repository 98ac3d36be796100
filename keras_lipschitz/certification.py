"""Sound ℓ2 certification of Keras models.

Everything here runs on the host in NumPy float64, from weights converted
with `keras.ops.convert_to_numpy`, so results are identical on every
backend. No power-iteration estimate is ever used: every layer bound is an
exact norm or a guaranteed upper bound (`keras_lipschitz.bounds`).
"""

import math

import keras
import numpy as np

from keras_lipschitz import bounds
from keras_lipschitz.layers import _validation

# Layers that are 1-Lipschitz, or the identity, at inference.
_ONE_LIPSCHITZ = (
    keras.layers.InputLayer,
    keras.layers.Flatten,
    keras.layers.Reshape,
    keras.layers.Permute,
    keras.layers.Identity,
    keras.layers.Dropout,
    keras.layers.SpatialDropout2D,
    keras.layers.GaussianNoise,
    keras.layers.GaussianDropout,
    keras.layers.ZeroPadding2D,
    keras.layers.Cropping2D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.GlobalMaxPooling1D,
)

SUPPORTED_LAYERS = (
    "the layers of keras_lipschitz.layers (anything with "
    "`lipschitz_upper_bound()`), Dense, Conv2D, Activation/ReLU/LeakyReLU/"
    "ELU with a known constant, MaxPooling2D, AveragePooling2D, "
    "GlobalAveragePooling2D, GlobalMaxPooling2D, BatchNormalization, "
    "Rescaling, Normalization, Flatten, Reshape, Permute, Dropout, "
    "ZeroPadding2D, Cropping2D, Add, Concatenate and nested models"
)


def _unsupported(layer, reason=""):
    return ValueError(
        f"Cannot bound the Lipschitz constant of layer '{layer.name}' "
        f"({type(layer).__name__}){': ' + reason if reason else ''}. "
        f"Supported: {SUPPORTED_LAYERS}."
    )


def _numpy(variable):
    return np.asarray(keras.ops.convert_to_numpy(variable), np.float64)


def _activation_constant(layer, activation):
    name = getattr(activation, "__name__", None)
    if name not in _validation.ACTIVATION_LIPSCHITZ:
        raise _unsupported(layer, f"activation {name!r} has no known constant")
    return _validation.ACTIVATION_LIPSCHITZ[name]


def _pool_window_bound(layer, average):
    pool = tuple(layer.pool_size)
    strides = tuple(layer.strides or pool)
    if layer.padding != "valid":
        raise _unsupported(layer, "only padding='valid' is supported")
    # Number of windows one input pixel belongs to.
    overlap = 1
    for p, s in zip(pool, strides):
        overlap *= -(-p // s)
    if average:
        return math.sqrt(overlap / float(np.prod(pool)))
    return math.sqrt(overlap)


def layer_lipschitz_bound(layer, input_shape=None):
    """Guaranteed upper bound on one layer's ℓ2 Lipschitz constant.

    Args:
        layer: a Keras layer (single input).
        input_shape: the layer's input shape (needed for plain `Conv2D` and
            `GlobalAveragePooling2D`, whose norms depend on the input size).

    Returns:
        A Python float.

    Raises:
        ValueError: naming the layer, if it cannot be bounded.
    """
    if hasattr(layer, "lipschitz_upper_bound"):
        return float(layer.lipschitz_upper_bound())
    if isinstance(layer, keras.Model):
        return lipschitz_bound(layer)
    if isinstance(layer, _ONE_LIPSCHITZ):
        return 1.0
    if isinstance(layer, keras.layers.Dense):
        if getattr(layer, "lora_enabled", False):
            raise _unsupported(layer, "LoRA is not supported")
        return bounds.dense_spectral_norm(
            _numpy(layer.kernel)
        ) * _activation_constant(layer, layer.activation)
    if isinstance(layer, keras.layers.Conv2D) and not isinstance(
        layer, (keras.layers.Conv2DTranspose, keras.layers.DepthwiseConv2D)
    ):
        if tuple(layer.dilation_rate) != (1, 1) or layer.groups != 1:
            raise _unsupported(layer, "dilation and groups are not supported")
        kernel = _numpy(layer.kernel)
        spatial = None
        if input_shape is not None:
            axes = (1, 2) if layer.data_format == "channels_last" else (2, 3)
            spatial = tuple(input_shape[a] for a in axes)
        if spatial is None or None in spatial:
            norm = bounds.conv_reshaped_upper_bound(kernel)
        else:
            norm = bounds.conv_spectral_norm_upper_bound(
                kernel, spatial, tuple(layer.strides), layer.padding
            )
        return norm * _activation_constant(layer, layer.activation)
    if isinstance(layer, keras.layers.Activation):
        return _activation_constant(layer, layer.activation)
    if isinstance(layer, keras.layers.ReLU):
        return max(1.0, abs(float(layer.negative_slope)))
    if isinstance(layer, keras.layers.LeakyReLU):
        return max(1.0, abs(float(layer.negative_slope)))
    if isinstance(layer, keras.layers.ELU):
        return max(1.0, abs(float(layer.alpha)))
    if isinstance(layer, keras.layers.MaxPooling2D):
        return _pool_window_bound(layer, average=False)
    if isinstance(layer, keras.layers.AveragePooling2D):
        return _pool_window_bound(layer, average=True)
    if isinstance(layer, keras.layers.GlobalAveragePooling2D):
        axes = (1, 2) if layer.data_format == "channels_last" else (2, 3)
        if input_shape is None or None in [input_shape[a] for a in axes]:
            raise _unsupported(layer, "spatial size unknown")
        return 1.0 / math.sqrt(input_shape[axes[0]] * input_shape[axes[1]])
    if isinstance(layer, keras.layers.BatchNormalization):
        scale = 1.0 / np.sqrt(_numpy(layer.moving_variance) + layer.epsilon)
        if layer.scale:
            scale = scale * _numpy(layer.gamma)
        return float(np.max(np.abs(scale)))
    if isinstance(layer, keras.layers.Rescaling):
        return float(np.max(np.abs(np.asarray(layer.scale, np.float64))))
    if isinstance(layer, keras.layers.Normalization):
        if getattr(layer, "invert", False):
            raise _unsupported(layer, "invert=True is not supported")
        variance = _numpy(layer.variance)
        return float(1.0 / np.sqrt(np.maximum(np.min(variance), 1e-7)))
    raise _unsupported(layer)


def _tensor_bound(tensor, cache):
    """Bound of the map from the model inputs to `tensor`."""
    key = id(tensor)
    if key in cache:
        return cache[key]
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        raise ValueError(f"Tensor {tensor} is not part of a Keras graph.")
    operation, node_index, _ = history
    node = operation._inbound_nodes[node_index]
    inputs = list(node.input_tensors)
    if not inputs:  # a model input
        cache[key] = 1.0
        return 1.0
    input_bounds = [_tensor_bound(t, cache) for t in inputs]
    if isinstance(operation, keras.layers.Add):
        result = sum(input_bounds)
    elif isinstance(operation, keras.layers.Subtract):
        result = sum(input_bounds)
    elif isinstance(operation, keras.layers.Average):
        result = sum(input_bounds) / len(input_bounds)
    elif isinstance(operation, keras.layers.Concatenate):
        result = math.sqrt(sum(b * b for b in input_bounds))
    elif len(inputs) == 1:
        result = input_bounds[0] * layer_lipschitz_bound(
            operation, tuple(inputs[0].shape)
        )
    else:
        raise _unsupported(operation, "multiple inputs")
    cache[key] = result
    return result


def lipschitz_bound(model, method="product"):
    """Guaranteed upper bound on a model's ℓ2 Lipschitz constant.

    The bound composes exact or guaranteed per-layer bounds over the model's
    graph: a product along chains, the *sum* of branch bounds at a residual
    `Add`, and $\\sqrt{\\sum_i L_i^2}$ at a `Concatenate`. Layers of this
    library contribute `lipschitz_upper_bound()` (exact SVD for dense
    kernels, the padded-grid FFT / explicit-operator bound for
    convolutions); plain `Dense` and `Conv2D` contribute the same exact
    norms of their kernels. It never returns a power-iteration estimate.

    With `method="liplt"` the bound is the LipLT recursion of Fazlyab et al.
    (NeurIPS 2023) for feed-forward models of linear layers and monotone
    slope-restricted activations, with exact norms of the layer products
    (`keras_lipschitz.liplt.liplt_lipschitz_bound`), capped by the product
    bound: never larger, often much smaller for unconstrained networks.

    Args:
        model: a built Sequential or functional `keras.Model` with a single
            input and a single output.
        method: `"product"` (layer-wise composition, any supported graph) or
            `"liplt"` (feed-forward chains only; raises `ValueError` naming
            the first unsupported layer).

    Returns:
        A Python float $L$ with
        $\\|f(x) - f(x')\\|_2 \\le L\\|x - x'\\|_2$ for all inputs of the
        built size.

    Raises:
        ValueError: naming the first layer it cannot bound.

    Example:

    >>> import keras
    >>> from keras_lipschitz.layers import SpectralDense, GroupSort2
    >>> model = keras.Sequential(
    ...     [keras.Input((4,)), SpectralDense(8), GroupSort2(), SpectralDense(2)])
    >>> lipschitz_bound(model) <= 1.0 + 1e-6
    True
    """
    if method not in ("product", "liplt"):
        raise ValueError(
            "`method` must be 'product' or 'liplt'. "
            f"Received: method={method!r}"
        )
    outputs = _single(model, "outputs")
    if method == "liplt":
        from keras_lipschitz import liplt

        return min(
            liplt.liplt_lipschitz_bound(model), _tensor_bound(outputs, {})
        )
    return _tensor_bound(outputs, {})


def _single(model, attribute):
    if not isinstance(model, keras.Model):
        raise ValueError(
            "`model` must be a keras.Model. "
            f"Received: model of type {type(model).__name__}"
        )
    if not model.built or not getattr(model, attribute, None):
        raise ValueError(
            "`model` must be a built functional or Sequential model (give it "
            "a keras.Input)."
        )
    tensors = getattr(model, attribute)
    if len(tensors) != 1:
        raise ValueError(
            f"`model` must have a single {attribute[:-1]}. "
            f"Received: {len(tensors)}."
        )
    return tensors[0]


def _last_linear_layer(model):
    """Returns `(kernel, body_bound)` if the model ends in a linear layer."""
    outputs = _single(model, "outputs")
    operation, node_index, _ = outputs._keras_history
    node = operation._inbound_nodes[node_index]
    if len(node.input_tensors) != 1:
        return None
    if hasattr(operation, "effective_kernel") and hasattr(operation, "units"):
        if getattr(operation, "_activation_lipschitz", None) is None:
            return None
        if operation.activation is not keras.activations.linear:
            return None
        kernel = np.asarray(operation.effective_kernel(), np.float64)
    elif isinstance(operation, keras.layers.Dense):
        if operation.activation is not keras.activations.linear:
            return None
        kernel = _numpy(operation.kernel)
    else:
        return None
    body = _tensor_bound(node.input_tensors[0], {})
    return kernel, body


def _labels_to_indices(y, num_classes):
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == num_classes and num_classes > 1:
        return np.argmax(y, axis=1)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(
            "`y` must be integer labels of shape (N,) or (N, 1), or one-hot "
            f"labels of shape (N, {num_classes}). Received: shape {y.shape}"
        )
    if np.any(y < 0) or np.any(y >= num_classes) or np.any(y != np.round(y)):
        raise ValueError(
            f"`y` holds class indices outside [0, {num_classes - 1}]."
        )
    return y.astype(np.int64)


def _certify_binary(model, scores, y):
    """Radii `sign(y) f / L` of a single-output (binary) model."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.shape[0] != scores.shape[0]:
        raise ValueError(
            "For a model with a single output, `y` must be binary labels of "
            f"shape ({scores.shape[0]},) or ({scores.shape[0]}, 1). "
            f"Received: shape {y.shape}"
        )
    if not np.all(np.isin(y, (-1, 0, 1))):
        raise ValueError(
            "For a model with a single output, `y` must hold binary labels "
            f"in {{0, 1}} or {{-1, +1}}. Received values: "
            f"{np.unique(y)[:10].tolist()}"
        )
    sign = np.where(y > 0, 1.0, -1.0)
    radius = sign * scores / lipschitz_bound(model)
    return np.where(np.isfinite(radius) & (radius > 0), radius, 0.0)


def certify(model, x, y, norm="l2", batch_size=256, method="auto"):
    """Per-example certified ℓ2 radii, 0 where the prediction is wrong.

    With logits $z$, label $y$ and a guaranteed bound $L$ on the model's
    Lipschitz constant, the radius is $\\min_{j\\ne y}(z_y-z_j)/\\sqrt2L$
    (Tsuzuku et al., NeurIPS 2018). When the model ends in a linear layer
    $z = W\\phi + b$, the tighter pairwise certificate is used
    (the "LLN" certificate of Singla et al., ICLR 2022):

    $$r = \\min_{j\\ne y}\\frac{z_y - z_j}{L_\\phi\\,\\|w_y - w_j\\|},$$

    with $L_\\phi$ the guaranteed bound of the body, over *all* classes $j$.
    Any input $x'$ with $\\|x'-x\\|_2 < r$ is classified as $y$. A point
    whose logits are not finite, or that is misclassified, gets radius 0.
    Logits are computed in inference mode and the certificate in float64.

    A model with a single output $f$ (shape `(N,)` or `(N, 1)`, as trained
    with `keras_lipschitz.losses.HKR`) is a binary classifier predicting
    the positive class iff $f(x) > 0$; its radius is
    $r = \\operatorname{sign}(y) f(x) / L$, i.e. $|f(x)|/L$ for a correct
    prediction, with $L$ = `lipschitz_bound(model)` (no $\\sqrt2$: a single
    score, not a difference of two logits). Labels are then in $\\{0, 1\\}$
    or $\\{-1, +1\\}$, positive iff $y > 0$ (as in the losses); $f(x) = 0$
    is not certified.

    A model whose output layer is a `keras_lipschitz.layers.CRCLipHead` is
    certified with that head's curvature certificate (see
    `keras_lipschitz.curvature.certify_curvature_head`).

    Args:
        model: a built single-input, single-output `keras.Model`.
        x: inputs, array-like.
        y: integer labels `(N,)`/`(N, 1)` or one-hot `(N, C)`; binary labels
            `(N,)`/`(N, 1)` for a single-output model.
        norm: `"l2"`, or `"linf"` for ℓ∞ radii of ℓ∞-distance nets and
            SortNets (see `keras_lipschitz.linf_certification.certify_linf`).
        batch_size: batch size of the forward passes.
        method: ℓ2 bounds of multiclass models. `"product"`: the layer-wise
            bound (pairwise through the last linear layer, as above);
            `"liplt"`: the pairwise LipLT constants $L_{yj}$ of Fazlyab et
            al. (NeurIPS 2023), $r = \min_{j\ne y}(z_y - z_j)/L_{yj}$,
            with exact product norms
            (`keras_lipschitz.liplt.liplt_pairwise_bounds`; feed-forward
            models only, else `ValueError`); `"auto"` (default): for each
            pair the smaller of the two bounds when LipLT applies to the
            model, else `"product"`. All are guaranteed.

    Returns:
        NumPy float64 array of shape `(N,)`.
    """
    if method not in ("auto", "product", "liplt"):
        raise ValueError(
            "`method` must be 'auto', 'product' or 'liplt'. "
            f"Received: method={method!r}"
        )
    if norm == "linf":
        # ℓ∞-distance nets and SortNet: margin / 2 or IBP through an MLP head.
        from keras_lipschitz import linf_certification

        return linf_certification.certify_linf(
            model, x, y, batch_size=batch_size
        )
    if norm != "l2":
        raise ValueError(
            "`norm` must be 'l2' or 'linf' for certify(). "
            f"Received: norm={norm!r}"
        )
    # A CRC-Lip head has its own (curvature) certificate.
    from keras_lipschitz import curvature

    if norm == "l2" and curvature.ends_with_curvature_head(model):
        return curvature.certify_curvature_head(model, x, y, batch_size)
    logits = np.asarray(
        model.predict(x, batch_size=batch_size, verbose=0), np.float64
    )
    if logits.ndim == 1 or (logits.ndim == 2 and logits.shape[1] == 1):
        return _certify_binary(model, logits.reshape(-1), y)
    if logits.ndim != 2:
        raise ValueError(
            "`model` must output logits of shape (N, C) with C >= 2, or "
            f"binary scores of shape (N,) or (N, 1). Received: {logits.shape}"
        )
    n, num_classes = logits.shape
    labels = _labels_to_indices(y, num_classes)
    if labels.shape[0] != n:
        raise ValueError(
            f"`x` and `y` hold different numbers of examples: {n} and "
            f"{labels.shape[0]}."
        )
    z_y = logits[np.arange(n), labels]
    gaps = z_y[:, None] - logits  # z_y - z_j
    last = _last_linear_layer(model)
    if last is not None:
        kernel, body = last
        # Column j of a Keras kernel is w_j; ||w_y - w_j|| for all pairs.
        diff = kernel.T[:, None, :] - kernel.T[None, :, :]
        pair = body * np.linalg.norm(diff, axis=-1)[labels]  # (N, C)
        with np.errstate(divide="ignore", invalid="ignore"):
            # pair == 0: z_y - z_j is constant, safe only if positive.
            ratios = np.where(
                pair > 0, gaps / pair, np.where(gaps > 0, np.inf, 0.0)
            )
    else:
        bound = lipschitz_bound(model)
        ratios = gaps / (math.sqrt(2.0) * bound)
    if method != "product":
        from keras_lipschitz import liplt

        ratios = liplt.tighten_ratios(model, gaps, labels, ratios, method)
    ratios[np.arange(n), labels] = np.inf
    radius = np.min(ratios, axis=1)
    finite = np.all(np.isfinite(logits), axis=1)
    radius = np.where(finite & (radius > 0), radius, 0.0)
    return np.where(np.isfinite(radius), radius, 0.0)


def certified_accuracy(
    model, x, y, epsilons, norm="l2", batch_size=256, method="auto"
):
    """Fraction of examples certified at each radius in `epsilons`.

    A point counts at $\\varepsilon$ iff it is correctly classified and its
    certified radius (see `certify`) is strictly greater than
    $\\varepsilon$.

    Args:
        model, x, y, norm, batch_size, method: as in `certify`.
        epsilons: a number or a sequence of numbers >= 0.

    Returns:
        NumPy array with one value per epsilon.
    """
    eps = np.atleast_1d(np.asarray(epsilons, np.float64))
    if np.any(eps < 0) or not np.all(np.isfinite(eps)):
        raise ValueError(
            f"`epsilons` must be finite and >= 0. Received: {epsilons!r}"
        )
    radius = certify(
        model, x, y, norm=norm, batch_size=batch_size, method=method
    )
    return np.array([np.mean(radius > e) for e in eps])
