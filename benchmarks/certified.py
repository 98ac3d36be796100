"""Certified accuracy per unit of compute: train for a wall-clock budget.

Trains a named recipe (`examples/recipes.py`) on a task for a fixed
wall-clock budget, then certifies the test set with
`keras_lipschitz.certify` (guaranteed float64 bounds, inference-mode
weights) and prints clean accuracy and certified accuracy at the task's
radii. The budget covers data loading, model construction, compilation
and training: the clock starts once Python, Keras and keras_lipschitz are
imported (a constant cost, the same for every recipe), before the data is
loaded. A callback checks the clock at the end of every batch and stops
training once the budget is spent, so training overruns it by at most one
step (plus, for recipes that have one, the `finalize` step before
certification, e.g. the ℓ∞ running means). `epochs` counts the epochs
actually run, fractional when stopped mid-epoch.

The last line printed is one JSON object:

    {"task", "recipe", "backend", "budget_s", "train_s", "epochs",
     "clean", "certified": {"eps": accuracy, ...}}

with, in addition, `overrides` (the `--set` options), `steps`,
`last_step_start_s` (when the last training step began: before the
budget, by the stopping rule), `certify_s` (certification and clean
accuracy), `lipschitz` (the guaranteed ℓ2 bound of the whole model,
null for ℓ∞ tasks) and
`load_average` (of the machine, before and after). Certified accuracy at
ε is the fraction of test points that are correctly classified with a
certified radius strictly above ε. For ℓ∞ tasks, `certified_box` is the
certified accuracy against perturbed images kept in [0, 1] (the ℓ∞ papers'
threat model), by interval bounds through every layer
(`keras_lipschitz.certification.linf_box`); `certified` makes no
assumption on the input range (margin / 2). Null for ℓ2 tasks.

Usage (pick the backend before Python starts):

    KERAS_BACKEND=tensorflow python benchmarks/certified.py --task mnist_l2 \\
        --recipe deel_tutorial --budget-seconds 65 --data path/to/mnist.npz
    python benchmarks/certified.py --list
    python benchmarks/certified.py --task mnist_l2 --recipe recommended \\
        --budget-seconds 65 --repeats 3

Tasks: `mnist_l2` (ε = 0.5, 1.0, 1.58), `mnist_linf` (ℓ∞, ε = 0.1, 0.3),
`fashion_mnist_l2` and `cifar10_l2` (ε = 36/255, 72/255, 108/255), the last
two only with `--data` (a Keras-format .npz with x_train, y_train, x_test,
y_test; pixels 0-255). MNIST defaults to the project's shared copy
(`../shared/data/mnist.npz`), like the examples.

`--repeats K` runs the benchmark K times, each in a fresh subprocess with
seed `--seed + i`, prints the median and the min–max spread of every
metric, and ends with one JSON line of the medians with a `"spread"` field
(`{metric: [min, max]}`, `certified` per ε) and the runs under `"runs"`.

`--smoke` (the test suite's run) shortens the budget to 5 s, trains on the
first 512 training images and certifies 64 test images; without a data
file it uses random images of the task's shape.

For `benchmarks/run_all.py`, `--json PATH` (with or without `--quick`,
which shortens the budget to 20 s and certifies 2,000 test images) runs
the task's `recommended` and `deel_tutorial` recipes and writes one row
per metric, ours = `recommended`, reference = `deel_tutorial`: accuracies,
so a ratio above 1 is better.

On TensorFlow the training data is fed as a shuffled, batched `tf.data`
pipeline with autotuning off (as in `mnist_deel_tutorial.py`: on a 2-core
machine the autotuned pipeline Keras builds for NumPy arrays stalls whole
epochs at random); on JAX and torch `fit` gets the NumPy arrays.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
EXAMPLES = os.path.join(REPO_ROOT, "examples")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--task", default="mnist_l2",
                   help="mnist_l2, mnist_linf, fashion_mnist_l2, cifar10_l2")
    p.add_argument("--recipe", default="deel_tutorial",
                   help="a recipe of examples/recipes.py (see --list)")
    p.add_argument("--budget-seconds", type=float, default=None,
                   help="wall-clock budget of data loading, compilation "
                   "and training (default 65; 20 with --quick)")
    p.add_argument("--data", default=None,
                   help="Keras-format .npz (x_train, y_train, x_test, "
                   "y_test); default for MNIST: the shared copy")
    p.add_argument("--test-samples", type=int, default=None,
                   help="certify only the first N test images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1,
                   help="run K times in fresh subprocesses; report medians")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override an option of recipes built with "
                   "recipes.l2_recipe (e.g. --set lr=3e-3 --set loss=cll); "
                   "VALUE is read as JSON, else as a string")
    p.add_argument("--verbose", type=int, default=2,
                   help="verbosity of fit (0, 1 or 2)")
    p.add_argument("--list", action="store_true",
                   help="list the recipes of every task and exit")
    p.add_argument("--json", default=None, metavar="PATH",
                   help="benchmark-suite mode (run_all.py): run "
                   "'recommended' and 'deel_tutorial' and write rows to PATH")
    p.add_argument("--quick", action="store_true",
                   help="short run: budget 20 s and 2,000 test images "
                   "unless given")
    p.add_argument("--save-model", default=None, metavar="PATH",
                   help="save the trained model (.keras) before certifying "
                   "(for benchmarks/certification_gap.py)")
    p.add_argument("--smoke", action="store_true",
                   help="test-suite run: budget 5 s, 512 training and 64 "
                   "test images unless given, random images of the task's "
                   "shape when no data file is present")
    args = p.parse_args(argv)
    if args.budget_seconds is None:
        args.budget_seconds = (
            5.0 if args.smoke else 20.0 if args.quick else 65.0
        )
    if args.quick and args.test_samples is None:
        args.test_samples = 2000
    if args.smoke and args.test_samples is None:
        args.test_samples = SMOKE_TEST_SAMPLES
    if args.budget_seconds <= 0:
        p.error("--budget-seconds must be > 0")
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    if args.test_samples is not None and args.test_samples < 1:
        p.error("--test-samples must be >= 1")
    args.overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            p.error(f"--set expects KEY=VALUE, got {item!r}")
        try:
            args.overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            args.overrides[key] = value
    return args


def _load_average():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


# --------------------------------------------------------------------------
# One run (in this process).
# --------------------------------------------------------------------------


SMOKE_TRAIN_SAMPLES = 512
SMOKE_TEST_SAMPLES = 64


def random_task_data(task, seed=0):
    """Random images and labels of the task's shape, for `--smoke` runs
    without a data file (accuracy on them means nothing)."""
    import numpy as np

    rng = np.random.default_rng(seed)

    def images(n):
        return rng.random((n, *task.input_shape), dtype=np.float32)

    def labels(n):
        return rng.integers(0, task.num_classes, n).astype(np.int64)

    return (images(SMOKE_TRAIN_SAMPLES), labels(SMOKE_TRAIN_SAMPLES),
            images(SMOKE_TEST_SAMPLES), labels(SMOKE_TEST_SAMPLES))


def load_task_data(task, data, default_mnist, smoke=False):
    """`(x_train, y_train, x_test, y_test)` of the task, pixels in [0, 1].

    With `smoke`, only the first `SMOKE_TRAIN_SAMPLES` training images are
    kept, and random images stand in when no data file is present."""
    if smoke:
        have_file = data is not None or (
            task.dataset == "mnist" and os.path.isfile(default_mnist)
        )
        if not have_file:
            print("--smoke: no data file, random images", flush=True)
            return random_task_data(task)
        x_train, y_train, x_test, y_test = load_task_data(
            task, data, default_mnist
        )
        return (x_train[:SMOKE_TRAIN_SAMPLES], y_train[:SMOKE_TRAIN_SAMPLES],
                x_test, y_test)
    import _common

    if task.dataset == "mnist":
        if data is None and not os.path.isfile(default_mnist):
            raise SystemExit(
                f"No MNIST file at {default_mnist}: pass --data "
                "path/to/mnist.npz (Keras format: x_train, y_train, x_test, "
                "y_test)."
            )
        return _common.load_mnist(data)
    if data is None:
        raise SystemExit(
            f"Task {task.name!r} needs its data: pass --data "
            f"path/to/{task.dataset}.npz (Keras format: x_train, y_train, "
            "x_test, y_test, pixels 0-255)."
        )
    if task.dataset == "cifar10":
        return _common.load_cifar10(data)
    return _common.load_mnist(data)  # same format and shape as MNIST


def _training_data(keras, x, y, batch_size, seed):
    """What `fit` gets: a non-autotuned tf.data pipeline on TensorFlow."""
    if keras.config.backend() != "tensorflow":
        return dict(x=x, y=y, batch_size=batch_size, shuffle=True)
    # Shuffled by the pipeline itself (fit's `shuffle` does not apply).
    import tensorflow as tf

    dataset = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size)
        .prefetch(1)
    )
    options = tf.data.Options()
    options.autotune.enabled = False
    return dict(x=dataset.with_options(options), shuffle=False)


def run_once(args):
    sys.path.insert(0, EXAMPLES)
    import _common  # noqa: F401  (puts the checkout on sys.path)
    import numpy as np
    import recipes

    import keras
    import keras_lipschitz
    from keras_lipschitz.certification import linf_box

    if args.task not in recipes.TASKS:
        raise SystemExit(
            f"Unknown task {args.task!r}; tasks: {sorted(recipes.TASKS)}"
        )
    try:
        recipe_fn = recipes.get_recipe(args.task, args.recipe)
    except ValueError as err:
        raise SystemExit(str(err))
    task = recipes.TASKS[args.task]
    load_before = _load_average()

    budget = args.budget_seconds
    start = time.perf_counter()

    def progress():
        return (time.perf_counter() - start) / budget

    keras.utils.set_random_seed(args.seed)
    x_train, y_train, x_test, y_test = load_task_data(
        task, args.data, _common.DEFAULT_MNIST, smoke=args.smoke
    )
    if args.test_samples is not None:
        x_test, y_test = x_test[: args.test_samples], y_test[
            : args.test_samples]

    try:
        recipe = recipe_fn(
            task,
            argparse.Namespace(
                seed=args.seed, progress=progress, overrides=args.overrides
            ),
        )
    except ValueError as err:  # e.g. a bad --set option
        raise SystemExit(f"recipe {args.recipe!r}: {err}")
    model = recipe.model
    model.compile(**recipe.compile_kwargs)
    fit_kwargs = dict(recipe.fit_kwargs)
    batch_size = fit_kwargs.pop("batch_size")
    steps_per_epoch = -(-len(x_train) // batch_size)

    class TimeBudget(keras.callbacks.Callback):
        """Stops training at the end of the batch that spends the budget."""

        def __init__(self):
            super().__init__()
            self.steps = 0
            self.last_step_start = None  # seconds since `start`
            self._previous_end = None

        def on_train_begin(self, logs=None):
            self._previous_end = time.perf_counter() - start

        def on_train_batch_end(self, batch, logs=None):
            now = time.perf_counter() - start
            self.steps += 1
            self.last_step_start = self._previous_end
            self._previous_end = now
            if now >= budget:
                self.model.stop_training = True

    stopper = TimeBudget()
    callbacks = list(fit_kwargs.pop("callbacks", None) or []) + [stopper]
    data = _training_data(keras, x_train, y_train, batch_size, args.seed)
    print(
        f"backend {keras.config.backend()}, keras {keras.__version__}; task "
        f"{task.name}, recipe {args.recipe}; train {x_train.shape}, test "
        f"{x_test.shape}; budget {budget:g} s; setup "
        f"{time.perf_counter() - start:.1f} s",
        flush=True,
    )
    model.fit(
        **data,
        epochs=10**6,
        callbacks=callbacks,
        verbose=args.verbose,
        **fit_kwargs,
    )
    fit_end = time.perf_counter() - start
    if recipe.finalize is not None:
        recipe.finalize(model, x_train)
    train_s = time.perf_counter() - start
    epochs = stopper.steps / steps_per_epoch
    print(
        f"trained {stopper.steps} steps ({epochs:.2f} epochs) in "
        f"{fit_end:.1f} s"
        + (f", then finalize {train_s - fit_end:.1f} s"
           if recipe.finalize is not None else ""),
        flush=True,
    )

    if args.save_model:
        model.save(args.save_model)
    # Certification: inference-mode weights, guaranteed float64 bounds.
    cert_start = time.perf_counter()
    radius = keras_lipschitz.certify(
        model, x_test, y_test, norm=task.norm, batch_size=1024
    )
    logits = model.predict(x_test, batch_size=1024, verbose=0)
    correct = np.argmax(np.asarray(logits), axis=-1) == y_test
    certify_s = time.perf_counter() - cert_start
    # The ℓ2 bound of the whole model (ℓ∞ nets are certified by margins).
    lipschitz = (
        float(keras_lipschitz.lipschitz_bound(model))
        if task.norm == "l2" else None
    )
    clean = float(np.mean(correct))
    certified = {
        str(float(e)): float(np.mean(correct & (radius > e)))
        for e in task.epsilons
    }
    certified_box = None
    if task.norm == "linf":
        # The ℓ∞ papers' convention: perturbed images stay in [0, 1],
        # certified by interval bounds through every layer (one pass per
        # radius); never below the margin certificate above.
        box_start = time.perf_counter()
        certified_box = {
            str(float(e)): float(np.mean(correct & linf_box.certified_at(
                model, x_test, y_test, e, input_range=(0.0, 1.0),
                batch_size=256,
            )))
            for e in task.epsilons
        }
        certify_s += time.perf_counter() - box_start
    if lipschitz is not None:
        print(f"guaranteed Lipschitz bound of the model: {lipschitz:.6f}")
    print(f"clean accuracy: {clean:.4f}")
    for e, acc in certified.items():
        print(f"certified accuracy ({task.norm}) at eps={float(e):.4g}: "
              f"{acc:.4f}")
    for e, acc in (certified_box or {}).items():
        print(f"certified accuracy (linf, inputs in [0, 1], interval "
              f"bounds) at eps={float(e):.4g}: {acc:.4f}")
    print(f"certification: {certify_s:.1f} s")
    result = {
        "task": task.name,
        "recipe": args.recipe,
        "backend": keras.config.backend(),
        "budget_s": budget,
        "train_s": round(train_s, 3),
        "epochs": round(epochs, 4),
        "clean": clean,
        "certified": certified,
        "certified_box": certified_box,
        "overrides": args.overrides,
        "steps": stopper.steps,
        "last_step_start_s": round(stopper.last_step_start, 3),
        "certify_s": round(certify_s, 3),
        "lipschitz": lipschitz,
        "load_average": [load_before, _load_average()],
    }
    print(json.dumps(result), flush=True)
    return result


# --------------------------------------------------------------------------
# Repeats (subprocesses) and --list.
# --------------------------------------------------------------------------


def _child_command(args, recipe, seed):
    """The command line of one run in a fresh process."""
    command = [
        sys.executable, os.path.abspath(__file__),
        "--task", args.task,
        "--recipe", recipe,
        "--budget-seconds", repr(args.budget_seconds),
        "--seed", str(seed),
        "--verbose", str(args.verbose),
    ]
    if args.data is not None:
        command += ["--data", args.data]
    if args.test_samples is not None:
        command += ["--test-samples", str(args.test_samples)]
    if args.smoke:
        command.append("--smoke")
    for item in args.set:
        command += ["--set", item]
    return command


def _last_json(text):
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def _summary(values):
    return statistics.median(values), min(values), max(values)


def run_repeats(args, recipe=None):
    """`args.repeats` runs of `recipe` in fresh processes, seeds
    `args.seed + i`; prints the medians and spreads and, last, their JSON
    line. Returns that summary."""
    recipe = recipe or args.recipe
    runs = []
    for i in range(args.repeats):
        child = _child_command(args, recipe, args.seed + i)
        print(f"repeat {i + 1}/{args.repeats}: {' '.join(child[1:])}",
              flush=True)
        proc = subprocess.run(
            child, stdout=subprocess.PIPE, text=True, check=False
        )
        sys.stdout.write(proc.stdout)
        result = _last_json(proc.stdout) if proc.returncode == 0 else None
        if result is None:
            raise SystemExit(
                f"repeat {i + 1} of {recipe!r} failed (exit code "
                f"{proc.returncode})"
            )
        runs.append(result)

    metrics = {k: [r[k] for r in runs] for k in ("train_s", "epochs",
                                                 "clean")}
    eps_keys = list(runs[0]["certified"])
    certified = {e: [r["certified"][e] for r in runs] for e in eps_keys}
    print(f"\n{recipe}: {args.repeats} runs, median [min, max]:")
    for name, values in metrics.items():
        m, lo, hi = _summary(values)
        print(f"  {name}: {m:.4g} [{lo:.4g}, {hi:.4g}]")
    for e, values in certified.items():
        m, lo, hi = _summary(values)
        print(f"  certified at eps={float(e):.4g}: {m:.4f} "
              f"[{lo:.4f}, {hi:.4f}]")
    result = {
        "task": runs[0]["task"],
        "recipe": runs[0]["recipe"],
        "backend": runs[0]["backend"],
        "budget_s": runs[0]["budget_s"],
        "train_s": _summary(metrics["train_s"])[0],
        "epochs": _summary(metrics["epochs"])[0],
        "clean": _summary(metrics["clean"])[0],
        "certified": {e: _summary(v)[0] for e, v in certified.items()},
        "repeats": args.repeats,
        "spread": {
            **{k: list(_summary(v)[1:]) for k, v in metrics.items()},
            "certified": {e: list(_summary(v)[1:])
                          for e, v in certified.items()},
        },
        "seeds": [args.seed + i for i in range(args.repeats)],
        "runs": runs,
    }
    print(json.dumps(result), flush=True)
    return result


def suite_rows(args):
    """`run_all.py` mode (`--json`): `recommended` against `deel_tutorial`
    on the task, same budget, each run in a fresh process; one row per
    metric (clean and certified at each ε), ours = `recommended`,
    reference = `deel_tutorial`, medians over `--repeats`. These are
    accuracies: ratio = ours / reference, **above 1 is better**."""
    results = {name: run_repeats(args, name)
               for name in ("recommended", "deel_tutorial")}
    ours, ref = results["recommended"], results["deel_tutorial"]
    notes = (
        f"{args.budget_seconds:g} s wall-clock budget (data, compilation, "
        f"training), median of {args.repeats}; epochs run: recommended "
        f"{ours['epochs']:.2f}, deel_tutorial {ref['epochs']:.2f}; higher "
        "is better"
    )
    metrics = [("clean accuracy", "clean", ours["clean"], ref["clean"])]
    for e in ours["certified"]:
        metrics.append((
            f"certified accuracy at eps={float(e):.4g}", e,
            ours["certified"][e], ref["certified"][e],
        ))
    rows = []
    for label, _, mine, theirs in metrics:
        rows.append({
            "benchmark": "certified",
            "backend": ours["backend"],
            "metric": f"{args.task}: {label}",
            "unit": "fraction of the test set",
            "ours": mine,
            "reference": theirs,
            "reference_name": "deel_tutorial recipe (deel-lip MNIST "
            "tutorial model and loss), same budget",
            "ratio": mine / theirs if theirs else None,
            "notes": notes,
        })
    return rows


def list_recipes():
    sys.path.insert(0, EXAMPLES)
    import recipes

    for name, task in recipes.TASKS.items():
        eps = ", ".join(f"{e:.4g}" for e in task.epsilons)
        print(f"{name} ({task.norm}, eps {eps}):")
        for recipe_name, fn in recipes.RECIPES.get(name, {}).items():
            doc = (fn.__doc__ or "").strip().split("\n")[0]
            print(f"  {recipe_name}: {doc}")


def main(argv=None):
    args = parse_args(argv)
    if args.list:
        list_recipes()
    elif args.json:
        rows = suite_rows(args)
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    elif args.repeats > 1:
        run_repeats(args)
    else:
        run_once(args)


if __name__ == "__main__":
    main()
