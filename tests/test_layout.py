"""The house: stages apart from the library (distill/stages/ over distill/), and an import graph without
circles in which no library module imports a stage."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "distill"


def _module(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    modules = {_module(p): p for p in PKG.rglob("*.py")}
    graph = {m: set() for m in modules}
    for m, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):  # imports inside functions count too
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("distill"):
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            graph[m] |= {n for n in names if n in modules and n != m and n not in ("distill", "distill.stages")}
    return graph


def test_stages_live_apart_from_the_library():
    from distill.cli import STAGES

    assert {mod for mod, _ in STAGES.values()} == {m for m in _graph() if m.startswith("distill.stages.")}


def test_no_library_module_imports_a_stage_and_no_import_circle():
    graph = _graph()
    library = [m for m in graph if not m.startswith("distill.stages") and m != "distill.cli"]
    assert not {m: [n for n in graph[m] if n.startswith("distill.stages.")] for m in library
                if any(n.startswith("distill.stages.") for n in graph[m])}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:  # depth-first: a grey node met again is a circle
        state[m] = 1
        for n in sorted(graph[m]):
            assert state.get(n) != 1, " -> ".join([*path, m, n])
            if n not in state:
                visit(n, [*path, m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
