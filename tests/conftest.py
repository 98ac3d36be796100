"""Test configuration shared by every backend run.

The backend is chosen by `KERAS_BACKEND` before pytest starts; the README's
test command runs the suite once per backend.
"""

import os

import pytest

try:  # Importing torch before TF avoids symbol clashes on some platforms.
    import torch  # noqa: F401
except ImportError:  # pragma: no cover
    pass

import keras


def _threads_per_worker(config):
    """CPU cores per pytest-xdist worker (None outside xdist).

    Each worker is a process with its own intra-op thread pool sized for
    the whole machine; with several workers the pools oversubscribe the
    cores and their spinning threads slow small ops down by 10x or more
    (torch: the AOCNet training test took 166 s under `-n 2`, 11 s
    alone). Giving each worker its share of the cores avoids that.
    """
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None:
        return None
    workers = int(workerinput.get("workercount", 1))
    return max(1, (os.cpu_count() or 1) // workers)


def _fast_xla_compilation():
    """LLVM optimization level 0 for the XLA CPU programs of the tests.

    Most JAX tests compile small programs and run them a few times, so
    compilation dominates: level 0 took 21% off the JAX run of
    test_aol_sll.py, test_sll_aoc_nets.py and test_conv.py (122 s -> 96 s
    under `-n 2`). It changes code generation, not the XLA graph (the same
    fusions and float32 arithmetic). Must be set before JAX creates its
    CPU client; flags the user set are kept.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_backend_optimization_level" not in flags:
        os.environ["XLA_FLAGS"] = (
            flags + " --xla_backend_optimization_level=0"
        ).strip()


def pytest_configure(config):
    backend = keras.config.backend()
    threads = _threads_per_worker(config)
    if backend == "jax":
        import jax

        _fast_xla_compilation()
        jax.config.update("jax_default_matmul_precision", "float32")
        _share_jax_compilations(jax)
    elif backend == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_tensor_float_32_execution(False)
        if threads is not None:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(threads)
            except RuntimeError:  # the runtime is already initialized
                pass
    elif backend == "torch":
        import torch

        if threads is not None:
            torch.set_num_threads(threads)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    config.addinivalue_line(
        "markers", "slow: long-running test (skipped with -m 'not slow')"
    )


_JAX_CACHE_DIRECTORY = None


def pytest_unconfigure(config):
    # The controller (or the only process) removes the run's JAX cache.
    if _JAX_CACHE_DIRECTORY and not hasattr(config, "workerinput"):
        import shutil

        shutil.rmtree(_JAX_CACHE_DIRECTORY, ignore_errors=True)


def _share_jax_compilations(jax):
    """One compilation cache for this test run (all xdist workers).

    Many tests build layers of the same shapes, whose XLA programs are
    identical: with a cache shared by the run, each is compiled once
    (measured: about 25% off the JAX run of test_conv.py and
    test_cpl_liresnet.py). The directory is new for every run, so nothing
    carries over between runs; a cache the user configured is kept.
    """
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    import tempfile

    # Set by the controller (or only) process; xdist workers, started
    # after it, inherit it.
    run = os.environ.setdefault(
        "KERAS_LIPSCHITZ_TEST_RUN", f"{os.getpid()}_{id(jax)}"
    )
    directory = os.path.join(
        tempfile.gettempdir(), f"keras_lipschitz_tests_jax_cache_{run}"
    )
    global _JAX_CACHE_DIRECTORY
    _JAX_CACHE_DIRECTORY = directory
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def pytest_report_header(config):
    backend = keras.config.backend()
    return f"keras backend: {backend} (keras {keras.__version__})"


@pytest.fixture(autouse=True)
def _reset_keras_state():
    keras.utils.clear_session()
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")


MNIST_PATH = os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "data", "mnist.npz"
)


@pytest.fixture
def mnist_path():
    """Path to real MNIST (Keras's mnist.npz format); skips when absent."""
    path = os.environ.get("KERAS_LIPSCHITZ_MNIST", MNIST_PATH)
    if not os.path.exists(path):
        pytest.skip(f"MNIST not found at {path}")
    return path
