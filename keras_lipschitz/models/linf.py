"""ℓ∞-distance nets and SortNets (Zhang et al., 2021, 2022)."""

import keras
import numpy as np

from keras_lipschitz.certification import _common
from keras_lipschitz.layers import _validation
from keras_lipschitz.layers.linf import DEFAULT_CHUNK_SIZE
from keras_lipschitz.layers.linf import DISTANCE_LAYERS
from keras_lipschitz.layers.linf import LinfDistDense
from keras_lipschitz.layers.linf import LogitScale
from keras_lipschitz.layers.linf import SortNetDense


def linf_dist_net(
    input_shape,
    num_classes,
    depth=5,
    width=5120,
    neuron="linf",
    q=0.75,
    truncate=10,
    head_units=None,
    p=8.0,
    identity_value=10.0,
    chunk_size=DEFAULT_CHUNK_SIZE,
    seed=None,
    learned_scale=False,
    kernel_initializer=None,
    scale_lr_multiplier=0.2,
    initial_scale=1.0,
    name=None,
):
    """The papers' ℓ∞-distance MLP (optionally SortNet, optionally MLP head).

    `Flatten → (depth − 1) × distance layer(width, mean shift) → last`,
    where the last layer is

    - without a head: a distance layer with `num_classes` units, a bias, no
      mean shift and `negate=True`, so the logits are
      $z = -y_{\\text{last}}$ (each 1-Lipschitz in $\\ell_\\infty$;
      certify with `certify(model, x, y, norm="linf")`, radius $M/2$);
    - with `head_units=H` (SortNet + MLP): a distance layer of `width`
      units with mean shift, then `Dense(H, relu) → Dense(num_classes)`,
      certified by interval bound propagation through the head.

    The papers use depth 5, width 5120 on MNIST (depth 6 on CIFAR-10), SortNet
    $q = 0.75$ on MNIST at $\\varepsilon = 0.3$, and never subsample the
    first layer (the last one is subsampled, as in SortNet's
    `SortMLPModel`).

    With `learned_scale=True` (the papers' `scalar=True`) a
    `keras_lipschitz.layers.LogitScale` identity layer named
    `"logit_scale"` follows the distance layers; it holds the learned
    cross-entropy scale $s$ and changes no output. Train with
    `LinfDistHinge(eps, scale=model.get_layer("logit_scale"))`.

    Args:
        input_shape: shape of one input, e.g. `(28, 28, 1)`.
        num_classes: int >= 2.
        depth: int >= 2, number of distance layers (including the last one
            when there is no head).
        width: int >= 1, units of the hidden distance layers.
        neuron: `"linf"` (`LinfDistDense`) or `"sortnet"` (`SortNetDense`).
        q: SortNet keep probability.
        truncate: SortNet $K$.
        head_units: None, or the hidden width of an MLP head.
        p: initial training $p$.
        identity_value: identity-like initialization value (None to turn
            it off).
        chunk_size: chunk size of the distance layers.
        seed: seed of the SortNet subsets.
        learned_scale: bool, add the `LogitScale` layer.
        kernel_initializer: None (the layers' default,
            $\\mathcal{N}(0, 1)$) or the initializer of every distance
            layer's kernel (before the identity-like values).
        scale_lr_multiplier: the `LogitScale`'s `lr_multiplier`.
        initial_scale: the `LogitScale`'s `initial_scale`.
        name: model name.

    Returns:
        A `keras.Sequential` model returning logits.
    """
    num_classes = _validation.validate_positive_int(
        "num_classes", num_classes, minimum=2
    )
    depth = _validation.validate_positive_int("depth", depth, minimum=2)
    width = _validation.validate_positive_int("width", width)
    neuron = _validation.validate_choice("neuron", neuron, {"linf", "sortnet"})
    if head_units is not None:
        head_units = _validation.validate_positive_int(
            "head_units", head_units
        )
    common = dict(
        p=p,
        identity_value=identity_value,
        chunk_size=chunk_size,
        kernel_initializer=kernel_initializer,
    )

    def distance(units, first, **kwargs):
        if neuron == "sortnet":
            return SortNetDense(
                units,
                q=q,
                truncate=truncate,
                subsample=not first,
                seed=None if seed is None else seed + len(layers),
                **common,
                **kwargs,
            )
        return LinfDistDense(units, **common, **kwargs)

    layers = [keras.Input(shape=tuple(input_shape)), keras.layers.Flatten()]
    hidden = depth - 1 if head_units is None else depth
    for i in range(hidden):
        layers.append(distance(width, first=i == 0))
    if head_units is None:
        layers.append(
            distance(
                num_classes,
                first=False,
                mean_shift=False,
                use_bias=True,
                negate=True,
            )
        )
    if learned_scale:
        layers.append(
            LogitScale(
                lr_multiplier=scale_lr_multiplier,
                initial_scale=initial_scale,
                name="logit_scale",
            )
        )
    if head_units is not None:
        layers.append(keras.layers.Dense(head_units, activation="relu"))
        layers.append(keras.layers.Dense(num_classes))
    return keras.Sequential(layers, name=name)


def recompute_running_means(model, x, batch_size=256):
    """Sets every distance layer's running mean to its exact mean on `x`.

    Layers are processed in order; each mean is that of the layer's
    inference-mode distances ($p = \\infty$, the subtracted shift of the
    earlier layers already recomputed). Call it before evaluating a model
    whose training ended at a finite $p$, or to replace the exponential
    running average by an exact mean over the training set. A constant
    shift does not change any layer's Lipschitz constant, so certificates
    stay sound whatever the means.

    Args:
        model: a built Sequential or functional model whose layers form a
            chain (nested models are flattened).
        x: inputs, e.g. (a sample of) the training set.
        batch_size: batch size of the forward passes.
    """
    x = np.asarray(x, np.float32)
    layers = _common.flat_layers(model)
    batches = [x[i : i + batch_size] for i in range(0, len(x), batch_size)]
    hidden = [keras.ops.convert_to_tensor(b) for b in batches]
    for layer in layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, DISTANCE_LAYERS) and layer.mean_shift:
            total = 0.0
            for h in hidden:
                u = np.asarray(
                    keras.ops.convert_to_numpy(layer.distances(h)), np.float64
                )
                total = total + u.sum(axis=0)
            layer.running_mean.assign((total / len(x)).astype("float32"))
        hidden = [layer(h, training=False) for h in hidden]
