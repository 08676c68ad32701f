"""The package's shape (docs/design/layout.md): one subpackage per stage of the data's path, imports
running one way, no module importing another that imports it back. Every import counts, also the
ones inside functions (made there to keep start-up short), since a lazy import is still a dependency."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "segtune"

# lowest first: a module may import its own stage and the stages of lower layers, never a higher
# layer nor another stage of its own layer
LAYERS = [
    ("errors",),
    ("options", "hub"),  # leaves: import nothing of segtune but errors
    ("data",),
    ("models",),
    ("inference",),
    ("evaluation",),
    ("reporting",),
    ("training", "prediction"),
    ("exporting", "serve"),
    ("demo", "commands"),
    ("api",),
    ("cli",),
    ("__main__", "__init__"),
]
LAYER = {stage: i for i, names in enumerate(LAYERS) for stage in names}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: Path, known: set) -> set:
    """The segtune modules `name` imports, anywhere in it."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "segtune"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "segtune":
                target = node.module
            else:
                continue
            for alias in node.names:  # `from . import api` imports a module; `from .x import y`, module x
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in known else target)
    return found - {name}


def stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


@pytest.fixture(scope="module")
def graph():
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def test_every_module_belongs_to_a_stage(graph):
    assert {stage(m) for m in graph} <= set(LAYER), {stage(m) for m in graph} - set(LAYER)


def test_imports_run_one_way(graph):
    upward = sorted(f"{m} imports {d}" for m, deps in graph.items() for d in deps
                    if stage(d) != stage(m) and LAYER[stage(d)] >= LAYER[stage(m)])
    assert upward == []


def test_the_leaves_import_nothing_of_segtune_but_errors(graph):
    for leaf in ("segtune.errors", "segtune.options", "segtune.hub"):
        assert graph[leaf] <= {"segtune.errors"}, leaf


def test_no_module_imports_itself_back(graph):
    """No cycle between modules, through any number of steps (Tarjan's strongly connected components)."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == []


def test_the_checks_see_what_they_should(graph):
    """The graph is read right: a lazy import inside a function counts, and so does `from . import x`."""
    assert "segtune.api" in graph["segtune.cli"]  # `from . import api`, inside the handlers
    assert "segtune.commands" in graph["segtune.api"]
    assert "segtune.inference.segmenter" in graph["segtune.evaluation.run"]  # inside run_evaluation
    assert "segtune.reporting.report" in graph["segtune.training.run"]


def test_the_top_holds_only_what_faces_the_user():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert top == ["__init__.py", "__main__.py", "api.py", "cli.py", "commands.py", "demo.py", "errors.py", "hub.py",
                   "options.py"]
