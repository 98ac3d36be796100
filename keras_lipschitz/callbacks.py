"""Callbacks for training Lipschitz networks.

**Why a special scheduler.** A loss hyper-parameter read inside the compiled
train step is a constant of that step:

- on JAX, a `keras.Variable` owned by a loss is not part of the state the
  trainer passes to the jitted step, so its value is frozen in at trace
  time and a later `assign` is silently ignored (deel-lip's
  `LossParamScheduler` does nothing on JAX);
- a plain Python float is frozen in the same way by `tf.function` and
  `jax.jit`.

`LossParamScheduler` therefore keeps hyper-parameters as plain floats and,
whenever a scheduled value actually changes, sets it on the loss and
**rebuilds the train function** (`model.make_train_function(force=True)`)
and drops the test function (rebuilt on the next evaluation). Every trainer
looks `model.train_function` up again at each step, so the next step runs
a freshly traced function that uses the new value: TF traces a new
`tf.function`, JAX jits and traces `train_step` again (the state is passed
in, so nothing is lost), torch eager reads the float at call time, and a
torch `torch.compile`d step is recompiled. Each change costs one retrace
(and on TF/JAX one compilation), so a per-epoch or piecewise-constant
schedule is cheap, while a value that changes at every batch retraces at
every batch.
"""

import numbers

import keras

from keras_lipschitz.api_export import keras_lipschitz_export
from keras_lipschitz.layers import _validation
# Defined beside the CPL layers it refreshes; exported here with the others.
from keras_lipschitz.layers.cpl import RefreshInferenceNorms  # noqa: F401
from keras_lipschitz.layers.linf import validate_p


def _has_param(loss, param):
    return isinstance(loss, keras.losses.Loss) and hasattr(loss, param)


@keras_lipschitz_export
class LossParamScheduler(keras.callbacks.Callback):
    """Changes a loss hyper-parameter during `fit`, on every backend.

    At the start of each epoch (`update_freq="epoch"`) or of each batch
    (`update_freq="batch"`), the callback computes `schedule(index)` and,
    if the value changed, sets it on the loss and rebuilds the model's
    compiled train step so that the new value takes effect in the very next
    step, on TensorFlow, JAX and PyTorch, compiled or not (see the module
    docstring for the mechanism and its cost).

    Args:
        param: name of the hyper-parameter, an attribute of the loss holding
            a Python float (e.g. `"alpha"`, `"min_margin"`, `"tau"`,
            `"slack"`). keras-lipschitz losses validate the new value.
        schedule: callable mapping the epoch index (from 0,
            `update_freq="epoch"`) or the number of batches seen since the
            start of `fit` (from 0, `update_freq="batch"`) to the value.
        loss: the loss object to modify. By default the model's compiled
            loss, or the only one of its losses (list or dict) that has
            `param`.
        update_freq: `"epoch"` or `"batch"`.
        verbose: int, 1 prints every change.

    Example:

    >>> import numpy as np
    >>> import keras
    >>> from keras_lipschitz.losses import HKR
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model.compile("sgd", loss=HKR(alpha=1.0))
    >>> scheduler = LossParamScheduler("alpha", lambda epoch: 10.0 ** epoch)
    >>> x = np.random.normal(size=(8, 2)).astype("float32")
    >>> y = np.array([0, 1] * 4)
    >>> _ = model.fit(x, y, epochs=3, verbose=0, callbacks=[scheduler])
    >>> model.loss.alpha
    100.0
    """

    def __init__(
        self, param, schedule, loss=None, update_freq="epoch", verbose=0
    ):
        super().__init__()
        if not isinstance(param, str) or not param:
            raise ValueError(
                "`param` must be the name of a loss attribute. "
                f"Received: param={param!r}"
            )
        if not callable(schedule):
            raise ValueError(
                f"`schedule` must be callable. Received: schedule={schedule!r}"
            )
        if loss is not None and not _has_param(loss, param):
            raise ValueError(
                f"`loss` must be a keras Loss with an attribute {param!r}. "
                f"Received: loss={loss!r}"
            )
        self.param = param
        self.schedule = schedule
        self.loss = loss
        self.update_freq = _validation.validate_choice(
            "update_freq", update_freq, {"epoch", "batch"}
        )
        self.verbose = verbose
        self._target = None
        self._step = 0

    def _find_loss(self):
        if self.loss is not None:
            return self.loss
        compiled = getattr(self.model, "loss", None)
        if isinstance(compiled, dict):
            candidates = list(compiled.values())
        elif isinstance(compiled, (list, tuple)):
            candidates = list(compiled)
        else:
            candidates = [compiled]
        found = [c for c in candidates if _has_param(c, self.param)]
        if len(found) != 1:
            raise ValueError(
                f"LossParamScheduler found {len(found)} compiled losses with "
                f"an attribute {self.param!r} (model.loss={compiled!r}); "
                "pass the loss object with `loss=`."
            )
        return found[0]

    def on_train_begin(self, logs=None):
        self._target = self._find_loss()
        current = getattr(self._target, self.param)
        if isinstance(current, bool) or not isinstance(current, numbers.Real):
            raise ValueError(
                f"The loss attribute {self.param!r} must hold a Python float "
                f"to be scheduled (a keras.Variable is frozen into the JAX "
                f"train step). Received: {self.param}={current!r}"
            )
        self._step = 0

    def on_epoch_begin(self, epoch, logs=None):
        if self.update_freq == "epoch":
            self._update(self.schedule(epoch), f"Epoch {epoch + 1}")

    def on_train_batch_begin(self, batch, logs=None):
        if self.update_freq == "batch":
            self._update(self.schedule(self._step), f"Step {self._step}")
            self._step += 1

    def _update(self, value, when):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(
                f"`schedule` must return a number for {self.param!r}. "
                f"Received: {value!r}"
            )
        value = float(value)
        if value == getattr(self._target, self.param):
            return
        # keras-lipschitz losses validate the value here.
        setattr(self._target, self.param, value)
        # The float is a constant of the compiled steps: trace them again.
        self.model.make_train_function(force=True)
        self.model.test_function = None
        if self.verbose:
            print(f"{when}: LossParamScheduler set {self.param} to {value}.")

    def get_config(self):
        """The constructor arguments, except `loss`.

        Callbacks are not saved with models; `schedule` is returned as the
        callable itself.
        """
        return {
            "param": self.param,
            "schedule": self.schedule,
            "update_freq": self.update_freq,
            "verbose": self.verbose,
        }


def _distance_layers(model):
    return [
        layer
        for layer in model._flatten_layers(include_self=False)
        if hasattr(layer, "set_p") and hasattr(layer, "train_p")
    ]


def p_norm_schedule(progress, p_start=8.0, p_end=1000.0):
    """The ℓ∞-dist nets' $p$ schedule at training progress `progress`.

    $p = p_0 (p_1/p_0)^r$ with $r$ = `progress` clipped to [0, 1), and
    $p = \\infty$ once $r \\ge 1$ (Zhang et al., ICML 2021 / ICLR 2022).
    """
    if progress >= 1.0:
        return float("inf")
    r = min(max(float(progress), 0.0), 1.0)
    return float(p_start * (p_end / p_start) ** r)


@keras_lipschitz_export
class PNormScheduler(keras.callbacks.Callback):
    """Raises the $p$ of ℓ∞-distance layers during `fit`, per minibatch.

    Before every training batch, sets the training $p$ of every
    `LinfDistDense` / `SortNetDense` of the model (their non-trainable
    `train_p` weight) to

    $$p = p_0\\,(p_1/p_0)^{r},\\qquad r = \\frac{t - e_0}{e_1 - e_0},$$

    where $t$ is the fractional epoch (epoch + batch / steps per epoch),
    and to $p = \\infty$ once $r \\ge 1$ (the papers use $p_0 = 8$,
    $p_1 = 1000$, $e_0, e_1$ = 25, 400 of 450 epochs on MNIST). Inference
    always uses $p = \\infty$, whatever this schedule.

    **Reaching the compiled step.** $p$ is a model *variable*, not a
    Python constant, so no retracing is needed: TF graphs and torch read it
    at each step; on JAX the trainer holds the state outside the model
    during `fit`, so the callback first syncs the state back
    (`model.jax_state_sync()`), assigns, and the trainer then reads the
    new state before the step.

    Args:
        start_epoch: float >= 0, $e_0$ (before it, $p = p_0$).
        end_epoch: float > start_epoch, $e_1$ (from it on, $p = \\infty$).
        p_start: float >= 1, $p_0$.
        p_end: float >= p_start, $p_1$.
        verbose: int, 1 prints $p$ at every epoch start.
    """

    def __init__(
        self, start_epoch, end_epoch, p_start=8.0, p_end=1000.0, verbose=0
    ):
        super().__init__()
        if (
            isinstance(start_epoch, bool)
            or not isinstance(start_epoch, numbers.Real)
            or start_epoch < 0
        ):
            raise ValueError(
                "`start_epoch` must be a number >= 0. "
                f"Received: start_epoch={start_epoch!r}"
            )
        if (
            isinstance(end_epoch, bool)
            or not isinstance(end_epoch, numbers.Real)
            or not end_epoch > start_epoch
        ):
            raise ValueError(
                "`end_epoch` must be a number > start_epoch. "
                f"Received: end_epoch={end_epoch!r}"
            )
        self.start_epoch = float(start_epoch)
        self.end_epoch = float(end_epoch)
        self.p_start = validate_p("p_start", p_start)
        self.p_end = validate_p("p_end", p_end)
        if self.p_end < self.p_start or self.p_end == float("inf"):
            raise ValueError(
                "`p_end` must be finite and >= p_start. "
                f"Received: p_end={p_end!r}"
            )
        self.verbose = verbose
        self._epoch = 0
        self._current = None

    def p_at(self, epoch):
        """$p$ at the fractional epoch `epoch`."""
        progress = (epoch - self.start_epoch) / (
            self.end_epoch - self.start_epoch
        )
        return p_norm_schedule(progress, self.p_start, self.p_end)

    def on_train_begin(self, logs=None):
        if not _distance_layers(self.model):
            raise ValueError(
                "PNormScheduler found no LinfDistDense/SortNetDense layer "
                "in the model."
            )
        self._current = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        if self.verbose:
            print(f"Epoch {epoch + 1}: p = {self.p_at(epoch)}")

    def on_train_batch_begin(self, batch, logs=None):
        steps = (self.params or {}).get("steps") or 0
        fraction = batch / steps if steps else 0.0
        self._set(self.p_at(self._epoch + fraction))

    def _set(self, value):
        if value == self._current:
            return
        # JAX: bring the trainer's state back into the model first, so the
        # assignment is seen by the next step (and nothing else is lost).
        sync = getattr(self.model, "jax_state_sync", None)
        if sync is not None:
            sync()
        for layer in _distance_layers(self.model):
            layer.set_p(value)
        self._current = value

    def get_config(self):
        return {
            "start_epoch": self.start_epoch,
            "end_epoch": self.end_epoch,
            "p_start": self.p_start,
            "p_end": self.p_end,
            "verbose": self.verbose,
        }
