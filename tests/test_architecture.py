"""The floors of docs/architecture.md, checked on every import of every module: nothing imports a higher floor,
and no feature package imports another (the service may use the index).

Run:  .venv/bin/python -m pytest tests/test_architecture.py -q
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vitkit"
FLOORS = {
    0: {"config", "limits", "arguments", "labels", "output", "plotting", "version", "assets", "cache", "choices",
        "cpu", "progress", "table", "multilabel"},
    1: {"models"},
    2: {"data", "checkpoints"},
    3: {"onnx", "int8"},
    4: {"api", "image_text", "runtime"},
    5: {"batch", "embedding_files"},
    6: {"tasks", "train", "evaluate", "quantize", "explain", "index", "service"},
    7: {"cli", "__main__"},
}
FEATURES = FLOORS[6]
ALLOWED = {("service", "index")}
FLOOR_OF = {unit: floor for floor, units in FLOORS.items() for unit in units}


def unit_of(module: str) -> str:
    parts = module.removesuffix(".__init__").split(".")
    return "vitkit" if len(parts) == 1 else parts[1]


def imports():
    """(importing unit, imported unit, file:line) for every vitkit import, lazy ones included."""
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        source = unit_of(".".join(rel.parts))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vitkit"):
                targets = [node.module] if node.module != "vitkit" else [f"vitkit.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("vitkit.")]
            else:
                continue
            for target in targets:
                yield source, unit_of(target), f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"


def test_every_unit_has_a_floor():
    units = {unit_of(".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts)) for p in PACKAGE.rglob("*.py")}
    assert units - {"vitkit"} <= set(FLOOR_OF), f"no floor for {sorted(units - set(FLOOR_OF) - {'vitkit'})}"


def test_no_import_climbs_and_no_feature_imports_another():
    upward, sideways = [], []
    for source, target, where in imports():
        if source == target or "vitkit" in (source, target):
            continue
        if FLOOR_OF[target] > FLOOR_OF[source]:
            upward.append(f"{where}: {source} (floor {FLOOR_OF[source]}) imports {target} (floor {FLOOR_OF[target]})")
        elif source in FEATURES and target in FEATURES and (source, target) not in ALLOWED:
            sideways.append(f"{where}: {source} imports {target}")
    assert not upward, "\n".join(upward)
    assert not sideways, "\n".join(sideways)


def test_the_command_line_parses_and_lists_models_without_torch():
    """`vitkit --help`, every command's --help and `vitkit models` import neither torch nor numpy (torch alone takes
    ~1.5 s to import): what they need lives in torch-free modules (vitkit.choices, the feature packages' lazy
    __init__). Run in a fresh interpreter, so that nothing this test process imported counts."""
    import subprocess
    import sys

    script = (
        "import contextlib, io, sys\n"
        "from vitkit.cli import _parser, main\n"
        "parser = _parser()\n"
        "for command in parser._subparsers._group_actions[0].choices:\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        parser.parse_args([command, '--help'])\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    assert main(['models']) == 0\n"
        "assert 'deit_tiny_patch16_224' in out.getvalue()\n"
        "print(sorted(m for m in ('torch', 'numpy', 'PIL') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=PACKAGE.parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout
