"""The package's layout holds: floors import downward only, nothing imports itself back, and
the public API of the README is importable as written."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import asru_lab

PACKAGE = Path(asru_lab.__file__).parent

# Each floor may import its own floor and the ones below it, never one above (README "Layout").
FLOORS = (
    ("errors", "version", "validation", "artifacts", "quiet", "table_style", "progress"),
    ("models", "data"),
    ("generation", "hooks", "training"),
    ("capture", "probe", "steering", "evaluation", "rewards"),
    ("directions", "explore", "viz"),
    ("stages", "baselines", "causal", "auditing"),
    ("runs", "workshop", "cli", "__init__"),
)
FLOOR = {part: level for level, parts in enumerate(FLOORS) for part in parts}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def floor(module: str) -> int:
    parts = module.split(".")
    return FLOOR[parts[1] if len(parts) > 1 else "__init__"]


def imports(module: str, *, top_level_only: bool) -> set[str]:
    """The asru_lab modules `module` imports, with the subpackages whose __init__ that runs
    (the root package's, and the module's own packages', always run first: they count only
    when imported by name from elsewhere)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    targets: list[str] = []
    for node in nodes:
        if isinstance(node, ast.Import):
            targets += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                targets.append(sub if sub in MODULES else node.module)
    found: set[str] = set()
    for target in targets:
        if target == "asru_lab":
            found.add(target)
            continue
        parts = target.split(".")
        found |= {".".join(parts[:k]) for k in range(2, len(parts) + 1)} & MODULES.keys()
    # a module's own packages are initialised before it, whatever it imports
    parts = module.split(".")
    return found - {".".join(parts[:k]) for k in range(2, len(parts) + 1)}


def test_every_module_has_a_floor():
    unplaced = sorted(m for m in MODULES if m.count(".") and m.split(".")[1] not in FLOOR)
    assert not unplaced, f"place these in FLOORS (and the README's Layout): {unplaced}"


def test_no_module_imports_a_floor_above_it():
    upward = [
        f"{m} (floor {floor(m)}) imports {dep} (floor {floor(dep)})"
        for m in MODULES
        for dep in sorted(imports(m, top_level_only=False))
        if floor(dep) > floor(m)
    ]
    assert not upward, "\n".join(upward)


def test_models_data_and_evaluation_never_reach_the_stages():
    stages = ("asru_lab.stages", "asru_lab.runs", "asru_lab.baselines", "asru_lab.causal")
    low = [m for m in MODULES if m.split(".")[1:2] in (["models"], ["data"], ["evaluation"])]
    assert low
    for module in low:
        seen, todo = set(), [module]
        while todo:
            for dep in imports(todo.pop(), top_level_only=False):
                if dep not in seen:
                    seen.add(dep)
                    todo.append(dep)
        assert not [d for d in seen if d.startswith(stages)], module


def test_no_module_level_import_cycle():
    graph = {m: imports(m, top_level_only=True) for m in MODULES}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycle = path[path.index(dep) :] + [dep] if dep in path else [node, dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for module in MODULES:
        if module not in state:
            visit(module, [module])


def test_no_function_shadows_its_module():
    import importlib

    for name in ("locate", "redirect", "reinforce", "reproduce", "evaluate"):
        assert callable(getattr(asru_lab, name))
    for module in ("stages.locate", "stages.redirect", "stages.reinforce", "runs.reproduce"):
        imported = importlib.import_module(f"asru_lab.{module}")
        exec(f"import asru_lab.{module} as m", scope := {})
        assert scope["m"] is imported and type(imported).__name__ == "module"


@pytest.mark.parametrize("name", asru_lab.__all__)
def test_every_public_name_imports(name):
    exec(f"from asru_lab import {name}", scope := {})
    assert scope[name] is getattr(asru_lab, name)
