"""Live previews in the worker (docs/engine.md "Live previews"): drawn only on due steps and only while watched,
published with growing ids, and named in the job's warnings when the method is substituted."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from shared.db import Database
from shared.live import LivePreview, RedisLiveStatus
from tests.engine.test_previews import random_taesd_file
from tests.worker.conftest import Submitter
from worker.deps import WorkerDeps
from worker.engine.previews import PreviewNote, PreviewSettings
from worker.engine.processing import Processed, Progress, StableDiffusionProcessingImg2Img, process_images
from worker.job_runner import run_job
from worker.preview_publisher import PREVIEW_ID_SPAN, Renderer, default_renderer

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class PreviewLog(RedisLiveStatus):
    """Redis live status that keeps every published preview (the real record is deleted when the job ends)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.previews: list[LivePreview] = []

    def set_preview(self, preview: LivePreview) -> None:
        self.previews.append(preview)
        super().set_preview(preview)


class CountingRenderer:
    """The default renderer, counting the pictures it draws."""

    def __init__(self, inner: Renderer) -> None:
        self.inner = inner
        self.calls = 0

    @property
    def method_used(self) -> str | None:
        return self.inner.method_used

    @property
    def notes(self) -> list[PreviewNote]:
        return self.inner.notes

    def render(self, latent: torch.Tensor) -> Image.Image:
        self.calls += 1
        return self.inner.render(latent)


class Counting:
    def __init__(self) -> None:
        self.renderers: list[CountingRenderer] = []

    def __call__(
        self, settings: PreviewSettings, processing: StableDiffusionProcessingImg2Img, models_dir: Path | None
    ) -> Renderer:
        renderer = CountingRenderer(default_renderer(settings, processing, models_dir))
        self.renderers.append(renderer)
        return renderer

    @property
    def calls(self) -> int:
        return sum(renderer.calls for renderer in self.renderers)


class StepRecorder:
    """The real engine, recording the (batch, step) of every progress callback."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, int, int]] = []

    def __call__(self, p: StableDiffusionProcessingImg2Img) -> Processed:
        farm_callback = p.progress_callback
        assert farm_callback is not None

        def callback(progress: Progress) -> None:
            if progress.preview_latent is not None:
                self.steps.append((progress.job_no, progress.step, progress.total_steps))
            farm_callback(progress)

        p.progress_callback = callback
        return process_images(p)


def due_steps(steps: list[tuple[int, int, int]], every_n: int) -> list[tuple[int, int]]:
    """The rule of docs/engine.md "Live previews", written out: per batch, a preview when at least `every_n` steps
    passed since the last one (counting from 0); 0 every step; -1 at the batch's last step."""
    due: list[tuple[int, int]] = []
    batch, last = -1, 0
    for job_no, step, total in steps:
        if job_no != batch:
            batch, last = job_no, 0
        at_end = step >= total - 1
        if at_end if every_n == -1 else every_n == 0 or step - last >= every_n:
            due.append((job_no, step))
            last = step
    return due


@pytest.fixture
def preview_live(redis_url: str) -> PreviewLog:
    return PreviewLog(redis_url)


def test_nobody_watches_so_no_preview_is_drawn(
    deps: WorkerDeps, db: Database, submit: Submitter, preview_live: PreviewLog
) -> None:
    row = submit(steps=12, denoising_strength=1.0, override_settings={"show_progress_every_n_steps": 0})
    counting = Counting()
    outcome = run_job(row.id, 0, replace(deps, live=preview_live, previews=counting))
    assert outcome.state == "succeeded"
    assert counting.calls == 0
    assert counting.renderers == []  # not even built: no TAESD file is read
    assert preview_live.previews == []
    assert not [w for w in db.jobs.get_by_id(row.id).warnings if w["code"].startswith("preview_")]


@pytest.mark.parametrize("every_n", [3, 0, -1])
def test_a_watched_job_gets_a_preview_on_every_due_step(
    deps: WorkerDeps, db: Database, submit: Submitter, preview_live: PreviewLog, every_n: int
) -> None:
    row = submit(steps=10, n_iter=2, denoising_strength=1.0, override_settings={"show_progress_every_n_steps": every_n})
    preview_live.mark_watched(row.id)  # as a poller does; lasts WATCH_TTL_S, far longer than this render
    counting, engine = Counting(), StepRecorder()
    outcome = run_job(row.id, 0, replace(deps, live=preview_live, previews=counting, engine=engine))
    assert outcome.state == "succeeded"

    expected = due_steps(engine.steps, every_n)
    assert len({job_no for job_no, _ in expected}) == 2  # both batches previewed
    assert counting.calls == len(expected)
    assert [(p.job_no, p.step) for p in preview_live.previews] == expected
    attempt = db.jobs.get_by_id(row.id).attempt
    assert [p.preview_id for p in preview_live.previews] == [
        attempt * PREVIEW_ID_SPAN + n for n in range(1, len(expected) + 1)
    ]
    # No TAESD file in the models folder: the default "Approx NN" is drawn with Approx cheap (H/8 × W/8), and the
    # job says so.
    first = preview_live.previews[0]
    assert (first.method, first.requested_method, first.mime) == ("Approx cheap", "Approx NN", "image/png")
    assert (first.width, first.height) == (8, 8)
    codes = [w["code"] for w in db.jobs.get_by_id(row.id).warnings]
    assert "preview_method_substituted" in codes
    assert "preview_decoder_missing" in codes


def test_a_disabled_preview_option_draws_nothing_while_watched(
    deps: WorkerDeps, submit: Submitter, preview_live: PreviewLog
) -> None:
    row = submit(steps=8, denoising_strength=1.0, override_settings={"live_previews_enable": False})
    preview_live.mark_watched(row.id)
    counting = Counting()
    assert run_job(row.id, 0, replace(deps, live=preview_live, previews=counting)).state == "succeeded"
    assert counting.calls == 0


def test_taesd_weights_in_the_models_folder_draw_full_size_previews(
    deps: WorkerDeps, db: Database, submit: Submitter, preview_live: PreviewLog, tmp_path: Path
) -> None:
    random_taesd_file(tmp_path / "models")
    settings = deps.settings.model_copy(update={"models_dir": tmp_path / "models"})
    row = submit(steps=6, batch_size=2, denoising_strength=1.0, override_settings={"show_progress_every_n_steps": 2})
    preview_live.mark_watched(row.id)
    outcome = run_job(row.id, 0, replace(deps, live=preview_live, settings=settings))
    assert outcome.state == "succeeded"
    assert preview_live.previews
    first = preview_live.previews[0]
    assert (first.method, first.requested_method) == ("TAESD", "Approx NN")
    assert (first.width, first.height) == (128, 64)  # a grid of the batch of 2 (one row) at full size
    codes = [w["code"] for w in db.jobs.get_by_id(row.id).warnings]
    assert "preview_method_substituted" in codes
    assert "preview_decoder_missing" not in codes


def test_a_failing_preview_never_fails_the_job(
    deps: WorkerDeps, db: Database, submit: Submitter, preview_live: PreviewLog
) -> None:
    def broken(settings: PreviewSettings, processing: StableDiffusionProcessingImg2Img, models_dir: Path | None) -> Any:
        raise RuntimeError("no decoder today")

    row = submit(steps=8, denoising_strength=1.0, override_settings={"show_progress_every_n_steps": 0})
    preview_live.mark_watched(row.id)
    assert run_job(row.id, 0, replace(deps, live=preview_live, previews=broken)).state == "succeeded"
    assert preview_live.previews == []
    warnings = [w for w in db.jobs.get_by_id(row.id).warnings if w["code"] == "preview_failed"]
    assert len(warnings) == 1
    assert "no decoder today" in warnings[0]["message"]
