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


_MONITOR_TARGETS = ("kernel", "effective", "operator")


@keras_lipschitz_export
class MonitorCallback(keras.callbacks.Callback):
    """Logs the singular values of chosen layers during `fit`.

    At the end of every epoch (`on_epoch=True`) and/or batch
    (`on_batch=True`), for each monitored layer, computes on the host in
    float64:

    - `target="kernel"`: the singular values of the raw trainable kernel,
      reshaped to `(-1, units)` (deel-lip's `target="kernel"`: how far the
      unconstrained weights drift);
    - `target="effective"`: the same for the constrained kernel the layer
      uses in inference mode (`effective_kernel()`; deel-lip's `"wbar"`);
    - `target="operator"`: `(min, max)` singular values of the layer's
      operator from `keras_lipschitz.utils.compute_layer_sv` (exact for
      dense layers and small convolutions).

    With `what="max"` the largest value is added to the epoch's (or
    batch's) `logs` as `"{layer}_{target}_sigma_max"`, so `History`,
    `TensorBoard` and `CSVLogger` record it. With `what="all"` the values
    are kept in `history` only. Every record is appended to `history`
    (`{layer name: [(step, values), ...]}`) and, with `logdir`, as a JSON
    line to `logdir/singular_values.jsonl`. On JAX the trainer's state is
    synced to the model first (`jax_state_sync`), so the values are
    current.

    Args:
        monitored_layers: list of layer names (default: every layer with a
            kernel).
        target: `"kernel"`, `"effective"` or `"operator"`.
        what: `"max"` or `"all"`.
        on_epoch: bool.
        on_batch: bool.
        logdir: optional directory for the JSON lines.
    """

    def __init__(
        self,
        monitored_layers=None,
        target="effective",
        what="max",
        on_epoch=True,
        on_batch=False,
        logdir=None,
    ):
        super().__init__()
        self.monitored_layers = (
            None if monitored_layers is None else list(monitored_layers)
        )
        self.target = _validation.validate_choice(
            "target", target, set(_MONITOR_TARGETS)
        )
        self.what = _validation.validate_choice("what", what, {"max", "all"})
        self.on_epoch = bool(on_epoch)
        self.on_batch = bool(on_batch)
        self.logdir = logdir
        self.history = {}
        self._epoch = 0

    def _layers(self):
        if self.monitored_layers is None:
            return [
                layer
                for layer in self.model._flatten_layers(include_self=False)
                if hasattr(layer, "kernel") and layer.built
            ]
        return [self.model.get_layer(name) for name in self.monitored_layers]

    def _values(self, layer):
        import numpy as np

        if self.target == "operator":
            from keras_lipschitz.utils import compute_layer_sv

            return [v for v in compute_layer_sv(layer) if v is not None]
        if self.target == "effective":
            if not hasattr(layer, "effective_kernel"):
                raise ValueError(
                    f"MonitorCallback: layer {layer.name!r} has no "
                    "`effective_kernel()`; use target='kernel'."
                )
            kernel = np.asarray(layer.effective_kernel(), np.float64)
        else:
            kernel = np.asarray(
                keras.ops.convert_to_numpy(layer.kernel), np.float64
            )
        matrix = kernel.reshape(-1, kernel.shape[-1])
        values = np.linalg.svd(matrix, compute_uv=False)
        return [float(v) for v in values]

    def _monitor(self, step, logs):
        sync = getattr(self.model, "jax_state_sync", None)
        if sync is not None:
            sync()
        records = {}
        for layer in self._layers():
            values = self._values(layer)
            self.history.setdefault(layer.name, []).append((step, values))
            records[layer.name] = values
            if self.what == "max" and logs is not None and values:
                logs[f"{layer.name}_{self.target}_sigma_max"] = max(values)
        if self.logdir is not None:
            import json
            import os

            os.makedirs(self.logdir, exist_ok=True)
            path = os.path.join(self.logdir, "singular_values.jsonl")
            with open(path, "a") as file:
                file.write(
                    json.dumps(
                        {"step": step, "target": self.target, "values": records}
                    )
                    + "\n"
                )

    def on_train_batch_end(self, batch, logs=None):
        if self.on_batch:
            steps = (self.params or {}).get("steps") or 0
            self._monitor(self._epoch * steps + batch, logs)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if self.on_epoch:
            self._monitor(epoch, logs)

    def get_config(self):
        return {
            "monitored_layers": self.monitored_layers,
            "target": self.target,
            "what": self.what,
            "on_epoch": self.on_epoch,
            "on_batch": self.on_batch,
            "logdir": self.logdir,
        }


@keras_lipschitz_export
class LossParamLog(keras.callbacks.Callback):
    """Logs a loss hyper-parameter every `rate` epochs.

    Adds `"{loss name}_{param}"` to the epoch's `logs` (so `History`
    records it) and, with `verbose=1`, prints it (deel-lip's `LossParamLog`
    prints). A `keras.Variable` (e.g. `MulticlassSoftHKR.running_mean`) is
    read after syncing the JAX state.

    Args:
        param: name of the loss attribute.
        rate: int >= 1, log every `rate` epochs (epochs 0, rate, 2 rate...).
        loss: the loss; by default the model's compiled loss.
        verbose: int.
    """

    def __init__(self, param, rate=1, loss=None, verbose=1):
        super().__init__()
        if not isinstance(param, str) or not param:
            raise ValueError(
                "`param` must be the name of a loss attribute. "
                f"Received: param={param!r}"
            )
        self.param = param
        self.rate = _validation.validate_positive_int("rate", rate)
        self.loss = loss
        self.verbose = verbose
        self.values = []

    def on_epoch_end(self, epoch, logs=None):
        if epoch % self.rate:
            return
        loss = self.loss if self.loss is not None else self.model.loss
        if not hasattr(loss, self.param):
            raise ValueError(
                f"LossParamLog: the loss {loss!r} has no attribute "
                f"{self.param!r}."
            )
        sync = getattr(self.model, "jax_state_sync", None)
        if sync is not None:
            sync()
        value = getattr(loss, self.param)
        if not isinstance(value, numbers.Real):
            value = float(keras.ops.convert_to_numpy(value))
        self.values.append((epoch, float(value)))
        name = getattr(loss, "name", "loss")
        if logs is not None:
            logs[f"{name}_{self.param}"] = float(value)
        if self.verbose:
            print(f"\nEpoch {epoch + 1}: {name} {self.param} = {value}")

    def get_config(self):
        return {
            "param": self.param,
            "rate": self.rate,
            "verbose": self.verbose,
        }
