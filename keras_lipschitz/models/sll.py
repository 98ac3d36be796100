"""SLL networks: SDP-based Lipschitz residual blocks with an LLN head."""

import keras

from keras_lipschitz.layers import _validation
from keras_lipschitz.layers.dense import FrobeniusDense
from keras_lipschitz.layers.pooling import ScaledAveragePooling2D
from keras_lipschitz.layers.reshaping import ChannelZeroPadding
from keras_lipschitz.layers.sll import SLLConv2D
from keras_lipschitz.layers.sll import SLLDense

# (n_conv, n_dense, width, dense_inner_dim) of the official CIFAR models
# (araujoalexandre/Lipschitz-SLL-Networks, main.py and reproduce_tables.py).
SLL_NET_SIZES = {
    "small": (20, 7, 45, 2048),
    "medium": (30, 10, 60, 2048),
    "large": (50, 10, 90, 2048),
    "xlarge": (70, 15, 120, 2048),
}


def SLLNet(
    size="small",
    num_classes=10,
    input_shape=(32, 32, 3),
    n_conv=None,
    n_dense=None,
    width=None,
    conv_inner_dim=5,
    dense_inner_dim=None,
    pool_size=4,
    name=None,
):
    """The SLL networks of Araujo et al. (ICLR 2023), 1-Lipschitz body.

    "A Unified Algebraic Perspective on Lipschitz Neural Networks"
    (Araujo, Havens, Delattre, Allauzen, Hu, ICLR 2023; official code
    araujoalexandre/Lipschitz-SLL-Networks, `LipschitzNetwork`):

    - **stem**: `ChannelZeroPadding(width)` (the official zero channel
      padding of the input to `width` channels, an isometry);
    - **convolutions**: `n_conv` × `SLLConv2D(3, inner_dim=conv_inner_dim)`
      at full resolution (each block a 1-Lipschitz residual map
      $x - 2K^T\\star(t^{-1}\\odot\\mathrm{ReLU}(K\\star x + b))$);
    - **pooling**: `ScaledAveragePooling2D(pool_size)`, the window sum over
      $\\sqrt{n}$ (the official `AvgPool2d(4, divisor_override=4)`);
    - **dense**: `Flatten`, then `n_dense` ×
      `SLLDense(inner_dim=dense_inner_dim)`;
    - **head**: `FrobeniusDense(num_classes, disjoint_neurons=True)`, the
      last-layer normalization (LLN, unit-norm rows; official
      `LinearNormalized`), so that `keras_lipschitz.certify` uses the
      pairwise certificate $\\min_{j\\ne y}(z_y - z_j)/\\|w_y - w_j\\|$.

    The official sizes (`size`), as (n_conv, n_dense, width,
    dense_inner_dim): small (20, 7, 45, 2048), medium (30, 10, 60, 2048),
    large (50, 10, 90, 2048), xlarge (70, 15, 120, 2048); every one with
    `conv_inner_dim=5`, the value the official code sets for all sizes
    (`reproduce_tables.py` loads the published checkpoints with it). The
    explicit arguments override the preset. Every SLL block reports a
    guaranteed float64 bound (1.0 up to float32 rounding), so
    `lipschitz_bound` of the body is 1 up to rounding. The official code
    subtracts the dataset mean from the input (no division by the
    standard deviation, which would change the radius); do the same
    before the model.

    Args:
        size: `"small"`, `"medium"`, `"large"`, `"xlarge"`, or None (then
            `n_conv`, `n_dense`, `width` and `dense_inner_dim` are all
            required).
        num_classes: int >= 2.
        input_shape: `(H, W, C)`, channels last, with `H` and `W` multiples
            of `pool_size` and `C <= width`.
        n_conv: int >= 0, the number of `SLLConv2D` blocks.
        n_dense: int >= 0, the number of `SLLDense` blocks.
        width: int >= C, the channels of the convolutional blocks.
        conv_inner_dim: positive int, the inner channels of each
            `SLLConv2D`, or None for `width`.
        dense_inner_dim: positive int, the inner units of each `SLLDense`,
            or None for the flattened dimension.
        pool_size: positive int, the pooling window and stride.
        name: model name (default `"sll_{size}"` or `"sll_net"`).

    Returns:
        A functional `keras.Model` producing logits.

    Example:

    >>> model = SLLNet(size=None, n_conv=2, n_dense=1, width=4,
    ...                dense_inner_dim=8, conv_inner_dim=2,
    ...                input_shape=(8, 8, 1), num_classes=3)
    >>> tuple(model.output.shape)
    (None, 3)
    """
    if size is not None:
        if size not in SLL_NET_SIZES:
            raise ValueError(
                f"`size` must be one of {sorted(SLL_NET_SIZES)} or None. "
                f"Received: size={size!r}"
            )
        preset = dict(
            zip(("n_conv", "n_dense", "width", "dense_inner_dim"),
                SLL_NET_SIZES[size])
        )
    else:
        preset = {}
    values = {
        "n_conv": n_conv,
        "n_dense": n_dense,
        "width": width,
        "dense_inner_dim": dense_inner_dim,
    }
    for arg, value in values.items():
        if value is None:
            if arg == "dense_inner_dim" and size is None:
                continue
            if arg not in preset:
                raise ValueError(
                    f"`{arg}` is required when `size` is None. "
                    f"Received: {arg}=None"
                )
            values[arg] = preset[arg]
    n_conv = _validation.validate_positive_int(
        "n_conv", values["n_conv"], minimum=0
    )
    n_dense = _validation.validate_positive_int(
        "n_dense", values["n_dense"], minimum=0
    )
    width = _validation.validate_positive_int("width", values["width"])
    dense_inner_dim = values["dense_inner_dim"]
    if dense_inner_dim is not None:
        dense_inner_dim = _validation.validate_positive_int(
            "dense_inner_dim", dense_inner_dim
        )
    if conv_inner_dim is not None:
        conv_inner_dim = _validation.validate_positive_int(
            "conv_inner_dim", conv_inner_dim
        )
    num_classes = _validation.validate_positive_int(
        "num_classes", num_classes, minimum=2
    )
    pool_size = _validation.validate_positive_int("pool_size", pool_size)
    input_shape = _validation.image_shape_or_none(input_shape)
    if (
        input_shape is None
        or input_shape[0] % pool_size
        or input_shape[1] % pool_size
        or input_shape[2] > width
    ):
        raise ValueError(
            "`input_shape` must be (H, W, C), channels last, with H and W "
            f"positive multiples of `pool_size`={pool_size} and C at most "
            f"`width`={width}. Received: input_shape={input_shape!r}"
        )
    inputs = keras.Input(input_shape)
    x = ChannelZeroPadding(width, name="channel_padding")(inputs)
    for index in range(1, n_conv + 1):
        x = SLLConv2D(
            3,
            inner_dim=conv_inner_dim,
            data_format="channels_last",
            name=f"sll_conv_{index}",
        )(x)
    x = ScaledAveragePooling2D(
        pool_size, data_format="channels_last", name="pool"
    )(x)
    x = keras.layers.Flatten(name="flatten")(x)
    for index in range(1, n_dense + 1):
        x = SLLDense(inner_dim=dense_inner_dim, name=f"sll_dense_{index}")(x)
    outputs = FrobeniusDense(num_classes, disjoint_neurons=True, name="lln")(
        x
    )
    return keras.Model(
        inputs, outputs, name=name or (f"sll_{size}" if size else "sll_net")
    )
