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
    assert "torch" in imported_packages(ROOT / "worker" / "processing.py")
    assert "shared" in imported_packages(ROOT / "scheduler" / "app.py")


# The job contract (shared/job/) is used by the SDK, the scheduler and the worker alike, so it stays pure: the
# standard library, pydantic, and the few shared modules that are pure themselves.
JOB_CONTRACT_MAY_IMPORT = {"pydantic", "pydantic_core", "annotated_types", "typing_extensions"}
JOB_CONTRACT_SHARED_MODULES = {"shared.config", "shared.errors", "shared.sampler_names"}


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
            and module not in JOB_CONTRACT_SHARED_MODULES
            and not module.startswith("shared.job")
        }
        if found:
            violations[str(path.relative_to(ROOT))] = sorted(found)
    assert violations == {}
