"""The `renderfarm` command line, called in-process with a fresh data folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from renderfarm.cli import main
from shared.images import read_png_infotext


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "data"
    monkeypatch.setenv("RENDERFARM_DATA_DIR", str(folder))
    for variable in ("RENDERFARM_DATABASE_URL", "RENDERFARM_REDIS_URL", "RENDERFARM_STORAGE_URL", "RENDERFARM_MODEL"):
        monkeypatch.delenv(variable, raising=False)
    return folder


def test_db_upgrade_creates_the_sqlite_schema(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "upgrade"]) == 0
    assert (data_dir / "renderfarm.db").is_file()
    assert "head" in capsys.readouterr().out
    assert main(["db", "upgrade"]) == 0  # a second run changes nothing and does not fail


def test_db_upgrade_on_postgres(postgres_url: str, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RENDERFARM_DATABASE_URL", postgres_url)
    assert main(["db", "upgrade"]) == 0


def test_build_tiny_writes_a_loadable_model(tmp_path: Path, data_dir: Path) -> None:
    assert main(["model", "build-tiny", str(tmp_path / "tiny"), "--kind", "inpaint"]) == 0
    assert (tmp_path / "tiny" / "model_index.json").is_file()
    assert (tmp_path / "tiny" / "unet" / "config.json").read_text().count('"in_channels": 9') == 1


def test_bad_setting_is_named_and_exit_code_2(data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("RENDERFARM_STORAGE_URL", "ftp://nowhere")
    assert main(["db", "upgrade"]) == 2
    assert "RENDERFARM_STORAGE_URL" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_writes_results_overlays_and_masks(tmp_path: Path, data_dir: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["demo", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "inpaint-fill" in printed
    result = out / "inpaint-fill" / "result-0.png"
    with Image.open(result) as picture:
        assert picture.size == (128, 128)
    assert "Masked content: fill" in (read_png_infotext(result.read_bytes()) or "")
    assert (out / "inpaint-fill" / "overlay-0.png").is_file()
    assert (out / "inpaint-fill" / "mask-0.png").is_file()
    assert len(list((out / "batch-2x2").glob("result-*.png"))) == 4
    assert not list((out / "img2img").glob("mask-*.png"))  # no mask, no mask output
