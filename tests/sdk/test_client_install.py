"""The SDK installs alone: `pip install renderfarm` (no extras) gives the SDK and the client commands, and no
package of the farm's servers. One test builds the project's wheel, installs it into a fresh virtual environment
and runs it there; a fast one checks, in this environment, that importing the SDK loads no server or worker code.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_layering import PURE_SHARED_MODULES

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("renderfarm", "shared", "scheduler", "worker")
# The packages that the server and worker extras bring, and the farm's own server-side code.
NOT_IN_THE_CLIENT_INSTALL: tuple[str, ...] = ("sqlalchemy", "alembic", "psycopg", "celery", "redis", "fastapi")
NOT_IN_THE_CLIENT_INSTALL += ("uvicorn", "boto3", "prometheus_client", "pydantic_settings", "torch", "diffusers")
SERVER_SIDE_CODE = ("scheduler", "worker")
INSTALL_TIMEOUT_S = 300


def loaded_modules(python: str, statement: str, *, cwd: Path, env: dict[str, str] | None = None) -> list[str]:
    """The names in sys.modules after `statement`, run by `python` in a fresh process."""
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd=cwd, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    modules: list[str] = json.loads(done.stdout)
    return modules


def server_side(modules: list[str]) -> list[str]:
    """The modules of the list that the client install must not load."""
    return [name for name in modules if not belongs_to_the_client(name)]


def belongs_to_the_client(module: str) -> bool:
    top = module.split(".")[0]
    if top == "shared":
        return module == "shared" or module.startswith(PURE_SHARED_MODULES)
    return top not in NOT_IN_THE_CLIENT_INSTALL and top not in SERVER_SIDE_CODE


@pytest.mark.parametrize("statement", ["import renderfarm", "import renderfarm.cli"])
def test_importing_the_sdk_loads_no_server_or_worker_module(statement: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    modules = loaded_modules(sys.executable, statement, cwd=tmp_path, env=env)
    assert "renderfarm" in modules
    assert server_side(modules) == []


@pytest.fixture(scope="module")
def client_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the project's wheel installed without extras; its bin folder."""
    root = tmp_path_factory.mktemp("client-install")
    source = root / "source"  # a copy, so that building leaves nothing in the work tree
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    # Without PYTHONPATH: pip would take a checkout on it (with its egg-info) for an installed renderfarm.
    env = clean_env()

    def run(argv: list[str]) -> None:
        subprocess.run(argv, check=True, cwd=root, timeout=INSTALL_TIMEOUT_S, env=env)

    run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"), str(source)])
    [wheel] = (root / "dist").glob("renderfarm-*.whl")
    run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")])
    bin_dir = root / "venv" / "bin"
    run([*pip, "--python", str(bin_dir / "python"), "install", str(wheel)])
    return bin_dir


def clean_env() -> dict[str, str]:
    """This process's environment without what would let the venv see this checkout or this environment."""
    return {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}


def test_the_client_install_has_no_server_packages(client_install: Path, tmp_path: Path) -> None:
    python = str(client_install / "python")
    probe = "import importlib.util\nfound = [m for m in NAMES if importlib.util.find_spec(m)]\nprint(found)"
    code = f"NAMES = {list(NOT_IN_THE_CLIENT_INSTALL)!r}\n{probe}"
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=clean_env())
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", "the client install brought server packages"


def test_the_client_install_imports_the_sdk_and_the_job_contract(client_install: Path, tmp_path: Path) -> None:
    python = str(client_install / "python")
    modules = loaded_modules(python, "import renderfarm", cwd=tmp_path, env=clean_env())
    assert server_side(modules) == []
    where = subprocess.run(
        [python, "-c", "import renderfarm; print(renderfarm.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=clean_env(),
        check=True,
    )
    assert str(client_install.parent) in where.stdout, "the SDK must come from the fresh environment"
    # Every module of the job contract is importable where only the client install is.
    contract = "import pkgutil, importlib, shared.job\n"
    contract += "for m in pkgutil.iter_modules(shared.job.__path__): importlib.import_module('shared.job.' + m.name)"
    modules = loaded_modules(python, contract, cwd=tmp_path, env=clean_env())
    assert server_side(modules) == []


def test_the_client_commands_run_and_the_server_commands_name_their_extra(client_install: Path, tmp_path: Path) -> None:
    command = str(client_install / "renderfarm")
    env = clean_env()

    def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)

    status = run([command, "status", "--help"])
    assert status.returncode == 0, status.stderr
    assert "task_id" in status.stdout
    assert run([command, "--help"]).returncode == 0
    for argv, extra in ((["scheduler"], "server"), (["db", "upgrade"], "server"), (["worker"], "worker")):
        refused = run([command, *argv])
        assert refused.returncode == 2, (argv, refused.stderr)
        assert f"pip install 'renderfarm[{extra}]'" in refused.stderr, argv
        assert "Traceback" not in refused.stderr
