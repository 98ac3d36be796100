"""`keras_lipschitz.compat.deel_lip`: deel-lip's API on keras-lipschitz.

- every public name of deel-lip's modules (1.5.0 and its `keras3`
  branch, plus `MulticlassSoftHKR` of 1.5.1) exists, is registered in the
  mapping, has deel-lip 1.5.0's positional order and returns our object
  with deel-lip's argument mapping;
- the values are deel-lip's (its test suite's numbers, or NumPy
  re-implementations of its formulas);
- deel-lip's tutorial model (demo4: SpectralConv2D 16/32 with GroupSort(2),
  ScaledL2NormPooling2D, SpectralDense 64, FrobeniusDense 10,
  MulticlassHKR), written with the compat layer, trains one step, saves,
  loads with identical outputs and exports;
- `docs/migration.md`'s tables are what `docs/gen_migration_table.py`
  renders from the code.
"""

import importlib.util
import math
import pathlib
import warnings

import keras
import numpy as np
import pytest

import keras_lipschitz
from keras_lipschitz import layers as kl_layers
from keras_lipschitz import losses as kl_losses
from keras_lipschitz import metrics as kl_metrics
from keras_lipschitz.compat import deel_lip as lip
from keras_lipschitz.compat.deel_lip import _mapping
from tests import helpers

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Public names of deel-lip's modules (1.5.0 and the keras3 branch;
# MulticlassSoftHKR from deel-lip 1.5.1), read from its source.
DEEL_LIP_NAMES = {
    "layers": [
        "Condensable", "FrobeniusConv2D", "FrobeniusDense", "FullSort",
        "GroupSort", "GroupSort2", "Householder", "InvertibleDownSampling",
        "InvertibleUpSampling", "LipschitzLayer", "MaxMin", "PReLUlip",
        "ScaledAveragePooling2D", "ScaledGlobalAveragePooling2D",
        "ScaledGlobalL2NormPooling2D", "ScaledL2NormPooling2D",
        "SpectralConv2D", "SpectralConv2DTranspose", "SpectralDense",
    ],
    "layers.unconstrained": ["PadConv2D"],
    "activations": [
        "FullSort", "GroupSort", "GroupSort2", "Householder", "MaxMin",
        "PReLUlip",
    ],
    "losses": [
        "CategoricalHinge", "HKR", "HingeMargin", "KR", "MultiMargin",
        "MulticlassHKR", "MulticlassHinge", "MulticlassKR",
        "MulticlassSoftHKR", "TauBinaryCrossentropy",
        "TauCategoricalCrossentropy", "TauSparseCategoricalCrossentropy",
        "hinge_margin", "multiclass_hinge",
    ],
    "metrics": [
        "BinaryProvableAvgRobustness", "BinaryProvableRobustAccuracy",
        "CategoricalProvableAvgRobustness",
        "CategoricalProvableRobustAccuracy",
    ],
    "callbacks": [
        "CondenseCallback", "LossParamLog", "LossParamScheduler",
        "MonitorCallback",
    ],
    "constraints": [
        "AutoWeightClipConstraint", "FrobeniusConstraint",
        "SpectralConstraint", "WeightClipConstraint",
    ],
    "regularizers": [
        "Lorth", "Lorth2D", "LorthRegularizer", "OrthDenseRegularizer",
    ],
    "initializers": ["SpectralInitializer"],
    "normalizers": [
        "bjorck_normalization", "get_conv_operators",
        "reshaped_kernel_orthogonalization", "set_stop_grad_spectral",
        "set_swap_memory", "spectral_normalization",
        "spectral_normalization_conv",
    ],
    "utils": [
        "evaluate_lip_const", "evaluate_lip_const_gen", "l2_normalize",
        "process_labels_for_multi_gpu",
    ],
    "compute_layer_sv": ["compute_layer_sv", "compute_model_sv"],
    "model": ["Model", "Sequential", "vanillaModel"],
}


def _module(name):
    module = lip
    for part in name.split("."):
        module = getattr(module, part)
    return module


def test_every_deel_lip_name_is_present_and_registered():
    for module_name, names in DEEL_LIP_NAMES.items():
        module = _module(module_name)
        for name in names:
            assert hasattr(module, name), f"lip.{module_name}.{name}"
            assert (module_name, name) in _mapping.REGISTRY, (module_name, name)
    registered = {key for key in _mapping.REGISTRY}
    expected = {(m, n) for m, names in DEEL_LIP_NAMES.items() for n in names}
    assert registered == expected
    assert lip.Sequential is lip.model.Sequential
    missing = sorted(
        name for (_, name), entry in _mapping.REGISTRY.items()
        if entry["status"] == "missing"
    )
    assert missing == []


# deel-lip 1.5.0's positional parameters (read from its source), up to
# `**kwargs`; our keyword-only extras (`lora_rank`, `groups`) come after.
DEEL_LIP_150_POSITIONAL = {
    "SpectralDense": (
        "units", "activation", "use_bias", "kernel_initializer",
        "bias_initializer", "kernel_regularizer", "bias_regularizer",
        "activity_regularizer", "kernel_constraint", "bias_constraint",
        "k_coef_lip", "eps_spectral", "eps_bjorck", "beta_bjorck",
        "maxiter_spectral", "maxiter_bjorck",
    ),
    "FrobeniusDense": (
        "units", "activation", "use_bias", "kernel_initializer",
        "bias_initializer", "kernel_regularizer", "bias_regularizer",
        "activity_regularizer", "kernel_constraint", "bias_constraint",
        "disjoint_neurons", "k_coef_lip",
    ),
    "SpectralConv2D": (
        "filters", "kernel_size", "strides", "padding", "data_format",
        "dilation_rate", "activation", "use_bias", "kernel_initializer",
        "bias_initializer", "kernel_regularizer", "bias_regularizer",
        "activity_regularizer", "kernel_constraint", "bias_constraint",
        "k_coef_lip", "eps_spectral", "eps_bjorck", "beta_bjorck",
        "maxiter_spectral", "maxiter_bjorck",
    ),
    "FrobeniusConv2D": (
        "filters", "kernel_size", "strides", "padding", "data_format",
        "dilation_rate", "activation", "use_bias", "kernel_initializer",
        "bias_initializer", "kernel_regularizer", "bias_regularizer",
        "activity_regularizer", "kernel_constraint", "bias_constraint",
        "k_coef_lip",
    ),
    "SpectralConv2DTranspose": (
        "filters", "kernel_size", "strides", "padding", "output_padding",
        "data_format", "dilation_rate", "activation", "use_bias",
        "kernel_initializer", "bias_initializer", "kernel_regularizer",
        "bias_regularizer", "activity_regularizer", "kernel_constraint",
        "bias_constraint", "k_coef_lip", "eps_spectral", "eps_bjorck",
        "beta_bjorck", "maxiter_spectral", "maxiter_bjorck",
    ),
}


def test_layers_keep_deel_lip_150_positional_order():
    import inspect

    for name, expected in DEEL_LIP_150_POSITIONAL.items():
        parameters = inspect.signature(getattr(lip.layers, name)).parameters
        positional = tuple(
            p.name for p in parameters.values()
            if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        )
        assert positional == expected, name
    # Positional calls as written for deel-lip 1.5.0 land where they should.
    conv_t = lip.layers.SpectralConv2DTranspose(
        4, 3, 2, "same", None, "channels_first"
    )
    assert conv_t.data_format == "channels_first"
    dense = lip.layers.SpectralDense(
        4, None, True, None, "zeros", None, None, None, None, None, 2.0
    )
    assert dense.lipschitz == 2.0
    conv = lip.layers.SpectralConv2D(4, 3, 1, "same", None, 1, "relu")
    assert conv.activation is keras.activations.relu
    frob = lip.layers.FrobeniusDense(
        4, None, True, None, "zeros", None, None, None, None, None, False, 3.0
    )
    assert frob.lipschitz == 3.0 and not frob.disjoint_neurons
    # The keras3 branch's extras, by keyword.
    with pytest.raises(ValueError, match="groups"):
        lip.layers.SpectralConv2D(4, 3, groups=2)
    with pytest.raises(ValueError, match="lora_rank"):
        lip.layers.SpectralDense(4, lora_rank=2)


def test_deel_lip_submodules_version_and_fixed_group_sizes():
    from keras_lipschitz.compat.deel_lip.layers.base_layer import (
        LipschitzLayer,
    )
    from keras_lipschitz.compat.deel_lip.layers.convolutional import (
        SpectralConv2DTranspose,
    )
    from keras_lipschitz.compat.deel_lip.layers.dense import SpectralDense
    from keras_lipschitz.compat.deel_lip.layers.pooling import (
        InvertibleUpSampling,
    )

    assert SpectralDense is lip.layers.SpectralDense
    assert SpectralConv2DTranspose is lip.layers.SpectralConv2DTranspose
    assert InvertibleUpSampling is lip.layers.InvertibleUpSampling
    assert LipschitzLayer is lip.activations.LipschitzLayer
    assert lip.__version__ == "1.5.0"
    # deel-lip's configs carry the fixed group size `n`.
    assert isinstance(lip.layers.GroupSort2(n=2), kl_layers.GroupSort2)
    assert isinstance(lip.layers.FullSort(n=None), kl_layers.FullSort)
    with pytest.raises(ValueError, match="n=3"):
        lip.layers.GroupSort2(n=3)
    with pytest.raises(ValueError, match="n=4"):
        lip.layers.FullSort(n=4)


def test_migration_table_is_generated_from_the_code():
    spec = importlib.util.spec_from_file_location(
        "gen_migration_table", ROOT / "docs" / "gen_migration_table.py"
    )
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    text = (ROOT / "docs" / "migration.md").read_text(encoding="utf-8")
    assert generator.updated_text(text) == text, (
        "docs/migration.md is stale: run python docs/gen_migration_table.py"
    )
    for (module, name) in _mapping.REGISTRY:
        if module != "activations":
            assert f"| `{name}` |" in text


# ---------------------------------------------------------------- layers


def test_layer_factories_return_our_layers_with_deel_lip_arguments():
    dense = lip.layers.SpectralDense(
        8, k_coef_lip=2.0, beta_bjorck=0.4, maxiter_bjorck=7, eps_spectral=1e-6
    )
    assert type(dense) is kl_layers.BjorckDense
    assert (dense.lipschitz, dense.bjorck_beta, dense.bjorck_iterations) == (2.0, 0.4, 7)
    assert type(lip.layers.SpectralDense(8, eps_bjorck=None)) is kl_layers.SpectralDense
    conv = lip.layers.SpectralConv2D(4, (3, 3), k_coef_lip=0.5)
    assert type(conv) is kl_layers.BjorckConv2D and conv.lipschitz == 0.5
    assert type(
        lip.layers.SpectralConv2D(4, 3, eps_bjorck=None)
    ) is kl_layers.SpectralConv2D
    frob = lip.layers.FrobeniusDense(3, disjoint_neurons=False, k_coef_lip=3.0)
    assert type(frob) is kl_layers.FrobeniusDense
    assert (frob.disjoint_neurons, frob.lipschitz) == (False, 3.0)
    assert type(lip.layers.FrobeniusConv2D(2, 3)) is kl_layers.FrobeniusConv2D
    assert type(lip.activations.GroupSort(n=None)) is kl_layers.FullSort
    assert type(lip.activations.GroupSort(2)) is kl_layers.GroupSort2
    assert lip.activations.GroupSort(4).group_size == 4
    assert lip.layers.MaxMin(data_format="channels_first").axis == 1
    assert lip.layers.GroupSort2(k_coef_lip=2.0).lipschitz == 2.0
    householder = lip.layers.Householder()
    assert householder.pairing == "halves" and householder.lipschitz == 1.0
    with pytest.warns(UserWarning, match="ignores k_coef_lip"):
        assert lip.layers.Householder(k_coef_lip=2.0).lipschitz == 1.0
    down = lip.layers.InvertibleDownSampling((2, 2))
    assert down.channel_order == "pixel_unshuffle"
    assert down.data_format == "channels_last"
    pad = lip.layers.unconstrained.PadConv2D(2, 3, padding="CIRCULAR")
    assert type(pad) is kl_layers.PadConv2D and pad.padding == "circular"
    for bad in (
        lambda: lip.layers.SpectralDense(4, lora_rank=2),
        lambda: lip.layers.SpectralDense(4, eps_spectral=0.0),
        lambda: lip.layers.SpectralConv2D(4, 3, dilation_rate=2),
        lambda: lip.layers.SpectralConv2D(4, 3, groups=2),
        lambda: lip.layers.Householder(data_format="channels_first"),
    ):
        with pytest.raises(ValueError):
            bad()
    assert isinstance(dense, lip.layers.LipschitzLayer)
    assert isinstance(dense, lip.layers.Condensable)
    assert isinstance(lip.layers.GroupSort2(), lip.layers.LipschitzLayer)
    assert not isinstance(keras.layers.Dense(2), lip.layers.LipschitzLayer)


def np_deel_l2_pool(x, pool, eps, k):
    """deel-lip: k sqrt(n) sqrt(mean of the squared window + eps)."""
    b, h, w, c = x.shape
    p_h, p_w = pool
    windows = x[:, : h // p_h * p_h, : w // p_w * p_w].reshape(
        b, h // p_h, p_h, w // p_w, p_w, c
    )
    mean = np.mean(windows**2, axis=(2, 4))
    return k * np.sqrt(p_h * p_w) * np.sqrt(mean + eps)


def test_pooling_reproduces_deel_lip_formulas():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 6, 4, 3)).astype("float32")
    x[0, :2, :2] = 0.0  # a zero window, where epsilon matters
    for pool, eps, k in (((2, 2), 1e-6, 1.0), ((3, 2), 0.5, 2.0)):
        layer = lip.layers.ScaledL2NormPooling2D(
            pool_size=pool, eps_grad_sqrt=eps, k_coef_lip=k,
            data_format="channels_last",
        )
        np.testing.assert_allclose(
            helpers.to_numpy(layer(x)),
            np_deel_l2_pool(x.astype(np.float64), pool, eps, k),
            rtol=1e-5,
        )
    layer = lip.layers.ScaledGlobalL2NormPooling2D(
        k_coef_lip=2.0, eps_grad_sqrt=0.1, data_format="channels_last"
    )
    np.testing.assert_allclose(
        helpers.to_numpy(layer(x)),
        2.0 * np.sqrt(np.sum(x.astype(np.float64) ** 2, axis=(1, 2)) + 0.1),
        rtol=1e-5,
    )
    layer = lip.layers.ScaledAveragePooling2D(
        pool_size=(2, 2), k_coef_lip=3.0, data_format="channels_last"
    )
    windows = x.reshape(2, 3, 2, 2, 2, 3).astype(np.float64)
    np.testing.assert_allclose(
        helpers.to_numpy(layer(x)), 3.0 * 2.0 * windows.mean(axis=(2, 4)), rtol=1e-5
    )
    layer = lip.layers.ScaledGlobalAveragePooling2D(
        k_coef_lip=0.5, data_format="channels_last"
    )
    np.testing.assert_allclose(
        helpers.to_numpy(layer(x)),
        0.5 * math.sqrt(24) * x.astype(np.float64).mean(axis=(1, 2)),
        rtol=1e-5,
    )


def test_householder_and_maxmin_match_deel_lip_formulas():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 5, 8)).astype("float32")
    theta = rng.uniform(0, 2 * np.pi, size=4).astype("float32")
    layer = lip.layers.Householder(
        theta_initializer=keras.initializers.Constant(theta)
    )
    out = helpers.to_numpy(layer(x))
    # deel-lip's formula, halves pairing.
    z1, z2 = x[..., :4].astype(np.float64), x[..., 4:].astype(np.float64)
    t = theta.astype(np.float64)
    selector = z1 * np.sin(t / 2) - z2 * np.cos(t / 2)
    a = np.where(selector <= 0, z1, z1 * np.cos(t) + z2 * np.sin(t))
    b = np.where(selector <= 0, z2, z1 * np.sin(t) - z2 * np.cos(t))
    np.testing.assert_allclose(out, np.concatenate([a, b], -1), atol=1e-5)
    maxmin = lip.layers.MaxMin(k_coef_lip=2.0)
    np.testing.assert_allclose(
        helpers.to_numpy(maxmin(x)),
        2.0 * np.concatenate([np.maximum(x, 0), np.maximum(-x, 0)], -1),
        atol=1e-6,
    )


# ------------------------------------------------------- losses, metrics


def test_losses_and_metrics_use_deel_lip_names_defaults_and_values():
    y_true = np.eye(3)[[0, 0, 0, 1, 1, 2]]
    y_pred = np.float32(
        [[2, 0.2, -0.5], [-1, -1.2, 0.3], [0.8, 2, 0], [0, 1, -0.5],
         [2.4, -0.4, -1.1], [-0.1, -1.7, 0.6]]
    )
    kr = lip.losses.MulticlassKR(reduction="auto")
    assert kr.name == "MulticlassKR" and kr.reduction == "sum_over_batch_size"
    np.testing.assert_allclose(float(kr(y_true, y_pred)), 761 / 1800, rtol=1e-5)
    hkr = lip.losses.MulticlassHKR(alpha=5.0, min_margin=2.0)
    np.testing.assert_allclose(float(hkr(y_true, y_pred)), 1071 / 200, rtol=1e-5)
    soft = lip.losses.MulticlassSoftHKR(alpha=5.0, min_margin=0.2)
    np.testing.assert_allclose(float(soft(y_true, y_pred)), 1.0897621, rtol=1e-5)
    assert isinstance(soft, kl_losses.MulticlassSoftHKR)
    y1 = np.array([1.0, 1, 1, 0, 0, 0])[:, None]
    f1 = np.array([0.5, 1.5, -0.5, -0.5, -1.5, 0.5], "float32")[:, None]
    np.testing.assert_allclose(float(lip.losses.KR()(y1, f1)), 1.0, rtol=1e-6)
    np.testing.assert_allclose(
        float(lip.losses.HingeMargin(min_margin=2.0)(y1, f1)), 4 / 6, rtol=1e-6
    )
    np.testing.assert_allclose(
        float(lip.losses.TauBinaryCrossentropy(2.0)(y1, f1)), 0.279185, rtol=1e-5
    )
    assert lip.losses.CategoricalHinge(1.1).min_margin == 1.1
    with pytest.raises(TypeError):
        lip.losses.CategoricalHinge()  # required in deel-lip
    # multi_gpu=True (labels from process_labels_for_multi_gpu): see
    # tests/test_deel_lip_suite_gaps.py.

    # Metrics: deel-lip's default disjoint_neurons=True is margin / (2 L).
    accuracy = lip.metrics.CategoricalProvableRobustAccuracy(epsilon=0.3)
    assert isinstance(accuracy, kl_metrics.CertifiedAccuracy)
    assert accuracy.norm == "linf" and accuracy.name == "CategoricalProvableRobustAccuracy"
    radius = lip.metrics.CategoricalProvableAvgRobustness(
        lip_const=2.0, disjoint_neurons=False, negative_robustness=True
    )
    radius.update_state(y_true, y_pred)
    y64 = y_pred.astype(np.float64)
    labels = np.argmax(y_true, -1)
    margin = y64[np.arange(6), labels] - np.where(y_true > 0, -np.inf, y64).max(-1)
    np.testing.assert_allclose(
        float(radius.result()), np.mean(margin / (2.0 * math.sqrt(2))), rtol=1e-5
    )
    binary = lip.metrics.BinaryProvableAvgRobustness(lip_const=2.0)
    binary.update_state(y1, f1)
    s = np.where(y1 > 0, 1.0, -1.0)
    np.testing.assert_allclose(
        float(binary.result()), np.mean(np.maximum(s * f1, 0) / 2.0), rtol=1e-6
    )


def test_loss_functions_and_metric_reduction_follow_deel_lip():
    # deel-lip's functions: sign = where(y > 0, 1, -1),
    # hinge = relu(m / 2 - sign f), the positives times (C - 1) in the
    # multiclass one, mean over the last axis.
    rng = np.random.default_rng(4)
    f = rng.normal(size=(6, 3)).astype("float32")
    labels = rng.integers(0, 3, size=6)
    for low in (0.0, -1.0):
        one_hot = np.where(np.eye(3)[labels] > 0, 1.0, low)
        sign = np.where(one_hot > 0, 1.0, -1.0)
        hinge = np.maximum(0.7 / 2 - sign * f.astype(np.float64), 0)
        np.testing.assert_allclose(
            helpers.to_numpy(lip.losses.hinge_margin(one_hot, f, 0.7)),
            hinge.mean(-1), rtol=1e-5,
        )
        weighted = np.where(sign > 0, 2.0 * hinge, hinge)
        np.testing.assert_allclose(
            helpers.to_numpy(lip.losses.multiclass_hinge(one_hot, f, 0.7)),
            weighted.mean(-1), rtol=1e-5,
        )
    with pytest.raises(TypeError):
        lip.losses.hinge_margin(one_hot, f)  # min_margin is required
    # A Keras metric reports the mean: other reductions raise.
    for metric in (
        lip.metrics.CategoricalProvableRobustAccuracy,
        lip.metrics.BinaryProvableRobustAccuracy,
        lip.metrics.CategoricalProvableAvgRobustness,
        lip.metrics.BinaryProvableAvgRobustness,
    ):
        assert metric(reduction="auto") is not None
        with pytest.raises(ValueError, match="reduction"):
            metric(reduction="none")


def test_constraints_regularizers_initializers_map_deel_lip_arguments():
    w = np.random.default_rng(2).normal(size=(4, 5)).astype("float32")
    clip = helpers.to_numpy(lip.constraints.AutoWeightClipConstraint(scale=5.0)(w))
    np.testing.assert_allclose(np.abs(clip).max(), 1 / (5 * math.sqrt(20)), rtol=1e-6)
    np.testing.assert_allclose(
        helpers.to_numpy(lip.constraints.WeightClipConstraint(c=0.1)(w)),
        np.clip(w, -0.1, 0.1),
    )
    frob = helpers.to_numpy(lip.constraints.FrobeniusConstraint()(w))
    np.testing.assert_allclose(frob, w / (np.linalg.norm(w) + 1e-7), rtol=1e-5)
    spectral = helpers.to_numpy(lip.constraints.SpectralConstraint(k_coef_lip=2.0)(w))
    np.testing.assert_allclose(helpers.singular_values(spectral), 2.0, rtol=1e-3)
    regul = lip.regularizers.OrthDenseRegularizer(lambda_orth=0.5)
    assert regul.factor == 0.5
    assert lip.regularizers.LorthRegularizer(lambda_lorth=0.1, stride=2).factor == 0.1
    with pytest.raises(NotImplementedError):
        lip.regularizers.LorthRegularizer(dim=1)
    # deel-lip's abstract base: not instantiable, Lorth2D is one.
    with pytest.raises(TypeError):
        lip.regularizers.Lorth(2)
    assert isinstance(lip.regularizers.Lorth2D(), lip.regularizers.Lorth)
    assert issubclass(lip.regularizers.Lorth2D, lip.regularizers.Lorth)
    init = lip.initializers.SpectralInitializer(k_coef_lip=3.0)
    s = helpers.singular_values(helpers.to_numpy(init((6, 4))))
    np.testing.assert_allclose(s, 3.0, rtol=1e-4)


def test_normalizers_with_deel_lip_signatures():
    rng = np.random.default_rng(3)
    kernel = rng.normal(size=(15, 32)).astype("float32")
    exact = np.linalg.norm(kernel.astype(np.float64), 2)
    w_bar, u, sigma = lip.normalizers.spectral_normalization(
        kernel, None, eps=1e-3, maxiter=100
    )
    assert tuple(sigma.shape) == (1, 1)
    np.testing.assert_allclose(float(helpers.to_numpy(sigma)[0, 0]), exact, rtol=1e-4)
    np.testing.assert_allclose(
        helpers.to_numpy(w_bar), kernel / (float(helpers.to_numpy(sigma)[0, 0]) + 1e-3), rtol=1e-5
    )
    wbar = lip.normalizers.bjorck_normalization(kernel / exact, maxiter=30)
    np.testing.assert_allclose(
        helpers.singular_values(helpers.to_numpy(wbar)), 1.0, atol=1e-4
    )
    conv_kernel = rng.normal(size=(5, 5, 6, 4)).astype("float32")
    w_bar, _, _ = lip.normalizers.reshaped_kernel_orthogonalization(
        conv_kernel, None, 0.5, maxiter_spectral=100, maxiter_bjorck=30
    )
    assert tuple(w_bar.shape) == conv_kernel.shape
    np.testing.assert_allclose(
        helpers.singular_values(helpers.to_numpy(w_bar).reshape(-1, 4)), 0.5, rtol=1e-3
    )
    kernel = rng.normal(size=(3, 3, 2, 4)).astype("float32")
    for conv_first, stride in ((True, 1), (True, 2), (False, 1), (False, 2)):
        if conv_first:
            u = rng.normal(size=(1, 6, 6, 2)).astype("float32")
            size = (6, 6)
        else:
            u = rng.normal(size=(1, 3, 3, 4)).astype("float32")
            size = (3 * stride, 3 * stride)
        _, _, sigma = lip.normalizers.spectral_normalization_conv(
            kernel, u, stride=stride, conv_first=conv_first, eps=1e-6, maxiter=300
        )
        exact = np.linalg.norm(
            keras_lipschitz.bounds.conv_operator_matrix(
                kernel, size, (stride, stride), "same"
            ),
            2,
        )
        np.testing.assert_allclose(float(helpers.to_numpy(sigma)), exact, rtol=1e-3)
    with pytest.raises(ValueError):
        lip.normalizers.set_stop_grad_spectral(False)
    lip.normalizers.set_swap_memory(False)
    assert lip.normalizers.SWAP_MEMORY is False
    lip.normalizers.set_swap_memory(True)


def test_get_conv_operators_are_adjoint_pairs():
    # <A u, v> = <u, A* v>, and A is the convolution (or its transpose).
    rng = np.random.default_rng(5)
    kernel = rng.normal(size=(3, 3, 2, 4)).astype("float32")
    for conv_first, stride in ((True, 1), (True, 2), (False, 2)):
        if conv_first:
            u = rng.normal(size=(1, 6, 6, 2)).astype("float32")
        else:
            u = rng.normal(size=(1, 3, 3, 4)).astype("float32")
        forward, adjoint = lip.normalizers.get_conv_operators(
            kernel, u.shape, stride=float(stride), conv_first=conv_first
        )
        a_u = helpers.to_numpy(forward(u)).astype(np.float64)
        v = rng.normal(size=a_u.shape).astype("float32")
        a_v = helpers.to_numpy(adjoint(v)).astype(np.float64)
        assert a_v.shape == u.shape
        np.testing.assert_allclose(
            np.sum(a_u * v), np.sum(u * a_v), rtol=1e-4
        )
        size = u.shape[1:3] if conv_first else tuple(
            d * stride for d in u.shape[1:3]
        )
        matrix = keras_lipschitz.bounds.conv_operator_matrix(
            kernel, size, (stride, stride), "same"
        )
        if conv_first:
            expected = matrix @ u.reshape(-1).astype(np.float64)
        else:
            expected = matrix.T @ u.reshape(-1).astype(np.float64)
        np.testing.assert_allclose(
            a_u.reshape(-1), expected, rtol=1e-4, atol=1e-5
        )
    with pytest.raises(ValueError, match="stride"):
        lip.normalizers.get_conv_operators(kernel, u.shape, stride=1.5)


def test_loss_param_scheduler_interpolates_per_batch():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(32, 4)).astype("float32")
    y = np.eye(3)[rng.integers(0, 3, 32)].astype("float32")
    model = keras.Sequential(
        [keras.Input((4,)), kl_layers.BjorckDense(3)]
    )
    loss = lip.losses.MulticlassHKR(alpha=1.0)
    model.compile("sgd", loss=loss)
    scheduler = lip.callbacks.LossParamScheduler("alpha", fp=[1.0, 4.0], xp=[0, 2])
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[scheduler])
    # Batches 0..3 set alpha = interp(step, [0, 2], [1, 4]): 1, 2.5, 4, 4.
    assert loss.alpha == 4.0
    log = lip.callbacks.LossParamLog("alpha")
    assert isinstance(log, keras_lipschitz.callbacks.LossParamLog)
    assert isinstance(lip.callbacks.CondenseCallback(), keras.callbacks.Callback)
    monitor = lip.callbacks.MonitorCallback(["a"], "/tmp", target="wbar")
    assert monitor.target == "effective"


# ------------------------------------------------------- model, tutorial


def tutorial_model(k_coef_lip=1.0):
    """deel-lip's demo4 network, through the compat layer."""
    return lip.model.Sequential(
        [
            keras.Input(shape=(28, 28, 1)),
            lip.layers.SpectralConv2D(
                filters=16,
                kernel_size=(3, 3),
                activation=lip.activations.GroupSort(2),
                use_bias=True,
                kernel_initializer="orthogonal",
            ),
            lip.layers.ScaledL2NormPooling2D(pool_size=(2, 2), data_format="channels_last"),
            lip.layers.SpectralConv2D(
                filters=32,
                kernel_size=(3, 3),
                activation=lip.activations.GroupSort(2),
                use_bias=True,
                kernel_initializer="orthogonal",
            ),
            lip.layers.ScaledL2NormPooling2D(pool_size=(2, 2), data_format="channels_last"),
            keras.layers.Flatten(),
            lip.layers.SpectralDense(
                64,
                activation=lip.activations.GroupSort(2),
                use_bias=True,
                kernel_initializer="orthogonal",
            ),
            lip.layers.FrobeniusDense(
                10, activation=None, use_bias=False, kernel_initializer="orthogonal"
            ),
        ],
        k_coef_lip=k_coef_lip,
        name="hkr_model",
    )


def test_tutorial_model_trains_saves_loads_and_exports(tmp_path):
    rng = np.random.default_rng(5)
    x = rng.uniform(size=(16, 28, 28, 1)).astype("float32")
    y = np.eye(10)[rng.integers(0, 10, 16)].astype("float32")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "not a 1-Lipschitz layer" warning
        model = tutorial_model()
    model.compile(
        loss=lip.losses.MulticlassHKR(alpha=100, min_margin=0.25),
        optimizer=keras.optimizers.Adam(1e-3),
        metrics=["accuracy", lip.losses.MulticlassKR(),
                 lip.metrics.CategoricalProvableAvgRobustness()],
    )
    before = helpers.to_numpy(model.predict(x, verbose=0))
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    after = helpers.to_numpy(model.predict(x, verbose=0))
    assert np.abs(after - before).max() > 1e-6  # one step changed the model
    # Every layer but the last is 1-Lipschitz; the last (disjoint neurons)
    # has unit columns.
    body = keras.Model(model.inputs, model.layers[-2].output)
    assert keras_lipschitz.lipschitz_bound(body) <= 1.0 + 1e-4
    columns = np.linalg.norm(model.layers[-1].effective_kernel(), axis=0)
    np.testing.assert_allclose(columns, 1.0, rtol=1e-5)

    path = str(tmp_path / "tutorial.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is lip.model.Sequential and loaded.k_coef_lip == 1.0
    np.testing.assert_array_equal(helpers.to_numpy(loaded.predict(x, verbose=0)), after)

    vanilla = loaded.vanilla_export()
    kinds = [type(layer).__name__ for layer in vanilla.layers]
    assert kinds[0] == "Conv2D" and kinds[-1] == "Dense" and kinds.count("Conv2D") == 2
    np.testing.assert_allclose(
        helpers.to_numpy(vanilla.predict(x, verbose=0)), after, atol=1e-5
    )
    np.testing.assert_allclose(
        helpers.to_numpy(lip.vanillaModel(model).predict(x, verbose=0)), after, atol=1e-5
    )
    svs = lip.compute_layer_sv.compute_model_sv(model)
    assert [name for name, _ in svs] == [layer.name for layer in model.layers]
    for name, (low, high) in svs[:-1]:
        if high is not None:
            assert high <= 1.0 + 1e-5, name


def test_sequential_spreads_k_coef_lip_like_deel_lip(tmp_path):
    model = lip.model.Sequential(
        [
            keras.Input((4, 4, 2)),
            lip.layers.SpectralConv2D(4, 3),
            lip.layers.Householder(),
            lip.layers.ScaledAveragePooling2D(),
            keras.layers.Flatten(),
            lip.layers.SpectralDense(3),
        ],
        k_coef_lip=8.0,
    )
    # Four deel-lip Lipschitz layers: 8^(1/4) each; Householder's is unused.
    share = 8.0 ** 0.25
    conv, householder, pool, _, dense = model.layers
    assert (conv.lipschitz, pool.lipschitz, dense.lipschitz) == (share, share, share)
    assert householder.lipschitz == 1.0
    assert keras_lipschitz.lipschitz_bound(model) <= share**3 * (1 + 1e-4)
    x = np.random.default_rng(6).normal(size=(2, 4, 4, 2)).astype("float32")
    path = str(tmp_path / "spread.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.k_coef_lip == 8.0 and loaded.layers[0].lipschitz == share
    np.testing.assert_allclose(
        helpers.to_numpy(loaded(x)), helpers.to_numpy(model(x)), atol=1e-6
    )
    with pytest.warns(UserWarning, match="not a 1-Lipschitz layer"):
        lip.model.Sequential([keras.Input((3,)), keras.layers.Dense(2)])


def test_functional_model_class(tmp_path):
    inputs = keras.Input((6,))
    x = lip.layers.SpectralDense(8, activation=lip.activations.GroupSort2())(inputs)
    outputs = lip.layers.SpectralDense(2)(x)
    model = lip.model.Model(inputs=inputs, outputs=outputs)
    model.condense()
    data = np.random.default_rng(7).normal(size=(3, 6)).astype("float32")
    path = str(tmp_path / "functional.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is lip.model.Model
    np.testing.assert_allclose(
        helpers.to_numpy(loaded.vanilla_export()(data)), helpers.to_numpy(model(data)), atol=1e-5
    )


def test_utils():
    x = np.array([[3.0, 4.0], [0.0, 0.0]], "float32")
    np.testing.assert_allclose(
        helpers.to_numpy(lip.utils.l2_normalize(x, axis=-1)), [[0.6, 0.8], [0, 0]], atol=1e-6
    )
    model = keras.Sequential([keras.Input((3,)), kl_layers.BjorckDense(2, lipschitz=0.5)])
    data = np.random.default_rng(8).normal(size=(4, 3)).astype("float32")
    estimate = lip.utils.evaluate_lip_const(model, data)
    assert 0.45 <= estimate <= keras_lipschitz.lipschitz_bound(model) * (1 + 1e-6)
    # B / n+ for positives, -B / n- otherwise (deel-lip's formula).
    weights = lip.utils.process_labels_for_multi_gpu(np.array([[1.0], [0], [0]]))
    np.testing.assert_allclose(helpers.to_numpy(weights)[:, 0], [3, -1.5, -1.5], rtol=1e-6)
