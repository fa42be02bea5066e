"""Quiet start-up: `renderfarm up` and `demo` print the project's own lines, one per component, and none of the
libraries' noise (transformers' bars and notes, alembic's INFO lines, kombu's warning, uvicorn's start-up lines)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli.conftest import COMMAND_TIMEOUT_S, command_env

NOISE = (
    "transformers",
    "torchvision",
    "Writing model",
    "Loading weights",
    "alembic",
    "kombu",
    "Uvicorn",
    "Started server",
)
START_TIMEOUT_S = 120.0


def start_up(tmp_path: Path, *flags: str) -> list[str]:
    """The lines `renderfarm up` prints until it serves (stdout and stderr together); then it is stopped."""
    env = command_env(RENDERFARM_DATA_DIR=str(tmp_path / "data"))
    process = subprocess.Popen(
        [sys.executable, "-m", "renderfarm.cli", "up", "--port", "0", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("renderfarm up: serving") or time.monotonic() > deadline:
                break
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()
    return lines


@pytest.mark.slow
def test_up_prints_one_line_per_component(tmp_path: Path) -> None:
    lines = start_up(tmp_path)
    assert lines[-1].startswith("renderfarm up: serving http://127.0.0.1:"), lines
    assert "/ui/" in lines[-1]  # where the dashboard is
    assert not [line for line in lines if any(noise in line for noise in NOISE)], lines
    # The others are the project's own log lines: the worker's model and its queues.
    loggers = [re.search(r" (INFO|WARNING) ([\w.]+): ", line) for line in lines[:-1]]
    assert all(found and found.group(2).split(".")[0] in {"worker", "scheduler", "shared", "renderfarm"}
               for found in loggers), lines  # fmt: skip
    assert len(lines) <= 3, lines


@pytest.mark.slow
def test_up_with_log_level_warning_prints_only_where_it_serves(tmp_path: Path) -> None:
    lines = start_up(tmp_path, "--log-level", "warning")
    assert len(lines) == 1, lines
    assert lines[0].startswith("renderfarm up: serving")


@pytest.mark.slow
def test_demo_prints_only_its_own_lines_and_where_to_look(tmp_path: Path) -> None:
    out = tmp_path / "demo-output"
    data = tmp_path / "data"
    done = subprocess.run(
        [sys.executable, "-m", "renderfarm.cli", "demo", "--out", str(out)],
        capture_output=True,
        text=True,
        env=command_env(RENDERFARM_DATA_DIR=str(data)),
        cwd=tmp_path,
        timeout=COMMAND_TIMEOUT_S * 3,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    assert lines[0].startswith("embedded farm up at http://127.0.0.1:")
    assert all(re.match(r"[\w-]+ +\d+ image\(s\) in ", line) for line in lines[1:-2]), lines
    assert str(out.resolve()) in lines[-2]
    assert str(data) in lines[-1]
    assert "http://127.0.0.1:7860/ui/" in lines[-1]
