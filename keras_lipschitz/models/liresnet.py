"""LiResNet: linear residual convolutions normalized as one operator."""

import keras

from keras_lipschitz.layers import _validation
from keras_lipschitz.layers.activations import GroupSort2
from keras_lipschitz.layers.conv import BjorckConv2D
from keras_lipschitz.layers.conv import SpectralConv2D
from keras_lipschitz.layers.dense import BjorckDense
from keras_lipschitz.layers.dense import FrobeniusDense
from keras_lipschitz.layers.liresnet import LiResConv2D


def LiResNet(
    depth=12,
    width=128,
    num_classes=10,
    input_shape=(32, 32, 3),
    neck_size=4,
    dense_width=512,
    power_iterations=1,
    name=None,
):
    """LiResNet of Hu et al. (NeurIPS 2023; ICLR 2024), 1-Lipschitz.

    The architecture of "Unlocking Deterministic Robustness Certification
    on ImageNet" (Hu, Zou, Wang, Leino, Fredrikson, NeurIPS 2023) and of
    its capacity recipe (ICLR 2024; official code hukkai/liresnet):

    - **stem**: a 3×3 `SpectralConv2D(width)` ("same" padding), then
      `GroupSort2`;
    - **backbone**: `depth` × (`LiResConv2D(3)` → `GroupSort2`), each block
      the linear residual $(x + K\\star x)/\\|I + K\\|$, normalized as one
      operator (MinMax in the paper pairs the two channel halves;
      `GroupSort2` pairs adjacent channels, the same function up to a fixed
      permutation that the next convolution absorbs);
    - **neck** (the paper's `Map2Vec`): a `neck_size`×`neck_size`,
      stride-`neck_size` `BjorckConv2D` — non-overlapping patches, so the
      orthonormal reshaped kernel is exactly norm preserving with no
      correction factor — then `Flatten`, `BjorckDense(dense_width)` and
      `GroupSort2`;
    - **head**: `FrobeniusDense(num_classes, disjoint_neurons=True)`, the
      last-layer normalization (LLN) whose rows have unit norm, so that
      `keras_lipschitz.certify` uses the pairwise certificate
      $\\min_{j\\ne y}(z_y - z_j)/(L_\\phi\\|w_y - w_j\\|)$.

    Every layer reports a guaranteed bound, so `lipschitz_bound(model)` is
    guaranteed; in particular each `LiResConv2D` contributes the float64
    bound of the operator it applies at inference, never the power-iteration
    estimate the papers certify with. Train it with
    `keras_lipschitz.losses.EMMA.for_model(model, epsilon)`, the paper's
    loss.

    Args:
        depth: int >= 1, the number of `LiResConv2D` blocks (12 in the
            paper's CIFAR-10 model).
        width: even int >= 2, the channels of the backbone (512 in the
            paper, 128 for its small models).
        num_classes: int >= 2.
        input_shape: `(H, W, C)` with `H` and `W` divisible by `neck_size`.
        neck_size: int >= 1, the neck's kernel size and stride.
        dense_width: even int >= 2, the units of the neck's dense layer.
        power_iterations: power-iteration steps per training step of every
            normalized layer.
        name: model name (default `"liresnet_{depth}"`).

    Returns:
        A functional `keras.Model` producing logits.

    Example:

    >>> model = LiResNet(depth=2, width=4, dense_width=8,
    ...                  input_shape=(8, 8, 1), num_classes=3)
    >>> tuple(model.output.shape)
    (None, 3)
    """
    depth = _validation.validate_positive_int("depth", depth)
    width = _validation.validate_positive_int("width", width, minimum=2)
    dense_width = _validation.validate_positive_int(
        "dense_width", dense_width, minimum=2
    )
    for arg, value in (("width", width), ("dense_width", dense_width)):
        if value % 2:
            raise ValueError(
                f"`{arg}` must be even: GroupSort2 acts on channel pairs. "
                f"Received: {arg}={value}"
            )
    num_classes = _validation.validate_positive_int(
        "num_classes", num_classes, minimum=2
    )
    neck_size = _validation.validate_positive_int("neck_size", neck_size)
    power_iterations = _validation.validate_positive_int(
        "power_iterations", power_iterations
    )
    input_shape = _validation.image_shape_or_none(input_shape)
    if (
        input_shape is None
        or input_shape[0] % neck_size
        or input_shape[1] % neck_size
    ):
        raise ValueError(
            "`input_shape` must be (H, W, C) with H and W positive multiples "
            f"of `neck_size`={neck_size}. Received: input_shape={input_shape!r}"
        )
    inputs = keras.Input(input_shape)
    x = SpectralConv2D(
        width, 3, padding="same", power_iterations=power_iterations,
        name="stem",
    )(inputs)
    x = GroupSort2(name="stem_act")(x)
    for index in range(1, depth + 1):
        x = LiResConv2D(
            3, power_iterations=power_iterations, name=f"liresconv_{index}"
        )(x)
        x = GroupSort2(name=f"act_{index}")(x)
    x = BjorckConv2D(
        width,
        neck_size,
        strides=neck_size,
        padding="valid",
        name="neck_conv",
    )(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = BjorckDense(dense_width, name="neck_dense")(x)
    x = GroupSort2(name="neck_act")(x)
    outputs = FrobeniusDense(num_classes, disjoint_neurons=True, name="lln")(
        x
    )
    return keras.Model(inputs, outputs, name=name or f"liresnet_{depth}")
