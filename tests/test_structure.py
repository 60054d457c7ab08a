"""The package's shape: no two talkfast modules import each other, directly or through others, and no
import runs from a lower room to a higher one (:data:`ROOM_RANKS`).

Every ``import`` counts, at module level or inside a function (a deferred import is still a
dependency; only blocks under ``if TYPE_CHECKING:`` are skipped), so that a lazy import cannot hide
a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import talkfast

SRC = Path(talkfast.__file__).resolve().parent


def _module_name(path: Path, package_dir: Path) -> str:
    parts = [package_dir.name, *path.relative_to(package_dir).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skipped.update(id(x) for x in ast.walk(child))
    return skipped


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (``from pkg import mod`` points at ``pkg.mod``)."""
    files = {_module_name(f, package_dir): f for f in sorted(package_dir.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        skipped = _type_checking_nodes(tree)
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                edges.update(a.name for a in node.names if a.name in files)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                    target = ".".join(parts + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    if f"{target}.{alias.name}" in files:
                        edges.add(f"{target}.{alias.name}")
                    elif target in files:
                        edges.add(target)
        edges.discard(name)
        graph[name] = edges
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    circles.append(sorted(component))
    return circles


def test_no_import_circles() -> None:
    graph = import_graph(SRC)
    assert "talkfast.app.batch" in graph and "talkfast.app.jobs" in graph["talkfast.parallel.ray_batch"]
    circles = import_circles(graph)
    assert not circles, "import circles among talkfast modules:\n" + "\n".join(" <-> ".join(c) for c in circles)


#: The rooms from the bottom up: a module may import its own room and the rooms of a lower or equal
#: rank, never a higher one (the package's own leaf modules -- errors, paths, threads, examples,
#: ``talkfast/__init__`` -- are the floor). Rooms of one rank are peers.
ROOM_RANKS = {
    "": 0,  # talkfast/__init__.py, errors.py, paths.py, threads.py, examples.py
    "io": 1, "models": 1, "audio": 1,
    "face": 2, "sampling": 2,
    "accelerators": 3,
    "pipeline": 4,
    "data": 5, "eval": 5, "train": 5,
    "app": 6, "parallel": 6, "__main__": 6,
}


def room_of(module: str) -> str:
    """``talkfast.pipeline.generate`` -> ``pipeline``; a module directly in the package -> ``""``."""
    parts = module.split(".")
    if len(parts) == 1:
        return ""
    if len(parts) == 2 and parts[1] not in ROOM_RANKS:
        return ""
    return parts[1]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """``"a -> b"`` for every import from a lower room into a higher one (or into an unranked room)."""
    bad = []
    for module, targets in sorted(graph.items()):
        rank = ROOM_RANKS.get(room_of(module))
        for target in sorted(targets):
            other = ROOM_RANKS.get(room_of(target))
            if rank is None or other is None or other > rank:
                bad.append(f"{module} ({room_of(module) or 'package'}) -> {target} ({room_of(target) or 'package'})")
    return bad


def test_no_import_runs_from_a_lower_room_to_a_higher_one() -> None:
    graph = import_graph(SRC)
    bad = upward_imports(graph)
    assert not bad, "imports from a lower room into a higher one:\n" + "\n".join(bad)
    assert "talkfast.threads" in graph["talkfast.pipeline.generate"]  # the thread helpers sit below the pipeline


def test_room_order_sees_an_upward_import(tmp_path: Path) -> None:
    pkg = tmp_path / "talkfast"
    for folder in ("app", "pipeline", "io"):
        (pkg / folder).mkdir(parents=True)
        (pkg / folder / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("")
    (pkg / "app" / "threads.py").write_text("")
    (pkg / "io" / "video.py").write_text("from ..errors import InputError\n")
    (pkg / "pipeline" / "generate.py").write_text(
        "from ..io import video\n\ndef run():\n    from ..app.threads import x\n    return x\n")
    (pkg / "app" / "cli.py").write_text("from ..pipeline import generate\n")
    bad = upward_imports(import_graph(pkg))
    assert bad == ["talkfast.pipeline.generate (pipeline) -> talkfast.app.threads (app)"]


def test_circle_finder_sees_deferred_and_relative_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "app").mkdir(parents=True)
    (pkg / "par").mkdir()
    for init in (pkg / "__init__.py", pkg / "app" / "__init__.py", pkg / "par" / "__init__.py"):
        init.write_text("")
    (pkg / "app" / "batch.py").write_text("def run():\n    from ..par.ray import go\n    return go\n")
    (pkg / "par" / "ray.py").write_text("from ..app.batch import run\n\ndef go():\n    return run\n")
    (pkg / "app" / "jobs.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import batch\n")
    (pkg / "leaf.py").write_text("import pkg.app.jobs\nfrom .app import jobs\n")
    graph = import_graph(pkg)
    assert graph["pkg.leaf"] == {"pkg.app.jobs"}
    assert graph["pkg.app.jobs"] == set()
    assert import_circles(graph) == [["pkg.app.batch", "pkg.par.ray"]]


MAX_LINES = 600  # a file longer than this holds more than one idea: split it


REPO = Path(__file__).resolve().parents[1]


def test_no_source_file_is_several_rooms() -> None:
    files = sorted(SRC.rglob("*.py")) + sorted((REPO / "scripts").glob("*.py")) + sorted((REPO / "benchmarks").glob("*.py"))
    long = {f.name: n for f in files if (n := len(f.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"source files over {MAX_LINES} lines: {long}"


def test_tests_alone_samples_across_modules() -> None:
    """scripts/tests_alone.py (a .ci/run step): its sample covers a module per test before it
    takes a second test of any module, and a seed gives the same sample again."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tests_alone", REPO / "scripts" / "tests_alone.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ids = [f"tests/test_{m}.py::test_{i}" for m in "abcd" for i in range(5 if m == "a" else 2)]
    first = mod.sample(ids, 4, seed=7)
    assert sorted(i.split("::")[0] for i in first) == [f"tests/test_{m}.py" for m in "abcd"]
    assert mod.sample(ids, 4, seed=7) == first and len(set(mod.sample(ids, 20, seed=1))) == len(ids)
