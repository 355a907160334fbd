"""The house rules of the package layout, checked on the source (no import is executed).

- no import cycle between modules (imports inside functions count too);
- lower folders never import higher ones (the levels below, README "Layout");
- only ``cli/`` parses arguments or configures logging;
- no module over 600 lines, no function over 80 lines (argument-parser builders excepted).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "udp_datasets"

# What each part may import: a part sees only parts on lower levels (and itself).
LEVELS = {
    "config": 0, "images": 0, "compat": 0,
    "models": 1, "sources": 1,
    "method": 2, "sinks": 2,
    "protector": 3,
    "jobs": 4,
    "publish": 5, "evaluate": 5,
    "cli": 6,
}
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80
PARSER_BUILDERS = ("build_parser", "add_")  # argument-parser builders may be long lists of flags


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts)
        out[name[: -len(".__init__")] if name.endswith(".__init__") else name] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Modules of the package that ``name`` imports (absolute or relative, at any depth)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found |= {base} | {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _part(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else None


def test_no_import_cycle():
    state: dict[str, int] = {}
    cycles: list[str] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if MODULES[nxt].name == "__init__.py":  # a package's __init__ re-exports; not an edge of logic
                continue
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for name in GRAPH:
        if name not in state:
            visit(name, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_lower_parts_never_import_higher_ones():
    wrong = []
    for name, targets in GRAPH.items():
        part = _part(name)
        if part is None:  # the package's own __init__: the public face, may re-export anything
            continue
        assert part in LEVELS, f"{name}: folder or module {part!r} has no level in tests/test_architecture.py"
        for target in targets:
            other = _part(target)
            if other is None or other == part:
                continue
            if LEVELS[other] >= LEVELS[part]:
                wrong.append(f"{name} -> {target} ({part} level {LEVELS[part]}, {other} level {LEVELS[other]})")
    assert not wrong, "imports that go up or sideways:\n" + "\n".join(sorted(wrong))


@pytest.mark.parametrize("needle", ["import argparse", "logging.basicConfig"])
def test_only_the_cli_parses_arguments_and_configures_logging(needle):
    offenders = [name for name, path in MODULES.items()
                 if _part(name) != "cli" and needle in path.read_text(encoding="utf-8")]
    assert not offenders, f"{needle!r} outside udp_datasets/cli/: {offenders}"


def test_modules_and_functions_are_small():
    too_long = []
    for name, path in MODULES.items():
        text = path.read_text(encoding="utf-8")
        lines = text.count("\n") + 1
        if lines > MAX_MODULE_LINES:
            too_long.append(f"module {name}: {lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith(PARSER_BUILDERS):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"function {name}.{node.name}: {length} lines")
    assert not too_long, "over the size limits:\n" + "\n".join(too_long)
