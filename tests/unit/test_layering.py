"""Imports go one way (architecture.md "Layout"): renderfarm -> shared, scheduler -> shared, worker -> shared.

The scheduler never imports the worker (it sends Celery messages by task name), nothing outside `worker/` imports
torch or diffusers, and `shared/` imports none of the packages built on it. Only the command line composes
everything, lazily. Checked on the source text, so a violation anywhere in a module fails, not only the ones a test
happens to import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = {"torch", "diffusers", "transformers", "cv2"}
FORBIDDEN: dict[str, set[str]] = {
    "shared": {"renderfarm", "scheduler", "worker", "fastapi", *HEAVY},
    "scheduler": {"renderfarm", "worker", *HEAVY},
    "worker": {"renderfarm", "scheduler"},
}
# The server commands compose the farm; they may import scheduler and worker (inside functions, to stay fast).
# renderfarm/cli.py imports them only when a server command runs.
COMPOSERS = {"renderfarm/server_cli.py", "renderfarm/embedded.py", "renderfarm/demo.py"}
# What the client install (`pip install renderfarm`, no extras) lacks: the SDK outside the composers imports none.
SERVER_PACKAGES = {
    "sqlalchemy",
    "alembic",
    "psycopg",
    "celery",
    "kombu",
    "redis",
    "fastapi",
    "starlette",
    "uvicorn",
    "boto3",
    "botocore",
    "prometheus_client",
    "pydantic_settings",
    "numpy",
}
# The shared modules the SDK may use: the job contract (stdlib + pydantic) and the job states.
SDK_SHARED = ("shared.job", "shared.states")


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def modules_of(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_go_one_way(package: str) -> None:
    violations = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & FORBIDDEN[package])
        for path in modules_of(package)
    }
    assert {path: found for path, found in violations.items() if found} == {}


def test_the_sdk_needs_no_server_side_package_except_in_the_composers() -> None:
    violations = {}
    for path in modules_of("renderfarm"):
        relative = str(path.relative_to(ROOT))
        found = imported_packages(path) & {"scheduler", "worker", *HEAVY}
        if found and relative not in COMPOSERS:
            violations[relative] = sorted(found)
    assert violations == {}


def test_the_checker_sees_imports() -> None:
    # Guards the guard: a module that imports torch must be reported.
    assert "torch" in imported_packages(ROOT / "worker" / "processing.py")
    assert "shared" in imported_packages(ROOT / "scheduler" / "app.py")


def imported_modules(path: Path) -> set[str]:
    """The full dotted names of the absolute imports of a module."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_the_sdk_imports_only_what_the_client_install_has() -> None:
    violations = {}
    for path in modules_of("renderfarm"):
        relative = str(path.relative_to(ROOT))
        if relative in COMPOSERS:
            continue
        modules = imported_modules(path)
        found = {name for name in modules if name.split(".")[0] in SERVER_PACKAGES}
        found |= {name for name in modules if name.split(".")[0] == "shared" and not name.startswith(SDK_SHARED)}
        if found:
            violations[relative] = sorted(found)
    assert violations == {}


def test_the_command_line_reaches_the_server_commands_only_lazily() -> None:
    tree = ast.parse((ROOT / "renderfarm" / "cli.py").read_text(encoding="utf-8"))
    top_level = set()
    for node in tree.body:  # module level only: the imports inside functions run when their command runs
        if isinstance(node, ast.Import):
            top_level.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            top_level.add(node.module)
    composers = {f"renderfarm.{Path(relative).stem}" for relative in COMPOSERS}
    assert top_level & composers == set()
    assert {name for name in top_level if name.split(".")[0] in {"shared", "scheduler", "worker"}} == set()


def import_graph(package: str) -> dict[str, set[str]]:
    """Module -> the modules of `package` it imports (at any level, TYPE_CHECKING blocks included)."""
    graph: dict[str, set[str]] = {}
    for path in modules_of(package):
        relative = path.relative_to(ROOT).with_suffix("")
        name = ".".join(relative.parts[:-1] if relative.name == "__init__" else relative.parts)
        graph[name] = set()
        for imported in imported_modules(path):
            if imported.split(".")[0] == package:
                graph[name].add(imported)
    return {
        name: {target for target in targets if target in graph and target != name} for name, targets in graph.items()
    }


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every circle of the graph that a depth-first walk meets (each once, as the path that closes it)."""
    circles: list[list[str]] = []
    done: set[str] = set()

    def walk(name: str, path: list[str]) -> None:
        for target in sorted(graph[name]):
            if target in path:
                circles.append([*path[path.index(target) :], target])
            elif target not in done:
                walk(target, [*path, target])
        done.add(name)

    for name in sorted(graph):
        if name not in done:
            walk(name, [name])
    return circles


# Each package is added here once its circles are gone; in the end, every one of them.
@pytest.mark.parametrize("package", ["renderfarm"])
def test_no_import_circles(package: str) -> None:
    assert import_circles(import_graph(package)) == []


def test_the_circle_finder_sees_a_circle() -> None:
    assert import_circles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
