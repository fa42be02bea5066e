"""Batches on the live farm: 24 items over two workers, counts that add up at every poll, cancel of a running batch,
and `renderfarm batch` with its progress, downloads, resume, results manifest and contact sheet. The tests that take
`farm` run once with `Client` and once with `AsyncClient`."""

from __future__ import annotations

import argparse
import json
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
import yaml

from renderfarm import Batch, Client, Grid, JobState
from renderfarm.batch_runner import run_batch
from renderfarm.client_cli import register
from scheduler.snapshots import public_worker_name
from tests.sdk.conftest import LiveFarm, job_fields, mask_picture, picture
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration]

BATCH_TIMEOUT_S = 120.0


def test_a_24_item_grid_completes_on_both_workers_and_counts_add_up(farm: Client, live_farm: LiveFarm) -> None:
    grid = Grid.product(image=[picture(20), picture(21)], prompt=["a fox", "a cat", "an owl"], seed=[1, 2, 3, 4])
    created = farm.submit_batch(grid=grid, defaults=job_fields())
    assert (created.requested, created.enqueued, created.mode) == (24, 24, "product")
    assert created.task_ids == tuple(f"{created.batch_id}-{i}" for i in range(24))

    def finished() -> Batch | None:
        status = farm.get_batch(created.batch_id)
        assert sum(status.counts.values()) == status.total == 24, status.counts
        assert 0.0 <= status.progress <= 1.0
        return status if status.is_finished else None

    status = wait_until(finished, BATCH_TIMEOUT_S, lambda: f"the batch to finish\n{live_farm.logs()}", max_interval=0.2)
    assert status.count("succeeded") == 24
    assert status.progress == 1.0
    assert status.eta_s == 0.0
    items = list(farm.batch_items(created.batch_id))
    assert [item.task_id for item in items] == list(created.task_ids)  # the manifest's order
    assert {item.worker for item in items} == {public_worker_name(w) for w in live_farm.workers}  # both took part
    # The grid's order: the first axis varies slowest, so items 0-11 have the first picture.
    assert items[0].results[0].seed == 1
    assert items[1].results[0].seed == 2


def test_the_same_batch_id_again_creates_nothing(farm: Client) -> None:
    created = farm.submit_batch(jobs=[job_fields(image=picture(22), seed=s) for s in range(3)])
    again = farm.submit_batch(jobs=[job_fields(image=picture(22), seed=s) for s in range(3)], batch_id=created.batch_id)
    assert (again.enqueued, again.existing) == (0, 3)
    assert again.task_ids == created.task_ids


def test_cancel_of_a_running_batch_stops_the_rest(farm: Client, live_farm: LiveFarm) -> None:
    # 30 stand-in steps of 0.02 s each: 0.6 s per item, 24 items on two workers take about 7 s.
    created = farm.submit_batch(
        grid=Grid.product(seed=list(range(24))),
        defaults=job_fields(image=picture(23), steps=30, denoising_strength=1.0),
    )
    wait_until(
        lambda: farm.get_batch(created.batch_id).count("succeeded") >= 2, BATCH_TIMEOUT_S, "two items to succeed"
    )
    canceled = farm.cancel_batch(created.batch_id)
    assert canceled.canceled_at is not None
    assert sum(canceled.counts.values()) == 24
    succeeded_at_cancel = canceled.count("succeeded") + canceled.count("running")

    def finished() -> Batch | None:
        status = farm.get_batch(created.batch_id)
        assert sum(status.counts.values()) == 24
        return status if status.is_finished else None

    status = wait_until(finished, BATCH_TIMEOUT_S, "the canceled batch to finish")
    assert status.count("failed") == 0
    assert status.count("canceled") >= 24 - succeeded_at_cancel
    assert status.count("succeeded") <= succeeded_at_cancel  # nothing started after the cancel
    assert status.count("succeeded") + status.count("canceled") == 24


# --------------------------------------------------------------------------------------------------------------
# `renderfarm batch`


def _manifest(folder: Path) -> Path:
    (folder / "pics").mkdir(parents=True)
    picture(30).save(folder / "pics" / "a.png")
    picture(31).save(folder / "pics" / "b.png")
    mask_picture().save(folder / "pics" / "mask.png")
    manifest = {
        "defaults": {**job_fields(), "mask": "pics/mask.png"},
        "grid": {"mode": "product", "axes": {"image": ["pics/a.png", "pics/b.png"], "seed": [1, 2, 3]}},
    }
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.sources += [value for name, value in attrs if name == "src" and value]


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="renderfarm")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return int(args.handler(args, None))


def test_batch_command_downloads_resumes_and_writes_a_contact_sheet(
    live_farm: LiveFarm, alice_token: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = _manifest(tmp_path / "job")
    out = tmp_path / "out"
    common = ["--url", live_farm.url, "--token", alice_token]

    assert _cli("batch", str(manifest), "--out", str(out), "--poll", "0.2", "--json", *common) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["complete"]
    assert report["submitted"]
    assert report["counts"]["succeeded"] == 6
    assert report["downloaded"] == 12  # a result and a mask per item

    results = json.loads((out / "results.json").read_text())
    assert [item["state"] for item in results["items"]] == ["succeeded"] * 6
    assert {item["worker"] for item in results["items"]} <= {public_worker_name(w) for w in live_farm.workers}
    for item in results["items"]:
        assert (out / item["inputs"]["image"]).is_file()
        assert (out / item["inputs"]["mask"]).is_file()
        assert all((out / path).is_file() for paths in item["files"].values() for path in paths)

    # The contact sheet: every picture it shows is a file next to it.
    sheet = _Images()
    sheet.feed((out / "index.html").read_text())
    # Input, mask and result of each item (the stand-in makes no overlay), and each result again in the X/Y table of
    # the two-axis grid.
    assert len(sheet.sources) == 6 * 3 + 6
    for source in sheet.sources:
        assert not source.startswith(("/", "http")), source
        assert (out / source).is_file(), source

    # Re-running the finished manifest sends nothing to the farm: no submit, no download.
    seen: list[str] = []
    with Client(live_farm.url, token=alice_token) as client:
        client._http.event_hooks["request"].append(lambda request: seen.append(request.method))
        again = run_batch(client, manifest, out, progress=None)
    assert (again.submitted, again.downloaded, again.skipped) == (False, 0, 6)
    assert seen == []
    assert again.counts["succeeded"] == 6


def test_an_interrupted_batch_resumes_by_task_id(live_farm: LiveFarm, alice_token: str, tmp_path: Path) -> None:
    manifest = _manifest(tmp_path / "job")
    out = tmp_path / "out"
    polls = 0

    def interrupt_after_some(status: object) -> None:
        nonlocal polls
        polls += 1
        if polls == 3:
            raise KeyboardInterrupt

    with Client(live_farm.url, token=alice_token) as client:
        with pytest.raises(KeyboardInterrupt):
            run_batch(client, manifest, out, progress=None, poll_interval_s=0.05, on_poll=interrupt_after_some)
        first_done = {path.parent.name for path in (out / "items").glob("*/job.json")}
        batch_id = json.loads((out / ".renderfarm-batch.json").read_text())["batch_id"]

        methods: list[str] = []
        client._http.event_hooks["request"].append(lambda request: methods.append(request.method))
        report = run_batch(client, manifest, out, progress=None, poll_interval_s=0.1)
    assert report.batch_id == batch_id  # the same batch, resumed
    assert report.complete
    assert report.skipped == len(first_done)
    assert report.downloaded == 2 * (6 - len(first_done))
    assert methods.count("POST") == 1  # the create-or-get of the batch; it made no new jobs
    status = httpx.get(
        f"{live_farm.url}/v1/batches/{batch_id}", headers={"Authorization": f"Bearer {alice_token}"}
    ).json()
    assert status["total"] == 6
    assert status["counts"]["succeeded"] == 6


def test_the_progress_line_reads_well() -> None:
    from renderfarm.batch_runner import ProgressBar

    line = ProgressBar.line(24, {"succeeded": 6, "running": 2, "queued": 15, "failed": 1}, 1.5, 12.0)
    assert line.startswith("7/24 ")
    assert len(line) <= 80
    assert "done 6" in line
    assert "running 2" in line
    assert "queued 15" in line
    assert "failed 1" in line
    assert "1.50 img/s" in line
    assert "ETA 12s" in line
    assert JobState.SUCCEEDED.value == "succeeded"
