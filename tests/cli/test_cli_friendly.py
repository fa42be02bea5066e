"""The command line's friendly side: errors that say what is wrong in the user's terms, `--version`, shell
completion, and the warning about a misspelt RENDERFARM_ variable."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from renderfarm import __version__
from renderfarm.cli import build_parser, main
from renderfarm.completion import completion_script
from tests.cli.conftest import CliFarm, run_piped, write_picture


def test_a_missing_image_is_named_as_the_image(cli_farm: CliFarm, tmp_path: Path) -> None:
    done = run_piped(["submit", "no-such-cat.png", "--url", cli_farm.url], tmp_path)
    assert done.returncode == 2
    assert "the image file no-such-cat.png does not exist" in done.stderr
    assert "Errno" not in done.stderr


def test_a_missing_mask_is_named_as_the_mask(cli_farm: CliFarm, tmp_path: Path) -> None:
    image = write_picture(tmp_path / "cat.png")
    done = run_piped(["submit", str(image), "--mask", "no-such-mask.png", "--url", cli_farm.url], tmp_path)
    assert done.returncode == 2
    assert "the mask file no-such-mask.png does not exist" in done.stderr
    assert "Errno" not in done.stderr


def test_a_url_without_a_scheme_is_http(cli_farm: CliFarm, tmp_path: Path) -> None:
    image = write_picture(tmp_path / "cat.png")
    bare = cli_farm.url.removeprefix("http://")  # 127.0.0.1:PORT, as --help shows it
    done = run_piped(["submit", str(image), "--task-id", "no-scheme", "--url", bare], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("no-scheme  ")


def test_the_help_shows_the_url_form_that_is_accepted(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["submit", "--help"])
    assert "e.g. 127.0.0.1:7860" in " ".join(capsys.readouterr().out.split())


def test_a_farm_that_is_not_there_is_named(tmp_path: Path) -> None:
    import socket

    with socket.socket() as unused:  # a port nothing listens on: bound, never listening
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
        done = run_piped(["status", "some-job", "--url", f"127.0.0.1:{port}"], tmp_path)
    assert done.returncode == 3
    assert f"is the farm running at http://127.0.0.1:{port}?" in done.stderr
    assert "Errno" not in done.stderr


def test_a_typo_in_a_manifests_defaults_is_named_there(cli_farm: CliFarm, tmp_path: Path) -> None:
    write_picture(tmp_path / "fox.png")
    manifest = tmp_path / "typo.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {"defaults": {"image": "fox.png", "stepz": 8}, "grid": {"mode": "product", "axes": {"seed": [1, 2]}}}
        )
    )
    done = run_piped(["batch", str(manifest), "--out", str(tmp_path / "out"), "--url", cli_farm.url], tmp_path)
    assert done.returncode == 1
    assert "defaults.stepz" in done.stderr
    assert "items.0" not in done.stderr


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"renderfarm {__version__}"


def test_every_command_and_option_has_a_help_text() -> None:
    def walk(parser: object, path: str) -> list[str]:
        missing = []
        for action in parser._actions:  # type: ignore[attr-defined]
            if action.dest in ("help", "version"):
                continue
            if hasattr(action, "choices") and isinstance(action.choices, dict):
                helps = {choice.dest: choice.help for choice in action._choices_actions}
                for name, sub in action.choices.items():
                    if not helps.get(name):
                        missing.append(f"{path} {name}")
                    missing += walk(sub, f"{path} {name}")
            elif not action.help:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
        return missing

    assert walk(build_parser(), "renderfarm") == []


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["renderfarm", "sub"], "submit"),
        (["renderfarm", "submit", "--ma"], "--mask"),
        (["renderfarm", "db", "up"], "upgrade"),
    ],
)
def test_the_bash_completion_completes(words: list[str], expected: str, tmp_path: Path) -> None:
    script = tmp_path / "completion.bash"
    script.write_text(completion_script(build_parser(), "bash"))
    quoted = " ".join(f"'{word}'" for word in words)
    probe = (
        f"source {script}; COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; "
        '_renderfarm_complete; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, cwd=tmp_path, timeout=30)
    assert done.returncode == 0, done.stderr
    assert expected in done.stdout.split(), done.stdout


def test_the_zsh_completion_uses_bashcompinit(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", "zsh"]) == 0
    script = capsys.readouterr().out
    assert script.startswith("autoload -U +X bashcompinit && bashcompinit\n")
    assert "complete -o filenames -F _renderfarm_complete renderfarm" in script


def test_a_misspelt_setting_is_warned_about_with_the_closest_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RENDERFARM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RENDERFARM_REDIS_ULR", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("RENDERFARM_TOKEN", "a-known-client-variable")
    assert main(["db", "upgrade"]) == 0
    err = capsys.readouterr().err
    assert "RENDERFARM_REDIS_ULR" in err
    assert "did you mean RENDERFARM_REDIS_URL?" in err
    assert "RENDERFARM_TOKEN" not in err
    assert "RENDERFARM_DATA_DIR" not in err


def test_up_with_a_leftover_redis_url_says_first_that_up_cannot_use_redis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # No tokens, no Postgres: the cluster's rules would complain about both; the embedded farm's comes first.
    monkeypatch.setenv("RENDERFARM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RENDERFARM_REDIS_URL", "redis://127.0.0.1:6379/0")
    for name in (
        "RENDERFARM_API_TOKENS",
        "RENDERFARM_API_TOKENS_FILE",
        "RENDERFARM_DATABASE_URL",
        "RENDERFARM_DEV_MODE",
    ):
        monkeypatch.delenv(name, raising=False)
    assert main(["up", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "cannot use Redis" in err[0]
    assert "RENDERFARM_REDIS_URL" in err[0]
    assert "token" not in err[0].lower()
    assert "postgres" not in err[0].lower()
