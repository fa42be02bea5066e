"""An embedded farm for the command-line tests: the real API and an in-process worker, rendering with the stand-in
engine (sleeps per step, so jobs show progress for a moment), and the `renderfarm` command run as a user runs it."""

from __future__ import annotations

import fcntl
import os
import re
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from shared.config import Settings

ROOT = Path(__file__).resolve().parents[2]
STANDIN_STEP_S = "0.03"  # seconds per step: a 20-step job runs for about 0.6 s, long enough to show a bar
COMMAND_TIMEOUT_S = 120.0
_ANSI = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|\][^\x07]*\x07|[()][0-9A-Za-z]|[=>78])")


@dataclass(frozen=True)
class CliFarm:
    url: str
    data_dir: Path


@pytest.fixture(scope="module")
def cli_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliFarm]:
    from renderfarm.embedded import running_farm

    data_dir = tmp_path_factory.mktemp("cli-farm") / "data"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RENDERFARM_STANDIN_STEP_S", STANDIN_STEP_S)
        for name in ("RENDERFARM_REDIS_URL", "RENDERFARM_DATABASE_URL", "RENDERFARM_STORAGE_URL"):
            patch.delenv(name, raising=False)
        settings = Settings(data_dir=data_dir, _env_file=None).check()
        with running_farm(settings) as farm:
            yield CliFarm(farm.url, data_dir)


def write_picture(path: Path, colour: tuple[int, int, int] = (200, 120, 40), size: int = 64) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)
    return path


def command_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("RENDERFARM_")}
    env.update({"PYTHONPATH": str(ROOT), "TERM": "xterm-256color"}, **extra)
    for name in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "CI", "GITHUB_ACTIONS"):
        env.pop(name, None)  # rich reads these: the tests decide what is a terminal
    return env


def run_piped(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`renderfarm ARGV` with stdout and stderr to pipes (a log, CI): no terminal."""
    return subprocess.run(
        [sys.executable, "-m", "renderfarm.cli", *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=command_env(COLUMNS="80"),
        timeout=COMMAND_TIMEOUT_S,
    )


def run_in_terminal(argv: list[str], cwd: Path, columns: int = 80) -> tuple[int, str]:
    """`renderfarm ARGV` on a pseudo-terminal `columns` wide; its exit code and everything it wrote."""
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "renderfarm.cli", *argv],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        cwd=cwd,
        env=command_env(COLUMNS=str(columns), LINES="24"),
        close_fds=True,
    )
    os.close(follower)
    chunks: list[bytes] = []
    deadline = time.monotonic() + COMMAND_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the command ended and closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    code = process.wait(timeout=max(deadline - time.monotonic(), 1.0))
    return code, b"".join(chunks).decode("utf-8", errors="replace")


def screen_lines(output: str) -> list[str]:
    """What a terminal shows, line by line and redraw by redraw: escape sequences removed, split at CR and LF."""
    return [line for line in re.split(r"[\r\n]", _ANSI.sub("", output)) if line]


def visible_width(line: str) -> int:
    from rich.cells import cell_len

    return cell_len(line)
