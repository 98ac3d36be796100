"""deel-lip's `deel.lip.callbacks`, as `keras_lipschitz.callbacks`."""

import keras
import numpy as np

from keras_lipschitz import callbacks as _callbacks
from keras_lipschitz.compat.deel_lip._classes import deel_lip_class
from keras_lipschitz.compat.deel_lip._mapping import maps_to


class _NoCondenseCallback(keras.callbacks.Callback):
    """A callback that does nothing (there is nothing to condense)."""


@maps_to(
    "callbacks",
    "a no-op `keras.callbacks.Callback`",
    "Nothing to condense: constrained kernels are derived in every call and "
    "never written back.",
    status="adapted",
)
@deel_lip_class(_NoCondenseCallback)
def CondenseCallback(on_epoch=True, on_batch=False):
    """deel-lip's `CondenseCallback`: nothing to do here (a no-op callback)."""
    return _NoCondenseCallback()


@maps_to(
    "callbacks",
    "`MonitorCallback(monitored_layers, target, what, logdir=logdir)`",
    "`target=\"kernel\"` is the raw kernel, `\"wbar\"` our `\"effective\"` "
    "(the constrained kernel). Values go to the epoch logs (and so to "
    "`TensorBoard`) and to `logdir/singular_values.jsonl`, on every backend "
    "(deel-lip writes TensorFlow summaries).",
    status="adapted",
)
@deel_lip_class(_callbacks.MonitorCallback)
def MonitorCallback(
    monitored_layers,
    logdir,
    target="kernel",
    what="max",
    on_epoch=True,
    on_batch=False,
):
    """deel-lip's `MonitorCallback`: our `MonitorCallback`."""
    targets = {"kernel": "kernel", "wbar": "effective"}
    if target not in targets:
        raise ValueError(
            f"`target` must be 'kernel' or 'wbar'. Received: target={target!r}"
        )
    if on_batch and on_epoch:
        on_epoch = False  # deel-lip logs per batch only, then.
    return _callbacks.MonitorCallback(
        monitored_layers=monitored_layers,
        target=targets[target],
        what=what,
        on_epoch=on_epoch,
        on_batch=on_batch,
        logdir=logdir,
    )


@maps_to(
    "callbacks",
    "`LossParamScheduler(param_name, schedule, update_freq=\"batch\")`",
    "The schedule is deel-lip's `np.interp(step, xp, fp)` per training "
    "batch. Our scheduler retraces the train step whenever the value "
    "changes (so the new value is used on every backend, JAX included, "
    "where deel-lip's `Variable.assign` is ignored): a value that changes "
    "at every batch retraces at every batch; prefer a piecewise-constant "
    "`xp`/`fp`.",
    status="adapted",
)
@deel_lip_class(_callbacks.LossParamScheduler)
def LossParamScheduler(param_name, fp, xp, step=0):
    """deel-lip's `LossParamScheduler` (linear interpolation per batch)."""
    xp = list(xp)
    fp = list(fp)

    def schedule(index):
        return float(np.interp(step + index, xp, fp))

    return _callbacks.LossParamScheduler(
        param_name, schedule, update_freq="batch"
    )


@maps_to(
    "callbacks", "`LossParamLog(param_name, rate)`", "Also logs the value."
)
@deel_lip_class(_callbacks.LossParamLog)
def LossParamLog(param_name, rate=1):
    """deel-lip's `LossParamLog`: `keras_lipschitz.callbacks.LossParamLog`."""
    return _callbacks.LossParamLog(param_name, rate=rate)


__all__ = [
    "CondenseCallback",
    "LossParamLog",
    "LossParamScheduler",
    "MonitorCallback",
]
