"""The live status's watch marks and preview records (docs/engine.md "Live previews"), in both backends."""

from __future__ import annotations

import uuid

import pytest

from shared.live import WATCH_TTL_S, LivePreview, LiveStatus, LocalLiveStatus, RedisLiveStatus


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def a_preview(job_id: str, preview_id: int = 1) -> LivePreview:
    return LivePreview(job_id, 1, preview_id, 4, 0, "TAESD", "Approx NN", "image/png", "iVBORw0KGgo=", 64, 64)


def test_a_local_watch_mark_expires_after_the_ttl() -> None:
    clock = Clock()
    live = LocalLiveStatus(clock=clock)
    assert not live.watched("job")
    live.mark_watched("job")
    assert live.watched("job")
    assert live.stop_requests("job").watched
    clock.now += WATCH_TTL_S - 0.01
    assert live.watched("job")
    clock.now += 0.02
    assert not live.watched("job")
    assert not live.stop_requests("job").watched


def check_preview_store(live: LiveStatus, job_id: str) -> None:
    assert live.get_preview(job_id) is None
    live.set_preview(a_preview(job_id, 1))
    live.set_preview(a_preview(job_id, 2))
    stored = live.get_preview(job_id)
    assert stored == a_preview(job_id, 2)  # the newest replaces the last
    assert stored is not None
    assert stored.data_uri == "data:image/png;base64,iVBORw0KGgo="
    live.mark_watched(job_id)
    live.clear(job_id)
    assert live.get_preview(job_id) is None
    assert not live.watched(job_id)


def test_local_previews_are_stored_replaced_and_cleared() -> None:
    check_preview_store(LocalLiveStatus(), "job")


@pytest.mark.integration
def test_redis_previews_and_watch_marks(redis_url: str) -> None:
    live = RedisLiveStatus(redis_url)
    try:
        job_id = str(uuid.uuid4())
        live.mark_watched(job_id)
        assert live.stop_requests(job_id).watched
        ttl_ms = live._redis.pttl(f"rf:watch:{job_id}")  # the expiry is the point of the mark
        assert 0 < int(ttl_ms) <= WATCH_TTL_S * 1000  # type: ignore[arg-type]
        check_preview_store(live, job_id)
    finally:
        live.close()
