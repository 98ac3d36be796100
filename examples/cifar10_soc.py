"""CIFAR-10, l2: train a LipConvNet of skew orthogonal convolutions, certify.

The model is `keras_lipschitz.models.LipConvNet` (Singla & Feizi, ICML 2021;
LLN head and Householder activations of Singla, Singla & Feizi, ICLR 2022):
5 blocks of depth/5 `SOCConv2D` layers, channels doubling at every stride-2
block, HH1 activations, `FrobeniusDense(10, disjoint_neurons=True)` (LLN)
on the flattened 1x1x1024 features. In front of it, the papers' input
normalization `(x - mean) / 0.2507` as a `keras.layers.Normalization`
layer, so that the certified radii are in pixel units ([0, 1]) and the
guaranteed bound includes the factor 1 / 0.2507.

Losses (`--loss`):

- `cll`: `CLL.for_model(model, epsilon, slack, lipschitz=1/0.2507)`, the
  Calibrated Lipschitz-Margin loss (Losch et al., GCPR 2023; defaults of
  its official SOC runs: epsilon 0.25, p = 0.05);
- `offset_ce`: cross-entropy with the true logit lowered by an offset,
  `T * CE(softmax((z - offset * onehot) / T), y)` (the offset / temperature
  cross-entropy of Prach & Lampert, ECCV 2022), here with
  `offset = sqrt(2) * (36/255) / 0.2507` (the margin an LLN model needs for
  radius 36/255 between orthogonal class vectors) and T = 0.25.

Training follows the papers' recipe, shortened by default: SGD, momentum
0.9, learning rate 0.1 divided by 10 at 50 % and 75 % of the epochs, weight
decay 5e-4 on the SOC kernels (an L2 penalty 2.5e-4 * ||M||^2), random crops and horizontal flips. The paper
runs 200 epochs; `--epochs` defaults to 200 here too, which takes days on a
CPU. Certification: `keras_lipschitz.certify` in inference mode (15-term
series, i.e. highest power 14), float64, the pairwise LLN certificate with
the guaranteed backbone bound; certified accuracy at eps = 36/255, 72/255,
108/255.

Usage (pick the backend before Python starts):

    KERAS_BACKEND=jax python examples/cifar10_soc.py --loss cll \\
        --data path/to/cifar-10-batches-py --depth 15
    KERAS_BACKEND=torch python examples/cifar10_soc.py --smoke

`--data` is the extracted `cifar-10-batches-py` directory or a Keras-format
`.npz`; without it `tensorflow_datasets` is tried. `--smoke` runs a few
steps of a tiny LipConvNet on 256 examples (random data of CIFAR's shape
when no data is at hand).
"""

import math
import time

import numpy as np
from _common import SMOKE_SAMPLES
from _common import load_cifar10
from _common import parser
from _common import report

import keras  # noqa: E402  (after _common, which finds the checkout)
from keras import ops  # noqa: E402

import keras_lipschitz  # noqa: E402
from keras_lipschitz import losses  # noqa: E402
from keras_lipschitz.models import LipConvNet  # noqa: E402

EPSILONS = (36 / 255, 72 / 255, 108 / 255)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
# The SOC papers' scalar std: the bound is multiplied by 1 / 0.2507.
CIFAR_STD = 0.2507


def offset_cross_entropy(offset, temperature):
    """`T * CE(softmax((z - offset * onehot) / T), y)`, sparse labels."""

    def loss(y_true, y_pred):
        one_hot = ops.one_hot(
            ops.cast(ops.reshape(y_true, (-1,)), "int32"), y_pred.shape[-1]
        )
        logits = (y_pred - offset * one_hot) / temperature
        return temperature * keras.losses.categorical_crossentropy(
            one_hot, logits, from_logits=True
        )

    return loss


def build_model(args):
    """Normalization, then the LipConvNet layers: the model and its features.

    Flat, so that the model ends in the LLN layer and `certify` uses the
    pairwise certificate with the bound of everything before it (the
    normalization's 1/0.2507 included).
    """
    regularizer = keras.regularizers.L2(args.weight_decay / 2)
    net = LipConvNet(
        depth=args.depth,
        width=args.width,
        num_classes=10,
        input_shape=(32, 32, 3),
        head="lln",
        activation=args.activation,
        fast_backward=args.fast_backward,
        kernel_regularizer=regularizer,
    )
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Normalization(
        mean=CIFAR_MEAN, variance=(CIFAR_STD**2,) * 3, name="normalize"
    )(inputs)
    features = None
    for layer in net.layers[1:]:
        x = layer(x)
        if layer.name == "flatten":
            features = x
    model = keras.Model(inputs, x, name="cifar10_soc")
    return model, keras.Model(inputs, features, name="cifar10_soc_features")


def augment(x, rng):
    """Random 4-pixel-padded crops and horizontal flips (NumPy, per epoch)."""
    padded = np.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)), mode="reflect")
    out = np.empty_like(x)
    shifts = rng.integers(0, 9, size=(len(x), 2))
    flips = rng.random(len(x)) < 0.5
    for i, (a, b) in enumerate(shifts):
        crop = padded[i, a : a + 32, b : b + 32]
        out[i] = crop[:, ::-1] if flips[i] else crop
    return out


def load_data(args):
    """CIFAR-10; in smoke mode without data, random data instead."""
    try:
        return load_cifar10(args.data, smoke=args.smoke)
    except SystemExit:
        # Random data only in smoke mode, and never instead of a --data
        # the user gave.
        if not args.smoke or args.data is not None:
            raise
    print("--smoke without CIFAR-10 at hand: random data of CIFAR's shape.")
    rng = np.random.default_rng(args.seed)
    x = rng.uniform(size=(2, SMOKE_SAMPLES, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, (2, SMOKE_SAMPLES))
    return x[0], y[0], x[1], y[1]


def main(argv=None):
    p = parser(
        __doc__.split("\n")[0], epochs=200, batch_size=128,
        plot="cifar10_soc.png",
    )
    p.add_argument("--loss", choices=("cll", "offset_ce"), default="cll")
    p.add_argument("--depth", type=int, default=5,
                   help="LipConvNet depth, a multiple of 5 (paper: 5-40)")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--activation", choices=("hh1", "maxmin"), default="hh1")
    p.add_argument("--fast-backward", action="store_true",
                   help="the NeurIPS'22 fast SOC backward pass")
    p.add_argument("--learning-rate", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--cll-epsilon", type=float, default=0.25)
    p.add_argument("--slack", type=float, default=0.05)
    p.add_argument("--offset", type=float,
                   default=math.sqrt(2) * (36 / 255) / CIFAR_STD)
    p.add_argument("--temperature", type=float, default=0.25)
    args = p.parse_args(argv)
    if args.smoke:
        args.epochs, args.depth, args.width = 1, 5, 4
    keras.utils.set_random_seed(args.seed)
    x_train, y_train, x_test, y_test = load_data(args)
    print(
        f"backend {keras.config.backend()}, keras {keras.__version__}; "
        f"train {x_train.shape}, test {x_test.shape}; loss {args.loss}, "
        f"LipConvNet-{args.depth} width {args.width}"
    )

    model, features = build_model(args)
    if args.loss == "cll":
        loss = losses.CLL(
            epsilon=args.cll_epsilon,
            slack=args.slack,
            lipschitz=1.0 / CIFAR_STD,
            kernel_layer=model.get_layer("lln"),
        )
    else:
        loss = offset_cross_entropy(args.offset, args.temperature)
    steps = max(1, math.ceil(len(x_train) / args.batch_size)) * args.epochs
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
        [int(0.5 * steps), int(0.75 * steps)],
        [args.learning_rate, args.learning_rate / 10, args.learning_rate / 100],
    )
    optimizer = keras.optimizers.SGD(schedule, momentum=0.9)
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])

    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        print(f"epoch {epoch + 1}/{args.epochs}")
        model.fit(
            augment(x_train, rng), y_train,
            batch_size=args.batch_size, epochs=1, verbose=1,
        )
    print(f"training time: {time.perf_counter() - start:.1f}s")

    # Sound certificates: inference-mode weights (eval_terms), guaranteed
    # float64 bounds, pairwise LLN certificate over all classes.
    body = keras_lipschitz.lipschitz_bound(features)
    print(f"guaranteed bound of the feature map (pixels): {body:.6f}")
    radius = keras_lipschitz.certify(model, x_test, y_test, batch_size=256)
    logits = model.predict(x_test, batch_size=256, verbose=0)
    correct = np.argmax(logits, axis=1) == y_test
    report(
        radius, correct, EPSILONS, args.plot,
        title=f"CIFAR-10, LipConvNet-{args.depth}, {args.loss}",
    )


if __name__ == "__main__":
    main()
