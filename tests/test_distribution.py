"""Distributed training on each engine, on CPU (docs/scaling.md).

Each engine's test runs only under its own `KERAS_BACKEND`, in a fresh
subprocess (this file is also the worker script), because the device setup
must happen before the engine is imported:

- JAX: 4 host devices (`XLA_FLAGS=--xla_force_host_platform_device_count=4`),
  `keras.distribution.DataParallel` and `ModelParallel` with a `LayoutMap`
  sharding the dense kernels;
- TensorFlow: `tf.distribute.MirroredStrategy` over 2 logical CPU devices;
- torch: `DistributedDataParallel` over 2 processes (gloo), with a torch
  training loop around the Keras model.

Every run trains the same model (all five constrained layer types, their
power-iteration state, and the batch-global `MulticlassHKR` loss) on the
same batch and compares it with single-device training: losses, every
weight (raw kernels *and* the non-trainable power-iteration vectors), the
state on every replica, and the exact norms of the trained layers. A direct
test checks that the loss and its gradient are the single-device ones when
the batch is split, and that without the cross-replica class counts they
would not be (so the test can fail).
"""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT_TAG = "DISTRIBUTION_RESULT_JSON:"
BATCH = 16
CLASSES = 4
STEPS = 2
LEARNING_RATE = 0.1
# float32 training on differently split/sharded reductions.
WEIGHT_TOLERANCE = 1e-5
LOSS_TOLERANCE = 1e-5
NORM_TOLERANCE = 1e-3
# torch DDP hard limits (seconds); a run takes 17-41 s on 2 busy cores.
# A gloo collective waiting this long for the other rank raises.
TORCH_COLLECTIVE_TIMEOUT = 120
# A rank still alive after this dumps its threads' stacks and exits.
TORCH_WORKER_TIMEOUT = 240
# The parent kills both ranks and fails the test after this.
TORCH_TEST_TIMEOUT = 270


def _backend():
    return os.environ.get("KERAS_BACKEND") or _keras_backend()


def _keras_backend():
    import keras

    return keras.config.backend()


# --------------------------------------------------------------------------
# Shared by every worker.
# --------------------------------------------------------------------------


def build_model():
    """All five constrained layer types; seeded so every process agrees."""
    import keras

    from keras_lipschitz import layers as kl

    def orth(seed):
        return keras.initializers.Orthogonal(seed=seed)

    return keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            kl.SpectralConv2D(
                4,
                3,
                eval_power_iterations=16,
                name="conv1",
                kernel_initializer=orth(1),
            ),
            kl.BjorckConv2D(
                4,
                3,
                bjorck_iterations=5,
                name="conv2",
                kernel_initializer=orth(2),
            ),
            keras.layers.Flatten(),
            kl.SpectralDense(16, name="wide1", kernel_initializer=orth(3)),
            kl.BjorckDense(
                16,
                bjorck_iterations=5,
                name="wide2",
                kernel_initializer=orth(4),
            ),
            kl.FrobeniusDense(
                CLASSES, name="head", kernel_initializer=orth(5)
            ),
        ],
        # Fixed names: the same variable paths in every model and process.
        name="net",
    )


def make_data():
    rng = np.random.default_rng(0)
    x = rng.random((BATCH, 6, 6, 2)).astype("float32")
    # Unbalanced labels, so the replicas' class counts differ.
    labels = np.array([0, 0, 0, 0, 0, 1, 2, 3, 1, 1, 1, 2, 3, 3, 0, 0])
    y = np.eye(CLASSES, dtype="float32")[labels]
    return x, y


def make_loss():
    from keras_lipschitz import losses

    return losses.MulticlassHKR(alpha=5.0, min_margin=1.0)


def weights_of(model):
    from keras import ops

    return {
        w.path: np.asarray(ops.convert_to_numpy(w), np.float64)
        for w in model.weights
    }


def compare_weights(reference, other):
    return {
        path: float(np.max(np.abs(reference[path] - other[path])))
        for path in reference
    }


def exact_norms(model):
    """Exact norms of the trained layers, in inference mode.

    Returns `{layer name: (exact sigma, lipschitz, reported bound)}`;
    FrobeniusDense (disjoint neurons) reports the largest column norm, its
    per-output Lipschitz constant.
    """
    from tests import helpers

    out = {}
    shape = model.input_shape[1:]
    for layer in model.layers:
        if hasattr(layer, "lipschitz_upper_bound"):
            if type(layer).__name__ == "FrobeniusDense":
                kernel = layer.effective_kernel().astype(np.float64)
                sigma = float(np.max(np.linalg.norm(kernel, axis=0)))
            else:
                sigma = float(helpers.layer_singular_values(layer, shape)[0])
            out[layer.name] = (
                sigma,
                float(layer.lipschitz),
                float(layer.lipschitz_upper_bound())
                if type(layer).__name__ != "FrobeniusDense"
                else sigma,
            )
        shape = tuple(layer.compute_output_shape((1,) + tuple(shape)))[1:]
    return out


def state_paths(model):
    return [w.path for w in model.non_trainable_weights]


def emit(result):
    print(RESULT_TAG + json.dumps(result), flush=True)


def fit_keras(model, x, y):
    import keras

    model.compile(
        optimizer=keras.optimizers.SGD(LEARNING_RATE), loss=make_loss()
    )
    history = model.fit(
        x, y, batch_size=BATCH, epochs=STEPS, shuffle=False, verbose=0
    )
    return [float(v) for v in history.history["loss"]]


# --------------------------------------------------------------------------
# JAX worker: DataParallel and ModelParallel on 4 host devices.
# --------------------------------------------------------------------------


def jax_worker():
    import jax
    import keras
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec

    devices = jax.devices()
    assert len(devices) == 4, devices
    x, y = make_data()

    reference = build_model()
    initial = weights_of(reference)
    initial_list = reference.get_weights()
    ref_loss = fit_keras(reference, x, y)
    ref_weights = weights_of(reference)

    result = {"reference_loss": ref_loss, "runs": {}}
    trained = {}
    mesh = keras.distribution.DeviceMesh((2, 2), ["batch", "model"], devices)
    layout_map = keras.distribution.LayoutMap(mesh)
    layout_map[".*wide1/kernel"] = (None, "model")
    layout_map[".*wide2/kernel"] = ("model", None)
    distributions = {
        "data_parallel": keras.distribution.DataParallel(devices=devices),
        "model_parallel": keras.distribution.ModelParallel(
            layout_map=layout_map, batch_dim_name="batch"
        ),
    }
    for name, distribution in distributions.items():
        with distribution.scope():
            model = build_model()
            built = weights_of(model)
            # Start from bit-identical weights (the build-time power
            # iteration on sharded arrays rounds differently).
            model.set_weights(initial_list)
            loss = fit_keras(model, x, y)
        trained[name] = model.get_weights()
        final = weights_of(model)
        run = {
            "loss": loss,
            "initial_diff": compare_weights(initial, built),
            "weight_diff": compare_weights(ref_weights, final),
            "state_moved": {
                p: float(np.max(np.abs(final[p] - initial[p])))
                for p in state_paths(model)
            },
            "shardings": {
                w.path: str(w.value.sharding.spec) for w in model.weights
            },
            "devices_per_variable": {
                w.path: len(w.value.sharding.device_set)
                for w in model.weights
            },
        }
        # Every device's copy of the power-iteration state is the same.
        spread = {}
        for w in model.non_trainable_weights:
            shards = [np.asarray(s.data) for s in w.value.addressable_shards]
            spread[w.path] = float(
                max(np.max(np.abs(s - shards[0])) for s in shards)
            )
        run["state_spread"] = spread
        result["runs"][name] = run
    # Exact norms of the distributed-trained weights, on one device (the
    # reference model as a container: fewer eager compilations on JAX).
    for name, weights in trained.items():
        reference.set_weights(weights)
        result["runs"][name]["norms"] = exact_norms(reference)

    # The loss and its gradient on a batch sharded over the 4 devices.
    logits = np.random.default_rng(1).normal(size=(BATCH, CLASSES))
    logits = logits.astype("float32")
    loss_fn = make_loss()

    def value(y_true, y_pred):
        return loss_fn(y_true, y_pred)

    grad_fn = jax.jit(jax.value_and_grad(value, argnums=1))
    single = grad_fn(y, logits)
    mesh_1d = jax.sharding.Mesh(devices, ("b",))
    sharding = NamedSharding(mesh_1d, PartitionSpec("b"))
    split = grad_fn(
        jax.device_put(y, sharding), jax.device_put(logits, sharding)
    )
    result["loss_check"] = {
        "single": float(single[0]),
        "split": float(split[0]),
        "grad_diff": float(
            np.max(np.abs(np.asarray(single[1]) - np.asarray(split[1])))
        ),
        "input_shards": len(split[1].sharding.device_set),
    }
    emit(result)


# --------------------------------------------------------------------------
# TensorFlow worker: MirroredStrategy on 2 logical CPU devices.
# --------------------------------------------------------------------------


def tensorflow_worker():
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )
    from keras_lipschitz import _backend

    x, y = make_data()
    reference = build_model()
    initial = weights_of(reference)
    initial_list = reference.get_weights()
    ref_loss = fit_keras(reference, x, y)
    ref_weights = weights_of(reference)

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = build_model()
        built = weights_of(model)
        model.set_weights(initial_list)
    loss = fit_keras(model, x, y)
    spread = {}
    for w in model.weights:
        replicas = [np.asarray(v.numpy()) for v in w.value.values]
        spread[w.path] = float(
            max(np.max(np.abs(r - replicas[0])) for r in replicas)
        )
    final = weights_of(model)
    run = {
        "loss": loss,
        "replicas": strategy.num_replicas_in_sync,
        "initial_diff": compare_weights(initial, built),
        "weight_diff": compare_weights(ref_weights, final),
        "state_moved": {
            p: float(np.max(np.abs(final[p] - initial[p])))
            for p in state_paths(model)
        },
        "state_spread": spread,
        "aggregation": {
            w.path: str(w.value.aggregation) for w in model.weights
        },
        "norms": exact_norms(model),
    }

    # The loss and its gradient with the batch split across the replicas.
    logits = np.random.default_rng(1).normal(size=(BATCH, CLASSES))
    logits = logits.astype("float32")
    loss_fn = make_loss()
    with tf.GradientTape() as tape:
        z = tf.constant(logits)
        tape.watch(z)
        single = loss_fn(y, z)
    single_grad = tape.gradient(single, z).numpy()

    def split_loss(cross_replica):
        dataset = tf.data.Dataset.from_tensor_slices((y, logits)).batch(BATCH)
        batch = next(iter(strategy.experimental_distribute_dataset(dataset)))

        def step(y_true, y_pred):
            with tf.GradientTape() as tape:
                tape.watch(y_pred)
                # Inside the scope Keras divides each replica's loss by the
                # number of replicas, as `fit` does: the sum is the loss.
                value = loss_fn(y_true, y_pred)
            return value, tape.gradient(value, y_pred)

        original = _backend.cross_replica_sum
        if not cross_replica:
            _backend.cross_replica_sum = lambda t: t
        try:
            values, grads = strategy.run(tf.function(step), args=batch)
        finally:
            _backend.cross_replica_sum = original
        total = strategy.reduce(tf.distribute.ReduceOp.SUM, values, axis=None)
        grads = np.concatenate(
            [g.numpy() for g in strategy.experimental_local_results(grads)]
        )
        return float(total), grads

    with strategy.scope():
        split, split_grad = split_loss(cross_replica=True)
        local, local_grad = split_loss(cross_replica=False)
    run["loss_check"] = {
        "single": float(single),
        "split": split,
        "grad_diff": float(np.max(np.abs(single_grad - split_grad))),
        "without_cross_replica_counts": local,
        "without_grad_diff": float(np.max(np.abs(single_grad - local_grad))),
    }
    run["reference_loss"] = ref_loss
    emit(run)


# --------------------------------------------------------------------------
# torch worker: DistributedDataParallel, 2 processes, gloo.
# --------------------------------------------------------------------------


def torch_train(model, module, x, y):
    """The Keras guide's DDP loop: torch optimizer, Keras model and loss."""
    import torch

    loss_fn = make_loss()
    parameters = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(parameters, lr=LEARNING_RATE)
    history = []
    for _ in range(STEPS):
        optimizer.zero_grad()
        outputs = module(torch.as_tensor(x), training=True)
        loss = loss_fn(torch.as_tensor(y), outputs)
        loss.backward()
        optimizer.step()
        history.append(float(loss.detach()))
    return history


def torch_worker():
    import datetime
    import faulthandler
    import gc
    import weakref

    # Watchdog: a rank still running after TORCH_WORKER_TIMEOUT prints the
    # stack of every thread (which call it is stuck in) and exits; SIGUSR1
    # (sent by the parent before it kills a rank) prints them too.
    faulthandler.dump_traceback_later(TORCH_WORKER_TIMEOUT, exit=True)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    import torch
    import torch.distributed as dist

    from keras_lipschitz import _backend

    # The ranks share the machine's cores: one intra-op thread each, or
    # each rank's thread pool competes with the other rank's.
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    x, y = make_data()
    logits = np.random.default_rng(1).normal(size=(BATCH, CLASSES))
    logits = logits.astype("float32")
    loss_fn = make_loss()
    # The parent hosts the rendezvous store on a port it already listens
    # on. A collective that waits longer than the timeout raises instead of
    # waiting forever; the ranks do the same work between collectives, so
    # no wait is ever near it.
    timeout = datetime.timedelta(seconds=TORCH_COLLECTIVE_TIMEOUT)
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        is_master=False,
        timeout=timeout,
    )
    dist.init_process_group(
        "gloo", store=store, rank=rank, world_size=world, timeout=timeout
    )
    n = BATCH // world
    local = slice(rank * n, (rank + 1) * n)

    model = build_model()
    initial = weights_of(model)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    loss = torch_train(model, ddp, x[local], y[local])
    trained = weights_of(model)

    # The loss and its gradient with the batch split across the ranks:
    # DDP averages gradients, so the global loss is the ranks' mean.
    def local_loss(cross_replica):
        original = _backend.cross_replica_sum
        if not cross_replica:
            _backend.cross_replica_sum = lambda t: t
        try:
            z = torch.tensor(logits[local], requires_grad=True)
            value = loss_fn(torch.as_tensor(y[local]), z) / world
            value.backward()
        finally:
            _backend.cross_replica_sum = original
        total = value.detach().clone()
        dist.all_reduce(total)
        grads = [torch.zeros_like(z.grad) for _ in range(world)]
        dist.all_gather(grads, z.grad)
        return float(total), torch.cat(grads).numpy()

    split, split_grad = local_loss(cross_replica=True)
    without, without_grad = local_loss(cross_replica=False)
    gathered = [None] * world
    dist.all_gather_object(
        gathered,
        {"loss": loss, "weights": {p: v.tolist() for p, v in trained.items()}},
    )
    # Free DDP *before* the group. DDP's C++ reducer co-owns the gloo
    # group; as its last owner it would destroy it holding the GIL, joining
    # gloo's worker threads, while a worker still releasing the tensors of
    # a finished collective waits for the GIL: a deadlock (gdb: ~Reducer ->
    # ~ProcessGroupGloo -> thread::join; worker: ~AsyncAllgatherWork ->
    # decref -> take_gil). The group's own Python handle releases the GIL.
    released = weakref.ref(ddp)
    del ddp
    gc.collect()
    assert released() is None, "the DDP wrapper is still referenced"
    dist.destroy_process_group()
    if rank != 0:
        return

    # The single-process reference, after the group is gone (the KR loss
    # all-reduces whenever a group is up): rank 1 has already exited.
    assert not dist.is_initialized()
    reference = build_model()
    ref_initial = weights_of(reference)
    ref_loss = torch_train(reference, reference, x, y)
    ref_weights = weights_of(reference)
    z = torch.tensor(logits, requires_grad=True)
    single = loss_fn(torch.as_tensor(y), z)
    single.backward()
    single_grad = z.grad.numpy()

    replicas = [
        {p: np.asarray(v) for p, v in g["weights"].items()} for g in gathered
    ]
    emit(
        {
            # Each rank's loss is that of its slice; DDP averages the
            # gradients, so the trained objective is the ranks' mean.
            "loss": np.mean([g["loss"] for g in gathered], axis=0).tolist(),
            "reference_loss": ref_loss,
            "replicas": world,
            "initial_diff": compare_weights(ref_initial, initial),
            "weight_diff": compare_weights(ref_weights, trained),
            "state_moved": {
                p: float(np.max(np.abs(trained[p] - initial[p])))
                for p in state_paths(model)
            },
            "state_spread": {
                p: float(
                    max(np.max(np.abs(r[p] - replicas[0][p])) for r in replicas)
                )
                for p in replicas[0]
            },
            "norms": exact_norms(model),
            "loss_check": {
                "single": float(single.detach()),
                "split": split,
                "grad_diff": float(np.max(np.abs(single_grad - split_grad))),
                "without_cross_replica_counts": without,
                "without_grad_diff": float(
                    np.max(np.abs(single_grad - without_grad))
                ),
            },
        }
    )


# --------------------------------------------------------------------------
# The tests (parent side).
# --------------------------------------------------------------------------


def _env(backend, **extra):
    env = dict(os.environ)
    env.update(
        KERAS_BACKEND=backend,
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONPATH=os.pathsep.join(
            [REPO_ROOT] + [p for p in [env.get("PYTHONPATH")] if p]
        ),
    )
    env.update(extra)
    return env


def _parse(stdout, stderr, returncode):
    found = [
        json.loads(line[len(RESULT_TAG) :])
        for line in stdout.splitlines()
        if line.startswith(RESULT_TAG)
    ]
    assert returncode == 0 and found, (
        f"worker failed (exit code {returncode}):\n{stderr[-4000:]}"
    )
    return found[0]


def _run_worker(backend, **extra):
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), backend],
        env=_env(backend, **extra),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    return _parse(proc.stdout, proc.stderr, proc.returncode)


def _check_run(run, reference_loss):
    # Built under the distribution, the layers start from the same weights
    # as on one device (the power-iteration vectors up to rounding: they
    # come from 100 iterations on differently placed arrays).
    for path, diff in run["initial_diff"].items():
        limit = 1e-5 if path.endswith("/u") else 0.0
        assert diff <= limit, run["initial_diff"]
    np.testing.assert_allclose(
        run["loss"], reference_loss, rtol=LOSS_TOLERANCE, atol=LOSS_TOLERANCE
    )
    # Every weight, the power-iteration vectors included, equals the
    # single-device one.
    worst = max(run["weight_diff"].items(), key=lambda kv: kv[1])
    assert worst[1] < WEIGHT_TOLERANCE, run["weight_diff"]
    # The distributed model's state really moved in training (so "equal"
    # is not "untouched") and is identical on every replica / device.
    assert len(run["state_moved"]) == 4, run["state_moved"]
    assert min(run["state_moved"].values()) > 1e-6, run["state_moved"]
    assert max(run["state_spread"].values()) == 0.0, run["state_spread"]
    # The trained layers are still within their Lipschitz constants, and
    # the reported bounds are above the exact norms.
    assert len(run["norms"]) == 5, run["norms"]
    for name, (sigma, lipschitz, bound) in run["norms"].items():
        assert sigma <= lipschitz * (1.0 + NORM_TOLERANCE), (name, sigma)
        # (sigma comes from the float32 layer's Jacobian: rounding only.)
        assert bound >= sigma * (1.0 - 1e-5), (name, bound, sigma)


def _check_loss(check, needs_control=True):
    assert abs(check["split"] - check["single"]) < LOSS_TOLERANCE, check
    assert check["grad_diff"] < LOSS_TOLERANCE, check
    if needs_control:
        # Per-replica class counts would give another loss and gradient:
        # the labels really are split unevenly, so this test can fail.
        assert (
            abs(check["without_cross_replica_counts"] - check["single"]) > 1e-3
        ), check
        assert check["without_grad_diff"] > 1e-3, check


@pytest.mark.skipif(_backend() != "jax", reason="JAX distribution test")
def test_jax_data_and_model_parallel():
    result = _run_worker(
        "jax", XLA_FLAGS="--xla_force_host_platform_device_count=4"
    )
    for name, run in result["runs"].items():
        _check_run(run, result["reference_loss"])
        assert all(n == 4 for n in run["devices_per_variable"].values()), name
    shardings = result["runs"]["model_parallel"]["shardings"]
    # The LayoutMap really sharded the wide kernels.
    assert "model" in shardings["net/wide1/kernel"], shardings
    assert "model" in shardings["net/wide2/kernel"], shardings
    assert "model" not in shardings["net/wide1/u"], shardings
    assert result["loss_check"]["input_shards"] == 4
    _check_loss(result["loss_check"], needs_control=False)


@pytest.mark.skipif(
    _backend() != "tensorflow", reason="TensorFlow distribution test"
)
def test_tensorflow_mirrored_strategy():
    run = _run_worker("tensorflow")
    assert run["replicas"] == 2
    _check_run(run, run["reference_loss"])
    _check_loss(run["loss_check"])


def _run_ranks(world, port):
    """Runs the torch worker as `world` ranks; returns their outputs.

    Output goes to files (a full pipe that nobody reads would block a
    rank, and with it the other rank in its next collective). When a rank
    fails, the others are killed after a short grace instead of waiting
    for their collectives to time out; after TORCH_TEST_TIMEOUT all are
    killed and the test fails.
    """
    import contextlib
    import tempfile
    import time

    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        procs, files = [], []
        for rank in range(world):
            out, err = (
                stack.enter_context(open(os.path.join(tmp, name), "w+"))
                for name in (f"out{rank}", f"err{rank}")
            )
            files.append((out, err))
            env = _env(
                "torch",
                RANK=str(rank),
                WORLD_SIZE=str(world),
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port),
                OMP_NUM_THREADS="1",
            )
            procs.append(
                subprocess.Popen(
                    [sys.executable, os.path.abspath(__file__), "torch"],
                    env=env,
                    stdout=out,
                    stderr=err,
                )
            )
        deadline = time.monotonic() + TORCH_TEST_TIMEOUT
        failed_at = None
        try:
            while any(p.poll() is None for p in procs):
                now = time.monotonic()
                if failed_at is None and any(p.poll() for p in procs):
                    failed_at = now
                if now > deadline or (failed_at and now > failed_at + 10):
                    break
                time.sleep(0.2)
        finally:
            timed_out = [p.poll() is None for p in procs]
            for proc, late in zip(procs, timed_out):
                if late:
                    proc.send_signal(signal.SIGUSR1)  # its stacks, then kill
            time.sleep(1.0 if any(timed_out) else 0.0)
            for proc, late in zip(procs, timed_out):
                if late:
                    proc.kill()
                    proc.wait()
        outputs = []
        for out, err in files:
            out.seek(0)
            err.seek(0)
            outputs.append((out.read(), err.read()))
    report = "\n".join(
        f"--- rank {rank}: exit code {proc.returncode}"
        + (" (killed: still running)" if late else "")
        + f"\n{err[-3000:]}"
        for rank, (proc, late, (_, err)) in enumerate(
            zip(procs, timed_out, outputs)
        )
    )
    assert not any(timed_out) and all(p.returncode == 0 for p in procs), (
        f"torch DDP ranks failed or hung (limits: {TORCH_TEST_TIMEOUT} s in "
        f"all, {TORCH_COLLECTIVE_TIMEOUT} s per collective):\n{report}"
    )
    return outputs


@pytest.mark.skipif(_backend() != "torch", reason="torch distribution test")
def test_torch_distributed_data_parallel():
    import datetime

    import torch.distributed as dist

    world = 2
    # The rendezvous store listens before the ranks start, on a port the
    # kernel picked: no port to guess and release, none to race for.
    store = dist.TCPStore(
        "127.0.0.1",
        0,
        is_master=True,
        wait_for_workers=False,
        timeout=datetime.timedelta(seconds=TORCH_COLLECTIVE_TIMEOUT),
    )
    try:
        outputs = _run_ranks(world, store.port)
    finally:
        del store
    run = _parse(outputs[0][0], outputs[0][1], 0)
    assert run["replicas"] == world
    _check_run(run, run["reference_loss"])
    _check_loss(run["loss_check"])


if __name__ == "__main__":
    sys.path.insert(0, REPO_ROOT)
    {
        "jax": jax_worker,
        "tensorflow": tensorflow_worker,
        "torch": torch_worker,
    }[sys.argv[1]]()
