"""The package's layering, read from the source: no import circle between modules, no ImportError fallback
around our own modules, training does not reach up into the pipeline, every stage config is a real class."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import meditune

SRC = Path(meditune.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def module_imports() -> dict[str, set[str]]:
    """Module -> the meditune modules it imports (at module level or inside functions)."""
    graph: dict[str, set[str]] = {}
    modules = {_module_name(p) for p in SRC.rglob("*.py")}
    for path in SRC.rglob("*.py"):
        name = _module_name(path)
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, node, path.name == "__init__.py")
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            deps |= {t for t in targets if t.startswith("meditune") and t in modules and t != name}
        graph[name] = deps
    return graph


def test_no_import_circle():
    graph = module_imports()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_no_import_error_fallback_around_our_modules():
    offenders = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Try):
                continue
            caught = {ast.unparse(h.type) for h in node.handlers if h.type is not None}
            if not caught & {"ImportError", "ModuleNotFoundError"}:
                continue
            for stmt in ast.walk(ast.Module(body=node.body, type_ignores=[])):
                names = ([a.name for a in stmt.names] if isinstance(stmt, ast.Import)
                         else [stmt.module or ""] if isinstance(stmt, ast.ImportFrom) and not stmt.level else
                         ["meditune"] if isinstance(stmt, ast.ImportFrom) else [])
                if any(n.startswith("meditune") for n in names):
                    offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not offenders, offenders


def test_training_does_not_import_the_pipeline():
    graph = module_imports()
    for path in (SRC / "training").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "meditune.pipeline" not in text, path
    assert "meditune.pipeline" not in graph["meditune.training.outputs"]


def test_every_stage_config_is_a_class_defined_in_its_module():
    from meditune.stages import registry

    for name, st in registry().items():
        cls = st.config
        assert "<locals>" not in cls.__qualname__, name
        module = importlib.import_module(cls.__module__)
        assert getattr(module, cls.__name__) is cls, name
        assert f"class {cls.__name__}(" in inspect.getsource(module), name
