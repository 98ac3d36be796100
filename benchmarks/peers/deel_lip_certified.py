"""deel-lip 1.5.0: its MNIST tutorial trained for a wall-clock budget, then
its own certificate, and its exported weights for a sound re-certification.

Runs inside `.venv-deel-lip` (benchmarks/setup_peers.sh). The model, loss
and optimizer are the deel-lip tutorial's, as in the issue's table and in
`examples/recipes.py::deel_tutorial`: SpectralConv2D(16, 3) -> GroupSort2 ->
ScaledL2NormPooling2D(2) -> SpectralConv2D(32, 3) -> GroupSort2 ->
ScaledL2NormPooling2D(2) -> Flatten -> SpectralDense(64) -> GroupSort2 ->
SpectralDense(10), `MulticlassHKR(alpha=50, min_margin=0.2)`, Adam 1e-3,
batch 256. The budget clock starts before the data is loaded and training
stops at the end of the batch that spends it, as in
`benchmarks/certified.py`.

Reported (last line, one JSON object): clean accuracy and deel-lip's own
certified accuracy, a margin over sqrt(2) against a network *assumed*
1-Lipschitz (`CategoricalProvableRobustAccuracy`, `lip_const=1`), at
ε = 0.5, 1.0, 1.58. With `--export PATH`, the `vanilla_export`ed model's
weights (plain Conv2D/Dense kernels and biases, in layer order) are saved
to an `.npz`, which `benchmarks/certification_gap.py` re-certifies with
keras_lipschitz's guaranteed bounds.

Usage:

    .venv-deel-lip/bin/python benchmarks/peers/deel_lip_certified.py \\
        --budget-seconds 65 --data ../shared/data/mnist.npz --export deel.npz
"""

import argparse
import json
import os
import time

EPSILONS = (0.5, 1.0, 1.58)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget-seconds", type=float, default=65.0)
    p.add_argument("--data", required=True, help="Keras-format mnist.npz")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--export", default=None, help="write weights (.npz)")
    args = p.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    load_before = list(os.getloadavg())

    import numpy as np
    import tensorflow as tf
    from deel.lip.activations import GroupSort2
    from deel.lip.layers import ScaledL2NormPooling2D
    from deel.lip.layers import SpectralConv2D
    from deel.lip.layers import SpectralDense
    from deel.lip.losses import MulticlassHKR
    from deel.lip.model import Sequential as LipSequential

    keras = tf.keras
    budget = args.budget_seconds
    start = time.perf_counter()
    tf.random.set_seed(args.seed)
    np.random.seed(args.seed)
    with np.load(args.data) as f:
        x_train = (f["x_train"].astype("float32") / 255.0)[..., None]
        x_test = (f["x_test"].astype("float32") / 255.0)[..., None]
        y_train = np.eye(10, dtype="float32")[f["y_train"]]
        y_test = f["y_test"].astype("int64")
    model = LipSequential(
        [
            keras.layers.Input((28, 28, 1)),
            SpectralConv2D(16, (3, 3), padding="same"),
            GroupSort2(),
            ScaledL2NormPooling2D(pool_size=(2, 2)),
            SpectralConv2D(32, (3, 3), padding="same"),
            GroupSort2(),
            ScaledL2NormPooling2D(pool_size=(2, 2)),
            keras.layers.Flatten(),
            SpectralDense(64),
            GroupSort2(),
            SpectralDense(10),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=MulticlassHKR(alpha=50.0, min_margin=0.2),
    )

    class TimeBudget(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.steps = 0

        def on_train_batch_end(self, batch, logs=None):
            self.steps += 1
            if time.perf_counter() - start >= budget:
                self.model.stop_training = True

    # The pipeline of benchmarks/certified.py on TensorFlow.
    dataset = (
        tf.data.Dataset.from_tensor_slices((x_train, y_train))
        .shuffle(len(x_train), seed=args.seed, reshuffle_each_iteration=True)
        .batch(256)
        .prefetch(1)
    )
    options = tf.data.Options()
    options.autotune.enabled = False
    stopper = TimeBudget()
    model.fit(dataset.with_options(options), epochs=10**6,
              callbacks=[stopper], verbose=2)
    train_s = time.perf_counter() - start

    logits = model.predict(x_test, batch_size=1024, verbose=0)
    top2 = np.sort(logits, axis=1)[:, -2:]
    correct = np.argmax(logits, axis=1) == y_test
    # deel-lip's certificate: margin / (sqrt(2) * lip_const), lip_const = 1.
    radius = np.where(correct, (top2[:, 1] - top2[:, 0]) / np.sqrt(2.0), 0.0)
    result = {
        "library": "deel-lip",
        "budget_s": budget,
        "train_s": round(train_s, 3),
        "steps": stopper.steps,
        "epochs": round(stopper.steps / int(np.ceil(len(x_train) / 256)), 4),
        "clean": float(correct.mean()),
        "certified_assuming_l1": {
            str(e): float(np.mean(radius > e)) for e in EPSILONS
        },
        "load_average": [load_before, list(os.getloadavg())],
        "tensorflow": tf.__version__,
    }
    if args.export:
        plain = model.vanilla_export()
        arrays = {}
        index = 0
        for layer in plain.layers:
            weights = layer.get_weights()
            if not weights:
                continue
            arrays[f"{index}_kernel_{type(layer).__name__}"] = weights[0]
            arrays[f"{index}_bias_{type(layer).__name__}"] = weights[1]
            index += 1
        np.savez(args.export, **arrays)
        exported = plain.predict(x_test[:256], verbose=0)
        result["export_max_abs_diff"] = float(
            np.max(np.abs(exported - logits[:256]))
        )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
