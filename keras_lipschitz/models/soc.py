"""LipConvNet: the all-SOC network of the SOC papers."""

import keras

from keras_lipschitz import layers as lipschitz_layers
from keras_lipschitz.layers import _validation
from keras_lipschitz.layers.soc import DEFAULT_EVAL_TERMS
from keras_lipschitz.layers.soc import DEFAULT_TRAIN_TERMS
from keras_lipschitz.layers.soc import SOCConv2D

# Number of stride-2 blocks: the input side must be divisible by 2**BLOCKS.
BLOCKS = 5
ACTIVATIONS = ("hh1", "maxmin")
HEADS = ("lln", "crc")


def _activation(name, layer_name):
    if name == "hh1":
        return lipschitz_layers.Householder(name=layer_name)
    return lipschitz_layers.GroupSort2(name=layer_name)


def _head(head, num_classes):
    if isinstance(head, keras.layers.Layer):
        return head
    if head == "lln":
        return lipschitz_layers.FrobeniusDense(
            num_classes, disjoint_neurons=True, name="lln"
        )
    head_class = getattr(lipschitz_layers, "CRCLipHead", None)
    if head_class is None:
        raise ValueError(
            "`head`='crc' needs keras_lipschitz.layers.CRCLipHead, which "
            "this installation lacks."
        )
    return head_class(num_classes, name="crc_lip_head")


def LipConvNet(
    depth=5,
    width=32,
    num_classes=10,
    input_shape=(32, 32, 3),
    head="lln",
    activation="hh1",
    train_terms=DEFAULT_TRAIN_TERMS,
    eval_terms=DEFAULT_EVAL_TERMS,
    fast_backward=False,
    kernel_regularizer=None,
    name=None,
):
    """LipConvNet-`depth` of the SOC papers, built from `SOCConv2D`.

    The architecture of Singla & Feizi, "Skew Orthogonal Convolutions"
    (ICML 2021), with the last-layer normalization (LLN) and Householder
    activations of Singla, Singla & Feizi, "Improved deterministic l2
    robustness on CIFAR-10 and CIFAR-100" (ICLR 2022):

    - 5 blocks of `depth / 5` SOC layers, each followed by the activation;
    - in each block, all layers but the last are stride-1 3x3 SOCs with
      the block's channels $c$; the last is a stride-2 SOC
      (space-to-depth, then SOC) with $2c$ output channels (3x3, 1x1 in
      the fifth block). Channels start at `width` (the first layer
      zero-pads the input channels) and double at every block: `width`
      $\\cdot 2^{5}$ features at $H/32 \\times W/32$ at the end;
    - `Flatten`, then the head.

    The backbone (everything before the head) is 1-Lipschitz up to the
    SOC truncation terms; `keras_lipschitz.lipschitz_bound` on it gives the
    guaranteed value, and `keras_lipschitz.certify` on the whole model uses
    the pairwise LLN certificate when the head is linear.

    Inputs are used as given: prepend the data normalization yourself
    (a per-channel std $\\sigma$ multiplies the bound by
    $1/\\min_c\\sigma_c$, which `lipschitz_bound` accounts for if it is a
    `keras.layers.Normalization` or `Rescaling` layer inside the model).

    Args:
        depth: positive multiple of 5 (5, 10, 15, ...; the papers use
            5 to 40).
        width: positive int, the channels of the first block (32 in the
            papers); even when `depth` > 5.
        num_classes: int >= 2.
        input_shape: `(H, W, C)` with `H` and `W` divisible by 32.
        head: `"lln"` (`FrobeniusDense(num_classes,
            disjoint_neurons=True)`), `"crc"` (`CRCLipHead(num_classes)`),
            or a Keras layer instance applied to the flattened features.
        activation: `"hh1"` (`Householder`, ICLR'22) or `"maxmin"`
            (`GroupSort2`, ICML'21). Both pair adjacent channels.
        train_terms, eval_terms: Taylor terms of every `SOCConv2D`
            (identity not counted).
        fast_backward: bool, the NeurIPS'22 fast backward of every
            `SOCConv2D`.
        kernel_regularizer: optional regularizer of every SOC raw kernel
            (the papers use weight decay 5e-4 on the conv weights).
        name: model name (default `"lip_conv_net_{depth}"`).

    Returns:
        A functional `keras.Model` producing logits.

    Example:

    >>> model = LipConvNet(depth=5, width=2, input_shape=(32, 32, 3))
    >>> tuple(model.output.shape)
    (None, 10)
    """
    depth = _validation.validate_positive_int("depth", depth)
    if depth % BLOCKS:
        raise ValueError(
            f"`depth` must be a positive multiple of {BLOCKS} (5 blocks of "
            f"depth/5 layers). Received: depth={depth}"
        )
    width = _validation.validate_positive_int("width", width)
    num_classes = _validation.validate_positive_int(
        "num_classes", num_classes, minimum=2
    )
    try:
        input_shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        input_shape = None
    factor = 2**BLOCKS
    if (
        input_shape is None
        or len(input_shape) != 3
        or min(input_shape) < 1
        or input_shape[0] % factor
        or input_shape[1] % factor
    ):
        raise ValueError(
            "`input_shape` must be (H, W, C) with H and W positive "
            f"multiples of {factor} (5 stride-2 blocks). "
            f"Received: input_shape={input_shape!r}"
        )
    activation = _validation.validate_choice(
        "activation", activation, set(ACTIVATIONS)
    )
    if not isinstance(head, keras.layers.Layer):
        head = _validation.validate_choice("head", head, set(HEADS))
    block_size = depth // BLOCKS
    if block_size > 1 and width % 2:
        raise ValueError(
            "`width` must be even when depth > 5: the stride-1 layers of "
            "the first block have `width` channels and the activations act "
            f"on channel pairs. Received: width={width}, depth={depth}"
        )
    inputs = keras.Input(input_shape)
    x = inputs
    channels = width
    index = 0
    for block in range(BLOCKS):
        for position in range(block_size):
            last = position == block_size - 1
            stride = 2 if last else 1
            kernel_size = 1 if (last and block == BLOCKS - 1) else 3
            index += 1
            x = SOCConv2D(
                channels * stride,
                kernel_size,
                strides=stride,
                train_terms=train_terms,
                eval_terms=eval_terms,
                fast_backward=fast_backward,
                data_format="channels_last",
                kernel_regularizer=kernel_regularizer,
                name=f"soc_{index}",
            )(x)
            x = _activation(activation, f"{activation}_{index}")(x)
        channels *= 2
    x = keras.layers.Flatten(name="flatten")(x)
    outputs = _head(head, num_classes)(x)
    return keras.Model(
        inputs, outputs, name=name or f"lip_conv_net_{depth}"
    )
