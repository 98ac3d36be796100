"""deel-torchlip (PyTorch): the MNIST tutorial model, one epoch.

Runs inside `.venv-torchlip` (benchmarks/setup_peers.sh). Times one epoch
of deel-torchlip's version of the model of
benchmarks/mnist_deel_tutorial.py (SpectralConv2d(16) -> GroupSort2 ->
ScaledL2NormPool2d -> SpectralConv2d(32) -> GroupSort2 ->
ScaledL2NormPool2d -> Flatten -> SpectralLinear(64) -> GroupSort2 ->
SpectralLinear(10)) against the same shapes in plain torch
(Conv2d/ReLU/AvgPool2d/Linear), both with a plain torch training loop
(Adam 1e-3, cross-entropy, batch 256, shuffled), synthetic data, a warm-up
and interleaved repeats. (keras-lipschitz on the torch backend runs
through Keras's `fit`, whose own overhead is included in our time.)
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402


def main():
    args = _common.parse_args(__doc__.split("\n")[0])
    import torch
    from deel import torchlip

    try:
        from importlib.metadata import version

        lib_version = version("deel-torchlip")
    except Exception:  # pragma: no cover
        lib_version = "?"
    torch.manual_seed(0)
    x, labels = _common.synthetic_mnist(args.epoch_samples, channels_last=False)
    x = torch.as_tensor(x)
    y = torch.as_tensor(labels)

    peer = torchlip.Sequential(
        torchlip.SpectralConv2d(1, 16, 3, padding=1),
        torchlip.GroupSort2(),
        torchlip.ScaledL2NormPool2d(2),
        torchlip.SpectralConv2d(16, 32, 3, padding=1),
        torchlip.GroupSort2(),
        torchlip.ScaledL2NormPool2d(2),
        torch.nn.Flatten(),
        torchlip.SpectralLinear(32 * 7 * 7, 64),
        torchlip.GroupSort2(),
        torchlip.SpectralLinear(64, 10),
    )
    plain = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AvgPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AvgPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(32 * 7 * 7, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 10),
    )
    bs = args.batch_size
    loss_fn = torch.nn.CrossEntropyLoss()

    def epoch_fn(model, n=None):
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

        def run(n=n):
            model.train()
            count = len(x) if n is None else n
            order = torch.randperm(count)
            for start in range(0, count, bs):
                index = order[start : start + bs]
                optimizer.zero_grad()
                loss = loss_fn(model(x[index]), y[index])
                loss.backward()
                optimizer.step()

        return run

    models = {"peer": peer, "plain": plain}
    fns = {name: epoch_fn(m) for name, m in models.items()}
    for fn in fns.values():
        fn(n=min(len(x), 3 * bs))  # warm-up
    times = _common.time_interleaved(fns, args.repeats)
    result = {
        "library": "deel-torchlip",
        "library_version": lib_version,
        "framework": f"torch {torch.__version__} (plain torch loop)",
        "framework_short": "torch",
        "framework_backend": "torch",
        "model_note": "deel-torchlip's SpectralConv2d/SpectralLinear run "
        "spectral normalization AND Bjorck orthonormalization (their "
        "defaults); keras-lipschitz's run power iteration only; ours is "
        "timed through Keras fit, the peer through a plain torch loop",
    }
    _common.emit(args, result, times)


if __name__ == "__main__":
    main()
