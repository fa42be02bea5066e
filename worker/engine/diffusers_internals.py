"""Every place where the engine reaches past diffusers' public API, each in one small adapter, with why.

The engine reproduces the reference's sigma schedules and sampling loop (img2img-semantics.md §3.2) on diffusers'
schedulers and models. Where diffusers offers no public way to do what the reference does, the engine sets an
attribute or bypasses a method; those few reaches are gathered here so that a diffusers upgrade has one module to
check (the engine is tested against diffusers 0.42):

* :func:`load_k_schedule` assigns ``scheduler.sigmas`` and ``scheduler.timesteps`` after ``set_timesteps``. diffusers
  accepts an explicit sigma list (``set_timesteps(sigmas=...)``) only for ``EulerDiscreteScheduler``; LMS, DPM++ 2M
  and UniPC read nothing but these two arrays in ``step``, so overwriting them makes them walk the reference's list.
* :func:`use_training_alphas` assigns ``scheduler.alphas_cumprod``: the reference's ᾱ buffer (float64 betas, float32
  product) differs in the last bits from diffusers' float32 one, and DDIM/UniPC read ᾱ from this attribute.
* :func:`mark_input_scaled` sets ``scheduler.is_scale_input_called``: the engine scales the model input itself
  (x/√(σ²+1), as the reference does, before the mask blend), so it never calls ``scale_model_input``, which is all
  that sets this flag; without it Euler and LMS warn on every step.
* :func:`quiet_numpy_array_deprecation` silences one warning: ``set_timesteps`` calls ``np.array(tensor)``, which
  NumPy 2 flags under this torch; the values are unaffected.
* :func:`cast_module` casts with ``torch.nn.Module.to`` rather than the model's own ``to``: diffusers' override logs
  a spurious "keep in float32" warning on every dtype cast (SD's UNet and VAE have no module that must stay float32).
* :func:`clip_final_layer_norm` (transformers, not diffusers) applies ``text_model.final_layer_norm`` of the CLIP
  text encoder to an earlier layer's hidden state: A1111's "clip skip" takes that layer, normalised, and
  transformers offers no public call for it.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any, cast

import torch
from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteScheduler

__all__ = [
    "cast_module",
    "clip_final_layer_norm",
    "load_k_schedule",
    "mark_input_scaled",
    "quiet_numpy_array_deprecation",
    "use_training_alphas",
]


@contextlib.contextmanager
def quiet_numpy_array_deprecation() -> Iterator[None]:
    """Silence the DeprecationWarning NumPy 2 raises for diffusers' ``np.array(tensor)`` in ``set_timesteps``."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"__array__ implementation doesn't accept a copy keyword")
        yield


def load_k_schedule(scheduler: Any, sigmas: torch.Tensor, timesteps: torch.Tensor) -> None:
    """Reset a diffusers scheduler and make it step through ``sigmas`` (n + 1 values, ending in the last target σ)
    at the model ``timesteps`` (n values), starting from the first."""
    n = sigmas.numel() - 1
    if isinstance(scheduler, EulerDiscreteScheduler):
        with quiet_numpy_array_deprecation():
            scheduler.set_timesteps(sigmas=sigmas.tolist())  # the only k-scheduler taking explicit sigmas
    else:
        with quiet_numpy_array_deprecation():
            scheduler.set_timesteps(num_inference_steps=n)
        scheduler.sigmas = sigmas.clone().to(torch.float32)
        scheduler.timesteps = timesteps.clone()
    scheduler.set_begin_index(0)


def use_training_alphas(scheduler: Any, alphas_cumprod: torch.Tensor) -> None:
    """Make a timestep scheduler (DDIM, UniPC) use the reference's ᾱ buffer."""
    scheduler.alphas_cumprod = alphas_cumprod.clone()


def mark_input_scaled(scheduler: Any) -> None:
    """Tell a k-scheduler that the model input was already scaled by x/√(σ²+1) (what ``scale_model_input`` does)."""
    scheduler.is_scale_input_called = True


def clip_final_layer_norm(text_encoder: Any, hidden: torch.Tensor) -> torch.Tensor:
    """The CLIP text encoder's final layer norm applied to `hidden` (an earlier layer's output)."""
    text_model = getattr(text_encoder, "text_model", text_encoder)
    return cast(torch.Tensor, text_model.final_layer_norm(hidden))


def cast_module(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast a diffusers model's weights to ``dtype`` without its ``to`` override's spurious warning."""
    torch.nn.Module.to(module, dtype=dtype)
