"""Fixtures of the engine tests: the three tiny models (built once per session), test pictures and a render helper.

Renders run on the CPU in float32 at 64×64 with a few steps, so the whole folder takes well under a minute.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from worker.engine.models import LoadedModel, load_model
from worker.engine.processing import Processed, StableDiffusionProcessingImg2Img, process_images

SIZE = 64
STEPS = 6
SEED = 1234
PROMPT = "a red cube on a table"

Render = Callable[..., tuple[StableDiffusionProcessingImg2Img, Processed]]
MakeJob = Callable[..., StableDiffusionProcessingImg2Img]


# diffusers' EulerDiscreteScheduler.set_timesteps(sigmas=...) calls np.array() on a torch tensor, which NumPy 2 flags
# with this DeprecationWarning under torch 2.13 (diffusers/schedulers/scheduling_euler_discrete.py, in its own
# pipeline call). It is third-party noise with no effect on the values; worker.engine.diffusers_internals silences the
# same warning around the engine's own set_timesteps calls. Ignored only in the side-by-side test that runs diffusers'
# pipeline.
_DIFFUSERS_NUMPY_COPY_WARNING = "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name == "test_diffusers_parity.py" and item.path.parent == Path(__file__).parent:
            item.add_marker(pytest.mark.filterwarnings(_DIFFUSERS_NUMPY_COPY_WARNING))


@pytest.fixture(scope="package", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Run torch on one thread. The tiny model makes thousands of microsecond-sized kernels per render; with
    two OpenMP threads on a small CI machine shared with other processes each kernel's barrier can wait for a
    descheduled thread, which made renders 5-20× slower (measured: 0.03 s vs 0.2-0.9 s per UNet call)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny-models")


def _load(name: str, folder: Path) -> LoadedModel:
    return load_model(name, tiny_dir=folder, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="session")
def tiny_model(tiny_dir: Path) -> LoadedModel:
    return _load("tiny", tiny_dir)


@pytest.fixture(scope="session")
def tiny_inpaint_model(tiny_dir: Path) -> LoadedModel:
    return _load("tiny-inpaint", tiny_dir)


@pytest.fixture(scope="session")
def tiny_edit_model(tiny_dir: Path) -> LoadedModel:
    return _load("tiny-edit", tiny_dir)


def make_picture(width: int = SIZE, height: int = SIZE, seed: int = 0) -> Image.Image:
    """A smooth colour gradient with some texture: every pixel distinct enough that changes show."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width, y / height, 1 - (x + y) / (width + height)], axis=-1) * 200 + 20
    pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def make_mask(box: tuple[int, int, int, int] = (20, 20, 44, 44), size: tuple[int, int] = (SIZE, SIZE)) -> Image.Image:
    """An L mask: 255 (regenerate) inside `box` (x1, y1, x2, y2 exclusive), 0 elsewhere."""
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=255)
    return mask


def pixels(image: Image.Image) -> np.ndarray[Any, np.dtype[np.int16]]:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="session")
def picture() -> Image.Image:
    return make_picture()


@pytest.fixture
def make_job(tiny_model: LoadedModel, picture: Image.Image) -> MakeJob:
    """Build a job with test defaults (tiny model, 64×64, 6 steps, a fixed seed); fields override them."""

    def build(**fields: Any) -> StableDiffusionProcessingImg2Img:
        values: dict[str, Any] = {
            "sd_model": tiny_model,
            "prompt": PROMPT,
            "init_images": [picture],
            "width": SIZE,
            "height": SIZE,
            "steps": STEPS,
            "seed": SEED,
        }
        values.update(fields)
        return StableDiffusionProcessingImg2Img(**values)

    return build


@pytest.fixture
def render(make_job: MakeJob) -> Render:
    """Build a job as `make_job` does, run it, return (p, processed)."""

    def run(**fields: Any) -> tuple[StableDiffusionProcessingImg2Img, Processed]:
        p = make_job(**fields)
        return p, process_images(p)

    return run
