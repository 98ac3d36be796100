"""deel-lip 1.5.0 (TensorFlow 2.15, Keras 2): the MNIST tutorial model.

Runs inside `.venv-deel-lip` (benchmarks/setup_peers.sh). Times one epoch
of deel-lip's model (SpectralConv2D(16) -> GroupSort2 ->
ScaledL2NormPooling2D -> SpectralConv2D(32) -> GroupSort2 ->
ScaledL2NormPooling2D -> Flatten -> SpectralDense(64) -> GroupSort2 ->
SpectralDense(10)) against the same shapes in plain tf.keras
(Conv2D/ReLU/AveragePooling2D/Dense), exactly as
benchmarks/mnist_deel_tutorial.py does for keras-lipschitz: same batch
size, optimizer, loss, synthetic data, warm-up and interleaving.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))  # benchmarks/
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import _common  # noqa: E402
# Stdlib-only at import time (no Keras 3, no keras_lipschitz).
from mnist_deel_tutorial import tf_dataset_without_autotune  # noqa: E402


def main():
    args = _common.parse_args(__doc__.split("\n")[0])
    import numpy as np
    import tensorflow as tf
    from deel import lip
    from deel.lip.activations import GroupSort2
    from deel.lip.layers import ScaledL2NormPooling2D
    from deel.lip.layers import SpectralConv2D
    from deel.lip.layers import SpectralDense
    from deel.lip.model import Sequential as LipSequential

    keras = tf.keras
    tf.random.set_seed(0)
    x, labels = _common.synthetic_mnist(args.epoch_samples)
    y = np.eye(10, dtype="float32")[labels]

    peer = LipSequential(
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
    plain = keras.Sequential(
        [
            keras.layers.Input((28, 28, 1)),
            keras.layers.Conv2D(16, 3, padding="same"),
            keras.layers.ReLU(),
            keras.layers.AveragePooling2D(2),
            keras.layers.Conv2D(32, 3, padding="same"),
            keras.layers.ReLU(),
            keras.layers.AveragePooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(64),
            keras.layers.ReLU(),
            keras.layers.Dense(10),
        ]
    )
    models = {"peer": peer, "plain": plain}
    bs = args.batch_size
    for model in models.values():
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss=keras.losses.CategoricalCrossentropy(from_logits=True),
        )

    # The input pipeline of mnist_deel_tutorial.py on TensorFlow (its
    # default --tf-data-autotune off), warm-up included.
    rem = args.epoch_samples % bs
    warm = min(args.epoch_samples, 3 * bs + rem)
    warm_dataset = tf_dataset_without_autotune(x[:warm], y[:warm], bs)
    for model in models.values():
        model.fit(warm_dataset, epochs=1, verbose=0)
    dataset = tf_dataset_without_autotune(x, y, bs)

    def epoch(model):
        return lambda: model.fit(dataset, epochs=1, verbose=0)

    times = _common.time_interleaved(
        {name: epoch(m) for name, m in models.items()}, args.repeats
    )
    result = {
        "library": "deel-lip",
        "library_version": getattr(lip, "__version__", "1.5.0"),
        "framework": f"TensorFlow {tf.__version__} (Keras 2, tf.keras)",
        "framework_short": "tf.keras",
        "framework_backend": "tensorflow",
        "model_note": "deel-lip's SpectralConv2D/SpectralDense run power "
        "iteration AND Bjorck orthonormalization (their defaults); "
        "keras-lipschitz's run power iteration only; tf.data autotune off "
        "for both",
    }
    _common.emit(args, result, times)


if __name__ == "__main__":
    main()
