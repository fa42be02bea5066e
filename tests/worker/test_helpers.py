"""Pure parts of the worker: seeds, leases, batch splitting, OOM detection, farm URLs, GPU selection, stand-in."""

from __future__ import annotations

import uuid

import pytest
import torch

from shared.config import Settings
from shared.errors import ConfigError, InputError
from shared.job.seeds import SEED_MODULUS
from shared.job.spec import Img2ImgJob
from shared.storage import LocalFolderStorage, S3Storage
from worker.claimed_run import lease_seconds
from worker.inputs import resolve_storage_key
from worker.job_runner import deterministic_seeds
from worker.out_of_memory import is_out_of_memory, smaller_batch
from worker.service import _settings_env, parse_gpus, worker_command
from worker.standin import STANDIN_ENV, StandinEngine, standin_from_env

REF = "asset:" + "a" * 64


def job(**fields: object) -> Img2ImgJob:
    return Img2ImgJob.from_request_json({"init_images": [REF], **fields})


def test_seeds_of_minus_one_come_from_the_uuid_and_explicit_seeds_stay() -> None:
    job_id = uuid.UUID("0123456789abcdef0123456789abcdef")
    resolved = deterministic_seeds(job(), job_id)
    assert resolved.seed == job_id.int % SEED_MODULUS
    assert resolved.subseed == (job_id.int >> 32) % SEED_MODULUS
    assert deterministic_seeds(job(seed=5, subseed=6), job_id).seed == 5
    assert deterministic_seeds(job(), job_id) == resolved  # the same on every attempt


def test_lease_grows_with_steps_pixels_and_batches_and_is_capped() -> None:
    settings = Settings(_env_file=None, lease_base_s=60, lease_s_per_step_megapixel=2, job_deadline_max_s=3600)
    one = lease_seconds(job(steps=50, width=1000, height=1000), settings)
    assert one == pytest.approx(60 + 50 * 1.0 * 2)
    assert lease_seconds(job(steps=50, width=1000, height=1000, n_iter=2), settings) == pytest.approx(60 + 200)
    assert lease_seconds(job(steps=150, width=2048, height=2048, batch_size=16, n_iter=64), settings) == 3600


@pytest.mark.parametrize(
    ("batch_size", "n_iter", "expected"), [(4, 1, (2, 2)), (6, 2, (3, 4)), (3, 1, (1, 3)), (1, 5, None)]
)
def test_smaller_batch_keeps_the_number_of_images(
    batch_size: int, n_iter: int, expected: tuple[int, int] | None
) -> None:
    split = smaller_batch(job(batch_size=batch_size, n_iter=n_iter))
    assert (None if split is None else (split.batch_size, split.n_iter)) == expected


def test_a_batch_of_one_image_per_slot_is_not_split() -> None:
    assert smaller_batch(job(batch_size=2, init_images=[REF, REF])) is None


def test_out_of_memory_is_recognised() -> None:
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(MemoryError())


def test_farm_urls_resolve_to_keys_and_others_are_refused(tmp_path: object) -> None:
    s3 = S3Storage("bucket", prefix="farm", endpoint_url="http://minio:9000", public_endpoint_url="https://s3.example")
    assert resolve_storage_key("s3://bucket/farm/t/~assets/x", s3) == "t/~assets/x"
    assert resolve_storage_key("https://s3.example/bucket/farm/t/a%28b%29.png?X-Amz-Signature=1", s3) == "t/a(b).png"
    assert resolve_storage_key("http://minio:9000/bucket/farm/t/k", s3) == "t/k"
    assert resolve_storage_key("https://api.example/v1/files/t/k?sig=1", s3, public_url="https://api.example") == "t/k"
    for url in ("s3://other/farm/t/k", "s3://bucket/elsewhere/t/k", "https://evil.example/bucket/farm/t/k"):
        with pytest.raises(InputError) as info:
            resolve_storage_key(url, s3, field="mask")
        assert info.value.field == "mask"
    local = LocalFolderStorage(tmp_path / "store", "http://127.0.0.1:7860", b"0" * 32)  # type: ignore[operator]
    assert resolve_storage_key("http://127.0.0.1:7860/v1/files/t/task%3A1/1/result-0.png?x=1", local) == (
        "t/task:1/1/result-0.png"
    )


def test_gpu_selection() -> None:
    assert parse_gpus("all", 0) is None
    assert parse_gpus("all", 2) == [0, 1]
    assert parse_gpus("cpu", 2) is None
    assert parse_gpus("1,0", 2) == [0, 1]
    with pytest.raises(ValueError, match="not present"):
        parse_gpus("2", 2)
    with pytest.raises(ValueError, match="'all', 'cpu'"):
        parse_gpus("first", 2)
    assert worker_command(["q1", "q2"], "cuda", "gpu0@h")[-5:] == ["cuda", "--queues", "q1,q2", "--hostname", "gpu0@h"]
    assert worker_command(None, "cuda", "gpu0@h", "batch")[-5:] == ["cuda", "--tier", "batch", "--hostname", "gpu0@h"]
    assert "--tier" not in worker_command(None, "cpu", "cpu@h")


def test_settings_travel_to_worker_processes_through_the_environment() -> None:
    settings = Settings(_env_file=None, model="tiny-inpaint", dev_mode=True, max_attempts=5)
    env = _settings_env(settings)
    assert env["RENDERFARM_MODEL"] == "tiny-inpaint"
    assert Settings(_env_file=None, **{k.removeprefix("RENDERFARM_").lower(): v for k, v in env.items()}) == settings  # type: ignore[arg-type]


def test_standin_from_the_environment() -> None:
    assert standin_from_env({}) is None
    engine = standin_from_env({STANDIN_ENV: "0.25"})
    assert isinstance(engine, StandinEngine)
    assert engine.step_s == 0.25
    with pytest.raises(ConfigError):
        standin_from_env({STANDIN_ENV: "fast"})
    with pytest.raises(ConfigError):
        standin_from_env({STANDIN_ENV: "-1"})
