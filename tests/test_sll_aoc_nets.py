"""`models.SLLNet` and `models.AOCNet`: guaranteed bound above measured
slopes after training, certificates attacked after training, save/load,
bad input."""

import keras
import numpy as np
import pytest

import keras_lipschitz
from keras_lipschitz import attacks
from keras_lipschitz import losses
from keras_lipschitz.models import AOCNet
from keras_lipschitz.models import SLLNet
from keras_lipschitz.models.sll import SLL_NET_SIZES
from tests import helpers


_images = helpers.blob_images


def _sll_net():
    return SLLNet(
        size=None, n_conv=2, n_dense=1, width=4, conv_inner_dim=4,
        dense_inner_dim=16, num_classes=3, input_shape=(8, 8, 1),
    )


def _aoc_net():
    return AOCNet(
        input_shape=(8, 8, 1), num_classes=3, embedding_dim=64,
        block_depth=1, groups=2,
    )


BUILDERS = {"sll": _sll_net, "aoc": _aoc_net}


def _slopes(model, x, directions=12, eps=1e-3):
    """Largest ||f(x + eps d) - f(x - eps d)|| / (2 eps) over unit d.

    All perturbed inputs go through one compiled `predict_on_batch`.
    """
    flat = x.reshape(len(x), -1).astype(np.float64)
    rng = np.random.default_rng(1)
    d = rng.normal(size=(directions,) + flat.shape)
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    batch = np.concatenate([flat + eps * d, flat - eps * d]).reshape(
        (-1,) + x.shape[1:]
    )
    out = helpers.to_numpy(model.predict_on_batch(batch.astype("float32")))
    out = out.reshape(2, directions * len(x), -1)
    return float(np.max(np.linalg.norm(out[0] - out[1], axis=-1) / (2 * eps)))


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_trained_net_bound_and_certificates_hold(kind):
    model = BUILDERS[kind]()
    x, y = _images()
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=losses.EMMA.for_model(model, epsilon=0.5),
    )
    model.fit(x, y, epochs=15, batch_size=32, verbose=0)
    # Guaranteed bound: the body (everything before the LLN head) is
    # 1-Lipschitz up to the float32 rounding terms of the layers' bounds,
    # and the model's bound is the body's times the head's.
    bound = keras_lipschitz.lipschitz_bound(model)
    body = keras.Model(model.input, model.layers[-2].output)
    body_bound = keras_lipschitz.lipschitz_bound(body)
    assert 1.0 <= body_bound <= 1.0 + 1e-3
    head = model.get_layer("lln")
    assert bound == pytest.approx(
        body_bound * head.lipschitz_upper_bound(), rel=1e-9
    )
    # ... above the slopes measured after training.
    slope = _slopes(model, x[:16])
    assert 0.0 < slope <= bound * (1 + 1e-3)
    # Certificates (pairwise, LLN head) resist PGD inside the radius.
    radius, name = keras_lipschitz.certify(model, x, y, return_method=True)
    assert name == "lln"
    certified = radius > 0
    assert certified.mean() > 0.3, "too few certified points to test"
    _, success = attacks.pgd_l2(
        model, x[certified], y[certified], 0.999 * radius[certified],
        steps=20,
    )
    assert not np.any(success), f"an attack beat a {kind} certificate"
    _, success = attacks.pgd_l2(
        model, x[certified], y[certified], 4.0 * radius[certified] + 3.0,
        steps=20,
    )
    assert np.any(success), "the attack is too weak to test the certificate"


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_save_and_load_keeps_outputs_and_bound(kind, tmp_path):
    model = BUILDERS[kind]()
    x, _ = _images(n=8)
    # One training call so that running means and AOC power-iteration
    # vectors move away from their initial values.
    model(x, training=True)
    loaded = helpers.save_and_load(model, tmp_path)
    np.testing.assert_allclose(
        helpers.to_numpy(loaded(x, training=False)),
        helpers.to_numpy(model(x, training=False)),
        rtol=1e-5,
        atol=1e-6,
    )
    assert keras_lipschitz.lipschitz_bound(loaded) == pytest.approx(
        keras_lipschitz.lipschitz_bound(model), rel=1e-9
    )


def test_sll_net_presets_are_the_official_sizes():
    model = SLLNet(size="small")
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("SLLConv2D") == 20
    assert kinds.count("SLLDense") == 7
    assert model.get_layer("channel_padding").output.shape[-1] == 45
    dense = model.get_layer("sll_dense_1")
    assert tuple(dense.kernel.shape) == (45 * 8 * 8, 2048)
    assert tuple(model.get_layer("sll_conv_1").kernel.shape) == (3, 3, 45, 5)
    assert SLL_NET_SIZES["medium"] == (30, 10, 60, 2048)
    # Explicit arguments override the preset.
    model = SLLNet(size="small", n_conv=1, n_dense=0, width=8,
                   input_shape=(8, 8, 3))
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("SLLConv2D") == 1 and "SLLDense" not in kinds


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"size": "tiny"}, "size"),
        ({"size": None, "n_dense": 1, "width": 4}, "n_conv"),
        ({"n_conv": -1}, "n_conv"),
        ({"width": 2}, "input_shape"),
        ({"input_shape": (30, 30, 3)}, "input_shape"),
        ({"conv_inner_dim": 0}, "conv_inner_dim"),
        ({"dense_inner_dim": 0}, "dense_inner_dim"),
        ({"num_classes": 1}, "num_classes"),
        ({"pool_size": 0}, "pool_size"),
    ],
)
def test_sll_net_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        SLLNet(**kwargs)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"embedding_dim": 48}, "embedding_dim"),
        ({"block_depth": 0}, "block_depth"),
        ({"expand_factor": 0}, "expand_factor"),
        ({"kernel_size": 1}, "kernel_size"),
        ({"groups": 3}, "groups"),
        ({"num_classes": 1}, "num_classes"),
        ({"input_shape": (32, 32)}, "input_shape"),
    ],
)
def test_aoc_net_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        AOCNet(**kwargs)
