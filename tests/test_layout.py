"""The layout holds: no import circles, each layer imports only layers below it, modules
stay small, ``warmer/`` stays a handful of modules, and the CLI's cheap paths stay cheap.

The import graph is read from the source (``ast``), every import counted: at module top,
inside functions and under ``TYPE_CHECKING``, since each of them is a dependency a reader
has to hold in mind.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("warmer", "analytics", "jobs")

# Lowest first: a module may import its own layer and the layers before it, never one after.
# The first matching prefix names a module's layer.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("basics", ("warmer.units", "warmer.windows", "warmer.oci", "warmer.reference")),
    ("store", ("warmer.store",)),
    ("config", ("warmer.config", "warmer.config_messages", "warmer.config_values")),
    ("warm", ("warmer.warm",)),
    ("analytics", ("analytics",)),
    ("upkeep", ("warmer.upkeep", "warmer.bundle", "warmer.nodes", "warmer.sandbox")),
    ("shells", ("warmer.demo", "jobs", "warmer.cli")),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[_module_name(path)] = path
    return found


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Project modules that ``path`` imports, anywhere in it."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from a.b import c`` depends on a.b.c when that is a module, else on a.b.
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        for target in targets:
            # ``import a.b.c`` runs a, a.b and a.b.c: the deepest project module counts.
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(path, name, known) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        component.append(top)
                        if top == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
                continue
            if child not in graph:
                continue
            if child not in index:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def _layer(module: str) -> int:
    if module == "warmer":
        return 0
    for number, (_name, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return number
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_reader_sees_type_checking_and_function_imports(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from warmer.warm.plan import Plan\n"
        "def f():\n    import analytics.rank\n"
    )
    got = _imports(source, "m", {"warmer.warm.plan", "analytics.rank", "warmer.warm"})
    assert got == {"warmer.warm.plan", "analytics.rank"}


def test_no_import_circles() -> None:
    assert _cycles(_graph()) == []


def test_no_module_imports_a_layer_above_it() -> None:
    upward = [
        f"{module} ({LAYERS[_layer(module)][0]}) imports {target} ({LAYERS[_layer(target)][0]})"
        for module, targets in sorted(_graph().items())
        for target in sorted(targets)
        if _layer(target) > _layer(module)
    ]
    assert upward == []


def test_modules_stay_small_and_warmer_stays_a_handful() -> None:
    big = {
        name: n
        for name, path in _modules().items()
        if (n := len(path.read_text().splitlines())) > 600
    }
    assert big == {}
    flat = sorted(p.name for p in (ROOT / "warmer").glob("*.py"))
    assert len(flat) <= 15, flat


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["status", "--help"], ["ref", "python:3.12"]],
)
def test_cheap_commands_load_no_pandas(argv: list[str]) -> None:
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from warmer.cli.main import cli\n"
        f"result = CliRunner().invoke(cli, {argv!r})\n"
        "assert result.exit_code == 0, result.output\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pandas', 'analytics', 'numpy')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_help_summaries_match_the_commands() -> None:
    import importlib

    from warmer.cli.main import COMMANDS

    for name, (module, summary) in COMMANDS.items():
        commands = {c.name: c for c in importlib.import_module(module).commands}
        assert commands[name].get_short_help_str(limit=1000) == summary, name
