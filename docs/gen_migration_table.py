"""Generates the deel-lip mapping tables of `docs/migration.md`.

The tables are rendered from `keras_lipschitz.compat.deel_lip._mapping.
REGISTRY`, which every name of the compat package fills when it is
imported, and written between the two marker lines of the file.

    python docs/gen_migration_table.py           # rewrite docs/migration.md
    python docs/gen_migration_table.py --check   # exit 1 if it is stale

`tests/test_compat_deel_lip.py` runs the check, so the file cannot drift
from the code.
"""

import argparse
import pathlib
import sys

BEGIN = (
    "<!-- BEGIN GENERATED: deel-lip mapping (docs/gen_migration_table.py) -->"
)
END = "<!-- END GENERATED: deel-lip mapping -->"
PATH = pathlib.Path(__file__).with_name("migration.md")

STATUS = {
    "exact": "same numbers",
    "adapted": "adapted",
    "sound": "**sound** (see notes)",
    "missing": "**not provided**",
}

MODULE_ORDER = (
    "layers",
    "layers.unconstrained",
    "activations",
    "losses",
    "metrics",
    "callbacks",
    "constraints",
    "regularizers",
    "initializers",
    "normalizers",
    "utils",
    "compute_layer_sv",
    "model",
)


def _cell(text):
    return text.replace("|", "\\|") if text else ""


def render():
    """The generated block, markers included, as a string."""
    from keras_lipschitz.compat.deel_lip import _mapping

    by_module = {}
    for entry in _mapping.REGISTRY.values():
        by_module.setdefault(entry["module"], []).append(entry)
    unknown = set(by_module) - set(MODULE_ORDER)
    if unknown:
        raise ValueError(f"modules not in MODULE_ORDER: {sorted(unknown)}")
    lines = [BEGIN, ""]
    for module in MODULE_ORDER:
        entries = sorted(by_module.get(module, []), key=lambda e: e["name"])
        if not entries:
            continue
        if module == "activations":
            names = ", ".join(f"`{e['name']}`" for e in entries)
            lines += [
                "### `lip.activations`",
                "",
                f"{names}: the same objects as in `lip.layers` "
                "(deel-lip re-exports them there too).",
                "",
            ]
            continue
        lines += [
            f"### `lip.{module}`",
            "",
            "| deel-lip | returns | status | notes |",
            "|---|---|---|---|",
        ]
        for entry in entries:
            lines.append(
                f"| `{entry['name']}` | {_cell(entry['target'])} | "
                f"{STATUS[entry['status']]} | {_cell(entry['notes'])} |"
            )
        lines.append("")
    lines.append(END)
    return "\n".join(lines)


def updated_text(text):
    """`text` with its generated block replaced by `render()`."""
    start, stop = text.find(BEGIN), text.find(END)
    if start < 0 or stop < start:
        raise ValueError(f"{PATH} lacks the generated-block markers")
    return text[:start] + render() + text[stop + len(END):]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    text = PATH.read_text(encoding="utf-8")
    new = updated_text(text)
    if args.check:
        if new != text:
            print(f"{PATH} is stale: run python docs/gen_migration_table.py")
            return 1
        return 0
    PATH.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    sys.exit(main())
