"""Imports go one way (architecture.md "Layout"): renderfarm -> shared, scheduler -> shared, worker -> shared.

The scheduler never imports the worker (it sends Celery messages by task name), nothing outside `worker/` imports
torch or diffusers, and `shared/` imports none of the packages built on it. Only the command line composes
everything, lazily. Checked on the source text, so a violation anywhere in a module fails, not only the ones a test
happens to import.
"""

from __future__ import annotations

import ast
import sys
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
COMPOSERS = {"renderfarm/server_cli.py", "renderfarm/embedded.py", "renderfarm/demo.py", "renderfarm/quiet.py"}
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

# The shared modules that are pure (the standard library and pydantic): the job contract and what it uses. The SDK's
# client install has these and no other shared module.
PURE_SHARED_MODULES = ("shared.job", "shared.states", "shared.errors", "shared.sampler_names", "shared.prompts")


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
    assert "torch" in imported_packages(ROOT / "worker" / "engine" / "processing.py")
    assert "shared" in imported_packages(ROOT / "scheduler" / "app.py")


# The engine (worker/engine/) renders and nothing else: no database, storage, live status, Celery or broker, and no
# farm-side worker module (architecture.md "Layout"). Checked on full dotted names, so `shared.db.tables` and
# `from shared import config` count as well as `shared.db`.
ENGINE_FORBIDDEN_PACKAGES = {"sqlalchemy", "redis", "celery", "kombu", "boto3", "botocore", "fastapi"}
ENGINE_FORBIDDEN_MODULES = ("shared.db", "shared.storage", "shared.live", "shared.queueing", "shared.config")


def imported_modules(path: Path) -> set[str]:
    """Every absolute module a file imports, by its full dotted name (`from a import b` also counts as `a.b`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def is_forbidden_in_engine(module: str) -> bool:
    if module.split(".")[0] in ENGINE_FORBIDDEN_PACKAGES:
        return True
    if any(module == banned or module.startswith(banned + ".") for banned in ENGINE_FORBIDDEN_MODULES):
        return True
    return (module == "worker" or module.startswith("worker.")) and not (
        module == "worker.engine" or module.startswith("worker.engine.")
    )


def test_the_engine_imports_no_farm_infrastructure() -> None:
    violations = {
        str(path.relative_to(ROOT)): sorted(m for m in imported_modules(path) if is_forbidden_in_engine(m))
        for path in modules_of("worker/engine")
    }
    assert {path: found for path, found in violations.items() if found} == {}


def test_the_engine_checker_sees_farm_imports() -> None:
    # Guards the guard: the farm side's model cache reads the farm's configuration; the engine may not.
    found = imported_modules(ROOT / "worker" / "model_cache.py")
    assert any(is_forbidden_in_engine(m) for m in found)
    assert is_forbidden_in_engine("shared.db.tables")
    assert is_forbidden_in_engine("worker.job_runner")
    assert not is_forbidden_in_engine("worker.engine.sampling.plan")
    assert not is_forbidden_in_engine("shared.job.steps")


# ----------------------------------------------------------------------------------------------------------------
# The database behind one door (shared.db.database.Database)

# The product's packages reach the database only through `shared.db`'s door: no SQLAlchemy, no table objects, no
# connections of their own. bench/ and tests/ are not held to this: they create and drop whole databases, fill
# tables with fixture data at scale (bench/growth.py) and read query plans (tests/integration/test_query_plans.py).
DOOR_KEEPERS = ("scheduler", "worker", "renderfarm")
DB_INTERNALS = {"shared.db.tables", "shared.db.transaction", "shared.db.job_updates", "shared.db.job_inserts"}
CONNECTION_METHODS = {"connect", "begin", "raw_connection"}


def database_bypasses(path: Path) -> list[str]:
    """What in `path` goes around the door: SQLAlchemy or shared.db internals imported, an engine's connection."""
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.stmt | ast.expr):
            continue
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for module in modules:
            if module.split(".")[0] == "sqlalchemy" or module in DB_INTERNALS:
                found.append(f"line {node.lineno}: imports {module}")
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in CONNECTION_METHODS
            and ast.unparse(node.func.value).split(".")[-1].endswith("engine")
        ):
            found.append(f"line {node.lineno}: {ast.unparse(node.func)}()")
    return found


@pytest.mark.parametrize("package", DOOR_KEEPERS)
def test_nothing_outside_shared_db_touches_tables_or_connections(package: str) -> None:
    violations = {str(path.relative_to(ROOT)): database_bypasses(path) for path in modules_of(package)}
    assert {path: found for path, found in violations.items() if found} == {}


def test_the_door_checker_sees_a_bypass(tmp_path: Path) -> None:
    # Guards the guard: each way around the door is reported, and a Celery signal's connect() is not.
    module = tmp_path / "bypass.py"
    module.write_text(
        "import sqlalchemy as sa\n"
        "from shared.db import tables\n"
        "from shared.db.tables import jobs\n"
        "def f(db, signals):\n"
        "    with db.engine.connect() as conn:\n"
        "        pass\n"
        "    signals.worker_init.connect(f)\n",
        encoding="utf-8",
    )
    assert database_bypasses(module) == [
        "line 1: imports sqlalchemy",
        "line 2: imports shared.db.tables",
        "line 3: imports shared.db.tables",
        "line 5: db.engine.connect()",
    ]


# ----------------------------------------------------------------------------------------------------------------
# No import circles

PROJECT_PACKAGES = ("scheduler", "shared", "worker", "renderfarm")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_level_imports(path: Path, known: set[str]) -> set[str]:
    """The project modules `path` imports at module level, `if TYPE_CHECKING:` blocks included (a circle there is
    a circle in the design even when Python never runs it); imports inside functions (lazy ones) are not counted.
    `from package import name` counts as importing `package.name` when that is a module, else `package`."""
    imported: set[str] = set()
    statements = list(ast.parse(path.read_text(encoding="utf-8")).body)
    while statements:
        node = statements.pop()
        if isinstance(node, ast.If | ast.Try):
            statements.extend([*node.body, *node.orelse, *getattr(node, "finalbody", [])])
            for handler in getattr(node, "handlers", []):
                statements.extend(handler.body)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                if submodule in known:
                    imported.add(submodule)
                elif node.module in known:
                    imported.add(node.module)
    return imported


def import_circles() -> list[list[str]]:
    """Every set of project modules that import each other in a circle (strongly connected components, Tarjan)."""
    paths = {module_name(path): path for package in PROJECT_PACKAGES for path in modules_of(package)}
    known = set(paths)
    graph = {name: sorted(module_level_imports(path, known) - {name}) for name, path in paths.items()}
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(name: str) -> None:
        index[name] = lowlink[name] = len(index)
        stack.append(name)
        on_stack.add(name)
        for other in graph[name]:
            if other not in index:
                visit(other)
                lowlink[name] = min(lowlink[name], lowlink[other])
            elif other in on_stack:
                lowlink[name] = min(lowlink[name], index[other])
        if lowlink[name] == index[name]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == name:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return sorted(circles)


def test_no_import_circles() -> None:
    assert import_circles() == []


def test_the_circle_finder_sees_a_circle_through_type_checking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Guards the guard: a circle closed only by an `if TYPE_CHECKING:` import is reported; a lazy import is not.
    package = tmp_path / "scheduler"
    package.mkdir()
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from scheduler.b import B\n"
    )
    (package / "b.py").write_text("from scheduler import a\n")
    (package / "c.py").write_text("def f():\n    from scheduler import b\n")
    (package / "d.py").write_text("from scheduler.c import f\n")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    monkeypatch.setitem(globals(), "PROJECT_PACKAGES", ("scheduler",))
    assert import_circles() == [["scheduler.a", "scheduler.b"]]


# The job contract (shared/job/) is used by the SDK, the scheduler and the worker alike, so it stays pure: the
# standard library, pydantic, and the few shared modules that are pure themselves.
JOB_CONTRACT_MAY_IMPORT = {"pydantic", "pydantic_core", "annotated_types", "typing_extensions"}


def test_the_job_contract_is_pure() -> None:
    violations = {}
    for path in modules_of("shared/job"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        modules = {
            node.module
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
        } | {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        found = {
            module
            for module in modules
            if module.split(".")[0] not in sys.stdlib_module_names | JOB_CONTRACT_MAY_IMPORT
            and not module.startswith(PURE_SHARED_MODULES)
        }
        if found:
            violations[str(path.relative_to(ROOT))] = sorted(found)
    assert violations == {}


# ----------------------------------------------------------------------------------------------------------------
# The SDK installs alone


def test_the_sdk_imports_only_what_the_client_install_has() -> None:
    violations = {}
    for path in modules_of("renderfarm"):
        relative = str(path.relative_to(ROOT))
        if relative in COMPOSERS:
            continue
        modules = imported_modules(path)
        found = {name for name in modules if name.split(".")[0] in SERVER_PACKAGES}
        found |= {
            name for name in modules if name.split(".")[0] == "shared" and not name.startswith(PURE_SHARED_MODULES)
        }
        if found:
            violations[relative] = sorted(found)
    assert violations == {}


def test_the_command_line_reaches_the_server_commands_only_lazily() -> None:
    tree = ast.parse((ROOT / "renderfarm" / "cli.py").read_text(encoding="utf-8"))
    top_level: set[str] = set()
    for node in tree.body:  # module level only: the imports inside functions run when their command runs
        if isinstance(node, ast.Import):
            top_level.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            top_level.add(node.module)
    composers = {f"renderfarm.{Path(relative).stem}" for relative in COMPOSERS}
    assert top_level & composers == set()
    assert {name for name in top_level if name.split(".")[0] in {"shared", "scheduler", "worker"}} == set()
