"""Norm-preserving reshaping layers."""

import keras
from keras import ops

from keras_lipschitz.api_export import keras_lipschitz_export
from keras_lipschitz.layers import _validation
from keras_lipschitz.layers._base import OneLipschitzLayer


@keras_lipschitz_export
class ChannelZeroPadding(OneLipschitzLayer):
    """Appends zero channels: $y = [x, 0]$ with `channels` channels in all.

    An isometry ($\\|y - y'\\| = \\|x - x'\\|$), so 1-Lipschitz and
    gradient norm preserving. It widens the input of a residual network
    whose blocks keep the number of channels, as the stem of the SLL
    networks (Araujo et al., ICLR 2023, official `PaddingChannels` in
    "zero" mode) does for the 3 RGB channels.

    Args:
        channels: int, the output channels, at least the input channels.
        axis: the channel axis, -1 (default) or 1 (channels first).
        **kwargs: base layer arguments.

    Input shape:
        Any rank >= 2 with a known channel dimension $c \\le$ `channels`.

    Output shape:
        The input shape with `channels` on `axis`.

    Example:

    >>> import numpy as np
    >>> layer = ChannelZeroPadding(4)
    >>> ops.convert_to_numpy(layer(np.ones((1, 2), "float32"))).tolist()
    [[1.0, 1.0, 0.0, 0.0]]
    """

    def __init__(self, channels, axis=-1, **kwargs):
        super().__init__(**kwargs)
        self.channels = _validation.validate_positive_int("channels", channels)
        if axis not in (-1, 1):
            raise ValueError(
                "`axis` must be -1 (channels last) or 1 (channels first). "
                f"Received: axis={axis!r}"
            )
        self.axis = axis
        self.supports_masking = True

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) < 2 or input_shape[self.axis] is None:
            raise ValueError(
                "ChannelZeroPadding needs inputs of rank >= 2 with a known "
                f"channel dimension on axis {self.axis}. "
                f"Received: input_shape={input_shape}"
            )
        if int(input_shape[self.axis]) > self.channels:
            raise ValueError(
                f"`channels`={self.channels} is smaller than the input's "
                f"{input_shape[self.axis]} channels: the layer only pads. "
                f"Received: input_shape={input_shape}"
            )

    def call(self, inputs):
        rank = len(inputs.shape)
        axis = self.axis % rank
        pads = [(0, 0)] * rank
        pads[axis] = (0, self.channels - int(inputs.shape[axis]))
        return ops.pad(inputs, pads)

    def compute_output_shape(self, input_shape):
        shape = list(input_shape)
        shape[self.axis] = self.channels
        return tuple(shape)

    def get_config(self):
        config = super().get_config()
        config.update({"channels": self.channels, "axis": self.axis})
        return config
