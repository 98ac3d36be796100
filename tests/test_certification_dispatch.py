"""`select_certificate`: which certificate each model gets, and that the
global ℓ2 certificate (the one no other test attacks) resists PGD."""

import keras
import numpy as np
import pytest

import keras_lipschitz
from keras_lipschitz import attacks
from keras_lipschitz import layers
from keras_lipschitz.certification import select_certificate


def _blobs(n=192, dim=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = 2.0 * rng.normal(size=(classes, dim))
    y = rng.integers(0, classes, n)
    x = centers[y] + 0.6 * rng.normal(size=(n, dim))
    return x.astype("float32"), y


def _lipschitz_body(width=16):
    return [
        keras.Input((6,)),
        layers.SpectralDense(width),
        layers.GroupSort2(),
    ]


def _models():
    return {
        "lln": keras.Sequential(_lipschitz_body() + [layers.BjorckDense(3)]),
        # Not linear at the end: the pairwise certificate does not apply.
        "global_l2": keras.Sequential(
            _lipschitz_body()
            + [layers.BjorckDense(3), keras.layers.Activation("tanh")]
        ),
        "plain_mlp": keras.Sequential(
            [keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
             keras.layers.Dense(3)]
        ),
        "binary": keras.Sequential(_lipschitz_body() + [layers.BjorckDense(1)]),
        "crc": keras.Sequential(
            _lipschitz_body() + [layers.CRCLipHead(3, hidden_units=8)]
        ),
        "linf": keras.Sequential(
            [keras.Input((6,)), layers.LinfDistDense(8),
             layers.LinfDistDense(3)]
        ),
        "linf_head": keras.Sequential(
            [keras.Input((6,)), layers.LinfDistDense(8),
             keras.layers.Dense(3)]
        ),
    }


@pytest.mark.parametrize(
    "kind, norm, method, expected",
    [
        ("lln", "l2", "product", "lln"),
        ("lln", "l2", "auto", "lln"),  # GroupSort2 is not LipLT-supported
        ("global_l2", "l2", "auto", "global_l2"),
        ("global_l2", "l2", "product", "global_l2"),
        ("plain_mlp", "l2", "auto", "lln+liplt"),
        ("plain_mlp", "l2", "product", "lln"),
        ("plain_mlp", "l2", "liplt", "liplt"),
        ("binary", "l2", "auto", "binary"),
        ("crc", "l2", "auto", "curvature_head"),
        ("linf", "linf", "auto", "linf_margin"),
        ("linf_head", "linf", "auto", "linf_ibp"),
    ],
)
def test_select_certificate_names_the_certificate(kind, norm, method, expected):
    model = _models()[kind]
    assert select_certificate(model, norm, method).name == expected
    x, y = _blobs(n=16)
    if kind == "binary":
        y = (y > 0).astype("int64")
    radii, name = keras_lipschitz.certify(
        model, x, y, norm=norm, method=method, return_method=True
    )
    assert name == expected
    np.testing.assert_array_equal(
        radii, keras_lipschitz.certify(model, x, y, norm=norm, method=method)
    )
    assert radii.shape == (16,) and np.all(radii >= 0)


def test_combined_certificate_is_the_pairwise_best_of_its_parts():
    x, y = _blobs()
    model = _models()["plain_mlp"]
    model.compile(
        optimizer=keras.optimizers.Adam(0.02),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, y, epochs=10, batch_size=64, verbose=0)
    auto = keras_lipschitz.certify(model, x, y)
    product = keras_lipschitz.certify(model, x, y, method="product")
    liplt = keras_lipschitz.certify(model, x, y, method="liplt")
    # Recompute: per pair the larger radius, then the min over j != y.
    logits = np.asarray(
        model.predict(x, batch_size=256, verbose=0), np.float64
    )
    n = len(x)
    gaps = logits[np.arange(n), y][:, None] - logits
    w = np.asarray(keras.ops.convert_to_numpy(model.layers[-1].kernel),
                   np.float64)
    body = np.linalg.norm(
        np.asarray(keras.ops.convert_to_numpy(model.layers[0].kernel),
                   np.float64), ord=2)
    lln_pair = body * np.linalg.norm(w.T[y][:, None, :] - w.T[None], axis=-1)
    liplt_pair = keras_lipschitz.liplt.liplt_pairwise_bounds(model)[y]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.maximum(gaps / lln_pair, gaps / liplt_pair)
    ratios[np.arange(n), y] = np.inf
    expected = np.maximum(ratios.min(axis=1), 0.0)
    np.testing.assert_allclose(auto, expected, rtol=1e-9)
    assert np.all(auto >= np.maximum(product, liplt))


def test_global_certificate_formula_and_attack():
    x, y = _blobs()
    model = _models()["global_l2"]
    assert select_certificate(model).name == "global_l2"
    model.compile(
        optimizer=keras.optimizers.Adam(0.02),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, y, epochs=30, batch_size=64, verbose=0)
    radius = keras_lipschitz.certify(model, x, y)
    # The same batches as `certify`, so that the float32 logits agree.
    logits = np.asarray(
        model.predict(x, batch_size=256, verbose=0), np.float64
    )
    bound = keras_lipschitz.lipschitz_bound(model)
    others = logits.copy()
    others[np.arange(len(x)), y] = -np.inf
    margin = logits[np.arange(len(x)), y] - others.max(axis=1)
    expected = np.where(margin > 0, margin / (np.sqrt(2.0) * bound), 0.0)
    np.testing.assert_allclose(radius, expected, rtol=1e-12, atol=0)
    certified = radius > 0
    assert certified.mean() > 0.3, "too few certified points to test"
    _, success = attacks.pgd_l2(
        model, x[certified], y[certified], 0.999 * radius[certified],
        steps=30,
    )
    assert not np.any(success), "an attack beat a global certificate"
    _, success = attacks.pgd_l2(
        model, x[certified], y[certified], 4.0 * radius[certified] + 3.0,
        steps=30,
    )
    assert np.any(success), "the attack is too weak to test the certificate"


def test_bad_norm_method_and_output_shape():
    model = _models()["lln"]
    with pytest.raises(ValueError, match="method"):
        select_certificate(model, method="exact")
    with pytest.raises(ValueError, match="norm"):
        select_certificate(model, norm="l1")
    cube = keras.Sequential(
        [keras.Input((6,)), layers.SpectralDense(8),
         keras.layers.Reshape((2, 4))]
    )
    with pytest.raises(ValueError, match="logits of shape"):
        select_certificate(cube)
    with pytest.raises(ValueError, match="keras.Model"):
        select_certificate("not a model")
    with pytest.raises(ValueError, match="LinfDistDense"):
        select_certificate(model, norm="linf")
