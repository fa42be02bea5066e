"""Tiling (worker/engine/tiling.py): with circular padding the UNet and the VAE decoder treat their input as a torus,
so shifting the input around its edges shifts the output the same way; with the default zero padding it does not
(docs/engine.md "Other decisions, and what is not (yet) reproduced")."""

from __future__ import annotations

import pytest
import torch

from worker.engine.models import LoadedModel
from worker.engine.tiling import circular_padding


def _unet(model: LoadedModel, latent: torch.Tensor) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    context = torch.randn(1, 4, int(model.unet.config["cross_attention_dim"]), generator=generator)
    timestep = torch.tensor([500])
    dtype = next(model.unet.parameters()).dtype
    out = model.unet(latent.to(dtype), timestep, encoder_hidden_states=context.to(dtype)).sample
    return out.float()


def _decode(model: LoadedModel, latent: torch.Tensor) -> torch.Tensor:
    return model.vae.decode(latent.to(model.vae_dtype)).sample.float()


def _shift(x: torch.Tensor, cells: int) -> torch.Tensor:
    return torch.roll(x, shifts=(cells, cells), dims=(-2, -1))


def test_tiled_unet_commutes_with_circular_shifts(tiny_model: LoadedModel) -> None:
    # The UNet downsamples by 2 per level; a shift by that many cells survives every level unchanged.
    step = 2 ** (len(tiny_model.unet.config["block_out_channels"]) - 1)
    latent = torch.randn(1, tiny_model.latent_channels, 8 * step, 8 * step, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        with circular_padding((tiny_model.unet, tiny_model.vae)):
            tiled = _unet(tiny_model, latent)
            tiled_shifted = _unet(tiny_model, _shift(latent, step))
        plain = _unet(tiny_model, latent)
        plain_shifted = _unet(tiny_model, _shift(latent, step))
    torch.testing.assert_close(tiled_shifted, _shift(tiled, step), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(plain_shifted, _shift(plain, step), atol=1e-3)


def test_tiled_vae_decoder_commutes_with_circular_shifts(tiny_model: LoadedModel) -> None:
    latent = torch.randn(1, tiny_model.latent_channels, 8, 8, generator=torch.Generator().manual_seed(2))
    factor = tiny_model.vae_scale_factor
    with torch.no_grad():
        with circular_padding((tiny_model.unet, tiny_model.vae)):
            tiled = _decode(tiny_model, latent)
            tiled_shifted = _decode(tiny_model, _shift(latent, 1))
        plain = _decode(tiny_model, latent)
        plain_shifted = _decode(tiny_model, _shift(latent, 1))
    torch.testing.assert_close(tiled_shifted, _shift(tiled, factor), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(plain_shifted, _shift(plain, factor), atol=1e-3)


def test_padding_is_restored_even_when_the_job_fails(tiny_model: LoadedModel) -> None:
    convolutions = [m for m in tiny_model.unet.modules() if isinstance(m, torch.nn.Conv2d)]
    before = [conv.padding_mode for conv in convolutions]
    seen: list[set[str]] = []

    def fail_inside() -> None:
        with circular_padding((tiny_model.unet, tiny_model.vae)):
            seen.append({conv.padding_mode for conv in convolutions})
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_inside()
    assert seen == [{"circular"}]
    assert [conv.padding_mode for conv in convolutions] == before
    with circular_padding((tiny_model.unet,), enabled=False):
        assert [conv.padding_mode for conv in convolutions] == before
