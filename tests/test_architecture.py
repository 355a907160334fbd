"""The house rules of the package layout, checked on the source (no import is executed).

The layout itself (each part of the package, its level, its role) is written once, in layout.toml
at the repository root. This test reads it and checks:

- every folder and top-level module of the package is a part listed there, and every listed part exists;
- a part imports only parts on lower levels (and itself);
- nothing inside the package imports the package root (its lazy ``__getattr__`` hides loops);
- no import cycle between modules, counting package ``__init__`` files (a module imported by name
  runs its packages' ``__init__`` first), imports inside functions (a lazy module ``__getattr__``
  included) and ``importlib.import_module("udp_datasets...")``;
- README.md's "Layout" block is layout.toml rendered, and no module docstring restates levels;
- only ``cli/`` parses arguments or configures logging;
- no module over 600 lines, no function over 80 lines (argument-parser builders excepted).

``python tests/test_architecture.py`` rewrites README.md's "Layout" block from layout.toml.
"""

from __future__ import annotations

import ast
import difflib
import re
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

REPO = next(p for p in Path(__file__).resolve().parents if (p / "layout.toml").is_file())
PACKAGE = REPO / "udp_datasets"
LAYOUT_FILE = REPO / "layout.toml"
README = REPO / "README.md"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80
PARSER_BUILDERS = ("build_parser", "add_")  # argument-parser builders may be long lists of flags
IMPORT_FUNCTIONS = ("import_module", "__import__")  # importlib.import_module("udp_datasets.x") is an import too
RESTATED_LAYOUT = re.compile(r"\blevels? \d|\bimports? only\b|\blowest first\b", re.IGNORECASE)


# --- the checker: functions of a package folder, so that the tests below can run it on a fixture tree


def load_layout(path: Path = LAYOUT_FILE) -> dict:
    with path.open("rb") as f:
        return tomllib.load(f)


def part_levels(layout: dict) -> dict[str, int]:
    return {name: part["level"] for name, part in layout["parts"].items()}


def find_modules(package: Path) -> dict[str, Path]:
    """Dotted module name -> file; a package is named by its folder and stands for its ``__init__.py``."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        name = ".".join(path.relative_to(package.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _longest_module(dotted: str, modules: dict[str, Path]) -> str | None:
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


def _absolute(module: str, level: int, package: str) -> str:
    """``from ..x import y`` seen from ``package``: the absolute name of ``..x``."""
    if not level:
        return module
    parts = package.split(".")[: len(package.split(".")) - level + 1]
    return ".".join(parts + ([module] if module else []))


def _named_targets(node: ast.AST, package: str, modules: dict[str, Path]) -> set[str]:
    """Modules of the package that one AST node imports by name."""
    if isinstance(node, ast.Import):
        return {m for a in node.names if (m := _longest_module(a.name, modules))}
    if isinstance(node, ast.ImportFrom):
        base = _absolute(node.module or "", node.level, package)
        # ``from pkg import sub`` imports the module pkg.sub; ``from pkg import name`` reads pkg's __init__
        found = {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
        return found & modules.keys()
    if (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)):
        func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        if func in IMPORT_FUNCTIONS:
            text = node.args[0].value
            dotted = _absolute(text.lstrip("."), len(text) - len(text.lstrip(".")), package)
            return {m for m in [_longest_module(dotted, modules)] if m}
    return set()


def module_imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Modules of the package that ``name`` imports, at any depth of its source (functions included).

    Importing ``a.b.c`` runs ``a.b``'s ``__init__`` first: that is an edge too, unless ``a.b`` is a
    package that ``name`` itself lives in (its ``__init__`` is already running). The root is left to
    :func:`root_importers`.
    """
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    root = name.split(".")[0]
    named: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        named |= _named_targets(node, package, modules)
    found = set(named)
    for target in named:
        parts = target.split(".")
        for end in range(2, len(parts)):
            outer = ".".join(parts[:end])
            if outer in modules and not (name == outer or name.startswith(outer + ".")):
                found.add(outer)
    return {m for m in found if m != name and (m != root or m in named)}


def import_graph(package: Path) -> dict[str, set[str]]:
    modules = find_modules(package)
    return {name: module_imports(name, path, modules) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[str]:
    """One line per back edge of a depth-first walk: empty exactly when the graph has no cycle."""
    state: dict[str, int] = {}
    cycles: list[str] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    return cycles


def root_importers(graph: dict[str, set[str]]) -> list[str]:
    """``module -> root`` for every module that imports the package root (only the root may be above all)."""
    return sorted(f"{name} -> {root}" for name, targets in graph.items()
                  for root in [name.split(".")[0]] if name != root and root in targets)


def _part(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else None


def level_violations(graph: dict[str, set[str]], levels: dict[str, int]) -> list[str]:
    wrong = []
    for name, targets in graph.items():
        part = _part(name)
        for target in targets:
            other = _part(target)
            if part is None or other is None or other == part or part not in levels or other not in levels:
                continue  # the root and unlisted parts: root_importers and layout_problems speak for them
            if levels[other] >= levels[part]:
                wrong.append(f"{name} -> {target} ({part} level {levels[part]}, {other} level {levels[other]})")
    return sorted(wrong)


def layout_problems(package: Path, layout_file: Path, layout: dict) -> list[str]:
    """Parts of the package missing from the layout file, and entries of the file with no code."""
    code = {p.stem if p.suffix == ".py" else p.name for p in package.iterdir()
            if (p.suffix == ".py" and p.name != "__init__.py") or (p.is_dir() and any(p.rglob("*.py")))}
    listed = list(layout["parts"])
    problems = [f"{package.name}/{p}: not in {layout_file.name} (add its line: level and role)"
                for p in sorted(set(code) - set(listed))]
    problems += [f"{layout_file.name} lists {p!r}, which has no code (remove its line)"
                 for p in listed if p not in code]
    levels = [layout["parts"][p]["level"] for p in listed]
    if levels != sorted(levels):
        problems.append(f"{layout_file.name}: [parts] are not in level order: {dict(zip(listed, levels))}")
    problems += [f"{package.name}/{p.relative_to(package).as_posix()}: modules without an __init__.py (give it one, "
                 "its docstring the folder's role)" for p in sorted(package.rglob("*"))
                 if p.is_dir() and any(p.glob("*.py")) and not (p / "__init__.py").is_file()]
    problems += [f"{layout_file.name} lists {p!r} under [repo], which does not exist"
                 for p in layout.get("repo", {}) if not (layout_file.parent / p).exists()]
    return problems


# --- README.md's "Layout" block, rendered from layout.toml

README_HEADING = "## Layout"
WIDTH = 104


def render_layout(layout: dict, package: Path = PACKAGE) -> str:
    rows = [(f"{layout['package']['name']}/", layout["package"]["role"])]
    rows += [(f"  {part['level']} {name}{'/' if (package / name).is_dir() else '.py'}", part["role"])
             for name, part in layout["parts"].items()]
    rows += [(f"{path}/" if (package.parent / path).is_dir() else path, role)
             for path, role in layout.get("repo", {}).items()]
    column = max(len(name) for name, _ in rows) + 2
    lines = []
    for name, role in rows:
        lines += textwrap.wrap(role, WIDTH, initial_indent=name.ljust(column), subsequent_indent=" " * column)
    return "\n".join(lines) + "\n"


def readme_block(text: str) -> tuple[int, int]:
    """Character span of the first fenced block after the "Layout" heading (its contents only)."""
    section = text.index(f"\n{README_HEADING}\n")
    start = text.index("```\n", section) + len("```\n")
    return start, text.index("```", start)


def write_readme_block() -> None:
    text = README.read_text(encoding="utf-8")
    start, end = readme_block(text)
    README.write_text(text[:start] + render_layout(load_layout()) + text[end:], encoding="utf-8")


# --- the tests on the package

LAYOUT = load_layout()
LEVELS = part_levels(LAYOUT)
MODULES = find_modules(PACKAGE)
GRAPH = import_graph(PACKAGE)


def test_every_part_is_in_the_layout_file_and_every_entry_has_code():
    problems = layout_problems(PACKAGE, LAYOUT_FILE, LAYOUT)
    assert not problems, "layout.toml and the package disagree:\n" + "\n".join(problems)


def test_nothing_inside_imports_the_package_root():
    found = root_importers(GRAPH)
    assert not found, ("imports of the package root from inside (import the module that defines the name):\n"
                       + "\n".join(found))


def test_no_import_cycle():
    cycles = find_cycles(GRAPH)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_lower_parts_never_import_higher_ones():
    wrong = level_violations(GRAPH, LEVELS)
    assert not wrong, "imports that go up or sideways (levels: layout.toml):\n" + "\n".join(wrong)


def test_readme_layout_block_is_the_layout_file():
    text = README.read_text(encoding="utf-8")
    start, end = readme_block(text)
    want = render_layout(LAYOUT)
    diff = "".join(difflib.unified_diff(text[start:end].splitlines(True), want.splitlines(True),
                                        "README.md (Layout block)", "rendered from layout.toml"))
    if text[start:end] != want:
        pytest.fail("README.md's Layout block is not layout.toml: edit layout.toml (not the README), then run "
                    "`python tests/test_architecture.py` to rewrite the block\n" + diff, pytrace=False)


def test_docstrings_do_not_restate_the_layout():
    """A module docstring that gives levels drifts from layout.toml (0.2 had three layouts that disagreed)."""
    found = [f"{name}: ...{m.group(0)}..." for name, path in MODULES.items()
             for m in RESTATED_LAYOUT.finditer(ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or "")]
    assert not found, ("module docstrings that restate the layout (say the role; levels live in layout.toml):\n"
                       + "\n".join(found))


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


# --- the checker on fixture trees: it sees what the old one (which skipped ``__init__`` edges) could not


def _tree(root: Path, files: dict[str, str]) -> Path:
    """Write ``files`` (path -> source) under ``root``; every folder becomes a package. Returns the package."""
    for rel, source in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source), encoding="utf-8")
    for folder in [p for p in root.rglob("*") if p.is_dir()] + [root / "pkg"]:
        (folder / "__init__.py").touch()
    return root / "pkg"


def test_checker_sees_a_loop_through_a_package_init(tmp_path):
    # a.x imports the module b.y, which runs b/__init__, which imports b.z, which imports a.x
    pkg = _tree(tmp_path, {
        "pkg/a/x.py": "from ..b.y import Y\n",
        "pkg/b/__init__.py": "from .z import Z\n",
        "pkg/b/y.py": "Y = 1\n",
        "pkg/b/z.py": "from ..a import x\nZ = 2\n",
    })
    assert find_cycles(import_graph(pkg)) == ["pkg.a.x -> pkg.b -> pkg.b.z -> pkg.a.x"]


def test_checker_sees_a_loop_through_a_lazy_getattr(tmp_path):
    # a.x reads a name of c's __init__, whose lazy __getattr__ imports c.heavy (by string), which imports a.x
    pkg = _tree(tmp_path, {
        "pkg/a/x.py": "def f():\n    from ..c import thing\n    return thing\n",
        "pkg/c/__init__.py": """
            import importlib

            def __getattr__(name):
                return importlib.import_module("pkg.c.heavy").thing
            """,
        "pkg/c/heavy.py": "from pkg.a.x import f\nthing = f\n",
    })
    assert find_cycles(import_graph(pkg)) == ["pkg.a.x -> pkg.c -> pkg.c.heavy -> pkg.a.x"]


def test_checker_sees_the_issue_loop_through_the_package_root(tmp_path):
    # 0.2's hidden loop: jobs.summary imports the root for __version__; the root's lazy __getattr__
    # reaches publish.hub, which imports jobs.manifest, which uses jobs.summary
    pkg = _tree(tmp_path, {
        "pkg/__init__.py": """
            __version__ = "0"

            def __getattr__(name):
                from .publish import hub
                return getattr(hub, name)
            """,
        "pkg/jobs/summary.py": "def versions():\n    from .. import __version__\n    return __version__\n",
        "pkg/jobs/manifest.py": "from .summary import versions\n",
        "pkg/publish/hub.py": "from ..jobs.manifest import versions\n",
    })
    graph = import_graph(pkg)
    assert root_importers(graph) == ["pkg.jobs.summary -> pkg"]
    assert find_cycles(graph) == ["pkg -> pkg.publish.hub -> pkg.jobs.manifest -> pkg.jobs.summary -> pkg"]
    assert level_violations(graph, {"jobs": 5, "publish": 6}) == []  # the levels alone cannot see it


def test_checker_reads_import_module_strings(tmp_path):
    pkg = _tree(tmp_path, {
        "pkg/a/x.py": """
            import importlib

            def load():
                return importlib.import_module(".y", __package__), __import__("pkg.b.z"), importlib.import_module(name)
            """,
        "pkg/a/y.py": "", "pkg/b/z.py": "",
    })
    assert import_graph(pkg)["pkg.a.x"] == {"pkg.a.y", "pkg.b", "pkg.b.z"}


def test_checker_allows_a_package_init_importing_its_own_modules(tmp_path):
    pkg = _tree(tmp_path, {
        "pkg/__init__.py": "from .a import x\nfrom .b import y\n",
        "pkg/a/__init__.py": "from .x import X\nfrom . import y\n",
        "pkg/a/x.py": "from . import y\nX = y.Y\n",
        "pkg/a/y.py": "Y = 1\n",
        "pkg/b/y.py": "from ..a.x import X\n",
    })
    graph = import_graph(pkg)
    assert find_cycles(graph) == [] and root_importers(graph) == []
    assert level_violations(graph, {"a": 0, "b": 1}) == []
    assert level_violations(graph, {"a": 1, "b": 1}) == ["pkg.b.y -> pkg.a (b level 1, a level 1)",
                                                         "pkg.b.y -> pkg.a.x (b level 1, a level 1)"]


def test_checker_compares_the_layout_file_with_the_code(tmp_path):
    pkg = _tree(tmp_path, {"pkg/a/x.py": "", "pkg/c.py": "", "layout.toml": ""})
    (pkg / "a" / "__init__.py").unlink()
    layout = {"parts": {"a": {"level": 1}, "b": {"level": 0}}, "repo": {"docs": "docs"}}
    assert layout_problems(pkg, tmp_path / "layout.toml", layout) == [
        "pkg/c: not in layout.toml (add its line: level and role)",
        "layout.toml lists 'b', which has no code (remove its line)",
        "layout.toml: [parts] are not in level order: {'a': 1, 'b': 0}",
        "pkg/a: modules without an __init__.py (give it one, its docstring the folder's role)",
        "layout.toml lists 'docs' under [repo], which does not exist",
    ]


if __name__ == "__main__":
    write_readme_block()
    sys.stdout.write(f"README.md's Layout block rewritten from {LAYOUT_FILE.name}\n")
