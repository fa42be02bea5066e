"""Parity of the k-diffusion samplers with k-diffusion itself (MIT), the library the reference samples with.

k-diffusion is a test oracle only, never imported by the engine (docs/engine.md "Samplers": why). Its package
``__init__`` pulls in training code (wandb, clean-fid, kornia, torchvision, ...), so this module loads only its
``sampling.py``, with a stand-in for the one helper it takes from ``k_diffusion.utils``. Install it for these tests
with ``pip install --no-deps k-diffusion torchdiffeq`` (both small; torchsde and scipy are worker dependencies);
``./dev.sh setup`` does, and without them these tests fail rather than skip.

Both sides get the same fake model (a smooth nonlinear x0 of x and σ), the same schedule, the same start latent and
the same per-image generators, whose draws k-diffusion takes through a hijacked ``torch.randn_like`` exactly as the
reference arranges it; the SDE samplers get the reference's Brownian-tree noise sampler built from the batch's seeds.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from worker.engine.noise import create_generators, randn_like_from_generators
from worker.engine.sampling import plan_img2img, run_sampler
from worker.engine.sampling.plan import SamplerOptions

# k-diffusion's own warnings (torch.tensor of a tensor; torchsde clamping a query a rounding error outside the tree).
pytestmark = [
    pytest.mark.filterwarnings("ignore:To copy construct from a tensor:UserWarning"),
    pytest.mark.filterwarnings("ignore:Should have t:UserWarning"),
]

SD1_CONFIG = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}
SHAPE = (2, 4, 6, 6)
SEEDS = (1234, 98765)


def _load_k_diffusion_sampling() -> Any:
    missing = [name for name in ("k_diffusion", "torchdiffeq", "tqdm") if importlib.util.find_spec(name) is None]
    if missing:
        pytest.fail(
            f"the sampler oracle is not installed ({missing}): ./dev.sh setup, or pip install --no-deps "
            "k-diffusion torchdiffeq"
        )
    spec = importlib.util.find_spec("k_diffusion")
    assert spec is not None
    assert spec.submodule_search_locations
    root = Path(next(iter(spec.submodule_search_locations)))
    package = types.ModuleType("_kd_oracle")
    package.__path__ = [str(root)]
    utils = types.ModuleType("_kd_oracle.utils")

    def append_dims(x: torch.Tensor, target_dims: int) -> torch.Tensor:
        return x[(...,) + (None,) * (target_dims - x.ndim)]

    utils.append_dims = append_dims  # type: ignore[attr-defined]
    sys.modules.setdefault("_kd_oracle", package)
    sys.modules.setdefault("_kd_oracle.utils", utils)
    package.utils = utils  # type: ignore[attr-defined]
    module_spec = importlib.util.spec_from_file_location("_kd_oracle.sampling", root / "sampling.py")
    assert module_spec is not None
    assert module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def kd() -> Any:
    return _load_k_diffusion_sampling()


class _HijackedTorch:
    """What the reference puts in k-diffusion's ``torch``: randn_like draws from the per-image generators."""

    def __init__(self, generators: Sequence[Any]) -> None:
        self._generators = generators

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return randn_like_from_generators(x, self._generators)

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)


def _x0_of(x: torch.Tensor, sigma: float) -> torch.Tensor:
    # A smooth, nonlinear, σ-dependent "model": every step's x0 differs, so a wrong coefficient shows.
    return torch.tanh(0.4 * x) * (1.0 + 0.05 * sigma) + 0.1 * torch.sin(x)


def _eps_model(x_in: torch.Tensor, t: torch.Tensor, sigma: float) -> torch.Tensor:
    x = x_in * math.sqrt(1.0 + sigma * sigma)
    return (x - _x0_of(x, sigma)) / sigma


def _kd_model(x: torch.Tensor, sigma: torch.Tensor, **_: Any) -> torch.Tensor:
    return _x0_of(x, float(sigma[0]))


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)


def _ours(sampler: str, schedule: str | None, strength: float, options: SamplerOptions, eta: float | None) -> Any:
    plan = plan_img2img(sampler, schedule, 20, strength, False, SD1_CONFIG, options=options)
    init, noise = _inputs()
    out = run_sampler(
        plan,
        init,
        noise,
        _eps_model,
        generators=create_generators(list(SEEDS), source="CPU"),
        seeds=list(SEEDS),
        eta=eta,
    )
    return plan, out


def _theirs(kd: Any, plan: Any, call: Callable[[Any, torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    init, noise = _inputs()
    kd.torch = _HijackedTorch(create_generators(list(SEEDS), source="CPU"))
    try:
        return call(kd, init + noise * plan.sigma_sched[0], plan.sigma_sched)
    finally:
        kd.torch = torch


def _brownian(kd: Any, plan: Any) -> Any:
    init, _ = _inputs()
    positive = plan.sigmas[plan.sigmas > 0]
    return kd.BrownianTreeNoiseSampler(init, positive.min(), plan.sigmas.max(), seed=list(SEEDS))


CASES: list[tuple[str, str | None, Callable[[Any, Any, torch.Tensor, torch.Tensor], torch.Tensor]]] = [
    ("Euler", None, lambda kd, p, x, s: kd.sample_euler(_kd_model, x, s, disable=True)),
    ("Euler a", None, lambda kd, p, x, s: kd.sample_euler_ancestral(_kd_model, x, s, disable=True)),
    ("Heun", None, lambda kd, p, x, s: kd.sample_heun(_kd_model, x, s, disable=True)),
    ("DPM2", None, lambda kd, p, x, s: kd.sample_dpm_2(_kd_model, x, s, disable=True)),
    ("DPM2 a", None, lambda kd, p, x, s: kd.sample_dpm_2_ancestral(_kd_model, x, s, disable=True)),
    ("LMS", None, lambda kd, p, x, s: kd.sample_lms(_kd_model, x, s, disable=True)),
    ("DPM++ 2M", None, lambda kd, p, x, s: kd.sample_dpmpp_2m(_kd_model, x, s, disable=True)),
    ("DPM++ 2M", "kl_optimal", lambda kd, p, x, s: kd.sample_dpmpp_2m(_kd_model, x, s, disable=True)),
    ("DPM++ 2S a", None, lambda kd, p, x, s: kd.sample_dpmpp_2s_ancestral(_kd_model, x, s, disable=True)),
    (
        "DPM++ SDE",
        None,
        lambda kd, p, x, s: kd.sample_dpmpp_sde(_kd_model, x, s, disable=True, noise_sampler=_brownian(kd, p)),
    ),
    (
        "DPM++ 2M SDE",
        None,
        lambda kd, p, x, s: kd.sample_dpmpp_2m_sde(_kd_model, x, s, disable=True, noise_sampler=_brownian(kd, p)),
    ),
    (
        "DPM++ 2M SDE Heun",
        None,
        lambda kd, p, x, s: kd.sample_dpmpp_2m_sde(
            _kd_model, x, s, disable=True, noise_sampler=_brownian(kd, p), solver_type="heun"
        ),
    ),
    (
        "DPM++ 3M SDE",
        None,
        lambda kd, p, x, s: kd.sample_dpmpp_3m_sde(_kd_model, x, s, disable=True, noise_sampler=_brownian(kd, p)),
    ),
    (
        "DPM fast",
        None,
        lambda kd, p, x, s: kd.sample_dpm_fast(_kd_model, x, s[-2], s[0], len(s) - 1, disable=True, eta=1.0),
    ),
    (
        "DPM adaptive",
        None,
        lambda kd, p, x, s: kd.sample_dpm_adaptive(_kd_model, x, s[-2], s[0], disable=True, eta=1.0),
    ),
]


@pytest.mark.parametrize("strength", [0.6, 1.0])
@pytest.mark.parametrize(("sampler", "schedule", "call"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_each_k_diffusion_sampler_matches_k_diffusion(
    kd: Any, sampler: str, schedule: str | None, call: Any, strength: float
) -> None:
    plan, ours = _ours(sampler, schedule, strength, SamplerOptions(), None)
    theirs = _theirs(kd, plan, lambda kd_, x, s: call(kd_, plan, x, s))
    assert torch.allclose(ours, theirs, atol=2e-4, rtol=1e-4), float((ours - theirs).abs().max())


@pytest.mark.parametrize("sampler", ["Euler", "Heun", "DPM2"])
def test_churn_matches_k_diffusion(kd: Any, sampler: str) -> None:
    options = SamplerOptions(s_churn=0.7, s_tmin=0.3, s_tmax=8.0, s_noise=1.05)
    plan, ours = _ours(sampler, None, 1.0, options, None)
    function = {"Euler": kd.sample_euler, "Heun": kd.sample_heun, "DPM2": kd.sample_dpm_2}[sampler]
    theirs = _theirs(
        kd,
        plan,
        lambda kd_, x, s: function(_kd_model, x, s, disable=True, s_churn=0.7, s_tmin=0.3, s_tmax=8.0, s_noise=1.05),
    )
    plain = _ours(sampler, None, 1.0, SamplerOptions(), None)[1]
    assert not torch.allclose(ours, plain, atol=1e-3)  # churn changed something
    assert torch.allclose(ours, theirs, atol=2e-4, rtol=1e-4), float((ours - theirs).abs().max())


@pytest.mark.parametrize("sampler", ["DPM2 a", "DPM++ 2S a", "DPM++ SDE", "DPM++ 3M SDE", "DPM fast"])
def test_s_noise_and_eta_match_k_diffusion(kd: Any, sampler: str) -> None:
    plan, ours = _ours(sampler, None, 1.0, SamplerOptions(s_noise=0.9), 0.6)
    brownian = plan.sampler.brownian_noise

    def call(kd_: Any, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        kwargs: dict[str, Any] = {"disable": True, "eta": 0.6, "s_noise": 0.9}
        if brownian:
            kwargs["noise_sampler"] = _brownian(kd_, plan)
        if sampler == "DPM fast":
            return kd_.sample_dpm_fast(_kd_model, x, s[-2], s[0], len(s) - 1, **kwargs)
        function = {
            "DPM2 a": kd_.sample_dpm_2_ancestral,
            "DPM++ 2S a": kd_.sample_dpmpp_2s_ancestral,
            "DPM++ SDE": kd_.sample_dpmpp_sde,
            "DPM++ 3M SDE": kd_.sample_dpmpp_3m_sde,
        }[sampler]
        return function(_kd_model, x, s, **kwargs)

    theirs = _theirs(kd, plan, call)
    assert torch.allclose(ours, theirs, atol=2e-4, rtol=1e-4), float((ours - theirs).abs().max())


def test_schedules_match_k_diffusion_formulas(kd: Any) -> None:
    from worker.engine.sampling.schedules import exponential_sigmas, karras_sigmas, polyexponential_sigmas

    assert torch.allclose(karras_sigmas(13, 0.03, 14.6, 5.0), kd.get_sigmas_karras(13, 0.03, 14.6, 5.0))
    assert torch.allclose(exponential_sigmas(13, 0.03, 14.6), kd.get_sigmas_exponential(13, 0.03, 14.6))
    assert torch.allclose(
        polyexponential_sigmas(13, 0.03, 14.6, 2.0), kd.get_sigmas_polyexponential(13, 0.03, 14.6, 2.0)
    )
