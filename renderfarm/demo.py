"""`renderfarm demo`: render a handful of img2img and inpainting jobs on the embedded farm and save what comes out.

It starts the embedded farm in this process (`renderfarm up`'s machinery: SQLite and a local folder in the data
folder, an in-process Celery worker, the tiny model) on a free loopback port, and then acts as any client would, with
plain HTTP: it uploads the input picture and mask as assets, submits each job, polls it until it finishes, and
downloads its results, overlays and masks through the artifact URLs of the job's snapshot (checking each sha256).
Every PNG carries the A1111 infotext. It prints where they are and how long each job took.
"""

from __future__ import annotations

import hashlib
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
from PIL import Image, ImageDraw

from shared.config import Settings

DEMO_SIZE = 128  # pixels; the tiny model renders this in a fraction of a second
DEMO_STEPS = 10
JOB_TIMEOUT_S: Final = 300.0  # seconds one demo job may take, queue included, before the demo gives up
POLL_INTERVAL_S: Final = 0.05  # seconds between status reads of a running job
HTTP_TIMEOUT_S: Final = 60.0
DEFAULT_UP_ADDRESS: Final = "127.0.0.1:7860"  # where `renderfarm up` serves by default
TERMINAL_STATES: Final = frozenset({"succeeded", "failed", "canceled"})


class DemoFailed(Exception):
    """A demo job did not succeed, or what it produced could not be fetched intact."""


@dataclass(frozen=True)
class DemoJob:
    name: str
    fields: dict[str, Any] = field(default_factory=dict)
    with_mask: bool = False


DEMO_JOBS: tuple[DemoJob, ...] = (
    DemoJob("img2img", {"denoising_strength": 0.6}),
    DemoJob("inpaint-fill", {"inpainting_fill": 0}, with_mask=True),
    DemoJob("inpaint-original", {"inpainting_fill": 1}, with_mask=True),
    DemoJob("inpaint-latent-noise", {"inpainting_fill": 2}, with_mask=True),
    DemoJob("inpaint-latent-nothing", {"inpainting_fill": 3}, with_mask=True),
    DemoJob("inpaint-whole-picture", {"inpainting_fill": 1, "inpaint_full_res": False}, with_mask=True),
    DemoJob("only-masked-padding-16", {"inpaint_full_res_padding": 16, "inpainting_fill": 1}, with_mask=True),
    DemoJob("batch-2x2", {"batch_size": 2, "n_iter": 2, "sampler_name": "DPM++ 2M"}),
)


def demo_picture(size: int = DEMO_SIZE) -> Image.Image:
    """A small synthetic picture: a gradient sky, a sun and a hill."""
    image = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(image)
    for y in range(size):
        shade = int(80 + 150 * y / size)
        draw.line([(0, y), (size, y)], fill=(shade // 2, shade // 2 + 40, 230))
    draw.ellipse([size * 0.6, size * 0.1, size * 0.85, size * 0.35], fill=(250, 220, 90))
    draw.polygon([(0, size), (size * 0.45, size * 0.55), (size, size)], fill=(60, 140, 70))
    return image


def demo_mask(size: int = DEMO_SIZE) -> Image.Image:
    """White (regenerate) over the sun, black elsewhere."""
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).ellipse([size * 0.55, size * 0.05, size * 0.9, size * 0.4], fill=255)
    return mask


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _upload(client: httpx.Client, image: Image.Image) -> str:
    """Upload `image` as an asset; returns its reference (`asset:<sha256>`)."""
    response = client.post("/v1/assets", content=_png(image), headers={"Content-Type": "image/png"})
    response.raise_for_status()
    return str(response.json()["asset_id"])


def _wait(client: httpx.Client, task_id: str) -> dict[str, Any]:
    """Poll the job until it is finished; returns its last snapshot. Raises DemoFailed after JOB_TIMEOUT_S."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        response = client.get(f"/v1/jobs/{task_id}")
        response.raise_for_status()
        snapshot: dict[str, Any] = response.json()
        if snapshot["state"] in TERMINAL_STATES:
            return snapshot
        if time.monotonic() > deadline:
            raise DemoFailed(f"job {task_id} is still {snapshot['state']} after {JOB_TIMEOUT_S:.0f} s")
        time.sleep(POLL_INTERVAL_S)


def _download(client: httpx.Client, snapshot: dict[str, Any], job_dir: Path) -> list[Path]:
    """Save every artifact of the snapshot as `{kind}-{index}.png` in `job_dir`, checking its sha256."""
    written: list[Path] = []
    for artifact in snapshot["artifacts"]:
        response = client.get(artifact["url"])  # a signed URL: no token needed
        response.raise_for_status()
        if hashlib.sha256(response.content).hexdigest() != artifact["sha256"]:
            raise DemoFailed(f"{artifact['kind']}-{artifact['index']}: the download does not match its sha256")
        path = job_dir / f"{artifact['kind']}-{artifact['index']}.png"
        path.write_bytes(response.content)
        written.append(path)
    return written


def _job_body(job: DemoJob, picture: str, mask: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "prompt": "a watercolour landscape at sunset",
        "negative_prompt": "blurry",
        "init_images": [picture],
        "seed": 1234,
        "steps": DEMO_STEPS,
        "width": DEMO_SIZE,
        "height": DEMO_SIZE,
        **job.fields,
    }
    if job.with_mask:
        body["mask"] = mask
    return body


def _run_one(client: httpx.Client, job: DemoJob, picture_ref: str, mask_ref: str, out_dir: Path) -> None:
    """Submit one demo job, wait for it, download what it made, and print how long it took."""
    job_started = time.perf_counter()
    response = client.post("/v1/jobs", json=_job_body(job, picture_ref, mask_ref))
    response.raise_for_status()
    snapshot = _wait(client, response.json()["task_id"])
    elapsed = time.perf_counter() - job_started
    if snapshot["state"] != "succeeded":
        error = snapshot.get("error") or {}
        raise DemoFailed(f"{snapshot['state']} after {elapsed:.2f} s: {error.get('message', 'no error recorded')}")
    job_dir = out_dir / job.name
    job_dir.mkdir(exist_ok=True)
    for stale in job_dir.glob("*.png"):  # a folder from an earlier run: keep only this run's files
        stale.unlink()
    written = _download(client, snapshot, job_dir)
    images = sum(1 for artifact in snapshot["artifacts"] if artifact["kind"] == "result")
    print(f"{job.name:<24} {images} image(s) in {elapsed:.2f} s -> {job_dir} ({len(written)} files)")


def run_demo(out_dir: Path, settings: Settings, *, log_level: str = "warning") -> int:
    """Run the demo jobs through the API of an embedded farm started here; write them under `out_dir`.

    Returns 0 when every job succeeded, 1 otherwise. Raises ConfigError in cluster mode (RENDERFARM_REDIS_URL set).
    """
    from renderfarm.embedded import running_farm

    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    picture, mask = demo_picture(), demo_mask()
    picture.save(out_dir / "input.png")
    mask.save(out_dir / "mask-input.png")
    failures = 0
    with running_farm(settings, log_level=log_level) as farm:
        print(f"embedded farm up at {farm.url} in {time.perf_counter() - started:.2f} s (model {settings.model!r})")
        tokens = farm.settings.tenant_tokens()
        headers = {"Authorization": f"Bearer {tokens[0].token}"} if tokens else {}
        with httpx.Client(base_url=farm.url, headers=headers, timeout=HTTP_TIMEOUT_S) as client:
            picture_ref, mask_ref = _upload(client, picture), _upload(client, mask)
            for job in DEMO_JOBS:
                try:
                    _run_one(client, job, picture_ref, mask_ref, out_dir)
                except (DemoFailed, httpx.HTTPError) as exc:
                    failures += 1
                    print(f"{job.name:<24} FAILED: {exc}")
    print(f"done in {time.perf_counter() - started:.2f} s; the pictures are in {out_dir.resolve()}")
    # The jobs themselves (rows, inputs, results) stay in the embedded farm's data folder, where `renderfarm up`
    # finds them again.
    print(
        f"the jobs are kept in {settings.data_dir} (RENDERFARM_DATA_DIR); to browse them, run `renderfarm up` and "
        f"open http://{DEFAULT_UP_ADDRESS}/ui/"
    )
    return 1 if failures else 0
