"""The twelve schedules against their formulas (computed here with numpy/scipy), the SDE samplers' Brownian-tree noise
against torchsde trees seeded per image, and the samplers that k-diffusion cannot check (LCM, Restart, PLMS,
DDIM CFG++), plus the sampler options (docs/engine.md "Samplers", "Schedules", "Sampler options")."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torchsde
from scipy import stats

from shared.job.steps import ddim_schedule_length, sampling_steps
from shared.sampler_names import SAMPLERS, SCHEDULES, find_schedule, split_sampler_and_schedule
from worker.engine.noise import create_generators, create_noise
from worker.engine.options import Options
from worker.engine.sampling import plan_img2img, run_sampler
from worker.engine.sampling.brownian import BrownianNoise
from worker.engine.sampling.plan import SamplerOptions
from worker.engine.sampling.schedules import (
    AYS_SD1,
    AYS_SDXL,
    LcmModelSchedule,
    ModelSchedule,
    ScheduleArgs,
    align_your_steps_sigmas,
    beta_sigmas,
    ddim_sigmas,
    k_sigmas,
    kl_optimal_sigmas,
    normal_sigmas,
    sgm_uniform_sigmas,
    simple_sigmas,
)
from worker.engine.sampling.settings import JobSamplerFields, resolve_sampler_options
from worker.engine.sampling.whole_runs import restart_step_list

SD1 = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}
MODEL = ModelSchedule.from_config(SD1)
SHAPE = (2, 4, 6, 6)


def _np_sigmas() -> np.ndarray:
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    acp = np.cumprod(1 - betas).astype(np.float32)
    return np.sqrt((1 - acp) / acp)


def _np_sigma_at(t: np.ndarray) -> np.ndarray:
    # σ(t) with log σ interpolated linearly between integer timesteps.
    return np.exp(np.interp(t, np.arange(1000), np.log(_np_sigmas())))


# --- the schedules -------------------------------------------------------------------------------------------------


def test_the_twelve_schedules_and_their_aliases() -> None:
    assert [s.label for s in SCHEDULES] == [
        "Automatic",
        "Uniform",
        "Karras",
        "Exponential",
        "Polyexponential",
        "SGM Uniform",
        "KL Optimal",
        "Align Your Steps",
        "Simple",
        "Normal",
        "DDIM",
        "Beta",
    ]
    assert find_schedule("normal") is find_schedule("Normal")  # clients send ids and labels
    assert find_schedule("SGMUniform") is find_schedule("sgm_uniform")
    found = split_sampler_and_schedule("DPM++ 2M SDE Heun")
    assert found is not None
    assert found[0].name == "DPM++ 2M SDE Heun"
    assert found[1] is None
    found = split_sampler_and_schedule("Euler SGM Uniform")
    assert found is not None
    assert found[0].name == "Euler"
    assert found[1] is not None
    assert found[1].name == "sgm_uniform"


@pytest.mark.parametrize("n", [1, 7, 20])
def test_sgm_uniform_is_trailing_spacing_of_fractional_t(n: int) -> None:
    got = sgm_uniform_sigmas(n, MODEL, MODEL.sigma_min, MODEL.sigma_max)
    expected = np.append(_np_sigma_at(np.linspace(999, 0, n + 1)[:-1]), 0.0)
    np.testing.assert_allclose(got.numpy(), expected, rtol=2e-5)


@pytest.mark.parametrize("n", [2, 7, 20])
def test_normal_runs_t_over_the_whole_range_so_it_equals_uniform_for_sd(n: int) -> None:
    got = normal_sigmas(n, MODEL, MODEL.sigma_min, MODEL.sigma_max)
    np.testing.assert_allclose(got.numpy(), np.append(_np_sigma_at(np.linspace(999, 0, n)), 0.0), rtol=2e-5)
    np.testing.assert_allclose(got.numpy(), MODEL.get_sigmas(n).numpy(), rtol=2e-5)
    # With a narrower range it is not Uniform: t(σ) of the bounds is used.
    narrow = normal_sigmas(n, MODEL, 0.1, 5.0)
    assert float(narrow[0]) == pytest.approx(5.0, rel=1e-4)
    assert float(narrow[-2]) == pytest.approx(0.1, rel=1e-4)


def test_kl_optimal_is_tan_of_linear_arctan_and_ends_at_sigma_min_not_zero() -> None:
    n = 9
    i = np.arange(n + 1) / n
    expected = np.tan(i * np.arctan(0.03) + (1 - i) * np.arctan(14.6))
    got = kl_optimal_sigmas(n, 0.03, 14.6)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)
    assert got.numel() == n + 1
    assert float(got[-1]) == pytest.approx(0.03, rel=1e-5)


def test_align_your_steps_uses_the_published_lists() -> None:
    assert align_your_steps_sigmas(11).tolist() == pytest.approx([*AYS_SD1, 0.0], rel=1e-6)
    assert align_your_steps_sigmas(11, sdxl=True).tolist() == pytest.approx([*AYS_SDXL, 0.0], rel=1e-6)
    # Another n: log σ resampled linearly at n evenly spaced points, both ends kept.
    n = 20
    xs = np.linspace(0, 1, 11)
    expected = np.exp(np.interp(np.linspace(0, 1, n), xs, np.log(AYS_SD1[::-1])))[::-1]
    np.testing.assert_allclose(align_your_steps_sigmas(n).numpy(), np.append(expected, 0.0), rtol=1e-6)


@pytest.mark.parametrize("n", [1, 7, 20, 30])
def test_simple_and_ddim_pick_training_sigmas(n: int) -> None:
    table = _np_sigmas()
    simple = [table[-(1 + int(i * 1000 / n))] for i in range(n)] + [0.0]
    np.testing.assert_allclose(simple_sigmas(n, MODEL).numpy(), simple, rtol=1e-6)
    stride = max(1000 // n, 1)
    ddim = [*table[1:1000:stride][::-1], 0.0]
    got = ddim_sigmas(n, MODEL)
    np.testing.assert_allclose(got.numpy(), ddim, rtol=1e-6)
    assert got.numel() == ddim_schedule_length(n) + 1  # 30 steps → 31 sigmas: not n


def test_beta_is_the_beta_quantile_between_sigma_min_and_max() -> None:
    n, a, b = 8, 0.6, 0.6
    q = [stats.beta.ppf(u, a, b) for u in 1 - np.linspace(0, 1, n)]
    expected = [0.03 + x * (14.6 - 0.03) for x in q] + [0.0]
    np.testing.assert_allclose(beta_sigmas(n, 0.03, 14.6, a, b).numpy(), expected, rtol=1e-6)
    # Closed forms: the ends are σmax and σmin, and a symmetric Beta puts the middle point halfway.
    three = beta_sigmas(3, 1.0, 3.0, 0.5, 0.5)
    assert three.tolist() == pytest.approx([3.0, 2.0, 1.0, 0.0], rel=1e-6)


def test_schedule_args_route_overrides_and_rho() -> None:
    args = ScheduleArgs(MODEL, 0.1, 10.0, rho=3.0)
    karras = find_schedule("karras")
    assert karras is not None
    got = k_sigmas(karras, 5, args)
    ramp = np.linspace(0, 1, 5)
    expected = (10.0 ** (1 / 3) + ramp * (0.1 ** (1 / 3) - 10.0 ** (1 / 3))) ** 3
    np.testing.assert_allclose(got.numpy()[:-1], expected, rtol=1e-5)


def test_override_options_reach_the_schedule_and_the_infotext() -> None:
    opts = SamplerOptions(sigma_min=0.1, sigma_max=10.0, rho=3.0)
    plan = plan_img2img("DPM++ 2M", None, 5, 1.0, False, SD1, options=opts)
    assert float(plan.sigmas[0]) == pytest.approx(10.0, rel=1e-5)
    assert float(plan.sigmas[-2]) == pytest.approx(0.1, rel=1e-5)
    assert plan.extra_generation_params["Schedule min sigma"] == 0.1
    assert plan.extra_generation_params["Schedule rho"] == 3.0
    # The automatic discretisation of Euler takes no overrides and writes nothing (as the reference).
    euler = plan_img2img("Euler", None, 5, 1.0, False, SD1, options=opts)
    assert float(euler.sigmas[0]) == pytest.approx(MODEL.sigma_max, rel=1e-5)
    assert "Schedule min sigma" not in euler.extra_generation_params
    beta = plan_img2img("Euler", "beta", 5, 1.0, False, SD1)
    assert beta.extra_generation_params["Beta schedule alpha"] == 0.6


@pytest.mark.parametrize("schedule", [s.name for s in SCHEDULES])
def test_every_schedule_plans_and_counts_steps_like_the_admission_estimate(schedule: str) -> None:
    for steps, strength in ((20, 0.75), (30, 0.5), (7, 1.0)):
        plan = plan_img2img("Euler", schedule, steps, strength, False, SD1)
        assert plan.sigma_sched.numel() - 1 == plan.total_steps
        assert sampling_steps("Euler", steps, strength, schedule=schedule) == plan.total_steps


def test_always_discard_applies_to_timestep_samplers_too() -> None:
    plain = plan_img2img("DDIM", None, 10, 1.0, False, SD1)
    discard = plan_img2img("DDIM", None, 10, 1.0, False, SD1, always_discard_penultimate_sigma=True)
    assert plain.timesteps is not None
    assert discard.timesteps is not None
    assert discard.timesteps.numel() == 11  # built for one step more
    assert discard.extra_generation_params["Discard penultimate sigma"] is True


# --- Brownian-tree noise ---------------------------------------------------------------------------------------------


def test_brownian_noise_is_each_images_torchsde_tree_increment() -> None:
    x = torch.zeros(SHAPE)
    noise = BrownianNoise(x, 0.03, 14.6, [5, 6])
    got = noise(2.0, 1.5)
    for i, seed in enumerate((5, 6)):
        tree = torchsde.BrownianTree(torch.tensor(0.03), torch.zeros(SHAPE[1:]), torch.tensor(14.6), entropy=seed)
        expected = -tree(torch.tensor(1.5), torch.tensor(2.0)) / math.sqrt(0.5)
        assert torch.allclose(got[i], expected)
    assert float(got.std()) == pytest.approx(1.0, abs=0.25)


def test_brownian_noise_depends_on_the_image_seed_only() -> None:
    x = torch.zeros(SHAPE)
    a = BrownianNoise(x, 0.03, 14.6, [5, 6])(3.0, 2.0)
    b = BrownianNoise(x, 0.03, 14.6, [5, 7])(3.0, 2.0)
    alone = BrownianNoise(x[:1], 0.03, 14.6, [5])(3.0, 2.0)
    assert torch.equal(a[0], b[0])
    assert torch.equal(a[0], alone[0])
    assert not torch.allclose(a[1], b[1])


def test_sde_samplers_take_their_noise_from_the_seeds_not_the_generators() -> None:
    plan = plan_img2img("DPM++ 2M SDE", None, 10, 0.8, False, SD1)
    init = torch.zeros(SHAPE)
    start = create_noise(SHAPE[1:], [1, 2], source="CPU").noise

    def eps(x_in: torch.Tensor, t: torch.Tensor, sigma: float) -> torch.Tensor:
        return x_in * 0.1

    def run(seeds: list[int], generator_seeds: list[int]) -> torch.Tensor:
        gens = create_generators(generator_seeds, source="CPU")
        return run_sampler(plan, init, start, eps, generators=gens, seeds=seeds)

    same = run([1, 2], [1, 2])
    assert torch.equal(same, run([1, 2], [8, 9]))  # the generators do not matter
    other = run([1, 3], [1, 2])
    assert torch.equal(same[0], other[0])
    assert not torch.allclose(same[1], other[1])


# --- LCM, Restart, PLMS, DDIM CFG++ ----------------------------------------------------------------------------------


def test_lcm_discretisation_is_every_20th_training_timestep() -> None:
    lcm = LcmModelSchedule.from_training(MODEL)
    table = _np_sigmas()
    np.testing.assert_allclose(lcm.sigmas.numpy(), table[19::20], rtol=1e-6)
    assert int(lcm.sigma_to_t(torch.tensor(float(table[500])))) in (499, 519)
    assert int(lcm.sigma_to_t(lcm.sigmas[-1])) == 999
    sigmas = lcm.get_sigmas(4)  # t evenly from 999 to 19 → table indices 49, 32.67, 16.33, 0
    assert float(sigmas[0]) == pytest.approx(float(table[999]), rel=1e-5)
    assert float(sigmas[3]) == pytest.approx(float(table[19]), rel=1e-5)


def test_lcm_step_is_the_boundary_scaled_x0_renoised_to_the_next_sigma() -> None:
    plan = plan_img2img("LCM", None, 4, 1.0, False, SD1)
    init, target = torch.zeros(SHAPE), torch.full(SHAPE, 0.5)
    start = create_noise(SHAPE[1:], [1, 2], source="CPU").noise

    def eps(x_in: torch.Tensor, t: torch.Tensor, sigma: float) -> torch.Tensor:
        assert float(t[0]) in {20.0 * i + 19 for i in range(50)}  # LCM's timesteps only
        return (x_in * math.sqrt(1 + sigma * sigma) - target) / sigma

    seen: list[torch.Tensor] = []
    run_sampler(
        plan,
        init,
        start,
        eps,
        generators=create_generators([1, 2], source="CPU"),
        callback=lambda i: seen.append(i.x0_preview),
    )
    s0 = float(plan.sigma_sched[0])
    tau = 10 * float(plan.model.sigma_to_t(s0))
    x = start * s0
    expected = tau / math.sqrt(tau**2 + 0.25) * target + 0.25 / (tau**2 + 0.25) * x
    assert torch.allclose(seen[0], expected, atol=1e-6)


def test_restart_step_list_inserts_the_restart_segment() -> None:
    sigmas = MODEL.get_sigmas(20)
    pairs = restart_step_list(sigmas)
    assert len(pairs) == 20  # 11 main steps + 9 restart steps
    ups = [i for i in range(1, len(pairs)) if pairs[i][0] > pairs[i - 1][1]]
    assert len(ups) == 1  # one jump back up, to the point nearest σ = 2
    assert pairs[ups[0]][0] == pytest.approx(min((s for s, _ in pairs), key=lambda s: abs(s - 2.0)), rel=1e-6)
    assert len(restart_step_list(MODEL.get_sigmas(40))) == 40  # k = 10, twice
    short = restart_step_list(MODEL.get_sigmas(10))
    assert [a for a, _ in short] == pytest.approx(MODEL.get_sigmas(10)[:-1].tolist())


def _constant_eps(value: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]:
    def eps(x_in: torch.Tensor, t: torch.Tensor, sigma: float) -> torch.Tensor:
        return value

    return eps


def test_plms_equals_ddim_when_eps_is_constant_and_differs_otherwise() -> None:
    init = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    c = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    plms = plan_img2img("PLMS", None, 20, 0.8, False, SD1)
    ddim = plan_img2img("DDIM", None, 20, 0.8, False, SD1)
    assert plms.model_calls == ddim.model_calls + 1  # pseudo improved Euler on the first step
    a = run_sampler(plms, init, noise, _constant_eps(c))
    b = run_sampler(ddim, init, noise, _constant_eps(c))
    assert torch.allclose(a, b, atol=1e-5)

    def varying(x_in: torch.Tensor, t: torch.Tensor, sigma: float) -> torch.Tensor:
        return torch.tanh(x_in) * (1 + float(t[0]) / 1000)

    assert not torch.allclose(
        run_sampler(plms, init, noise, varying), run_sampler(ddim, init, noise, varying), atol=1e-3
    )


def test_ddim_cfgpp_is_ddim_with_the_unconditional_direction() -> None:
    init = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    c = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    u = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4))
    cfgpp = plan_img2img("DDIM CFG++", None, 10, 0.5, False, SD1)
    ddim = plan_img2img("DDIM", None, 10, 0.5, False, SD1)
    same = run_sampler(cfgpp, init, noise, _constant_eps(c), denoise_eps_cfgpp=lambda x, t, s: (c, c))
    assert torch.allclose(same, run_sampler(ddim, init, noise, _constant_eps(c)), atol=1e-5)
    # One step by hand: x0 from the guided ε, the way back to x_t along the unconditional ε.
    one = plan_img2img("DDIM CFG++", None, 10, 0.25, False, SD1)  # t_enc = 2: one step
    assert one.timesteps is not None
    out = run_sampler(one, init, noise, _constant_eps(c), denoise_eps_cfgpp=lambda x, t, s: (c, u))
    acp = one.model.alphas_cumprod
    a_start = float(acp[int(one.timesteps[2])])
    a_t, a_prev = float(acp[int(one.timesteps[1])]), float(acp[int(one.timesteps[0])])
    x = math.sqrt(a_start) * init + math.sqrt(1 - a_start) * noise
    x0 = (x - math.sqrt(1 - a_t) * c) / math.sqrt(a_t)
    assert torch.allclose(out, math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * u, atol=1e-5)
    with pytest.raises(ValueError, match="CFG"):
        run_sampler(cfgpp, init, noise, _constant_eps(c))


@pytest.mark.parametrize("skip_type", ["time_uniform", "time_quadratic", "logSNR"])
def test_uni_pc_skip_types(skip_type: str) -> None:
    plan = plan_img2img("UniPC", None, 10, 1.0, False, SD1, options=SamplerOptions(uni_pc_skip_type=skip_type))
    u = plan.call_timesteps.double().numpy()
    assert plan.timesteps is not None
    assert plan.t_enc == 9
    start = float(plan.timesteps[8])  # UniPC starts at timesteps[t_enc − 1] and runs t_enc steps
    if skip_type == "time_uniform":
        np.testing.assert_allclose(u, np.linspace(start, 0, 10)[:-1], atol=1e-3)
    elif skip_type == "time_quadratic":
        t = np.linspace(math.sqrt((start + 1) / 1000), math.sqrt(1 / 1000), 10) ** 2
        np.testing.assert_allclose(u, (t * 1000 - 1)[:-1], atol=1e-3)
    else:
        sig = plan.sigma_sched[1:].double().numpy()  # λ = −log σ must be evenly spaced
        np.testing.assert_allclose(np.diff(-np.log(sig)), np.diff(-np.log(sig)).mean(), rtol=1e-3)


# --- sampler options --------------------------------------------------------------------------------------------------


def test_job_churn_is_used_silently_and_an_option_overrides_it_with_an_infotext_entry() -> None:
    job = JobSamplerFields(s_churn=0.5, s_noise=1.1, s_tmax=0.0)
    resolved, info = resolve_sampler_options("Euler", job, Options())
    assert (resolved.s_churn, resolved.s_noise, resolved.s_tmax) == (0.5, 1.1, math.inf)
    assert info == {}  # the reference writes only options that differ from the defaults
    resolved, info = resolve_sampler_options("Euler", job, Options(s_churn=0.3))
    assert resolved.s_churn == 0.3
    assert info == {"Sigma churn": 0.3}
    resolved, info = resolve_sampler_options("DPM++ 2S a", job, Options(s_churn=0.3))
    assert resolved.s_churn == 0.0
    assert resolved.s_noise == 1.1
    assert info == {}  # takes s_noise only
    resolved, _ = resolve_sampler_options("Euler a", job, Options(s_noise=0.5))
    assert resolved.s_noise == 1.0  # the reference gives Euler a no s_noise


def test_sgm_noise_multiplier_scales_the_start_noise() -> None:
    init, noise = torch.zeros(SHAPE), torch.ones(SHAPE)
    seen: dict[str, torch.Tensor] = {}

    def eps(x_in: torch.Tensor, t: torch.Tensor, sigma: float) -> torch.Tensor:
        seen.setdefault("x", x_in * math.sqrt(1 + sigma * sigma))
        return torch.zeros_like(x_in)

    plan = plan_img2img("Euler", None, 5, 1.0, False, SD1, options=SamplerOptions(sgm_noise_multiplier=True))
    run_sampler(plan, init, noise, eps)
    s0 = float(plan.sigma_sched[0])
    assert torch.allclose(seen["x"], torch.full(SHAPE, math.sqrt(1 + s0 * s0)))
    assert plan.extra_generation_params["SGM noise multiplier"] is True


def test_every_sampler_has_an_implementation_and_its_reference_automatic_schedule() -> None:
    automatic = {s.name: s.default_schedule for s in SAMPLERS}
    assert len(SAMPLERS) == 20
    assert automatic["DPM++ 2M SDE Heun"] == automatic["DPM++ 3M SDE"] == "exponential"
    assert automatic["Restart"] == "karras"
    assert automatic["DPM fast"] == automatic["DPM adaptive"] == automatic["LCM"] == "uniform"
    for sampler in SAMPLERS:
        plan_img2img(sampler, None, 10, 0.5, False, SD1)


def test_the_options_listing_and_the_engine_share_the_sampler_defaults() -> None:
    from dataclasses import asdict

    from scheduler.a1111.tenant_options import OPTION_DEFAULTS

    engine_defaults = asdict(Options())
    for key in ("s_churn", "s_tmin", "s_tmax", "s_noise", "sigma_min", "sigma_max", "rho", "uni_pc_order"):
        assert OPTION_DEFAULTS[key] == engine_defaults[key], key
    for key in ("uni_pc_variant", "uni_pc_skip_type", "beta_dist_alpha", "sgm_noise_multiplier", "eta_ddim"):
        assert OPTION_DEFAULTS[key] == engine_defaults[key], key
