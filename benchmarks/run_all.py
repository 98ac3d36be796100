"""Runs every benchmark of benchmarks/ and writes benchmarks/RESULTS.md.

One command:

    python benchmarks/run_all.py            # full runs
    python benchmarks/run_all.py --quick    # short runs of every script

It discovers every `benchmarks/*.py` except this file and names starting
with `_`, runs each in its own subprocess as

    python benchmarks/NAME.py [--quick] --json ROWS.json

and collects the rows they write (a JSON list of
`{"benchmark", "backend", "metric", "unit", "ours", "reference",
"reference_name", "ratio", "notes"}`, see benchmarks/README.md). A script
that fails, times out or writes no rows is reported as such in the table;
nothing is ever filled in for it.

Peers: the same MNIST model in deel-lip 1.5.0 (TensorFlow 2.15, Keras 2)
and deel-torchlip (torch) runs with `benchmarks/peers/*.py` inside their
own virtual environments (`benchmarks/setup_peers.sh` creates
`.venv-deel-lip` and `.venv-torchlip`; `--peer-venv NAME=PATH` points
elsewhere). A peer whose environment is missing is reported as "not
installed", with no number.

Long runs (certified accuracy after minutes of training, with their
commands and spreads) are recorded in `benchmarks/long_runs.md`, which is
appended to the output verbatim.

The markdown table goes to `--output` (default benchmarks/RESULTS.md) with
the machine description: CPU model, cores, RAM, GPU (or none), the
versions of Python, Keras, TensorFlow, JAX and torch, the date, and the
load average before and after (other jobs on the machine slow every
timing; the ratios, measured side by side in one run, suffer less).
"""

import argparse
import datetime
import glob
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

BENCHMARKS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCHMARKS_DIR)
PEERS_DIR = os.path.join(BENCHMARKS_DIR, "peers")
# Recorded long runs, appended to RESULTS.md as they are.
LONG_RUNS = os.path.join(BENCHMARKS_DIR, "long_runs.md")
ROW_KEYS = (
    "benchmark",
    "backend",
    "metric",
    "unit",
    "ours",
    "reference",
    "reference_name",
    "ratio",
    "notes",
)
# Peer name -> default virtual environment (relative to the repository).
PEER_VENVS = {
    "deel_lip": ".venv-deel-lip",
    "torchlip": ".venv-torchlip",
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick", action="store_true", help="pass --quick to every script"
    )
    parser.add_argument(
        "--only",
        default=None,
        help="comma-separated script names (without .py) to run",
    )
    parser.add_argument(
        "--skip", default="", help="comma-separated script names to skip"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=3600.0,
        help="seconds per script (default: %(default)s)",
    )
    parser.add_argument(
        "--no-peers", action="store_true", help="skip the peer libraries"
    )
    parser.add_argument(
        "--peer-venv",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="virtual environment of a peer (names: %s; defaults: %s)"
        % (
            ", ".join(PEER_VENVS),
            ", ".join(f"{k}={v}" for k, v in PEER_VENVS.items()),
        ),
    )
    parser.add_argument(
        "--output",
        default=os.path.join(BENCHMARKS_DIR, "RESULTS.md"),
        help="markdown file to write (default: %(default)s)",
    )
    parser.add_argument(
        "--json", default=None, help="also write all rows to this JSON file"
    )
    parser.add_argument(
        "--note",
        default="",
        help="a sentence added to the report (e.g. about machine load)",
    )
    return parser.parse_args(argv)


# --------------------------------------------------------------------------
# Discovery and execution.
# --------------------------------------------------------------------------


def discover(directory=BENCHMARKS_DIR):
    """Benchmark scripts: `*.py` except run_all.py and names starting `_`."""
    scripts = []
    for path in sorted(glob.glob(os.path.join(directory, "*.py"))):
        name = os.path.basename(path)
        if name == os.path.basename(__file__) or name.startswith("_"):
            continue
        scripts.append(path)
    return scripts


def validate_rows(rows, script):
    """The rows as written, or a ValueError saying what is wrong."""
    if not isinstance(rows, list):
        raise ValueError(f"{script}: --json must write a list of rows")
    for row in rows:
        if not isinstance(row, dict):
            raise ValueError(f"{script}: a row is not an object: {row!r}")
        missing = [k for k in ROW_KEYS if k not in row]
        if missing:
            raise ValueError(f"{script}: row {row!r} lacks {missing}")
        for key in ("ours", "reference", "ratio"):
            value = row[key]
            if value is not None and not isinstance(value, (int, float)):
                raise ValueError(f"{script}: {key}={value!r} is not a number")
    return rows


def run_script(command, name, timeout, log_dir, env=None, raw=False):
    """Runs one benchmark command; returns (status, rows, seconds, log).

    With `raw=True` (peer scripts) the JSON output is returned as written,
    without checking the row format.
    """
    json_path = os.path.join(log_dir, f"{name}.json")
    log_path = os.path.join(log_dir, f"{name}.log")
    if os.path.exists(json_path):
        os.remove(json_path)
    command = list(command) + ["--json", json_path]
    env = dict(os.environ if env is None else env)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    print(f"== {name}: {' '.join(command)}", flush=True)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        try:
            proc = subprocess.run(
                command,
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    seconds = time.perf_counter() - start
    rows = []
    if os.path.exists(json_path):
        try:
            with open(json_path) as f:
                rows = json.load(f)
            if not raw:
                rows = validate_rows(rows, name)
        except ValueError as error:  # also json.JSONDecodeError
            status = f"bad rows: {error}"
            print(f"   {status}", flush=True)
            return status, [], seconds, log_path
    if code == "timeout":
        status = f"timed out after {timeout:.0f} s"
    elif code < 0:
        status = f"stopped by signal {-code} after {seconds:.0f} s"
    elif code != 0:
        status = f"failed (exit code {code})"
    elif not rows:
        status = "wrote no rows"
    else:
        status = "ok"
    print(f"   {status}, {len(rows)} rows, {seconds:.0f} s", flush=True)
    if status != "ok":
        print(_tail(log_path), flush=True)
    return status, rows, seconds, log_path


def _tail(path, lines=15):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def peer_python(name, overrides):
    """The peer venv's python, or None when it is not installed."""
    venv = overrides.get(name, PEER_VENVS.get(name))
    if venv is None:
        return None, None
    if not os.path.isabs(venv):
        venv = os.path.join(REPO_ROOT, venv)
    python = os.path.join(venv, "bin", "python")
    return (python if os.path.exists(python) else None), venv


def not_installed_row(name, venv):
    return {
        "benchmark": f"peer_{name}",
        "backend": "-",
        "metric": "peer not installed",
        "unit": "-",
        "ours": None,
        "reference": None,
        "reference_name": name,
        "ratio": None,
        "notes": f"no virtual environment at {venv}: run "
        "benchmarks/setup_peers.sh (no number is reported)",
    }


# --------------------------------------------------------------------------
# Machine description.
# --------------------------------------------------------------------------


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _package_version(name):
    from importlib import metadata

    for candidate in (name, f"{name}-cpu"):
        try:
            return metadata.version(candidate)
        except metadata.PackageNotFoundError:
            continue
    return "not installed"


def machine_description():
    cpuinfo = _read("/proc/cpuinfo")
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in cpuinfo.splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    meminfo = _read("/proc/meminfo")
    ram = next(
        (
            int(line.split()[1]) / 2**20
            for line in meminfo.splitlines()
            if line.startswith("MemTotal")
        ),
        None,
    )
    gpu = "none"
    if shutil.which("nvidia-smi"):
        out = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, check=False
        ).stdout.strip()
        gpu = out.replace("\n", "; ") or "none"
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "ram_gib": None if ram is None else round(ram, 1),
        "gpu": gpu,
        "os": platform.platform(),
        "python": platform.python_version(),
        "keras": _package_version("keras"),
        "tensorflow": _package_version("tensorflow"),
        "jax": _package_version("jax"),
        "torch": _package_version("torch"),
        "keras_lipschitz": _package_version("keras-lipschitz"),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime(
            "%Y-%m-%d %H:%M UTC"
        ),
    }


def _load_average():
    try:
        return "%.1f / %.1f / %.1f" % os.getloadavg()
    except OSError:
        return "n/a"


# --------------------------------------------------------------------------
# Report.
# --------------------------------------------------------------------------


def _number(value, digits=3):
    if value is None:
        return "—"
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.{digits}g}"
    return f"{value:.3e}"


def _cell(text):
    return str(text).replace("|", "\\|").replace("\n", " ")


def render(machine, runs, rows, args, load_before, load_after, elapsed):
    mode = "quick (`--quick`)" if args.quick else "full"
    lines = [
        "# Benchmark results",
        "",
        "Written by `python benchmarks/run_all.py"
        + (" --quick" if args.quick else "")
        + "`; do not edit by hand. Every ratio is **ours / reference** "
        "(below 1: ours is faster or smaller), measured side by side in "
        "one run.",
        "",
        "## Machine",
        "",
        f"- CPU: {machine['cpu']}, {machine['cores']} logical cores",
        f"- RAM: {machine['ram_gib']} GiB; GPU: {machine['gpu']}",
        f"- OS: {machine['os']}; Python {machine['python']}",
        f"- Keras {machine['keras']}, TensorFlow {machine['tensorflow']}, "
        f"JAX {machine['jax']}, torch {machine['torch']}, "
        f"keras-lipschitz {machine['keras_lipschitz']}",
        f"- Date: {machine['date']}; mode: {mode}; total "
        f"{elapsed / 60:.1f} min",
        f"- Load average (1/5/15 min) before: {load_before}; after: "
        f"{load_after} (above the core count means other jobs shared the "
        "CPU: absolute times are inflated, ratios less so)",
    ]
    if args.note:
        lines += [f"- Note: {args.note}"]
    lines += [
        "",
        "## Scripts",
        "",
        "| script | status | rows | time (s) |",
        "|---|---|---|---|",
    ]
    for run in runs:
        lines.append(
            f"| `{run['script']}` | {_cell(run['status'])} "
            f"| {run['rows']} | {run['seconds']:.0f} |"
        )
    lines += [""]
    by_benchmark = {}
    for row in rows:
        by_benchmark.setdefault(row["benchmark"], []).append(row)
    for benchmark, group in by_benchmark.items():
        lines += [
            f"## {benchmark}",
            "",
            "| backend | metric | unit | ours | reference | reference name "
            "| ratio | notes |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in group:
            ratio = row["ratio"]
            ratio_text = "—" if ratio is None else f"**{ratio:.2f}×**"
            lines.append(
                f"| {_cell(row['backend'])} | {_cell(row['metric'])} "
                f"| {_cell(row['unit'])} | {_number(row['ours'])} "
                f"| {_number(row['reference'])} "
                f"| {_cell(row['reference_name'])} | {ratio_text} "
                f"| {_cell(row['notes'])} |"
            )
        lines += [""]
    if os.path.isfile(LONG_RUNS):
        # Runs of minutes to hours (certified accuracy at a budget) do not
        # fit in one run_all pass: they are recorded, with their commands,
        # in a separate file and copied here verbatim.
        with open(LONG_RUNS, encoding="utf-8") as f:
            lines += [f.read().rstrip(), ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Peers: combine a peer's measurement with ours on the same model.
# --------------------------------------------------------------------------


def peer_rows(name, peer_result, our_rows):
    """Rows comparing our MNIST epoch with the peer's (same settings)."""
    backend = peer_result["framework_backend"]
    ours = next(
        (
            r
            for r in our_rows
            if r["benchmark"] == "mnist_deel_tutorial"
            and r["backend"] == backend
            and r["metric"] == "train epoch time"
            and r["ours"] is not None
        ),
        None,
    )
    label = f"{peer_result['library']} {peer_result['library_version']}"
    setting = (
        f"{peer_result['epoch_samples']} samples, batch "
        f"{peer_result['batch_size']}, median of {peer_result['repeats']}; "
        f"{peer_result['framework']}"
    )
    if peer_result.get("model_note"):
        setting += f"; {peer_result['model_note']}"
    rows = [
        {
            "benchmark": f"peer_{name}",
            "backend": backend,
            "metric": "peer's own overhead: epoch time vs plain "
            f"{peer_result['framework_short']} (same venv)",
            "unit": "s/epoch",
            "ours": peer_result["peer_median_s"],
            "reference": peer_result["plain_median_s"],
            "reference_name": f"plain {peer_result['framework_short']}",
            "ratio": peer_result["peer_median_s"]
            / peer_result["plain_median_s"],
            "notes": f"'ours' column = {label} here; {setting}",
        }
    ]
    if ours is None:
        rows.append(
            {
                "benchmark": f"peer_{name}",
                "backend": backend,
                "metric": "train epoch time, keras-lipschitz vs peer",
                "unit": "s/epoch",
                "ours": None,
                "reference": peer_result["peer_median_s"],
                "reference_name": label,
                "ratio": None,
                "notes": "our mnist_deel_tutorial row for this backend is "
                "missing (failed or skipped)",
            }
        )
        return rows
    overhead_ours = ours["ratio"]
    overhead_peer = rows[0]["ratio"]
    ours_cpu = next(
        (
            r
            for r in our_rows
            if r["benchmark"] == "mnist_deel_tutorial"
            and r["backend"] == backend
            and r["metric"] == "train epoch CPU time (all threads)"
            and r["ours"] is not None
        ),
        None,
    )
    if ours_cpu is not None and "peer_cpu_median_s" in peer_result:
        peer_cpu = peer_result["peer_cpu_median_s"]
        rows.append(
            {
                "benchmark": f"peer_{name}",
                "backend": backend,
                "metric": "train epoch CPU time, keras-lipschitz vs peer",
                "unit": "s/epoch",
                "ours": ours_cpu["ours"],
                "reference": peer_cpu,
                "reference_name": label,
                "ratio": ours_cpu["ours"] / peer_cpu,
                "notes": "process CPU time (all threads), less sensitive "
                "to machine load; overhead over plain in CPU time: ours "
                f"{ours_cpu['ratio']:.2f}x, peer "
                f"{peer_cpu / peer_result['plain_cpu_median_s']:.2f}x",
            }
        )
    rows.append(
        {
            "benchmark": f"peer_{name}",
            "backend": backend,
            "metric": "train epoch time, keras-lipschitz vs peer",
            "unit": "s/epoch",
            "ours": ours["ours"],
            "reference": peer_result["peer_median_s"],
            "reference_name": label,
            "ratio": ours["ours"] / peer_result["peer_median_s"],
            "notes": f"same model and settings; overhead over plain: ours "
            f"{overhead_ours:.2f}x, peer {overhead_peer:.2f}x "
            f"(ratio of overheads {overhead_ours / overhead_peer:.2f}x)",
        }
    )
    return rows


def run_peers(args, our_rows, log_dir, runs):
    overrides = {}
    for item in args.peer_venv:
        if "=" not in item:
            raise SystemExit(f"--peer-venv expects NAME=PATH, got {item!r}")
        key, value = item.split("=", 1)
        overrides[key.strip()] = value.strip()
    rows = []
    for script in discover(PEERS_DIR):
        name = os.path.splitext(os.path.basename(script))[0]
        python, venv = peer_python(name, overrides)
        if python is None:
            rows.append(not_installed_row(name, venv))
            runs.append(
                {
                    "script": f"peers/{name}.py",
                    "status": f"peer not installed ({venv})",
                    "rows": 1,
                    "seconds": 0.0,
                }
            )
            continue
        command = [python, script] + (["--quick"] if args.quick else [])
        status, result, seconds, _ = run_script(
            command, f"peer_{name}", args.timeout, log_dir, raw=True
        )
        new_rows = []
        if status == "ok":
            # A peer script writes one raw result (rows need ours too).
            new_rows = peer_rows(name, result[0], our_rows)
        rows.extend(new_rows)
        runs.append(
            {
                "script": f"peers/{name}.py ({venv})",
                "status": status,
                "rows": len(new_rows),
                "seconds": seconds,
            }
        )
    return rows


def _name(script):
    return os.path.splitext(os.path.basename(script))[0]


def main(argv=None):
    args = parse_args(argv)
    only = {s for s in (args.only or "").split(",") if s}
    skip = {s for s in args.skip.split(",") if s}
    load_before = _load_average()
    machine = machine_description()
    start = time.perf_counter()
    runs, rows = [], []
    log_dir = tempfile.mkdtemp(prefix="keras_lipschitz_bench_")
    print(f"logs in {log_dir}", flush=True)
    done = set()
    while True:
        # Discover again after every script: one added while the suite
        # runs (e.g. by a parallel job) is still run.
        pending = [
            s
            for s in discover()
            if s not in done
            and not (only and _name(s) not in only)
            and _name(s) not in skip
        ]
        if not pending:
            break
        script = pending[0]
        done.add(script)
        name = _name(script)
        command = [sys.executable, script] + (["--quick"] if args.quick else [])
        status, new_rows, seconds, _ = run_script(
            command, name, args.timeout, log_dir
        )
        rows.extend(new_rows)
        runs.append(
            {
                "script": f"{name}.py",
                "status": status,
                "rows": len(new_rows),
                "seconds": seconds,
            }
        )
    if not args.no_peers:
        rows.extend(run_peers(args, rows, log_dir, runs))
    elapsed = time.perf_counter() - start
    text = render(
        machine, runs, rows, args, load_before, _load_average(), elapsed
    )
    with open(args.output, "w") as f:
        f.write(text + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "machine": machine,
                    "runs": runs,
                    "rows": rows,
                    "load_before": load_before,
                    "load_after": _load_average(),
                    "seconds": elapsed,
                },
                f,
            )
    print(f"wrote {args.output}")
    if any(r["status"] != "ok" and "not installed" not in r["status"]
           for r in runs):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
