"""Live previews of one claimed run: drawn on the steps the job's options make due, and only while watched.

The reference draws a preview when a client polls and at least `show_progress_every_n_steps` sampling steps have
passed since the last one of the batch (docs/engine.md "Live previews"). Here the worker cannot be polled; instead a
client's poll marks the job watched in the live status (`LiveStatus.mark_watched`, expiring after WATCH_TTL_S), the
step callback reads that mark with its per-step stop check, and on a due step of a watched job this draws the
preview and publishes it (`LiveStatus.set_preview`) with a growing `preview_id`. A job nobody watches costs nothing:
no decode, no encode, not even the loading of the TAESD weights.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Final, Protocol

import torch
from PIL import Image

from shared.live import LivePreview
from worker.engine.previews import PreviewNote, PreviewRenderer, PreviewSettings, encode_preview
from worker.engine.processing import Progress, StableDiffusionProcessingImg2Img

logger = logging.getLogger(__name__)

PREVIEW_ID_SPAN: Final = 2**20  # preview ids of attempt n are n·2^20 + 1, + 2, ...: never reused by a retry


class Renderer(Protocol):
    """What draws a job's previews (`worker.engine.previews.PreviewRenderer`)."""

    @property
    def method_used(self) -> str | None: ...

    @property
    def notes(self) -> list[PreviewNote]: ...

    def render(self, latent: torch.Tensor) -> Image.Image: ...


class RendererFactory(Protocol):
    def __call__(
        self, settings: PreviewSettings, processing: StableDiffusionProcessingImg2Img, models_dir: Path | None
    ) -> Renderer: ...


def default_renderer(
    settings: PreviewSettings, processing: StableDiffusionProcessingImg2Img, models_dir: Path | None
) -> Renderer:
    # The stand-in engine's processing has a model too; its latents are made up but drawn the same way.
    return PreviewRenderer(settings, model=processing.sd_model, models_dir=models_dir)


class PreviewPublisher:
    """Decides, per sampling step, whether to draw a preview, and publishes it. One per claimed run.

    `publish` stores a preview in the live status (and must not raise); `models_dir` is where TAESD weights are.
    """

    def __init__(
        self,
        job_id: str,
        attempt: int,
        publish: Callable[[LivePreview], None],
        models_dir: Path | None,
        factory: RendererFactory = default_renderer,
    ) -> None:
        self._job_id = job_id
        self._attempt = attempt
        self._publish_record = publish
        self._models_dir = models_dir
        self._factory = factory
        self._renderer: Renderer | None = None
        self._settings: PreviewSettings | None = None
        self._batch = -1
        self._last_step = 0  # the step of the batch's last preview (the reference's counter restarts per batch)
        self._batch_previewed = False
        self._failed: str | None = None  # why drawing failed; then no more previews are drawn for the job
        self.count = 0  # previews drawn by this run
        self.latest_id: int | None = None

    def on_step(self, progress: Progress, watched: bool, processing: StableDiffusionProcessingImg2Img | None) -> None:
        """Draw and publish a preview of this step when it is due and a client watches."""
        if processing is None or progress.preview_latent is None or self._failed is not None:
            return
        settings = self._settings_of(processing)
        if progress.job_no != self._batch:
            self._batch, self._last_step, self._batch_previewed = progress.job_no, 0, False
        if not watched or not self._due(progress, settings):
            return
        self._last_step, self._batch_previewed = progress.step, True
        try:
            self._publish(progress, settings, processing, progress.preview_latent)
        except Exception as exc:  # a preview must never fail the render: stop drawing them for this job
            logger.warning("job %s: live preview failed, no more previews for this job: %s", self._job_id, exc)
            self._failed = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

    @staticmethod
    def _due_every_n(step: int, last_step: int, every_n: int) -> bool:
        return every_n == 0 or step - last_step >= every_n

    def _due(self, progress: Progress, settings: PreviewSettings) -> bool:
        if not settings.enabled:
            return False
        if settings.every_n_steps == -1:  # once per batch, at its last step
            return progress.step >= progress.total_steps - 1 and not self._batch_previewed
        return self._due_every_n(progress.step, self._last_step, settings.every_n_steps)

    def _settings_of(self, processing: StableDiffusionProcessingImg2Img) -> PreviewSettings:
        if self._settings is None:
            self._settings = PreviewSettings.from_options(processing.options)
        return self._settings

    def _publish(
        self,
        progress: Progress,
        settings: PreviewSettings,
        processing: StableDiffusionProcessingImg2Img,
        latent: torch.Tensor,
    ) -> None:
        if self._renderer is None:
            self._renderer = self._factory(settings, processing, self._models_dir)
        encoded = encode_preview(self._renderer.render(latent))
        self.count += 1
        preview_id = self._attempt * PREVIEW_ID_SPAN + self.count
        record = LivePreview(
            job_id=self._job_id,
            attempt=self._attempt,
            preview_id=preview_id,
            step=progress.step,
            job_no=progress.job_no,
            method=self._renderer.method_used or settings.method,
            requested_method=settings.method,
            mime=encoded.mime,
            data_b64=encoded.base64,
            width=encoded.width,
            height=encoded.height,
        )
        self._publish_record(record)
        self.latest_id = preview_id

    def warnings(self) -> list[dict[str, str]]:
        """The job warnings of the previews drawn (a substituted method, missing weights, a failure); none when no
        preview was asked for."""
        notes = [] if self._renderer is None else list(self._renderer.notes)
        if self._failed is not None:
            notes.append(PreviewNote("preview_failed", f"live previews stopped: {self._failed}"))
        return [{"code": note.code, "message": note.message} for note in notes]
