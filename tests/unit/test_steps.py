"""shared/job/steps.py: one count of sampling steps for the scheduler's admission estimate, the engine's sampling plan
and the stand-in engine, and one table of the samplers that take η."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from PIL import Image

from scheduler.admission import expected_total_steps
from shared.job.spec import Img2ImgJob
from shared.job.steps import (
    ANCESTRAL_ETA_SAMPLERS,
    DDIM_ETA_SAMPLERS,
    default_eta,
    eta_kind,
    img2img_steps,
    sampling_steps,
)
from shared.sampler_names import SAMPLER_LABELS
from worker.engine.models import SD1_SCHEDULER_CONFIG, LoadedModel, load_model
from worker.engine.processing import StableDiffusionProcessingImg2Img
from worker.engine.sampling import plan_img2img, sampler_default_eta
from worker.standin import StandinEngine

ASSET = "asset:" + "0" * 64
STEPS = (1, 2, 7, 20)
STRENGTHS = (0.0, 0.05, 0.3, 0.5, 0.75, 0.999, 1.0)
N_ITER = 3


def _job(sampler: str, steps: int, strength: float, fix_steps: bool) -> Img2ImgJob:
    return Img2ImgJob(
        init_images=[ASSET],
        sampler_name=sampler,
        steps=steps,
        denoising_strength=strength,
        n_iter=N_ITER,
        override_settings={"img2img_fix_steps": fix_steps},
    )


@pytest.mark.parametrize("fix_steps", [False, True], ids=["default", "fix-steps"])
@pytest.mark.parametrize("sampler", SAMPLER_LABELS)
def test_the_admission_estimate_is_the_workers_plan(sampler: str, fix_steps: bool) -> None:
    for steps, strength in itertools.product(STEPS, STRENGTHS):
        plan = plan_img2img(sampler, None, steps, strength, fix_steps, SD1_SCHEDULER_CONFIG)
        estimate = expected_total_steps(_job(sampler, steps, strength, fix_steps))
        counted = sampling_steps(sampler, steps, strength, fix_steps=fix_steps)
        if sampler == "Restart" and plan.total_steps != counted:
            # Restart's count depends on the sigmas: without a restart segment (σ never reaches 2) it runs
            # k fewer steps than the estimate, which counts the segment (docs/engine.md "Samplers").
            assert plan.total_steps < counted, (steps, strength)
            continue
        assert estimate == plan.total_steps * N_ITER, (steps, strength)
        assert counted == plan.total_steps, (steps, strength)


def test_strength_zero_runs_no_step_for_any_sampler() -> None:
    for sampler, fix_steps in itertools.product(SAMPLER_LABELS, (False, True)):
        assert sampling_steps(sampler, 20, 0.0, fix_steps=fix_steps, n_iter=4) == 0


def test_the_counts_of_each_kind_of_sampler() -> None:
    # 20 steps at strength 0.5: t_enc = 10. k-diffusion samplers run t_enc + 1, DDIM t_enc − 1, UniPC t_enc.
    assert img2img_steps(20, 0.5) == (20, 10)
    assert sampling_steps("Euler", 20, 0.5) == 11
    assert sampling_steps("DPM++ 2M Karras", 20, 0.5, n_iter=2) == 22
    assert sampling_steps("ddim", 20, 0.5) == 9
    assert sampling_steps("UniPC", 20, 0.5) == 10
    # With fix-steps every sampler family keeps the same offsets from t_enc = steps − 1.
    assert [sampling_steps(s, 20, 0.5, fix_steps=True) for s in ("Euler", "DDIM", "UniPC")] == [20, 18, 19]


def test_sampling_steps_rejects_what_no_job_can_be() -> None:
    with pytest.raises(ValueError, match="unknown sampler"):
        sampling_steps("nope", 20, 0.5)
    with pytest.raises(ValueError, match="n_iter"):
        sampling_steps("Euler", 20, 0.5, n_iter=0)
    with pytest.raises(ValueError, match="denoising_strength"):
        sampling_steps("Euler", 20, 1.5)


def test_which_samplers_take_eta_is_one_table() -> None:
    for label in SAMPLER_LABELS:
        expected = 1.0 if label in ANCESTRAL_ETA_SAMPLERS else 0.0 if label in DDIM_ETA_SAMPLERS else None
        assert default_eta(label) == expected
        assert sampler_default_eta(label) == expected
    assert eta_kind("k_euler_a") == "ancestral"
    assert eta_kind("DPM++ 2M SDE Karras") == "ancestral"
    assert eta_kind("DDIM") == "ddim"
    assert eta_kind("Euler") is None


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return load_model("tiny", device="cpu", tiny_dir=Path(tmp_path_factory.mktemp("tiny")))


@pytest.mark.parametrize("fix_steps", [False, True], ids=["default", "fix-steps"])
@pytest.mark.parametrize("sampler", SAMPLER_LABELS)
def test_the_standin_sleeps_the_steps_the_engine_runs(tiny_model: LoadedModel, sampler: str, fix_steps: bool) -> None:
    picture = Image.new("RGB", (64, 64))
    for strength in (0.0, 0.3, 1.0):
        slept: list[float] = []
        p = StableDiffusionProcessingImg2Img(
            sd_model=tiny_model,
            sampler_name=sampler,
            steps=7,
            denoising_strength=strength,
            n_iter=N_ITER,
            width=64,
            height=64,
            init_images=[picture],
            override_settings={"img2img_fix_steps": fix_steps},
        )
        StandinEngine(0.0, sleep=slept.append)(p)
        assert len(slept) == expected_total_steps(_job(sampler, 7, strength, fix_steps)), strength
