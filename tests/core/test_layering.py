"""The package's import contract: no arrow runs back up the layers, and code stays readable in size.

Layers (docs/architecture.md): ``ir`` at the bottom imports nothing else of tilewright;
``passes`` rewrite the IR (and FX graphs) without knowing targets, the runtime or the tuner;
``targets`` generate kernels without knowing the frontend, the passes or the CLI; ``costmodel``
predicts without the tuner or the frontend; ``schedule`` (the shared vocabulary) and ``runtime``
know no target; nothing in the library imports the CLI (``commands``). Imports inside functions
count, and so do dotted ``"tilewright.module:attr"`` strings handed to importlib.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "tilewright"

#: (importing layer, layers it must not import)
FORBIDDEN: list[tuple[str, tuple[str, ...]]] = [
    ("tilewright.ir", ("tilewright",)),  # everything but ir itself (exempted below)
    ("tilewright.passes", ("tilewright.targets", "tilewright.runtime", "tilewright.autotune",
                           "tilewright.compiler", "tilewright.frontend")),
    ("tilewright.targets", ("tilewright.frontend", "tilewright.passes", "tilewright.commands",
                            "tilewright.compiler", "tilewright.autotune")),
    ("tilewright.costmodel", ("tilewright.autotune", "tilewright.frontend", "tilewright.compiler")),
    ("tilewright.schedule", ("tilewright.targets", "tilewright.runtime", "tilewright.autotune",
                             "tilewright.frontend", "tilewright.passes", "tilewright.costmodel",
                             "tilewright.compiler")),
    ("tilewright.runtime", ("tilewright.targets", "tilewright.autotune", "tilewright.frontend",
                            "tilewright.passes", "tilewright.compiler")),
    ("tilewright.ops", ("tilewright.targets", "tilewright.runtime", "tilewright.compiler")),
]
#: the CLI may import the library; nothing else may import the CLI
CLI = ("tilewright.commands", "tilewright.cli")

MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80

_DOTTED = re.compile(r"^(tilewright(?:\.\w+)+):\w+")


def module_name(path: Path, root: Path = PACKAGE) -> str:
    """``tilewright.a.b`` for ``root/a/b.py`` (packages: their ``__init__``)."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, name: str, is_package: bool) -> set[str]:
    """Every tilewright module ``source`` imports (anywhere in it), plus dotted-name strings."""
    found: set[str] = set()
    base = name.split(".") if is_package else name.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parent = base[: len(base) - (node.level - 1)]
                target = ".".join(parent + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            match = _DOTTED.match(node.value)
            if match:
                found.add(match.group(1))
    return {m for m in found if m == "tilewright" or m.startswith("tilewright.")}


def _within(module: str, layer: str) -> bool:
    return module == layer or module.startswith(layer + ".")


def violations(name: str, imports: set[str]) -> list[str]:
    """The forbidden arrows among ``imports`` of module ``name``."""
    bad = []
    for layer, forbidden in FORBIDDEN:
        if not _within(name, layer):
            continue
        for target in sorted(imports):
            if _within(target, layer) or target == "tilewright":
                continue
            if any(_within(target, f) for f in forbidden):
                bad.append(f"{name} -> {target}")
    if not any(_within(name, c) for c in CLI):
        bad.extend(f"{name} -> {t} (library imports the CLI)" for t in sorted(imports)
                   if any(_within(t, c) for c in CLI))
    return bad


def _modules() -> list[tuple[str, Path]]:
    return [(module_name(p), p) for p in sorted(PACKAGE.rglob("*.py"))]


def test_no_import_runs_back_up_the_layers() -> None:
    problems = []
    for name, path in _modules():
        problems += violations(name, imported_modules(path.read_text(), name, path.name == "__init__.py"))
    assert not problems, "imports against the layering (docs/architecture.md):\n" + "\n".join(problems)


@pytest.mark.parametrize("name,source,expected", [
    ("tilewright.ir.graph", "from ..targets.triton import jit\n", "tilewright.ir.graph -> tilewright.targets.triton"),
    ("tilewright.passes.fusion", "def f():\n    from ..runtime.plan import Plan\n",
     "tilewright.passes.fusion -> tilewright.runtime.plan"),
    ("tilewright.costmodel.features", "from tilewright.autotune import tuner\n",
     "tilewright.costmodel.features -> tilewright.autotune"),
    ("tilewright.autotune.tuner", "from ..commands.autotune import kernels_of\n",
     "tilewright.autotune.tuner -> tilewright.commands.autotune (library imports the CLI)"),
    ("tilewright.ir.registry", "IMPL = 'tilewright.targets.triton.conv.ops:convolution_backward'\n",
     "tilewright.ir.registry -> tilewright.targets.triton.conv.ops"),
    ("tilewright.targets.triton.kernel", "from ...frontend.api import explain\n",
     "tilewright.targets.triton.kernel -> tilewright.frontend.api"),
])
def test_the_check_catches_back_arrows(name: str, source: str, expected: str) -> None:
    found = violations(name, imported_modules(source, name, False))
    assert expected in found, found


def test_allowed_arrows_pass_the_check() -> None:
    source = "from ..ir.graph import Graph\nfrom ..schedule.kernel import Kernel\nfrom . import plan\n"
    assert violations("tilewright.runtime.graph", imported_modules(source, "tilewright.runtime.graph", False)) == []


def test_modules_and_functions_stay_readable_in_size() -> None:
    too_long = []
    for name, path in _modules():
        source = path.read_text()
        lines = source.count("\n")
        if lines > MAX_MODULE_LINES:
            too_long.append(f"module {name}: {lines} lines (at most {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"function {name}.{node.name}: {length} lines (at most {MAX_FUNCTION_LINES})")
    assert not too_long, "\n".join(too_long)
