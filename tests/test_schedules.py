"""Loss hyper-parameter schedules reach the compiled train step.

The model is frozen (learning rate 0) with a zero output, so the HKR loss
is exactly `alpha * min_margin / 2` (KR = 0, every hinge is `m/2`): the
logged loss reads back the alpha the compiled step actually used.
"""

import keras
import numpy as np
import pytest

from keras_lipschitz import losses
from keras_lipschitz.callbacks import LossParamScheduler

BACKEND = keras.config.backend()
# Compiled steps: XLA on TF, jit on JAX; on torch both the default eager
# step and a torch.compile'd one (slow, so only in one test).
JIT = BACKEND != "torch"


def frozen_model(loss, jit_compile=JIT, outputs=1):
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(
                outputs, kernel_initializer="zeros", bias_initializer="zeros"
            ),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.0),
        loss=loss,
        jit_compile=jit_compile,
    )
    return model


def data(n=12):
    x = np.random.default_rng(0).normal(size=(n, 3)).astype("float32")
    y = np.array([0, 1] * (n // 2))
    return x, y


class BatchLogger(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.losses = []

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append(float(logs["loss"]))


def test_per_epoch_schedule_reaches_compiled_step():
    x, y = data()
    model = frozen_model(losses.HKR(alpha=1.0, min_margin=1.0))
    scheduler = LossParamScheduler("alpha", lambda epoch: 10.0**epoch)
    history = model.fit(
        x,
        y,
        batch_size=4,
        epochs=3,
        verbose=0,
        callbacks=[scheduler],
        validation_data=(x, y),
    )
    np.testing.assert_allclose(
        history.history["loss"], [0.5, 5.0, 50.0], rtol=1e-6
    )
    # Validation runs the (rebuilt) test step with the new value too.
    np.testing.assert_allclose(
        history.history["val_loss"], [0.5, 5.0, 50.0], rtol=1e-6
    )
    assert model.loss.alpha == 100.0
    # A later evaluate uses the last value.
    np.testing.assert_allclose(model.evaluate(x, y, verbose=0), 50.0, rtol=1e-6)


def test_per_batch_schedule_reaches_compiled_step():
    x, y = data()
    model = frozen_model(losses.HKR(alpha=1.0, min_margin=1.0))
    logger = BatchLogger()
    scheduler = LossParamScheduler(
        "alpha", lambda step: float(step + 1), update_freq="batch"
    )
    model.fit(
        x, y, batch_size=4, epochs=2, verbose=0, callbacks=[scheduler, logger]
    )
    # Batch losses 0.5 * alpha with alpha = 1..6; logs hold the running
    # mean over the epoch's batches.
    batch = 0.5 * np.arange(1, 7)
    expected = np.concatenate(
        [np.cumsum(part) / np.arange(1, 4) for part in (batch[:3], batch[3:])]
    )
    np.testing.assert_allclose(logger.losses, expected, rtol=1e-6)


@pytest.mark.parametrize(
    "loss, param, values, expected",
    [
        # Hinge alone: relu(m/2 - sign(y) * 0) = m/2.
        (
            losses.HingeMargin(min_margin=1.0),
            "min_margin",
            [1.0, 3.0],
            [0.5, 1.5],
        ),
        # Zero logits over 2 classes: CE(tau * 0) / tau = ln(2) / tau.
        (
            losses.TauCategoricalCrossentropy(tau=1.0),
            "tau",
            [1.0, 4.0],
            [np.log(2.0), np.log(2.0) / 4.0],
        ),
        # Zero logits: CE((d + delta) / sigma) with d = 0, so the loss is
        # softplus(2 * eps / sigma) = softplus(2 * ln((2 - p) / p)).
        (
            losses.CLL(epsilon=0.25, reg=0.0),
            "slack",
            [0.5, 0.05],
            [np.log1p(3.0**2), np.log1p(39.0**2)],
        ),
    ],
    ids=["min_margin", "tau", "slack"],
)
def test_other_parameters(loss, param, values, expected):
    x, y = data()
    outputs = 1 if param == "min_margin" else 2
    model = frozen_model(loss, outputs=outputs)
    scheduler = LossParamScheduler(param, lambda epoch: values[epoch])
    history = model.fit(
        x, y, batch_size=4, epochs=2, verbose=0, callbacks=[scheduler]
    )
    np.testing.assert_allclose(history.history["loss"], expected, rtol=1e-5)


@pytest.mark.skipif(BACKEND != "torch", reason="torch.compile only")
def test_per_epoch_schedule_with_torch_compile():
    x, y = data(n=4)
    model = frozen_model(losses.HKR(alpha=1.0), jit_compile=True)
    scheduler = LossParamScheduler("alpha", lambda epoch: [1.0, 7.0][epoch])
    history = model.fit(
        x, y, batch_size=4, epochs=2, verbose=0, callbacks=[scheduler]
    )
    np.testing.assert_allclose(history.history["loss"], [0.5, 3.5], rtol=1e-6)


def test_scheduler_errors():
    with pytest.raises(ValueError, match="update_freq"):
        LossParamScheduler("alpha", lambda e: 1.0, update_freq="step")
    with pytest.raises(ValueError, match="schedule"):
        LossParamScheduler("alpha", 3.0)
    with pytest.raises(ValueError, match="loss"):
        LossParamScheduler("alpha", lambda e: 1.0, loss=losses.KR())
    x, y = data()
    # The compiled loss has no such attribute.
    model = frozen_model(losses.HKR(alpha=1.0))
    with pytest.raises(ValueError, match="tau"):
        model.fit(
            x,
            y,
            epochs=1,
            verbose=0,
            callbacks=[LossParamScheduler("tau", lambda e: 1.0)],
        )
    # The loss validates the scheduled value.
    with pytest.raises(ValueError, match="alpha"):
        model.fit(
            x,
            y,
            epochs=1,
            verbose=0,
            callbacks=[LossParamScheduler("alpha", lambda e: -1.0)],
        )


def np_hkr_sgd(x, y, kernel, bias, alphas, min_margin, lr, batch_size):
    """NumPy SGD on HKR for a linear scorer, one alpha per batch."""
    kernel, bias = kernel.astype(np.float64), float(bias)
    for step, alpha in enumerate(alphas):
        start = (step * batch_size) % len(x)
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        n = len(xb)
        f = xb @ kernel[:, 0] + bias
        sign = np.where(yb > 0, 1.0, -1.0)
        pos = (yb > 0).astype(float)
        neg = 1.0 - pos
        kr_weights = n * (pos / (pos.sum() + 1e-7) - neg / (neg.sum() + 1e-7))
        active = (min_margin / 2 - sign * f > 0).astype(float)
        grad_f = (-alpha * sign * active - kr_weights) / n
        kernel[:, 0] -= lr * xb.T @ grad_f
        bias -= lr * grad_f.sum()
    return kernel


def test_per_batch_schedule_trains_like_numpy():
    """Training state survives the rebuilds and each step uses its alpha."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 3)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    kernel0 = np.full((3, 1), 0.1, "float32")
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(
                1, kernel_initializer=keras.initializers.Constant(0.1)
            ),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.1),
        loss=losses.HKR(alpha=1.0, min_margin=2.0),
        jit_compile=JIT,
    )
    alphas = [1.0, 5.0, 0.5, 20.0, 2.0, 1.0]
    scheduler = LossParamScheduler(
        "alpha", lambda step: alphas[step], update_freq="batch"
    )
    model.fit(
        x,
        y,
        batch_size=4,
        epochs=2,
        shuffle=False,
        verbose=0,
        callbacks=[scheduler],
    )
    expected = np_hkr_sgd(x, y, kernel0, 0.0, alphas, 2.0, 0.1, 4)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model.layers[0].kernel),
        expected,
        rtol=1e-5,
        atol=1e-6,
    )
