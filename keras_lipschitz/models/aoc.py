"""AOCNet: an orthogonal residual network of adaptive orthogonal convs."""

import keras

from keras_lipschitz.layers import _validation
from keras_lipschitz.layers.activations import GroupSort2
from keras_lipschitz.layers.dense import FrobeniusDense
from keras_lipschitz.layers.normalization import BatchCentering
from keras_lipschitz.layers.orthogonal_conv import AOCConv2D
from keras_lipschitz.layers.pooling import ScaledGlobalL2NormPooling2D
from keras_lipschitz.layers.residual import LipResidual


def AOCNet(
    input_shape=(224, 224, 3),
    num_classes=1000,
    embedding_dim=1024,
    block_depth=2,
    expand_factor=2,
    kernel_size=3,
    groups=8,
    name=None,
):
    """AOCNet of Boissin et al. (ICML 2025), 1-Lipschitz.

    The `AOCNetV1` architecture of "An Adaptive Orthogonal Convolution
    Scheme for Efficient and Flexible CNN Architectures" (Boissin,
    Mamalet, Fel, Picard, Massena, Serrurier, ICML 2025, arXiv 2501.07930;
    orthogonium `model_factory.models_factory.AOCNetV1`), with $e$ =
    `embedding_dim`, every convolution an `AOCConv2D` with zero "same"
    padding and no bias:

    - **stem**: a 7x7 stride-2 conv to $e/16$ channels, `GroupSort2`
      (orthogonium's `MaxMin`, up to a channel permutation),
      `BatchCentering`; a 3x3 stride-2 conv to $e/8$, `GroupSort2`,
      `BatchCentering`;
    - **four stages**, $e/8 \\to e/8 \\to e/4 \\to e/2 \\to e$ channels:
      where the channels change, a stride-2 conv and `BatchCentering`;
      then `block_depth` residual blocks, each
      `LipResidual([x, f(x)])` with $f$ = conv to `expand_factor` times
      the channels (`groups`), `BatchCentering`, `GroupSort2`, conv back
      (`groups`), followed, when `groups > 1`, by a 1x1 conv that mixes
      the groups;
    - **head**: global ℓ2-norm pooling (orthogonium's `LPPool2d(norm 2)`
      over the final 7x7 map at 224x224), `FrobeniusDense(num_classes,
      disjoint_neurons=True, use_bias=False)`, the last-layer
      normalization (orthogonium's `UnitNormLinear`), so that
      `keras_lipschitz.certify` uses the pairwise certificate.

    One difference from orthogonium: the residual combiner is the convex
    `LipResidual` ($\\alpha x + (1-\\alpha)f(x)$, learned $\\alpha$)
    where orthogonium's `PrescaledAdditiveResidual` computes
    $(x + f(\\alpha x))/(1 + |\\alpha|)$; both are 1-Lipschitz for a
    1-Lipschitz $f$, and `lipschitz_bound` composes `LipResidual` exactly.
    `BatchCentering` is a translation at inference (bound 1); certify in
    inference mode. The defaults are orthogonium's (ImageNet); for
    32x32 images the five stride-2 steps end on a 1x1 map.

    Args:
        input_shape: `(H, W, C)`, channels last.
        num_classes: int >= 2.
        embedding_dim: positive multiple of 32, the channels of the last
            stage ($e$).
        block_depth: int >= 1, residual blocks per stage.
        expand_factor: int >= 1, the branch's channel expansion.
        kernel_size: int >= 2, the kernel size of the stage convolutions
            (at least the stride 2 of the downsampling ones).
        groups: int >= 1 dividing $e/8$, the groups of the branch
            convolutions.
        name: model name (default `"aocnet"`).

    Returns:
        A functional `keras.Model` producing logits.

    Example:

    >>> model = AOCNet(input_shape=(8, 8, 1), num_classes=3,
    ...                embedding_dim=64, block_depth=1, groups=2)
    >>> tuple(model.output.shape)
    (None, 3)
    """
    num_classes = _validation.validate_positive_int(
        "num_classes", num_classes, minimum=2
    )
    embedding_dim = _validation.validate_positive_int(
        "embedding_dim", embedding_dim
    )
    if embedding_dim % 32:
        raise ValueError(
            "`embedding_dim` must be a positive multiple of 32 (the stem "
            "has embedding_dim / 16 channels, paired by GroupSort2). "
            f"Received: embedding_dim={embedding_dim}"
        )
    block_depth = _validation.validate_positive_int("block_depth", block_depth)
    expand_factor = _validation.validate_positive_int(
        "expand_factor", expand_factor
    )
    kernel_size = _validation.validate_positive_int(
        "kernel_size", kernel_size, minimum=2
    )
    groups = _validation.validate_positive_int("groups", groups)
    if (embedding_dim // 8) % groups:
        raise ValueError(
            "`groups` must divide embedding_dim / 8 = "
            f"{embedding_dim // 8}, the channels of the first stage. "
            f"Received: groups={groups}"
        )
    input_shape = _validation.image_shape_or_none(input_shape)
    if input_shape is None:
        raise ValueError(
            "`input_shape` must be (H, W, C), channels last, with positive "
            f"sizes. Received: input_shape={input_shape!r}"
        )

    def conv(filters, size, strides=1, conv_groups=1, label=None):
        return AOCConv2D(
            filters,
            size,
            strides=strides,
            groups=conv_groups,
            padding="same",
            data_format="channels_last",
            use_bias=False,
            name=label,
        )

    def centering(label):
        return BatchCentering(axis=-1, name=label)

    inputs = keras.Input(input_shape)
    x = conv(embedding_dim // 16, 7, strides=2, label="stem_conv_1")(inputs)
    x = GroupSort2(name="stem_act_1")(x)
    x = centering("stem_center_1")(x)
    x = conv(embedding_dim // 8, 3, strides=2, label="stem_conv_2")(x)
    x = GroupSort2(name="stem_act_2")(x)
    x = centering("stem_center_2")(x)
    channels = embedding_dim // 8
    for stage, width in enumerate(
        (embedding_dim // 8, embedding_dim // 4, embedding_dim // 2,
         embedding_dim),
        start=1,
    ):
        prefix = f"stage_{stage}"
        if width != channels:
            x = conv(width, kernel_size, strides=2, label=f"{prefix}_down")(x)
            channels = width
        x = centering(f"{prefix}_center")(x)
        for block in range(1, block_depth + 1):
            label = f"{prefix}_block_{block}"
            branch = conv(
                expand_factor * width, kernel_size, conv_groups=groups,
                label=f"{label}_conv_1",
            )(x)
            branch = centering(f"{label}_center")(branch)
            branch = GroupSort2(name=f"{label}_act")(branch)
            if groups > 1 or expand_factor > 1:
                branch = conv(
                    width, kernel_size, conv_groups=groups,
                    label=f"{label}_conv_2",
                )(branch)
            x = LipResidual(name=f"{label}_residual")([x, branch])
            if groups > 1:
                x = conv(width, 1, label=f"{label}_mix")(x)
    x = ScaledGlobalL2NormPooling2D(data_format="channels_last", name="pool")(
        x
    )
    outputs = FrobeniusDense(
        num_classes, disjoint_neurons=True, use_bias=False, name="lln"
    )(x)
    return keras.Model(inputs, outputs, name=name or "aocnet")
