"""Every example runs end to end in smoke mode (one backend only).

Each `examples/*.py` not starting with `_` (and not `recipes.py`, a module
of recipe functions that the examples and the benchmarks import) is run with `--smoke` in a
subprocess: it must exit with 0, print the clean and certified accuracy
lines and write its PNG. The examples are backend-neutral and the library's
backend behaviour is tested elsewhere, so this runs on torch only (eager:
no compilation, so the examples start fastest there; about 70 s for all of
them on a 2-core CPU) and is skipped on the others.
The scripts are started two at a time when the module's first test asks
for them (much of each run is single-threaded compilation), and each test
waits for its own script.
"""

import concurrent.futures
import glob
import os
import re
import subprocess
import sys

import keras
import pytest

BACKEND = "torch"
EXAMPLES_DIR = os.path.join(os.path.dirname(__file__), "..", "examples")
# Modules that examples import, not scripts to run.
NOT_SCRIPTS = {"recipes.py"}
EXAMPLES = sorted(
    path
    for path in glob.glob(os.path.join(EXAMPLES_DIR, "*.py"))
    if not os.path.basename(path).startswith("_")
    and os.path.basename(path) not in NOT_SCRIPTS
)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.skipif(
    keras.config.backend() != BACKEND,
    reason=f"the examples are run on the {BACKEND} backend only",
)


def _run(script, *args, cwd):
    env = dict(os.environ, KERAS_BACKEND=BACKEND, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, script, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _tail(proc, chars=3000):
    return f"stdout:\n{proc.stdout[-chars:]}\nstderr:\n{proc.stderr[-chars:]}"


def test_there_are_examples():
    names = [os.path.basename(p) for p in EXAMPLES]
    assert "quickstart.py" in names and "mnist_l2.py" in names


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """`{script: future of (completed process, png path)}`."""
    root = tmp_path_factory.mktemp("smoke")

    def run(script):
        workdir = root / os.path.splitext(os.path.basename(script))[0]
        workdir.mkdir()
        png = workdir / "plot.png"
        return _run(script, "--smoke", "--plot", str(png), cwd=workdir), png

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        yield {script: pool.submit(run, script) for script in EXAMPLES}


@pytest.mark.parametrize(
    "script", EXAMPLES, ids=[os.path.basename(p) for p in EXAMPLES]
)
def test_example_runs_in_smoke_mode(script, smoke_runs):
    proc, png = smoke_runs[script].result()
    assert proc.returncode == 0, _tail(proc)
    assert re.search(r"^clean accuracy: \d\.\d+$", proc.stdout, re.M), _tail(
        proc
    )
    certified = re.findall(
        r"^certified accuracy \((?:l2|linf)\) at eps=[\d.e-]+: (\d\.\d+)$",
        proc.stdout,
        re.M,
    )
    assert len(certified) >= 2, _tail(proc)
    assert all(0.0 <= float(v) <= 1.0 for v in certified)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return  # the example says it wrote no plot; nothing more to check
    assert png.is_file(), _tail(proc)
    assert png.read_bytes()[:8] == PNG_SIGNATURE


def test_missing_data_gives_a_message_not_a_traceback(tmp_path):
    script = os.path.join(EXAMPLES_DIR, "mnist_l2.py")
    missing = str(tmp_path / "nonexistent" / "mnist.npz")
    proc = _run(script, "--smoke", "--data", missing, cwd=tmp_path)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout, _tail(proc)
    assert f"--data {missing}: no such file" in proc.stderr, _tail(proc)
    assert not (tmp_path / "mnist_l2.png").exists()
