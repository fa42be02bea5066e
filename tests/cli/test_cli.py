"""The `renderfarm` command line, called in-process with a fresh data folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy.engine import make_url

from renderfarm.cli import main
from renderfarm.demo import DEMO_JOBS
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


def test_db_upgrade_does_not_print_the_database_password(
    postgres_url: str, data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The test server trusts local connections, so a password in the URL is accepted and ignored.
    with_password = make_url(postgres_url).set(password="sw0rdf1sh-secret")
    monkeypatch.setenv("RENDERFARM_DATABASE_URL", with_password.render_as_string(hide_password=False))
    assert main(["db", "upgrade"]) == 0
    printed = capsys.readouterr()
    assert "sw0rdf1sh-secret" not in printed.out + printed.err
    assert "***" in printed.out


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
    assert "embedded farm up at http://127.0.0.1:" in printed  # through the real API, not the engine directly
    for job in DEMO_JOBS:
        assert job.name in printed
        results = sorted((out / job.name).glob("result-*.png"))
        assert results, job.name
        for result in results:
            assert "Steps: " in (read_png_infotext(result.read_bytes()) or ""), result
        # Masked jobs come with their overlay and mask; a job without a mask has neither.
        assert bool(list((out / job.name).glob("overlay-*.png"))) is job.with_mask
        assert bool(list((out / job.name).glob("mask-*.png"))) is job.with_mask
    result = out / "inpaint-fill" / "result-0.png"
    with Image.open(result) as picture:
        assert picture.size == (128, 128)
    assert "Masked content: fill" in (read_png_infotext(result.read_bytes()) or "")
    assert len(list((out / "batch-2x2").glob("result-*.png"))) == 4
    assert (data_dir / "renderfarm.db").is_file()  # the embedded farm's own database


@pytest.mark.parametrize("command", [["scheduler"], ["worker", "--gpus", "cpu"]])
def test_cluster_commands_refuse_the_embedded_default(data_dir: Path, command: list[str], capsys) -> None:
    assert main(command) == 2
    err = capsys.readouterr().err
    assert "RENDERFARM_REDIS_URL" in err
    assert "renderfarm up" in err


def test_up_refuses_cluster_mode(data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("RENDERFARM_REDIS_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("RENDERFARM_DEV_MODE", "1")
    monkeypatch.setenv("RENDERFARM_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1/none")
    assert main(["up", "--port", "0"]) == 2
    assert "RENDERFARM_REDIS_URL" in capsys.readouterr().err


def test_up_refuses_a_public_address_without_tokens(data_dir: Path, capsys) -> None:
    assert main(["up", "--host", "0.0.0.0", "--port", "0"]) == 2  # noqa: S104 - refused before it binds
    assert "RENDERFARM_API_TOKENS" in capsys.readouterr().err


def test_reconcile_once_in_the_embedded_default(data_dir: Path, capsys) -> None:
    assert main(["db", "upgrade"]) == 0
    assert main(["reconcile", "--once"]) == 0
    assert "reconciled: 0 re-queued" in capsys.readouterr().out


def test_purge_dry_run_reports_and_purge_deletes(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from shared.config import Settings
    from shared.db import Database
    from shared.storage import asset_key, open_storage

    assert main(["db", "upgrade"]) == 0
    assert main(["purge"]) == 0
    assert "no retention is set" in capsys.readouterr().err
    monkeypatch.setenv("RENDERFARM_TENANT_RETENTION", "alice:inputs=0")
    settings = Settings()
    digest = "ab" * 32
    db = Database.from_url(settings.resolved_database_url)
    with open_storage(settings) as storage:
        storage.put(asset_key("alice", digest), b"not really a png", "image/png")
        db.assets.add("alice", digest, storage_key=asset_key("alice", digest), size_bytes=16, mime="image/png",
                      width=1, height=1)  # fmt: skip
        storage.put(asset_key("bob", digest), b"bob's", "image/png")
        db.assets.add("bob", digest, storage_key=asset_key("bob", digest), size_bytes=5, mime="image/png",
                      width=1, height=1)  # fmt: skip
        capsys.readouterr()
        assert main(["purge", "--dry-run", "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        expected = {"dry_run": True, "results": [], "jobs": [], "batches": [], "inputs": [f"alice/{digest}"]}
        assert report == {**expected, "objects": 1}
        assert storage.exists(asset_key("alice", digest))
        assert main(["purge"]) == 0
        assert "purged: 0 result set(s), 0 job row(s), 0 batch(es), 1 input(s)" in capsys.readouterr().out
        assert not storage.exists(asset_key("alice", digest))
        assert storage.exists(asset_key("bob", digest))  # bob keeps his inputs forever (no default set)
    db.close()
