"""The layout shows the architecture, and stays so: no import circle in ``pausesvc`` (counting
imports inside functions, so a late import cannot hide one), and ``pausesvc.protocol`` does no
I/O (it imports no Redis client, no HTTP, no asyncio)."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "pausesvc"


def _module(path: Path) -> str:
    parts = path.relative_to(CORE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for p in sorted(CORE.rglob("*.py"))}


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            for sub in node.body:
                lines.update(range(sub.lineno, (sub.end_lineno or sub.lineno) + 1))
    return lines


def _imports(path: Path) -> set[str]:
    """Every pausesvc module ``path`` imports, at any depth (TYPE_CHECKING blocks aside)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = _type_checking_lines(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in found if m in MODULES}


def _all_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return [*stack[stack.index(n) :], n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def _package_edges() -> dict[str, set[str]]:
    """A package's ``__init__`` re-exporting its modules is not a circle through the package."""
    graph = {m: _imports(p) - {m} for m, p in MODULES.items()}
    for m in graph:
        # importing pausesvc.a.b runs pausesvc.a first: a module never "imports" its parents
        graph[m] = {n for n in graph[m] if not m.startswith(n + ".")}
    return graph


def test_the_modules_are_found() -> None:
    assert {"pausesvc.protocol.view", "pausesvc.watcher", "pausesvc.client._async"} <= MODULES.keys()


def test_no_import_circle() -> None:
    assert _cycle(_package_edges()) is None, " -> ".join(_cycle(_package_edges()) or [])


def test_the_circle_check_sees_one() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_protocol_does_no_io() -> None:
    allowed_roots = {"__future__", "collections", "dataclasses", "functools", "importlib", "json", "logging"}
    allowed_roots |= {"math", "re", "typing", "hashlib"}
    for name, path in MODULES.items():
        if not name.startswith("pausesvc.protocol"):
            continue
        for imp in _all_imports(path):
            ok = (
                imp.split(".")[0] in allowed_roots
                or imp.startswith("pausesvc.protocol")
                or imp == "pausesvc._exceptions"
            )
            assert ok, f"{name} imports {imp}"


def test_the_version_string_lives_in_one_place() -> None:
    import importlib.metadata
    import tomllib

    import pausesvc_vllm

    import pausesvc

    for pyproject, module in ((CORE.parent, pausesvc), (CORE.parent / "vllm_plugin", pausesvc_vllm)):
        project = tomllib.loads((pyproject / "pyproject.toml").read_text())["project"]
        assert "version" not in project and "version" in project["dynamic"], pyproject
        dist = project["name"]
        assert importlib.metadata.version(dist) == module.__version__, dist


def test_moved_modules_still_import_as_the_same_module() -> None:
    import importlib

    from pausesvc._moved import MOVED

    for old, new in MOVED.items():
        assert importlib.import_module(old) is importlib.import_module(new), old
    assert not (CORE / "sampling_tinker.py").exists()  # no copies: the finder aliases
