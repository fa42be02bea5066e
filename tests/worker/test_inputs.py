"""Inputs: asset bytes are fetched once per worker and kept (they never change); URLs are read every time."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from shared.errors import PermanentError
from shared.images import ImageLimits
from shared.job.spec import SpecLimits, parse_job
from shared.storage import LocalFolderStorage, asset_key
from worker.asset_cache import AssetCache
from worker.inputs import load_inputs

LIMITS = ImageLimits(max_pixels=4096 * 4096, max_bytes=50 * 1024 * 1024)


class CountingStorage(LocalFolderStorage):
    """A local folder that counts reads per key."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, "http://127.0.0.1:1", b"k" * 32)
        self.reads: dict[str, int] = {}

    def get(self, key: str) -> bytes:
        self.reads[key] = self.reads.get(key, 0) + 1
        return super().get(key)


def png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buffer, format="PNG")
    return buffer.getvalue()


def store_asset(storage: CountingStorage, tenant: str, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    storage.put(asset_key(tenant, digest), data, "image/png")
    return digest


def job(**fields: Any) -> Any:
    return parse_job({"prompt": "p", "width": 64, "height": 64, **fields}, SpecLimits())


def test_an_asset_is_read_once_per_cache(tmp_path: Path) -> None:
    storage = CountingStorage(tmp_path)
    digest = store_asset(storage, "alice", png((200, 10, 10)))
    cache = AssetCache()
    for _ in range(3):
        (image,), _, _ = load_inputs(job(init_images=[f"asset:{digest}"]), "alice", storage, LIMITS, cache=cache)
        assert image.getpixel((0, 0)) == (200, 10, 10)
    assert storage.reads == {asset_key("alice", digest): 1}
    assert (cache.hits, cache.misses) == (2, 1)
    # Without a cache (or for another tenant, whose key differs) the store is read again.
    load_inputs(job(init_images=[f"asset:{digest}"]), "alice", storage, LIMITS)
    assert storage.reads[asset_key("alice", digest)] == 2


def test_a_corrupt_asset_is_refused_and_not_kept(tmp_path: Path) -> None:
    storage = CountingStorage(tmp_path)
    good = png((1, 2, 3))
    digest = hashlib.sha256(good).hexdigest()
    storage.put(asset_key("alice", digest), png((9, 9, 9)), "image/png")  # other bytes under its name
    cache = AssetCache()
    for _ in range(2):
        with pytest.raises(PermanentError):
            load_inputs(job(init_images=[f"asset:{digest}"]), "alice", storage, LIMITS, cache=cache)
    assert storage.reads[asset_key("alice", digest)] == 2
    assert cache.size_bytes == 0


def test_urls_of_the_farms_storage_are_read_every_time(tmp_path: Path) -> None:
    storage = CountingStorage(tmp_path)
    storage.put("alice/results/pic.png", png((5, 5, 5)), "image/png")
    url = storage.download_url("alice/results/pic.png", 600)
    cache = AssetCache()
    for _ in range(2):
        load_inputs(job(init_images=[url]), "alice", storage, LIMITS, cache=cache)
    assert storage.reads["alice/results/pic.png"] == 2


def test_the_cache_is_bounded_by_bytes_least_recently_used_first() -> None:
    cache = AssetCache(max_bytes=400)
    cache.put("t", "a", b"a" * 100)
    cache.put("t", "b", b"b" * 100)
    cache.put("t", "c", b"c" * 100)
    assert cache.get("t", "a") is not None  # a is now the most recent
    cache.put("t", "d", b"d" * 100)
    cache.put("t", "e", b"e" * 100)  # over 400: b goes first
    assert cache.get("t", "b") is None
    assert cache.get("t", "a") is not None
    assert cache.size_bytes <= 400
    cache.put("t", "huge", b"h" * 101)  # over a quarter of the bound: not kept
    assert cache.get("t", "huge") is None
