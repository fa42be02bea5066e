"""Sigma schedules, strength → steps and the sampling loop (img2img-semantics.md §3.2, §3.3, §7.4).

No model: fake denoisers return the ε that belongs to a known x0 (every sampler must land on it), or a smooth
nonlinear x0 so that the diffusers-driven samplers can be checked against hand-written update rules.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
from diffusers.schedulers.scheduling_euler_ancestral_discrete import EulerAncestralDiscreteScheduler
from PIL import Image

from shared.infotext import parse_infotext
from shared.job.steps import img2img_steps
from shared.sampler_names import SAMPLERS, find_sampler, find_schedule
from worker.engine.models import LoadedModel, load_model
from worker.engine.noise import create_generators, create_noise
from worker.engine.processing import StableDiffusionProcessingImg2Img, process_images
from worker.engine.sampling import (
    StepInfo,
    StopSampling,
    exponential_sigmas,
    karras_sigmas,
    model_sigmas,
    plan_img2img,
    run_sampler,
    sampler_default_eta,
    timestep_schedule,
    uniform_sigmas,
)

SD1_CONFIG = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "skip_prk_steps": True,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "clip_sample": False,
}
SHAPE = (2, 4, 8, 8)
K_SAMPLERS = [s for s in SAMPLERS if not s.timestep_sampler]
TIMESTEP_SAMPLERS = [s for s in SAMPLERS if s.timestep_sampler]


def _latents() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)


def _eps_for(x0: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]:
    """A perfect denoiser for a known x0: x_in = (x0 + σ·ε)/√(1+σ²) ⇒ ε = (x_in·√(1+σ²) − x0)/σ."""

    def denoise(x_in: torch.Tensor, t: torch.Tensor, sigma: float) -> torch.Tensor:
        return (x_in * math.sqrt(1 + sigma * sigma) - x0) / sigma

    return denoise


class _CountingPerfectDenoiser:
    """:func:`_eps_for` that counts its calls and checks that each gets one timestep per image of the batch."""

    def __init__(self, x0: torch.Tensor) -> None:
        self.perfect = _eps_for(x0)
        self.batch = x0.shape[0]
        self.calls = 0

    def __call__(self, x_in: torch.Tensor, t: torch.Tensor, sigma: float) -> torch.Tensor:
        self.calls += 1
        assert t.shape == (self.batch,)
        return self.perfect(x_in, t, sigma)


def _smooth_x0(x_in: torch.Tensor, t: torch.Tensor, sigma: float) -> torch.Tensor:
    """A nonlinear fake model: its x0 prediction depends on x and σ."""
    x = x_in * math.sqrt(1 + sigma * sigma)
    x0 = torch.tanh(x) * (1 + 0.1 * math.log1p(sigma))
    return (x - x0) / sigma


# --- schedules ------------------------------------------------------------------------------------------------


def test_model_sigmas_sd1_range() -> None:
    sig = model_sigmas(SD1_CONFIG)
    assert sig.shape == (1000,)
    assert float(sig[0]) == pytest.approx(0.0292, abs=1e-4)
    assert float(sig[-1]) == pytest.approx(14.6146, abs=1e-3)


def test_uniform_sigmas_interpolate_log_sigma() -> None:
    n = 7  # linspace(999, 0, 7) has fractional timesteps
    got = uniform_sigmas(n, model_sigmas(SD1_CONFIG)).double().numpy()
    # Independent computation in float64.
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    acp = np.cumprod(1 - betas)
    log_sig = np.log(np.sqrt((1 - acp) / acp))
    t = np.linspace(999, 0, n)
    expected = np.exp(np.interp(t, np.arange(1000), log_sig))
    assert got.shape == (n + 1,)
    assert got[-1] == 0
    np.testing.assert_allclose(got[:-1], expected, rtol=3e-5)  # float32 vs float64
    # On a coarse table the two interpolations differ a lot: log-σ interpolation of a geometric table is geometric.
    table = torch.tensor([0.1, 1.0, 10.0, 100.0])
    coarse = uniform_sigmas(3, table)  # t = 3, 1.5, 0
    assert coarse[1].item() == pytest.approx(math.sqrt(10.0), rel=1e-5)
    assert coarse[1].item() != pytest.approx(5.5, rel=1e-2)  # what linear σ interpolation would give
    assert coarse.tolist()[-1] == 0


def test_karras_endpoints_sd1() -> None:
    sig = karras_sigmas(20, 0.0292, 14.6146)
    assert sig.shape == (21,)
    assert float(sig[0]) == pytest.approx(14.6146, rel=1e-6)
    assert float(sig[-2]) == pytest.approx(0.0292, rel=1e-5)
    assert float(sig[-1]) == 0
    assert bool((sig[:-1][1:] < sig[:-1][:-1]).all())
    # ρ = 7: the 1/ρ-th powers are evenly spaced.
    inv = sig[:-1].double() ** (1 / 7)
    assert torch.allclose(inv.diff(), inv.diff()[0].expand(19), rtol=1e-4)


def test_exponential_schedule() -> None:
    sig = exponential_sigmas(10, 0.0292, 14.6146)
    logs = sig[:-1].double().log()
    assert float(sig[0]) == pytest.approx(14.6146, rel=1e-6)
    assert float(sig[-2]) == pytest.approx(0.0292, rel=1e-5)
    assert torch.allclose(logs.diff(), logs.diff()[0].expand(9), atol=1e-5)


def test_timestep_schedule() -> None:
    assert timestep_schedule(20).tolist() == list(range(1, 1000, 50))
    assert timestep_schedule(1000)[-1] == 999  # clipped
    with pytest.raises(ValueError, match="steps"):
        timestep_schedule(1001)


# --- strength → steps (§3.2) ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("steps", "strength", "fix", "expected"),
    [
        (20, 0.75, False, (20, 15)),
        (20, 1.0, False, (20, 19)),
        (20, 0.0, False, (20, 0)),
        (20, 0.5, True, (40, 19)),
        (20, 1.0, True, (20, 19)),
        (20, 0.3, True, (66, 19)),
        (20, 0.0, True, (0, 19)),
    ],
)
def test_img2img_steps(steps: int, strength: float, fix: bool, expected: tuple[int, int]) -> None:
    assert img2img_steps(steps, strength, fix) == expected


def test_img2img_steps_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="steps"):
        img2img_steps(0, 0.5)
    with pytest.raises(ValueError, match="denoising_strength"):
        img2img_steps(20, 1.5)
    with pytest.raises(ValueError, match="denoising_strength"):
        img2img_steps(20, float("nan"))


def test_plan_strength_075_runs_16_steps_from_sigmas_4() -> None:
    plan = plan_img2img("Euler", None, 20, 0.75, False, SD1_CONFIG)
    assert plan.t_enc == 15
    assert plan.total_steps == 16
    assert plan.model_calls == 16
    assert plan.start_sigma == float(plan.sigmas[4])
    assert torch.equal(plan.sigma_sched, plan.sigmas[4:])
    assert torch.equal(plan.sigmas, uniform_sigmas(20, model_sigmas(SD1_CONFIG)))
    assert plan.schedule_type == "Uniform"


def test_plan_strength_1_starts_at_sigma_max() -> None:
    plan = plan_img2img("DPM++ 2M", None, 20, 1.0, False, SD1_CONFIG)
    assert plan.total_steps == 20
    assert plan.start_sigma == pytest.approx(14.6146, rel=1e-5)
    assert plan.schedule_type == "Karras"
    assert plan.extra_generation_params["Schedule type"] == "Karras"


def test_plan_fix_steps_runs_exactly_the_requested_steps() -> None:
    plan = plan_img2img("Euler", "karras", 20, 0.5, True, SD1_CONFIG)
    assert plan.schedule_steps == 40
    assert plan.total_steps == 20
    assert torch.equal(plan.sigma_sched, plan.sigmas[20:])


def test_plan_schedule_from_sampler_name_suffix() -> None:
    plan = plan_img2img("Euler Karras", None, 10, 1.0, False, SD1_CONFIG)
    assert plan.schedule_type == "Karras"
    assert torch.equal(plan.sigmas, karras_sigmas(10, plan.model.sigma_min, plan.model.sigma_max))


def test_dpm2_discards_the_penultimate_sigma_by_default() -> None:
    plan = plan_img2img("DPM2", None, 10, 1.0, False, SD1_CONFIG)
    full = karras_sigmas(11, plan.model.sigma_min, plan.model.sigma_max)
    assert plan.discard_penultimate_sigma
    assert torch.equal(plan.sigmas, torch.cat([full[:-2], full[-1:]]))
    assert "Discard penultimate sigma" not in plan.extra_generation_params
    forced = plan_img2img("Euler", None, 10, 1.0, False, SD1_CONFIG, always_discard_penultimate_sigma=True)
    assert forced.discard_penultimate_sigma
    assert forced.sigmas.numel() == 11
    assert forced.extra_generation_params["Discard penultimate sigma"] is True


def test_timestep_sampler_plan() -> None:
    plan = plan_img2img("DDIM", None, 20, 0.75, False, SD1_CONFIG)
    assert plan.is_timestep_sampler
    assert plan.start_timestep == 751  # timesteps[t_enc]
    assert plan.call_timesteps.tolist() == list(range(701, 50, -50))  # timesteps[t_enc−1] … timesteps[1]
    assert plan.total_steps == plan.model_calls == 14
    unipc = plan_img2img("UniPC", None, 20, 0.75, False, SD1_CONFIG)
    assert unipc.total_steps == 15
    assert float(unipc.call_timesteps[0]) == 701


def test_unknown_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="sampler"):
        plan_img2img("Nope", None, 20, 0.5, False, SD1_CONFIG)
    with pytest.raises(ValueError, match="schedule"):
        plan_img2img("Euler", "nope", 20, 0.5, False, SD1_CONFIG)


# --- strength 0 (§7.4) ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda s: s.name)
def test_strength_zero_runs_no_step_fix_7_4(sampler: object) -> None:
    plan = plan_img2img(sampler, None, 20, 0.0, False, SD1_CONFIG)  # type: ignore[arg-type]
    assert plan.total_steps == 0
    assert plan.model_calls == 0
    init, noise = _latents()

    def never(x: torch.Tensor, t: torch.Tensor, s: float) -> torch.Tensor:
        raise AssertionError("the model must not be called")

    out = run_sampler(plan, init, noise, never)
    assert torch.equal(out, init)


# --- every sampler runs and converges -----------------------------------------------------------------------------


@pytest.mark.parametrize("strength", [0.75, 1.0])
@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda s: s.name)
def test_every_sampler_lands_on_the_known_x0(sampler: object, strength: float) -> None:
    plan = plan_img2img(sampler, None, 20, strength, False, SD1_CONFIG)  # type: ignore[arg-type]
    init, target = _latents()
    rng = create_noise(SHAPE[1:], [11, 12], source="CPU")
    denoise = _CountingPerfectDenoiser(target)
    assert target.shape[0] == 2

    seen: list[StepInfo] = []

    def cfgpp(x_in: torch.Tensor, t: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        eps = denoise(x_in, t, sigma)  # a perfect model: guided and unconditional ε agree
        return eps, eps

    out = run_sampler(
        plan,
        init,
        rng.noise,
        denoise,
        generators=rng.generators,
        callback=seen.append,
        denoise_eps_cfgpp=cfgpp,
    )
    if plan.implementation == "run:dpm_adaptive":
        # Its steps depend on the model's outputs: three calls per attempt, one callback per attempt.
        assert denoise.calls == 3 * len(seen)
        assert [i.step for i in seen] == list(range(len(seen)))
    else:
        assert denoise.calls == plan.model_calls
        assert [i.step for i in seen] == list(range(plan.total_steps))
        assert all(i.total_steps == plan.total_steps for i in seen)
    if plan.implementation != "run:restart":  # Restart jumps back up to σ ≈ 2 and walks down again
        assert all(a.sigma >= b.sigma for a, b in itertools.pairwise(seen))
    if plan.is_timestep_sampler or plan.implementation in ("run:dpm_fast", "run:dpm_adaptive"):
        # DDIM/PLMS stop at timestep 1, UniPC at timestep 0, DPM fast/adaptive at the last non-zero σ of the
        # schedule (the reference's t_end): a little noise remains (σ ≈ 0.03–0.04).
        assert float((out - target).std()) < 0.06
    else:
        assert torch.allclose(out, target, atol=1e-4)


# --- the diffusers-driven samplers against hand-written update rules --------------------------------------------


def _run_plan(
    name: str,
    strength: float = 1.0,
    steps: int = 12,
    seeds: tuple[int, int] = (3, 4),
    eta: float | None = None,
) -> torch.Tensor:
    plan = plan_img2img(name, None, steps, strength, False, SD1_CONFIG)
    init, _ = _latents()
    rng = create_noise(SHAPE[1:], list(seeds), source="CPU")
    return run_sampler(plan, init, rng.noise, _smooth_x0, generators=rng.generators, eta=eta)


def _hand_loop(name: str, update: Callable[..., torch.Tensor], strength: float = 1.0, steps: int = 12) -> torch.Tensor:
    plan = plan_img2img(name, None, steps, strength, False, SD1_CONFIG)
    init, _ = _latents()
    rng = create_noise(SHAPE[1:], [3, 4], source="CPU")
    gens = rng.generators
    sig = [float(s) for s in plan.sigma_sched]
    x = init + rng.noise * sig[0]
    state: dict[str, torch.Tensor] = {}
    for i in range(len(sig) - 1):
        s, sn = sig[i], sig[i + 1]
        eps = _smooth_x0(x / math.sqrt(1 + s * s), torch.zeros(2), s)
        x = update(x, x - s * eps, s, sn, state, gens)
    return x


def _randn(gens: tuple[torch.Generator, ...]) -> torch.Tensor:
    return torch.stack([torch.randn(SHAPE[1:], generator=g) for g in gens])


def test_euler_matches_the_euler_rule() -> None:
    def euler(x, d0, s, sn, state, gens):
        return x + (x - d0) / s * (sn - s)

    assert torch.allclose(_run_plan("Euler", 0.6), _hand_loop("Euler", euler, 0.6), atol=1e-4)


@pytest.mark.parametrize("eta", [None, 1.0, 0.5, 0.0])
def test_euler_ancestral_matches_the_ancestral_rule(eta: float | None) -> None:
    amount = 1.0 if eta is None else eta  # the default is opts.eta_ancestral = 1

    def euler_a(x, d0, s, sn, state, gens):
        up = min(sn, amount * math.sqrt(sn**2 * (s**2 - sn**2) / s**2))
        down = math.sqrt(sn**2 - up**2)
        x = x + (x - d0) / s * (down - s)
        return x + _randn(gens) * up if up > 0 else x

    assert torch.allclose(_run_plan("Euler a", eta=eta), _hand_loop("Euler a", euler_a), atol=1e-4)


def test_dpmpp_2m_matches_the_dpm_solver_pp_rule() -> None:
    def dpmpp_2m(x, d0, s, sn, state, gens):
        old = state.get("old")
        h_old = state.get("h")
        if sn == 0:
            x_new = d0
        else:
            h = math.log(s) - math.log(sn)
            if old is None:
                d = d0
            else:
                r = float(h_old) / h
                d = (1 + 1 / (2 * r)) * d0 - (1 / (2 * r)) * old
            x_new = (sn / s) * x - math.expm1(-h) * d
            state["h"] = torch.tensor(h)
        state["old"] = d0
        return x_new

    assert torch.allclose(_run_plan("DPM++ 2M"), _hand_loop("DPM++ 2M", dpmpp_2m), atol=1e-4)


@pytest.mark.parametrize("eta", [None, 0.5])
def test_dpmpp_2m_sde_matches_the_sde_rule(eta: float | None) -> None:
    # η = 1 (the default) is diffusers' "sde-dpmsolver++" update, which this sampler used to run.
    amount = 1.0 if eta is None else eta

    def dpmpp_2m_sde(x, d0, s, sn, state, gens):
        old = state.get("old")
        h_old = state.get("h")
        if sn == 0:
            x_new = d0
        else:
            noise = _randn(gens)
            h = math.log(s) - math.log(sn)
            eh = amount * h
            x_new = (sn / s) * math.exp(-eh) * x + (-math.expm1(-h - eh)) * d0
            if old is not None:
                r = float(h_old) / h
                x_new = x_new + 0.5 * (-math.expm1(-h - eh)) * (1 / r) * (d0 - old)
            x_new = x_new + noise * sn * math.sqrt(-math.expm1(-2 * eh))
            state["h"] = torch.tensor(h)
        state["old"] = d0
        return x_new

    got = _run_plan("DPM++ 2M SDE", eta=eta)
    assert torch.allclose(got, _hand_loop("DPM++ 2M SDE", dpmpp_2m_sde), atol=1e-4)


def test_dpmpp_2m_sde_with_eta_0_is_dpmpp_2m_ode() -> None:
    def dpmpp_2m_midpoint(x, d0, s, sn, state, gens):
        old = state.get("old")
        h_old = state.get("h")
        state["old"] = d0
        if sn == 0:
            return d0
        h = math.log(s) - math.log(sn)
        x_new = (sn / s) * x - math.expm1(-h) * d0
        if old is not None:
            x_new = x_new - 0.5 * math.expm1(-h) * (float(h_old) / h) * (d0 - old)
        state["h"] = torch.tensor(h)
        return x_new

    assert torch.allclose(_run_plan("DPM++ 2M SDE", eta=0.0), _hand_loop("DPM++ 2M SDE", dpmpp_2m_midpoint), atol=1e-4)


def test_euler_a_default_eta_matches_diffusers_euler_ancestral_scheduler() -> None:
    """η = 1 is unchanged: the own Euler a step gives what diffusers' EulerAncestralDiscreteScheduler (the old code
    path) gives on the same sigmas and per-image generators."""
    plan = plan_img2img("Euler a", None, 12, 0.8, False, SD1_CONFIG)
    init, _ = _latents()
    rng = create_noise(SHAPE[1:], [3, 4], source="CPU")
    got = run_sampler(plan, init, rng.noise, _smooth_x0, generators=rng.generators)
    gens_1 = create_noise(SHAPE[1:], [3, 4], source="CPU").generators
    got_1 = run_sampler(plan, init, rng.noise, _smooth_x0, generators=gens_1, eta=1.0)

    with warnings.catch_warnings():  # diffusers' np.array(tensor) under NumPy 2; values unaffected
        warnings.filterwarnings("ignore", message=r"__array__ implementation doesn't accept a copy keyword")
        scheduler = EulerAncestralDiscreteScheduler.from_config(
            SD1_CONFIG, prediction_type="epsilon", timestep_spacing="linspace", steps_offset=0
        )
        scheduler.set_timesteps(plan.total_steps)
    scheduler.sigmas = plan.sigma_sched.clone()
    scheduler.timesteps = plan.call_timesteps.clone()
    scheduler.set_begin_index(0)
    gens = list(create_noise(SHAPE[1:], [3, 4], source="CPU").generators)
    x = init + rng.noise * plan.start_sigma
    for i, t in enumerate(scheduler.timesteps):
        s = float(plan.sigma_sched[i])
        eps = _smooth_x0(x / math.sqrt(1 + s * s), torch.zeros(2), s)
        scheduler.is_scale_input_called = True
        x = scheduler.step(eps, t, x, generator=gens).prev_sample
    assert torch.allclose(got, x, atol=1e-4)
    assert torch.allclose(got_1, x, atol=1e-4)


def test_euler_a_with_eta_0_is_euler() -> None:
    for strength in (1.0, 0.6):
        euler = _run_plan("Euler", strength)
        assert torch.allclose(_run_plan("Euler a", strength, eta=0.0), euler, atol=1e-4)
        assert not torch.allclose(_run_plan("Euler a", strength), euler, atol=1e-2)


@pytest.mark.parametrize("name", ["Euler a", "DPM2 a", "DPM++ 2S a", "DPM++ SDE", "DPM++ 2M SDE"])
def test_ancestral_samplers_with_eta_0_draw_no_noise(name: str) -> None:
    plan = plan_img2img(name, None, 10, 0.7, False, SD1_CONFIG)
    init, _ = _latents()
    noise = create_noise(SHAPE[1:], [3, 4], source="CPU").noise

    def run(eta: float, seeds: list[int]) -> torch.Tensor:
        gens = create_generators(seeds, source="CPU")
        return run_sampler(plan, init, noise, _smooth_x0, generators=gens, eta=eta)

    assert torch.equal(run(0.0, [3, 4]), run(0.0, [5, 6]))  # the step noise's generators are never used
    assert not torch.allclose(run(0.5, [3, 4]), run(0.5, [5, 6]), atol=1e-2)
    if name == "DPM2 a":  # with η = 0 it is DPM2 (both discard the penultimate sigma)
        dpm2 = plan_img2img("DPM2", None, 10, 0.7, False, SD1_CONFIG)
        assert torch.allclose(run(0.0, [3, 4]), run_sampler(dpm2, init, noise, _smooth_x0), atol=1e-4)


def test_eta_is_ignored_by_samplers_without_eta() -> None:
    for name in ("Euler", "Heun", "DPM++ 2M", "UniPC"):
        assert torch.equal(_run_plan(name, 0.6, eta=0.7), _run_plan(name, 0.6))


def test_negative_or_nan_eta_is_rejected() -> None:
    plan = plan_img2img("Euler a", None, 4, 1.0, False, SD1_CONFIG)
    init, noise = _latents()
    for bad in (-0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="eta"):
            run_sampler(plan, init, noise, _smooth_x0, eta=bad)


def test_the_plan_says_whether_eta_applies() -> None:
    ancestral = {
        "Euler a",
        "DPM2 a",
        "DPM++ 2S a",
        "DPM++ SDE",
        "DPM++ 2M SDE",
        "DPM++ 2M SDE Heun",
        "DPM++ 3M SDE",
        "DPM fast",
        "DPM adaptive",
    }
    for sampler in SAMPLERS:
        plan = plan_img2img(sampler, None, 10, 0.5, False, SD1_CONFIG)
        expected = 1.0 if sampler.name in ancestral else 0.0 if sampler.name in ("DDIM", "DDIM CFG++") else None
        assert plan.default_eta == expected, sampler.name
        assert plan.uses_eta == (expected is not None)
        assert sampler_default_eta(sampler) == expected
        assert plan_img2img(sampler, None, 10, 0.0, False, SD1_CONFIG).default_eta == expected  # zero-step plans too
    assert sampler_default_eta("Euler a Karras") == 1.0
    with pytest.raises(ValueError, match="unknown sampler"):
        sampler_default_eta("nope")


@pytest.mark.parametrize("eta", [0.5, 3.0])  # 3.0: σ_up is capped at σ_next, σ_down = 0
@pytest.mark.parametrize("name", ["Euler a", "DPM2 a", "DPM++ 2S a", "DPM++ SDE", "DPM++ 2M SDE"])
def test_ancestral_samplers_with_eta_land_on_the_known_x0(name: str, eta: float) -> None:
    plan = plan_img2img(name, None, 20, 0.75, False, SD1_CONFIG)
    init, target = _latents()
    rng = create_noise(SHAPE[1:], [11, 12], source="CPU")
    denoise = _CountingPerfectDenoiser(target)

    out = run_sampler(plan, init, rng.noise, denoise, generators=rng.generators, eta=eta)
    # η > 1 can make σ_down 0 before the last step, which DPM2 a / DPM++ 2S a then take as a one-call Euler step.
    assert denoise.calls == plan.model_calls if eta <= 1 else denoise.calls <= plan.model_calls
    assert torch.isfinite(out).all()
    assert torch.allclose(out, target, atol=1e-4)


def test_ancestral_noise_is_seeded_by_the_generators() -> None:
    a = _run_plan("Euler a")
    assert torch.equal(a, _run_plan("Euler a"))
    assert not torch.allclose(a, _run_plan("Euler a", seeds=(5, 6)))


def test_ddim_matches_the_ddim_rule() -> None:
    plan = plan_img2img("DDIM", None, 20, 0.75, False, SD1_CONFIG)
    init, _ = _latents()
    noise = create_noise(SHAPE[1:], [3, 4], source="CPU").noise
    got = run_sampler(plan, init, noise, _smooth_x0)
    acp = plan.model.alphas_cumprod.double()
    x = (acp[751].sqrt() * init + (1 - acp[751]).sqrt() * noise).double()
    for t in range(701, 50, -50):  # t_enc − 1 = 14 calls, the last one lands on timestep 1
        a, a_prev = acp[t], acp[t - 50]
        sigma = math.sqrt((1 - float(a)) / float(a))
        eps = _smooth_x0(x.float(), torch.zeros(2), sigma).double()
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    assert torch.allclose(got.double(), x, atol=1e-4)


def test_ddim_eta_matches_the_ddim_rule_and_is_seeded() -> None:
    plan = plan_img2img("DDIM", None, 20, 0.75, False, SD1_CONFIG)
    init, _ = _latents()

    def run(eta: float | None, seeds: tuple[int, int] = (3, 4)) -> torch.Tensor:
        rng = create_noise(SHAPE[1:], list(seeds), source="CPU")
        return run_sampler(plan, init, rng.noise, _smooth_x0, generators=rng.generators, eta=eta)

    got = run(0.5)
    assert torch.equal(got, run(0.5))  # reproducible with the same generators
    assert not torch.allclose(got, run(0.5, seeds=(3, 5)), atol=1e-3)  # image 2's noise changes ...
    assert torch.equal(got[0], run(0.5, seeds=(3, 5))[0])  # ... image 1's does not
    assert torch.equal(run(None), run(0.0))  # the default is opts.eta_ddim = 0
    assert not torch.allclose(got, run(0.0), atol=1e-2)

    rng = create_noise(SHAPE[1:], [3, 4], source="CPU")
    acp = plan.model.alphas_cumprod.double()
    x = (acp[751].sqrt() * init + (1 - acp[751]).sqrt() * rng.noise).double()
    for t in range(701, 50, -50):
        a, a_prev = acp[t], acp[t - 50]
        sigma = math.sqrt((1 - float(a)) / float(a))
        eps = _smooth_x0(x.float(), torch.zeros(2), sigma).double()
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        std = 0.5 * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)).sqrt()  # σ_t of the DDIM paper, η = 0.5
        x = a_prev.sqrt() * x0 + (1 - a_prev - std**2).sqrt() * eps + std * _randn(rng.generators).double()
    assert torch.allclose(got.double(), x, atol=1e-4)


# --- callbacks, StopSampling, masks ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Euler", "Heun", "DPM++ 2M", "DDIM"])
def test_stop_sampling_returns_the_last_x0(name: str) -> None:
    plan = plan_img2img(name, None, 20, 1.0, False, SD1_CONFIG)
    init, _ = _latents()
    noise = create_noise(SHAPE[1:], [1, 2], source="CPU").noise
    seen: list[StepInfo] = []

    def callback(info: StepInfo) -> None:
        seen.append(info)
        if info.step == 3:
            raise StopSampling

    out = run_sampler(plan, init, noise, _smooth_x0, callback=callback)
    assert [i.step for i in seen] == [0, 1, 2, 3]
    if name != "Heun":  # Heun's last model call of step 3 is its corrector, not the step's first x0
        assert torch.equal(out, seen[-1].x0_preview)


def test_stop_before_the_first_model_call_returns_the_init_latent() -> None:
    plan = plan_img2img("Euler", None, 20, 1.0, False, SD1_CONFIG)
    init, _ = _latents()

    def stop(x: torch.Tensor, t: torch.Tensor, s: float) -> torch.Tensor:
        raise StopSampling

    assert torch.equal(run_sampler(plan, init, torch.zeros_like(init), stop), init)


@pytest.mark.parametrize(
    "sampler", [s for s in K_SAMPLERS if s.name not in ("DPM fast", "DPM adaptive")], ids=lambda s: s.name
)
def test_blend_x0_keeps_the_masked_out_region(sampler: object) -> None:
    """§3.3: the x0 prediction is blended with the clean init latent where the mask keeps it."""
    plan = plan_img2img(sampler, None, 20, 0.8, False, SD1_CONFIG)  # type: ignore[arg-type]
    init, target = _latents()
    rng = create_noise(SHAPE[1:], [7, 8], source="CPU")
    keep = torch.zeros(SHAPE)
    keep[..., :4] = 1.0  # left half kept, right half regenerated

    def blend(x0: torch.Tensor) -> torch.Tensor:
        return x0 * (1 - keep) + init * keep

    out = run_sampler(plan, init, rng.noise, _eps_for(target), blend_x0=blend, generators=rng.generators)
    kept = keep.bool()
    assert torch.allclose(out[kept], init[kept], atol=1e-5)
    assert torch.allclose(out[~kept], target[~kept], atol=1e-4)


def test_timestep_samplers_blend_the_noisy_input_before_the_model() -> None:
    plan = plan_img2img("DDIM", None, 20, 0.75, False, SD1_CONFIG)
    init, target = _latents()
    noise = create_noise(SHAPE[1:], [7, 8], source="CPU").noise
    inputs: list[torch.Tensor] = []
    blended: list[torch.Tensor] = []

    def blend(xt: torch.Tensor) -> torch.Tensor:
        inputs.append(xt)
        out = xt.clone()
        out[..., :4] = init[..., :4]
        blended.append(out)
        return out

    def record(x: torch.Tensor, t: torch.Tensor, s: float) -> torch.Tensor:
        assert torch.equal(x, blended[-1])
        return _eps_for(target)(x, t, s)

    run_sampler(plan, init, noise, record, blend_xt_before=blend)
    assert len(inputs) == plan.model_calls


def test_extra_noise_and_noise_multiplier_change_the_start() -> None:
    plan = plan_img2img("Euler", None, 20, 0.5, False, SD1_CONFIG)
    init, _ = _latents()
    noise = create_noise(SHAPE[1:], [1, 2], source="CPU").noise
    first: list[torch.Tensor] = []

    def record(x: torch.Tensor, t: torch.Tensor, s: float) -> torch.Tensor:
        first.append(x * math.sqrt(1 + s * s))
        raise StopSampling

    s0 = plan.start_sigma
    run_sampler(plan, init, noise, record)
    assert torch.allclose(first[-1], init + noise * s0, atol=1e-5)
    run_sampler(plan, init, noise, record, extra_noise=0.5)
    assert torch.allclose(first[-1], init + noise * s0 + noise * 0.5, atol=1e-5)
    run_sampler(plan, init, noise, record, noise_multiplier=0.5)
    assert torch.allclose(first[-1], init + noise * 0.5 * s0, atol=1e-5)


def test_plan_is_reusable() -> None:
    plan = plan_img2img("DPM++ 2M", None, 12, 1.0, False, SD1_CONFIG)
    init, _ = _latents()
    noise = create_noise(SHAPE[1:], [1, 2], source="CPU").noise
    a = run_sampler(plan, init, noise, _smooth_x0)
    b = run_sampler(plan, init, noise, _smooth_x0)
    assert torch.equal(a, b)


def test_names_come_from_the_shared_tables() -> None:
    euler = find_sampler("k_euler")
    karras = find_schedule("Karras")
    assert euler is not None
    assert karras is not None
    plan = plan_img2img(euler, karras, 10, 1.0, False, SD1_CONFIG)
    assert plan.schedule_type == "Karras"
    assert plan.implementation == "own:euler"
    assert create_generators([1], source="CPU")[0].initial_seed() == 1


# --- the processing path -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoadedModel]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield load_model("tiny", tiny_dir=tmp_path_factory.mktemp("tiny"), device="cpu", dtype=torch.float32)
    finally:
        torch.set_num_threads(previous)


def _render(model: LoadedModel, sampler: str, eta: float | None) -> tuple[np.ndarray, dict[str, str], list[str]]:
    y, x = np.mgrid[0:64, 0:64].astype(np.float32)
    picture = Image.fromarray(np.stack([x * 3, y * 3, (x + y) * 1.5], axis=-1).astype(np.uint8), "RGB")
    p = StableDiffusionProcessingImg2Img(
        sd_model=model,
        prompt="a red cube",
        init_images=[picture],
        width=64,
        height=64,
        steps=4,
        seed=1234,
        sampler_name=sampler,
        eta=eta,
    )
    processed = process_images(p)
    values = parse_infotext(processed.infotexts[0])[2]
    return np.asarray(processed.images[0], dtype=np.int16), values, [w.code for w in processed.warnings]


def test_processing_applies_eta_and_writes_it_only_where_it_applies(tiny_model: LoadedModel) -> None:
    zero, zero_info, zero_codes = _render(tiny_model, "Euler a", 0.0)
    one, one_info, one_codes = _render(tiny_model, "Euler a", None)  # opts.eta_ancestral = 1
    assert np.abs(zero - one).mean() > 0.1
    assert float(zero_info["Eta"]) == 0.0
    assert "Eta" not in one_info
    _, euler_info, euler_codes = _render(tiny_model, "Euler", 0.3)  # Euler takes no eta
    assert "Eta" not in euler_info
    _, ddim_info, ddim_codes = _render(tiny_model, "DDIM", 0.5)
    assert ddim_info["Eta DDIM"] == "0.5"  # the reference's key for the timestep samplers' η
    assert zero_codes == one_codes == euler_codes == ddim_codes == []
