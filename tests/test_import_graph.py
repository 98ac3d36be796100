"""The package's own imports form no cycle (checked with `ast`).

Every `import` and `from ... import` inside `keras_lipschitz/` counts,
including the ones inside functions (a lazy import is still a dependency).
An edge goes to the module a statement names: `from a.b import c` names the
module `a.b.c` when it exists, else the package `a.b`. Importing a module
also runs its parent packages' `__init__`, but those implicit edges are not
counted: the root `__init__` re-exports the whole library by design.
"""

import ast
import pathlib

import pytest

import keras_lipschitz

PACKAGE_ROOT = pathlib.Path(keras_lipschitz.__file__).parent


def _module_names(root):
    """Dotted module name -> path, for every `.py` file under `root`."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _resolve(name, modules):
    """The longest prefix of `name` that is a module of the package."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def import_graph(root):
    """Edges `module -> set of imported modules`, within `root`'s package."""
    modules = _module_names(root)
    top = root.name
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        package = name if is_package else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                targets = [f"{source}.{alias.name}" for alias in node.names]
            for target in targets:
                if target.split(".")[0] != top:
                    continue
                resolved = _resolve(target, modules)
                if resolved is not None and resolved != name:
                    graph[name].add(resolved)
    return graph


def find_cycle(graph):
    """One cycle as a list of modules (first == last), or None."""
    white, grey, black = 0, 1, 2
    color = {node: white for node in graph}
    stack = []

    def visit(node):
        color[node] = grey
        stack.append(node)
        for child in sorted(graph[node]):
            if color[child] == grey:
                return stack[stack.index(child) :] + [child]
            if color[child] == white:
                found = visit(child)
                if found:
                    return found
        stack.pop()
        color[node] = black
        return None

    for node in sorted(graph):
        if color[node] == white:
            found = visit(node)
            if found:
                return found
    return None


def test_keras_lipschitz_has_no_import_cycle():
    graph = import_graph(PACKAGE_ROOT)
    assert len(graph) > 30, "the walk found too few modules"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_certificate_modules_never_import_the_dispatch_or_entry():
    graph = import_graph(PACKAGE_ROOT)
    top = {
        "keras_lipschitz.certification.dispatch",
        "keras_lipschitz.certification.api",
        "keras_lipschitz.certification",
    }
    lower = [
        name
        for name in graph
        if name.startswith("keras_lipschitz.certification.")
        and name not in top
    ] + [
        "keras_lipschitz.bounds",
        "keras_lipschitz.liplt",
        "keras_lipschitz.curvature",
    ]
    for name in lower:
        assert not graph[name] & top, f"{name} imports {graph[name] & top}"
    # The shared helpers import none of the certificates.
    for helper in ("_common", "_linf", "composition"):
        imported = graph[f"keras_lipschitz.certification.{helper}"]
        certificates = {
            n for n in imported if n.startswith("keras_lipschitz.certification.")
        }
        assert certificates <= {
            "keras_lipschitz.certification._common",
            "keras_lipschitz.certification._linf",
        }, (helper, certificates)


@pytest.mark.parametrize(
    "files, cycle",
    [
        (
            {
                "__init__.py": "from pkg import a\n",
                "a.py": "from pkg.sub import b\n",
                "sub/__init__.py": "",
                "sub/b.py": "def f():\n    from pkg import a\n",
            },
            ["pkg.a", "pkg.sub.b", "pkg.a"],
        ),
        (
            {
                "__init__.py": "",
                "a.py": "from . import b\n",
                "b.py": "from .a import thing\n",
            },
            ["pkg.a", "pkg.b", "pkg.a"],
        ),
        (
            {
                "__init__.py": "from pkg.a import x\n",
                "a.py": "import numpy\nfrom pkg import b\n",
                "b.py": "import pkg.c\n",
                "c.py": "",
            },
            None,
        ),
    ],
)
def test_cycle_finder_finds_cycles(tmp_path, files, cycle):
    root = tmp_path / "pkg"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert find_cycle(import_graph(root)) == cycle
