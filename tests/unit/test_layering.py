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
# The command line composes the farm; it may import scheduler and worker (inside functions, to stay fast).
COMPOSERS = {"renderfarm/cli.py", "renderfarm/embedded.py", "renderfarm/demo.py"}


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
