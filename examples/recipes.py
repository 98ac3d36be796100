"""Training recipes: a model, its loss and optimizer, and how to fit it.

A recipe is a plain function

    recipe(task, args) -> Recipe(model, compile_kwargs, fit_kwargs)

that builds a fresh model for `task` (a `Task`: input shape, classes,
norm, radii) and says how to train it:

- `compile_kwargs`: the keyword arguments of `model.compile` (optimizer,
  loss);
- `fit_kwargs`: keyword arguments of `model.fit` other than the data and
  the number of epochs: `batch_size` (always present) and `callbacks`;
- `finalize`: optional `finalize(model, x_train)`, run once after training
  and before certification (e.g. the ℓ∞ nets' running means at p = ∞).

`args` is any object with the attributes `seed` (int), `progress` (a
callable returning the fraction of training done, in [0, 1], or None) and
optionally `overrides` (a dict of `l2_recipe` options, filled by
`certified.py --set`; recipes not built with `l2_recipe` refuse them).
`benchmarks/certified.py` passes the fraction of its wall-clock budget
spent, so schedules (learning rate, p-norm) follow the budget; with
`progress=None` they follow the epochs of `fit` (`epochs` must then be
given to `fit`).

Recipes are registered per task in `RECIPES[task_name][recipe_name]`; use
`get_recipe(task_name, recipe_name)`. Every task has `deel_tutorial` (the
deel-lip MNIST tutorial model and loss, or for ℓ∞ the model of
`mnist_linf.py`); `recommended` is the library's pick for a task, chosen by
certified accuracy per second of CPU training in `benchmarks/README.md`
("Certified accuracy per unit of compute").

This module is not part of the library: examples import it as a sibling
(like `_common.py`), and `benchmarks/certified.py` adds `examples/` to
`sys.path`.
"""

import dataclasses
import math
from typing import Callable
from typing import Optional

import keras

from keras_lipschitz import layers
from keras_lipschitz import losses
from keras_lipschitz.callbacks import LossParamScheduler
from keras_lipschitz.layers.linf import LinfDistDense
from keras_lipschitz.layers.linf import SortNetDense
from keras_lipschitz.models import linf_dist_net
from keras_lipschitz.models import recompute_running_means


@dataclasses.dataclass(frozen=True)
class Task:
    """A certification task: data set, norm and the radii reported.

    Attributes:
        name: e.g. `"mnist_l2"`.
        dataset: `"mnist"`, `"fashion_mnist"` or `"cifar10"`.
        input_shape: image shape, channels last.
        num_classes: number of classes.
        norm: `"l2"` or `"linf"` (pixels in [0, 1]).
        epsilons: the radii at which certified accuracy is reported.
    """

    name: str
    dataset: str
    input_shape: tuple
    num_classes: int
    norm: str
    epsilons: tuple


TASKS = {
    task.name: task
    for task in (
        Task("mnist_l2", "mnist", (28, 28, 1), 10, "l2", (0.5, 1.0, 1.58)),
        Task("mnist_linf", "mnist", (28, 28, 1), 10, "linf", (0.1, 0.3)),
        Task(
            "fashion_mnist_l2", "fashion_mnist", (28, 28, 1), 10, "l2",
            (36 / 255, 72 / 255, 108 / 255),
        ),
        Task(
            "cifar10_l2", "cifar10", (32, 32, 3), 10, "l2",
            (36 / 255, 72 / 255, 108 / 255),
        ),
    )
}


@dataclasses.dataclass
class Recipe:
    """What a recipe returns (unpacks as `model, compile_kwargs, fit_kwargs`
    when `finalize` is not needed: use the attributes otherwise)."""

    model: keras.Model
    compile_kwargs: dict
    fit_kwargs: dict
    finalize: Optional[Callable] = None

    def __iter__(self):
        return iter((self.model, self.compile_kwargs, self.fit_kwargs))


# --------------------------------------------------------------------------
# Schedules that follow the budget (or the epochs).
# --------------------------------------------------------------------------


def _epoch_progress(callback, batch):
    """Fraction of `fit`'s epochs done, from the callback's `params`."""
    params = callback.params or {}
    epochs = params.get("epochs") or 1
    steps = params.get("steps") or 0
    fraction = batch / steps if steps else 0.0
    return min((callback.epoch + fraction) / epochs, 1.0)


class ProgressSchedule(keras.callbacks.Callback):
    """Calls `apply(model, value)` with `schedule(progress)` during `fit`.

    `progress()` is the fraction of training done (the budget spent, in
    `benchmarks/certified.py`); without it, the fraction of `fit`'s epochs.
    The value is recomputed at the start of each batch and applied only
    when `progress` has moved by `resolution` since the last change, so
    there are at most `1/resolution` updates (each one a variable
    assignment, and on JAX a state sync).

    Args:
        schedule: maps the progress in [0, 1] to a value.
        apply: `apply(model, value)`, e.g. sets the learning rate.
        progress: callable returning the progress in [0, 1], or None.
        resolution: the smallest change of progress that triggers an
            update.
    """

    def __init__(self, schedule, apply, progress=None, resolution=0.01):
        super().__init__()
        self.schedule = schedule
        self.apply = apply
        self.progress = progress
        self.resolution = resolution
        self.epoch = 0
        self._last = None

    def on_train_begin(self, logs=None):
        self._last = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self.progress is None:
            t = _epoch_progress(self, batch)
        else:
            t = min(max(float(self.progress()), 0.0), 1.0)
        if self._last is not None and t - self._last < self.resolution:
            return
        self._last = t
        # JAX: bring the trainer's state into the model first, so that the
        # assignment is what the next step reads (keras_lipschitz's
        # PNormScheduler does the same).
        sync = getattr(self.model, "jax_state_sync", None)
        if sync is not None:
            sync()
        self.apply(self.model, self.schedule(t))


def _set_learning_rate(model, value):
    model.optimizer.learning_rate = float(value)


def linear_decay(peak, warmup=0.0, floor=0.0):
    """Learning rate: linear warm-up to `peak`, then linear decay to
    `floor * peak` at the end of training."""

    def schedule(t):
        if warmup > 0 and t < warmup:
            return peak * t / warmup
        rest = (t - warmup) / max(1.0 - warmup, 1e-12)
        return peak * (floor + (1.0 - floor) * max(1.0 - rest, 0.0))

    return schedule


def cosine_decay(peak, floor=0.0):
    """Learning rate: cosine from `peak` at 0 to `floor * peak` at 1."""

    def schedule(t):
        return peak * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(
            math.pi * t)))

    return schedule


def learning_rate_callback(schedule, args):
    """A `ProgressSchedule` that sets the optimizer's learning rate."""
    return ProgressSchedule(
        schedule, _set_learning_rate, getattr(args, "progress", None)
    )


# --------------------------------------------------------------------------
# Models.
# --------------------------------------------------------------------------


def tutorial_model(task, conv=None, dense=None, widths=(16, 32, 64),
                   name="deel_tutorial"):
    """The deel-lip MNIST tutorial architecture on `task`'s input shape.

        Conv(w1, 3) -> GroupSort2 -> ScaledL2NormPooling2D(2)
        -> Conv(w2, 3) -> GroupSort2 -> ScaledL2NormPooling2D(2)
        -> Flatten -> Dense(w3) -> GroupSort2 -> Dense(classes)

    With the defaults (`BjorckConv2D`, `BjorckDense`, widths 16, 32, 64)
    it is exactly the tutorial's model: deel-lip's `SpectralConv2D` and
    `SpectralDense` are spectral normalization followed by Björck
    orthonormalization, which is what our Björck layers compute.
    """
    conv = conv or layers.BjorckConv2D
    dense = dense or layers.BjorckDense
    w1, w2, w3 = widths
    return keras.Sequential(
        [
            keras.Input(task.input_shape),
            conv(w1, 3, padding="same"),
            layers.GroupSort2(),
            layers.ScaledL2NormPooling2D(pool_size=2),
            conv(w2, 3, padding="same"),
            layers.GroupSort2(),
            layers.ScaledL2NormPooling2D(pool_size=2),
            keras.layers.Flatten(),
            dense(w3),
            layers.GroupSort2(),
            dense(task.num_classes),
        ],
        name=name,
    )


# --------------------------------------------------------------------------
# Recipes.
# --------------------------------------------------------------------------


def deel_tutorial(task, args):
    """deel-lip's MNIST tutorial: Björck, HKR(50, 0.2), Adam 1e-3, batch 256.

    `tutorial_model` with `BjorckConv2D`/`BjorckDense` (what deel-lip's
    `SpectralConv2D`/`SpectralDense` compute) and the tutorial's loss and
    optimizer, constant learning rate.
    """
    _no_overrides(args, "deel_tutorial")
    model = tutorial_model(task)
    return Recipe(
        model,
        dict(
            optimizer=keras.optimizers.Adam(1e-3),
            loss=losses.MulticlassHKR(alpha=50.0, min_margin=0.2),
        ),
        dict(batch_size=256),
    )


def _p_ratio(t, p_warmup, p_fraction):
    """Where `t` lies in the growth phase of p: 0 before `p_warmup`, 1 from
    `p_fraction` on, linear in between."""
    if t <= p_warmup:
        return 0.0
    return min((t - p_warmup) / (p_fraction - p_warmup), 1.0)


class _PNormProgress(ProgressSchedule):
    """p of the ℓ∞-distance layers: `p_start` until `p_warmup`, then
    `p_start` -> `p_end` (log-linear) until `p_fraction` of training, then
    inf (as `PNormScheduler`, but following the progress callable)."""

    def __init__(self, progress, p_fraction=0.75, p_start=8.0,
                 p_end=1000.0, powers_of_two=False, p_warmup=0.0):
        def schedule(t):
            if t >= p_fraction:
                return float("inf")
            r = _p_ratio(t, p_warmup, p_fraction)
            p = p_start * (p_end / p_start) ** r
            if powers_of_two:
                # Piecewise constant on 8, 16, ..., 512 (then p_end): the
                # CPU kernels raise to these p by squaring, ~9x faster than
                # a real power at p = 16 (see `linf_recommended`).
                p = min(2.0 ** round(math.log2(p)), p_end)
            return p

        def apply(model, value):
            for layer in model.layers:
                if isinstance(layer, (LinfDistDense, SortNetDense)):
                    layer.set_p(value)

        super().__init__(schedule, apply, progress)


def _progress_param(loss_param, schedule, args, levels=10):
    """A `LossParamScheduler` driven by the progress, piecewise constant
    on `levels` steps (each change retraces the train step)."""
    progress = getattr(args, "progress", None)
    if progress is None:
        return None

    def value(_):
        t = min(max(float(progress()), 0.0), 1.0)
        return schedule(math.floor(t * levels) / levels)

    return LossParamScheduler(loss_param, value, update_freq="batch")


def linf_pixel_scale_options(sigma, peak_lr):
    """`linf_dist_net` options equivalent, on pixel inputs, to the official
    init on inputs normalized by `sigma` (MNIST: 0.3081).

    With normalized inputs $(x - \\mu)/\\sigma$ the same network on pixels
    has every weight and logit times $\\sigma$: kernels $N(0, \\sigma^2)$,
    identity value $10\\sigma$, logit scale $1/\\sigma$ moving by
    $0.006/\\sigma$ per Adam step while the weights move by `peak_lr`
    (the official scalar learning rate 0.006).
    """
    return dict(
        # Unseeded: a seeded initializer would give every layer of the
        # same shape the same kernel (the global seed still applies).
        kernel_initializer=keras.initializers.RandomNormal(stddev=sigma),
        identity_value=10.0 * sigma,
        initial_scale=1.0 / sigma,
        scale_lr_multiplier=0.006 / sigma / peak_lr,
    )


def linf_tutorial(task, args, width=1024, depth=5, batch_size=512,
                  p_powers_of_two=False, pixel_scale=None, p_warmup=0.0,
                  p_fraction=0.75, recompute_means=True):
    """mnist_linf.py's ℓ∞-distance net and LinfDistHinge, over the budget.

    ℓ∞-distance net (depth 5, width 1024, learned CE scale),
    `LinfDistHinge(0.45)` with λ decayed
    log-linearly from 0.05 to 2e-4, Adam (0.9, 0.99, 1e-10) with a cosine
    learning rate from 0.03, batch 512, p 8 -> 1000 over the first 75 % of
    training then p = inf, running means recomputed at p = inf on 10,000
    training images before certification. The schedules follow the
    progress (the budget) instead of the epochs."""
    # The official recipe's numbers are in normalized input units
    # (x - 0.1307) / 0.3081; on pixels the same network has its weights
    # and logits times sigma = pixel_scale, so the learning rate, the
    # initial kernel and identity values, and the logit scale (and its
    # step) are converted (see `linf_official_scale`). None: as before.
    sigma = 1.0 if pixel_scale is None else pixel_scale
    peak_lr = 0.03 * sigma
    net_options = {}
    if pixel_scale is not None:
        net_options = linf_pixel_scale_options(sigma, peak_lr)
    model = linf_dist_net(
        task.input_shape, task.num_classes, depth=depth, width=width,
        seed=args.seed, learned_scale=True, **net_options,
    )
    progress = getattr(args, "progress", None)
    loss = losses.LinfDistHinge(
        epsilon=0.45, ce_weight=0.05, scale=model.get_layer("logit_scale")
    )
    callbacks = [
        learning_rate_callback(cosine_decay(peak_lr), args),
        _PNormProgress(progress, powers_of_two=p_powers_of_two,
                       p_warmup=p_warmup, p_fraction=p_fraction),
    ]
    if p_warmup > 0.0:
        # The official lambda follows the p ratio (constant in the warm-up
        # and at p = inf).
        def ce_weight(t):
            r = _p_ratio(t, p_warmup, p_fraction)
            return float(0.05 * (2e-4 / 0.05) ** r)
    else:
        def ce_weight(t):
            return float(0.05 * (2e-4 / 0.05) ** t)
    lam = _progress_param("ce_weight", ce_weight, args)
    if lam is not None:
        callbacks.append(lam)

    def finalize(model, x_train):
        recompute_running_means(model, x_train[:10000])

    if not recompute_means:
        # The running means were updated at p = inf for the last part of
        # training (as in the official code, which never recomputes them).
        finalize = None

    return Recipe(
        model,
        dict(
            optimizer=keras.optimizers.Adam(
                0.03, beta_1=0.9, beta_2=0.99, epsilon=1e-10
            ),
            loss=loss,
        ),
        dict(batch_size=batch_size, callbacks=callbacks),
        finalize=finalize,
    )


# --------------------------------------------------------------------------
# ℓ2 recipes built from parts (the candidates of the benchmark).
# --------------------------------------------------------------------------

L2_DEFAULTS = dict(
    conv="bjorck",          # "bjorck", "aol" or "spectral"
    dense="bjorck",         # "bjorck", "aol" or "spectral"
    widths=(16, 32, 64),    # conv 1, conv 2, hidden dense
    loss="hkr",             # "hkr", "cll", "emma", "tau_cce", "offset_ce"
    alpha=50.0,             # hkr: hinge weight
    min_margin=0.2,         # hkr: logit-gap margin (deel-lip convention)
    epsilon=1.0,            # cll, emma: training radius
    slack=0.05,             # cll: slack p
    tau=10.0,               # tau_cce
    offset=2.0,             # offset_ce: subtracted from the true logit
    temperature=0.25,       # offset_ce
    lr=1e-3,                # peak learning rate (Adam)
    schedule="constant",    # "constant", "linear" or "cosine" (to 0)
    warmup=0.0,             # fraction of training of linear warm-up
    batch_size=256,
)


def _layer_classes(kind):
    if kind == "bjorck":
        return layers.BjorckConv2D, layers.BjorckDense
    if kind == "spectral":
        return layers.SpectralConv2D, layers.SpectralDense
    if kind == "aol":
        return layers.AOLConv2D, layers.AOLDense
    raise ValueError(f"unknown layer kind {kind!r}: bjorck, spectral, aol")


def offset_cross_entropy(offset, temperature):
    """`T * CE(softmax((z - offset * onehot) / T), y)` (Prach & Lampert):
    the true logit must beat every other by about `offset` before the loss
    lets go; a logit gap g certifies g / (L ||w_y - w_j||)."""

    def loss(y_true, y_pred):
        one_hot, y_pred = losses.multiclass_labels(y_true, y_pred)
        logits = (y_pred - offset * one_hot) / temperature
        return temperature * keras.ops.categorical_crossentropy(
            one_hot, logits, from_logits=True
        )

    return loss


def _l2_loss(options, model):
    kind = options["loss"]
    if kind == "hkr":
        return losses.MulticlassHKR(
            alpha=options["alpha"], min_margin=options["min_margin"]
        )
    if kind == "cll":
        return losses.CLL.for_model(
            model, epsilon=options["epsilon"], slack=options["slack"]
        )
    if kind == "emma":
        return losses.EMMA.for_model(model, epsilon=options["epsilon"])
    if kind == "tau_cce":
        return losses.TauCategoricalCrossentropy(tau=options["tau"])
    if kind == "offset_ce":
        return offset_cross_entropy(options["offset"], options["temperature"])
    raise ValueError(f"unknown loss {kind!r}")


def l2_recipe(task, args, **options):
    """An ℓ2 recipe from parts: the tutorial architecture with the given
    layers and widths, a margin loss, Adam with a learning-rate schedule
    that follows the progress (see `L2_DEFAULTS` for the parts and their
    defaults). `args.overrides` (a dict, optional) overrides `options`:
    `benchmarks/certified.py --set key=value` fills it."""
    unknown = set(options) - set(L2_DEFAULTS)
    options = {**L2_DEFAULTS, **options,
               **(getattr(args, "overrides", None) or {})}
    unknown |= set(options) - set(L2_DEFAULTS)
    if unknown:
        raise ValueError(
            f"unknown recipe options {sorted(unknown)}; known: "
            f"{sorted(L2_DEFAULTS)}"
        )
    conv, _ = _layer_classes(options["conv"])
    _, dense = _layer_classes(options["dense"])
    model = tutorial_model(
        task, conv=conv, dense=dense, widths=tuple(options["widths"]),
        name="l2_recipe",
    )
    peak = float(options["lr"])
    callbacks = []
    if options["schedule"] == "linear":
        callbacks.append(learning_rate_callback(
            linear_decay(peak, warmup=options["warmup"]), args))
    elif options["schedule"] == "cosine":
        callbacks.append(learning_rate_callback(cosine_decay(peak), args))
    elif options["schedule"] != "constant":
        raise ValueError(f"unknown schedule {options['schedule']!r}")
    return Recipe(
        model,
        dict(optimizer=keras.optimizers.Adam(peak),
             loss=_l2_loss(options, model)),
        dict(batch_size=int(options["batch_size"]), callbacks=callbacks),
    )


def custom(task, args):
    """`l2_recipe` with `L2_DEFAULTS` and `--set` overrides (exploring)."""
    return l2_recipe(task, args)


# The candidates measured for mnist_l2 (benchmarks/README.md, "Certified
# accuracy per unit of compute"). CLL's `epsilon` is a training radius:
# with its two-sided offsets the loss lets go of a pair once its certified
# radius is about 2 * epsilon, so epsilon ≈ 0.5 aims past ε = 1.58 while
# keeping clean accuracy.


def hkr_margin(task, args):
    """Björck tutorial model, HKR(50, min_margin=2) matched to ε = 1.58."""
    # A logit gap of min_margin certifies min_margin / (sqrt(2) L) with an
    # orthonormal last layer: 2 / sqrt(2) ≈ 1.41 at L = 0.9-1.
    return l2_recipe(task, args, min_margin=2.0)


def cll_bjorck(task, args):
    """Björck tutorial model, CLL(0.5), Adam 3e-3 linearly decayed to 0."""
    return l2_recipe(task, args, loss="cll", epsilon=0.5, lr=3e-3,
                     schedule="linear")


def cll_aol(task, args):
    """AOL convs, Björck dense, CLL(0.5), Adam 3e-3 linearly decayed to 0."""
    return l2_recipe(task, args, conv="aol", loss="cll", epsilon=0.5,
                     lr=3e-3, schedule="linear")


def recommended(task, args):
    """AOL convs, Björck dense, CLL(0.55), Adam 3e-3 linearly decayed to 0.

    The library's pick for mnist_l2 (benchmarks/README.md): the deel-lip
    tutorial architecture with AOL convolutions (Prach & Lampert, ECCV
    2022: a rescaling, no iteration, so a step costs what a Björck step
    costs while the convolutions stay close to orthogonal), Björck dense
    layers, the Calibrated Lipschitz-Margin loss (Losch et al., GCPR 2023)
    with training radius 0.55 on the pairwise certificate of the last
    layer, and Adam with peak 3e-3 decayed linearly to 0 over the budget
    (or the epochs). On other ℓ2 tasks CLL's radius is scaled by the
    task's largest ε over 1.58 (not measured on those tasks).
    """
    epsilon = 0.55 * task.epsilons[-1] / 1.58
    return l2_recipe(task, args, conv="aol", loss="cll", epsilon=epsilon,
                     lr=3e-3, schedule="linear")


def liresnet(task, args):
    """LiResNet (Hu et al., NeurIPS 2023) with the EMMA loss, sized for CPU.

    `models.LiResNet`: a `SpectralConv2D` stem, `depth` linear residual
    blocks `LiResConv2D` (x + K*x)/||I + K|| with `GroupSort2`, a stride-4
    orthonormal neck, a `BjorckDense` layer and the LLN head, certified
    with the pairwise certificate over guaranteed bounds. MNIST: depth 4,
    width 16, dense 128; CIFAR-10: depth 6, width 32, dense 256 (the
    paper's CIFAR model is depth 12, width 512: far beyond a CPU budget).
    `EMMA.for_model` at the task's middle radius (1.0 on MNIST, 72/255 on
    CIFAR-10); Adam 2e-3 decayed linearly to 0, batch 256.
    """
    from keras_lipschitz.models import LiResNet

    _no_overrides(args, "liresnet")
    small = task.input_shape[-1] == 1
    model = LiResNet(
        depth=4 if small else 6,
        width=16 if small else 32,
        num_classes=task.num_classes,
        input_shape=task.input_shape,
        neck_size=4,
        dense_width=128 if small else 256,
    )
    peak = 2e-3
    epsilon = task.epsilons[len(task.epsilons) // 2]
    return Recipe(
        model,
        dict(optimizer=keras.optimizers.Adam(peak),
             loss=losses.EMMA.for_model(model, epsilon=epsilon)),
        dict(batch_size=256,
             callbacks=[learning_rate_callback(linear_decay(peak), args)]),
    )


def linf_tutorial_pow2(task, args):
    """`deel_tutorial` (the ℓ∞-distance net) with p rounded to powers of two.

    The p schedule 8 -> 1000 becomes piecewise constant on 8, 16, 32, ...,
    512 (in log scale, the nearest power of two). With the fused CPU
    kernels, a real p between 8 and about 50 costs ~9x the p = 8 step
    (exp/log per term) while p = 16, 32 or 64 costs ~1.3x (squarings), so
    the first quarter of a budget trains ~4x more steps."""
    return linf_tutorial(task, args, p_powers_of_two=True)


def linf_official_scale(task, args):
    """The official MNIST ε = 0.3 recipe (zbh2047/L_inf-dist-net-v2,
    `command/mnist_0.3.sh`) converted to pixel inputs, at width 1024.

    The official code normalizes inputs by (x - 0.1307) / 0.3081; the same
    network on pixels has weights and logits 0.3081 times smaller, so here
    the peak learning rate is 0.03 x 0.3081, the kernels start at
    N(0, 0.3081^2) with identity value 10 x 0.3081, and the learned
    logit scale starts at 1 / 0.3081 and moves by 0.006 / 0.3081 per unit
    step (the papers' scalar learning rate); the hinge threshold 0.45 is
    already in pixel units. Schedules as the official 25 / 375 / 50 of 450
    epochs: p = 8 for the first 5.6 % of the budget, geometric to 1000 until
    88.9 % (rounded to powers of two, see `linf_recommended`), then p = inf;
    λ decays along the same ratio. The running means are those updated
    during the p = inf phase, as in the official code (no recomputation
    after the budget)."""
    return linf_tutorial(
        task, args, p_powers_of_two=True, pixel_scale=0.3081,
        p_warmup=25 / 450, p_fraction=400 / 450, recompute_means=False,
    )


RECIPES = {
    "mnist_l2": {
        "deel_tutorial": deel_tutorial,
        "recommended": recommended,
        "hkr_margin": hkr_margin,
        "cll_bjorck": cll_bjorck,
        "cll_aol": cll_aol,
        "liresnet": liresnet,
        "custom": custom,
    },
    "mnist_linf": {
        "deel_tutorial": linf_tutorial,
        "recommended": linf_official_scale,
        "official_scale": linf_official_scale,
        "tutorial_pow2": linf_tutorial_pow2,
    },
    "fashion_mnist_l2": {
        "deel_tutorial": deel_tutorial,
        "recommended": recommended,
    },
    "cifar10_l2": {
        "deel_tutorial": deel_tutorial,
        "recommended": recommended,
        "liresnet": liresnet,
    },
}


def _no_overrides(args, name):
    if getattr(args, "overrides", None):
        raise ValueError(
            f"recipe {name!r} takes no options (--set); got "
            f"{sorted(args.overrides)}. Options apply to the recipes built "
            "with l2_recipe (e.g. 'custom')."
        )


def get_recipe(task_name, recipe_name):
    """The recipe function registered for `task_name` under `recipe_name`.

    Raises:
        ValueError: unknown task or recipe (the message lists the choices).
    """
    if task_name not in RECIPES:
        raise ValueError(
            f"Unknown task {task_name!r}; tasks: {sorted(RECIPES)}"
        )
    recipes = RECIPES[task_name]
    if recipe_name not in recipes:
        raise ValueError(
            f"Unknown recipe {recipe_name!r} for task {task_name!r}; "
            f"recipes: {sorted(recipes)}"
        )
    return recipes[recipe_name]
