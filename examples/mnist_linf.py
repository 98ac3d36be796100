"""Train an ℓ∞-distance net (or SortNet) on MNIST and certify it in ℓ∞.

The model is the papers' MLP of ℓ∞-distance neurons (Zhang et al., ICML
2021 / ICLR 2022), optionally with SortNet neurons (NeurIPS 2022):

    Flatten -> (depth - 1) x LinfDistDense(width, mean shift)
    -> LinfDistDense(10, bias, no mean shift, logits z = -y)

Every logit is 1-Lipschitz w.r.t. ℓ∞ at p = inf, so the certified ℓ∞
radius is (z_y - max_{j != y} z_j) / 2 (`certify(..., norm="linf")`).

Training follows the official MNIST recipe, compressed in time: the
clipped-hinge + λ·cross-entropy loss (`LinfDistHinge`, ε_train = 0.45 for
ε = 0.3, λ decayed log-linearly per epoch from 0.05 to 2e-4, with the
learned cross-entropy scale s of the official `scalar=True`, held by a
`LogitScale` identity layer, so certificates use the unscaled logits), Adam
(β = 0.9, 0.99, eps 1e-10) with a cosine learning rate from 0.03, and
p raised per minibatch from 8 to 1000 over the first `--p-fraction` of
the epochs, then p = inf (the paper: epochs 25 to 400 of 450). Before
testing, the running means are recomputed at p = inf on training
images. The official numbers are for inputs normalized by
(x - 0.1307) / 0.3081; on pixels the same network has weights and logits
0.3081 times smaller, so by default (`--input-scale 0.3081`) the learning
rate, initial kernels, identity value and initial logit scale are converted
(`recipes.linf_pixel_scale_options`; 30 min of this recipe on 2 CPU cores:
0.892 certified at ε = 0.3, see examples/README.md). The papers train
width 5120 for 450 epochs on a GPU; the defaults here (width 1024, a few
epochs) fit a CPU budget.

Usage (pick the backend before Python starts):

    KERAS_BACKEND=jax python examples/mnist_linf.py --epochs 4
    KERAS_BACKEND=torch python examples/mnist_linf.py --neuron sortnet
    KERAS_BACKEND=jax python examples/mnist_linf.py --smoke
"""

import math
import time

from _common import load_mnist
from _common import parser
from _common import report
from recipes import linf_pixel_scale_options

import keras  # noqa: E402  (after _common, which finds the checkout)
import numpy as np  # noqa: E402

import keras_lipschitz  # noqa: E402
from keras_lipschitz.callbacks import LossParamScheduler  # noqa: E402
from keras_lipschitz.callbacks import PNormScheduler  # noqa: E402
from keras_lipschitz.losses import LinfDistHinge  # noqa: E402
from keras_lipschitz.models import linf_dist_net  # noqa: E402
from keras_lipschitz.models import recompute_running_means  # noqa: E402

EPSILONS = (0.1, 0.3)


def main():
    p = parser(__doc__.splitlines()[0], epochs=4, batch_size=512,
               plot="mnist_linf.png")
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--depth", type=int, default=5)
    p.add_argument("--neuron", choices=["linf", "sortnet"], default="linf")
    p.add_argument("--q", type=float, default=0.75,
                   help="SortNet keep probability")
    p.add_argument("--eps-train", type=float, default=0.45)
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default 0.03 x --input-scale)")
    p.add_argument("--input-scale", type=float, default=0.3081,
                   help="the official recipe's input std: its learning "
                   "rate, initial kernels, identity value and logit scale "
                   "are converted to pixel inputs by this factor (1: the "
                   "official numbers unconverted)")
    p.add_argument("--p-fraction", type=float, default=0.75,
                   help="fraction of the epochs over which p goes 8 -> 1000")
    p.add_argument("--ce-scale", choices=["learned", "fixed"],
                   default="learned",
                   help="cross-entropy logit scale: learned as in the "
                   "official code, or fixed at 1")
    p.add_argument("--train-samples", type=int, default=None,
                   help="use only the first N training images")
    args = p.parse_args()
    keras.utils.set_random_seed(args.seed)
    x_train, y_train, x_test, y_test = load_mnist(args.data, args.smoke)
    if args.train_samples:
        x_train, y_train = x_train[: args.train_samples], y_train[
            : args.train_samples]
    epochs = 1 if args.smoke else args.epochs
    width = 32 if args.smoke else args.width
    depth = 2 if args.smoke else args.depth

    lr = 0.03 * args.input_scale if args.lr is None else args.lr
    model = linf_dist_net(
        (28, 28, 1), 10, depth=depth, width=width, neuron=args.neuron,
        q=args.q, seed=args.seed, learned_scale=args.ce_scale == "learned",
        **linf_pixel_scale_options(args.input_scale, lr),
    )
    steps = epochs * math.ceil(len(x_train) / args.batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(lr, steps)
    lambdas = np.geomspace(0.05, 2e-4, max(epochs, 2))
    model.compile(
        optimizer=keras.optimizers.Adam(
            schedule, beta_1=0.9, beta_2=0.99, epsilon=1e-10
        ),
        loss=LinfDistHinge(
            epsilon=args.eps_train,
            ce_weight=0.05,
            scale=(
                model.get_layer("logit_scale")
                if args.ce_scale == "learned"
                else 1.0
            ),
        ),
        metrics=[
            "accuracy",
            keras_lipschitz.metrics.CertifiedAccuracy(
                0.3, norm="linf", name="certified_0.3"
            ),
        ],
    )
    callbacks = [
        PNormScheduler(0, max(epochs * args.p_fraction, 1e-3)),
        LossParamScheduler("ce_weight", lambda e: float(lambdas[e])),
    ]
    start = time.time()
    model.fit(
        x_train,
        y_train,
        epochs=epochs,
        batch_size=args.batch_size,
        callbacks=callbacks,
        verbose=1,
    )
    train_time = time.time() - start

    # The last steps may have run at a finite p: means at p = inf.
    recompute_running_means(model, x_train[:10000])
    start = time.time()
    radius = keras_lipschitz.certify(model, x_test, y_test, norm="linf")
    certify_time = time.time() - start
    predictions = np.argmax(model.predict(x_test, verbose=0), axis=1)
    correct = predictions == y_test
    print(f"backend: {keras.config.backend()}, model: depth {depth}, width "
          f"{width}, {args.neuron} neurons, epochs: {epochs}, train time: "
          f"{train_time:.0f} s, certification: {certify_time:.1f} s")
    report(radius, correct, EPSILONS, args.plot,
           f"MNIST, ℓ∞-dist net ({args.neuron})", norm="linf")


if __name__ == "__main__":
    main()
