"""`lipschitz_bound` of plain Keras convolutions beyond the basic Conv2D:
Conv1D (causal included), dilation, groups, DepthwiseConv2D,
SeparableConv2D, Conv1DTranspose and Conv2DTranspose (strides, paddings,
output_padding), checked against the exact norm of the real Jacobian
(float64 SVD of the layer's linear map on its built input size)."""

import keras
import numpy as np
import pytest

from keras_lipschitz.certification.composition import layer_lipschitz_bound
from tests import helpers

# (factory, input shape without batch)
CASES = {
    "conv1d_same_s2": (lambda: keras.layers.Conv1D(3, 3, strides=2, padding="same"), (9, 2)),
    "conv1d_valid_dil2": (lambda: keras.layers.Conv1D(3, 3, dilation_rate=2), (10, 2)),
    "conv1d_causal": (lambda: keras.layers.Conv1D(2, 4, padding="causal"), (8, 3)),
    "conv1d_causal_dil3": (lambda: keras.layers.Conv1D(2, 2, padding="causal", dilation_rate=3), (8, 2)),
    "conv1d_groups": (lambda: keras.layers.Conv1D(4, 3, padding="same", groups=2), (7, 4)),
    "conv2d_dil2_same": (lambda: keras.layers.Conv2D(3, 3, dilation_rate=2, padding="same"), (6, 6, 2)),
    "conv2d_dil_valid": (lambda: keras.layers.Conv2D(2, 2, dilation_rate=(2, 1)), (6, 5, 2)),
    "conv2d_groups2": (lambda: keras.layers.Conv2D(4, 3, padding="same", groups=2), (5, 5, 4)),
    "conv2d_groups3_s2": (lambda: keras.layers.Conv2D(3, 3, strides=2, padding="same", groups=3), (6, 6, 3)),
    "depthwise": (lambda: keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same"), (5, 5, 2)),
    "depthwise_s2_valid": (lambda: keras.layers.DepthwiseConv2D(3, strides=2), (7, 7, 3)),
    "separable": (lambda: keras.layers.SeparableConv2D(3, 3, padding="same"), (5, 5, 2)),
    "transpose2d_s2_valid_op1": (lambda: keras.layers.Conv2DTranspose(2, 3, strides=2, output_padding=1), (3, 3, 2)),
    "transpose2d_s2_same": (lambda: keras.layers.Conv2DTranspose(3, 3, strides=2, padding="same"), (3, 4, 2)),
    "transpose2d_s1_same": (lambda: keras.layers.Conv2DTranspose(2, 3, padding="same"), (4, 4, 3)),
    "transpose2d_dil2": (lambda: keras.layers.Conv2DTranspose(2, 2, dilation_rate=2), (4, 4, 2)),
    "transpose1d_s3": (lambda: keras.layers.Conv1DTranspose(2, 4, strides=3, padding="same"), (5, 2)),
}


def _built(name, seed=0):
    factory, shape = CASES[name]
    keras.utils.set_random_seed(seed)
    layer = factory()
    layer.build((None,) + shape)
    # Random weights of mixed signs, bias included (it must not matter).
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.normal(size=w.shape).astype("float32")
                       for w in layer.get_weights()])
    return layer, shape


@pytest.mark.parametrize("name", sorted(CASES))
def test_bound_is_above_the_exact_norm_and_close_to_it(name):
    layer, shape = _built(name)
    sigma = helpers.layer_singular_values(layer, shape)[0]
    bound = layer_lipschitz_bound(layer, (None,) + shape)
    assert bound >= sigma * (1 - 1e-5), (name, bound, sigma)
    # Exact for small inputs (explicit operator matrix), within the border
    # effects of the padded-grid FFT bound for transposed convs, and a
    # product of two exact norms for separable convs.
    slack = 2.0 if "transpose" in name or name == "separable" else 1.0 + 1e-6
    assert bound <= sigma * slack, (name, bound, sigma)


@pytest.mark.parametrize("name", ["conv2d_groups2", "depthwise", "transpose2d_s2_same", "conv1d_causal"])
def test_size_free_bound_holds_for_larger_inputs(name):
    layer, shape = _built(name, seed=1)
    free = layer_lipschitz_bound(layer, None)
    sigma = helpers.layer_singular_values(layer, shape)[0]
    assert free >= sigma * (1 - 1e-5), (name, free, sigma)


def test_channels_first_conv1d_and_transpose():
    for factory, shape in [
        (lambda: keras.layers.Conv1D(2, 3, padding="same", data_format="channels_first"), (3, 7)),
        (lambda: keras.layers.Conv2DTranspose(2, 3, strides=2, data_format="channels_first"), (2, 3, 3)),
    ]:
        layer = factory()
        layer.build((None,) + shape)
        sigma = helpers.layer_singular_values(layer, shape)[0]
        bound = layer_lipschitz_bound(layer, (None,) + shape)
        assert sigma * (1 - 1e-5) <= bound <= 2.0 * sigma
