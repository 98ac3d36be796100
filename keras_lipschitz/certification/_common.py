"""Helpers shared by every certificate: labels, graph walking, radii.

This module is the bottom of `keras_lipschitz.certification`: the
certificate modules, the bound composition and the dispatch import it, and
it imports none of them. Everything here works on the host in NumPy float64.
"""

import keras
import numpy as np


def to_float64(variable):
    """A Keras variable or tensor as a NumPy float64 array."""
    return np.asarray(keras.ops.convert_to_numpy(variable), np.float64)


def single_tensor(model, attribute):
    """The only input or output tensor of a built model.

    Args:
        model: a `keras.Model`.
        attribute: `"inputs"` or `"outputs"`.

    Returns:
        The symbolic tensor.

    Raises:
        ValueError: if `model` is not a built model with exactly one such
            tensor.
    """
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


def producer(tensor):
    """`(operation, input_tensors)` of the graph node that made `tensor`.

    `input_tensors` is empty for a model input.
    """
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        raise ValueError(f"Tensor {tensor} is not part of a Keras graph.")
    operation, node_index, _ = history
    node = operation._inbound_nodes[node_index]
    return operation, list(node.input_tensors)


def output_producer(model):
    """`(operation, input_tensors)` of the layer that makes `model`'s output."""
    return producer(single_tensor(model, "outputs"))


def flat_layers(model):
    """The layers of `model` in order, nested models flattened."""
    layers = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            layers.extend(flat_layers(layer))
        else:
            layers.append(layer)
    return layers


def labels_to_indices(y, num_classes):
    """Integer class indices from integer or one-hot labels.

    Args:
        y: labels `(N,)`/`(N, 1)` of integers, or one-hot `(N, C)`.
        num_classes: C.

    Returns:
        int64 array `(N,)`.

    Raises:
        ValueError: for another shape or an index outside `[0, C)`.
    """
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


def check_same_length(num_examples, labels):
    """Raises `ValueError` if `x` and `y` hold different numbers of examples."""
    if labels.shape[0] != num_examples:
        raise ValueError(
            f"`x` and `y` hold different numbers of examples: {num_examples} "
            f"and {labels.shape[0]}."
        )


def pair_ratios(gaps, pair_constants):
    """Ratios $(z_y - z_j)/L_{yj}$, safe where $L_{yj} = 0$.

    Where $L_{yj} = 0$ the difference $z_y - z_j$ is constant, so the pair is
    safe at every radius only if the difference is positive.

    Args:
        gaps: float64 `(N, C)`, $z_y - z_j$.
        pair_constants: float64 `(N, C)`, guaranteed bounds $L_{yj}$.

    Returns:
        float64 `(N, C)`.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(
            pair_constants > 0,
            gaps / pair_constants,
            np.where(gaps > 0, np.inf, 0.0),
        )


def multiclass_logits(model, x, y, batch_size):
    """Inference-mode logits, labels and gaps $z_y - z_j$ in float64.

    Returns:
        `(logits (N, C), labels (N,), gaps (N, C))`.
    """
    logits = np.asarray(
        model.predict(x, batch_size=batch_size, verbose=0), np.float64
    )
    if logits.ndim != 2:
        raise ValueError(
            "`model` must output logits of shape (N, C) with C >= 2, or "
            f"binary scores of shape (N,) or (N, 1). Received: {logits.shape}"
        )
    n, num_classes = logits.shape
    labels = labels_to_indices(y, num_classes)
    check_same_length(n, labels)
    gaps = logits[np.arange(n), labels][:, None] - logits
    return logits, labels, gaps


def radii_from_ratios(ratios, labels, logits):
    """Radius $\\min_{j \\ne y}$ of the pair ratios; 0 if wrong or not finite.

    Args:
        ratios: float64 `(N, C)`, each a certified radius for its pair.
        labels: int `(N,)`.
        logits: float64 `(N, C)`.

    Returns:
        float64 `(N,)`.
    """
    ratios = np.array(ratios, np.float64)
    ratios[np.arange(len(labels)), labels] = np.inf
    radius = np.min(ratios, axis=1)
    finite = np.all(np.isfinite(logits), axis=1)
    radius = np.where(finite & (radius > 0), radius, 0.0)
    return np.where(np.isfinite(radius), radius, 0.0)
