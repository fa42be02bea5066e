"""Live preview drawing (docs/engine.md "Live previews"): the Approx cheap map, the TAESD decoder and its published
state-dict layout, the fallbacks, the grid and the bounded encoding."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch
from diffusers.models.autoencoders.autoencoder_tiny import AutoencoderTiny
from PIL import Image

from worker.engine.models import LoadedModel
from worker.engine.previews import (
    APPROX_CHEAP_SD,
    APPROX_CHEAP_SDXL,
    TAESD_FILES,
    TAESD_FOLDER,
    PreviewRenderer,
    PreviewSettings,
    TaesdDecoder,
    approx_cheap,
    encode_preview,
    image_grid,
)
from worker.engine.results import decode_latent


def expected_pixel(latent_values: list[float], table: tuple[tuple[float, float, float], ...]) -> tuple[int, ...]:
    """The reference's maths written out: Σ_l z_l·K[l][c], then clamp((x + 1) / 2)·255 truncated."""
    rgb = [sum(z * table[channel][c] for channel, z in enumerate(latent_values)) for c in range(3)]
    return tuple(int(min(max((x + 1.0) / 2.0, 0.0), 1.0) * 255.0) for x in rgb)


def published_decoder_keys() -> set[str]:
    """The key names of madebyollin/taesd's taesd_decoder.pth: a flat Sequential; blocks at 3-5, 8-10, 13-15, 18;
    bias-free convs after the upsamples at 7, 12, 17; the first conv at 1 and the last at 19."""
    keys = {"1.weight", "1.bias", "19.weight", "19.bias", "7.weight", "12.weight", "17.weight"}
    for block in (3, 4, 5, 8, 9, 10, 13, 14, 15, 18):
        for conv in (0, 2, 4):
            keys |= {f"{block}.conv.{conv}.weight", f"{block}.conv.{conv}.bias"}
    return keys


def random_taesd_file(models_dir: Path, family: str = "sd", seed: int = 0) -> Path:
    """A random-weight TAESD decoder saved where the reference keeps the real one."""
    torch.manual_seed(seed)
    path = models_dir / TAESD_FOLDER / TAESD_FILES[family]  # type: ignore[index]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(TaesdDecoder().state_dict(), path)
    return path


@pytest.mark.parametrize(("family", "table"), [("sd", APPROX_CHEAP_SD), ("sdxl", APPROX_CHEAP_SDXL)])
def test_approx_cheap_is_the_references_linear_map(family: str, table: tuple[tuple[float, float, float], ...]) -> None:
    # Two pixels with different latents in a 1×2 latent picture.
    left, right = [0.5, -1.0, 0.25, 2.0], [-2.0, 1.5, 0.75, -0.5]
    latent = torch.tensor([left, right]).T.reshape(1, 4, 1, 2)
    rgb = approx_cheap(latent, family)  # type: ignore[arg-type]
    assert rgb.shape == (1, 3, 1, 2)
    for x, values in enumerate((left, right)):
        by_hand = [sum(z * table[channel][c] for channel, z in enumerate(values)) for c in range(3)]
        assert rgb[0, :, 0, x].tolist() == pytest.approx(by_hand, abs=1e-6)


def test_approx_cheap_preview_pixels_and_size() -> None:
    values = [0.8, -0.3, 0.4, -1.1]
    latent = torch.tensor(values).reshape(1, 4, 1, 1).expand(1, 4, 3, 5).contiguous()
    renderer = PreviewRenderer(PreviewSettings(method="Approx cheap"))
    image = renderer.render(latent)
    assert image.size == (5, 3)  # H/8 × W/8: one pixel per latent cell
    assert image.getpixel((2, 1)) == expected_pixel(values, APPROX_CHEAP_SD)
    assert renderer.method_used == "Approx cheap"
    assert renderer.notes == []


def test_taesd_state_dict_has_the_published_key_layout() -> None:
    state = TaesdDecoder().state_dict()
    assert set(state) == published_decoder_keys()
    assert state["1.weight"].shape == (64, 4, 3, 3)
    assert state["19.weight"].shape == (3, 64, 3, 3)


def test_taesd_matches_diffusers_autoencoder_tiny_with_the_same_weights() -> None:
    # diffusers' AutoencoderTiny is the same network (its soft clamp sits outside `layers`, so its indices are one
    # lower); with the same weights both must draw the same picture. Ours is [0, 1], diffusers' [-1, 1].
    torch.manual_seed(3)
    tiny = AutoencoderTiny()  # no dropout or normalisation: train and eval mode compute the same
    ours = TaesdDecoder().eval()
    prefix = "decoder.layers."
    state = {
        f"{int(key[len(prefix) :].split('.', 1)[0]) + 1}.{key[len(prefix) :].split('.', 1)[1]}": value
        for key, value in tiny.state_dict().items()
        if key.startswith(prefix)
    }
    ours.load_state_dict(state)  # strict: every key of the published layout is there
    latent = torch.randn(1, 4, 4, 6) * 2
    with torch.no_grad():
        theirs = tiny.decode(latent).sample
        mine = ours(latent) * 2 - 1
    assert mine.shape == (1, 3, 32, 48)
    torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4)


def test_taesd_weights_load_from_the_models_folder_and_draw_full_size(tmp_path: Path) -> None:
    random_taesd_file(tmp_path)
    renderer = PreviewRenderer(PreviewSettings(method="TAESD", grid=False), models_dir=tmp_path)
    image = renderer.render(torch.randn(2, 4, 3, 5))
    assert image.size == (40, 24)  # H × W, first picture only (grid off)
    assert renderer.method_used == "TAESD"
    assert renderer.notes == []


def test_a_wrong_taesd_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / TAESD_FOLDER / TAESD_FILES["sd"]
    path.parent.mkdir(parents=True)
    torch.save({"1.weight": torch.zeros(64, 4, 3, 3)}, path)
    with pytest.raises(RuntimeError, match="Missing key"):
        PreviewRenderer(PreviewSettings(method="TAESD"), models_dir=tmp_path).render(torch.zeros(1, 4, 2, 2))


def test_approx_nn_is_drawn_with_taesd_and_says_so(tmp_path: Path) -> None:
    random_taesd_file(tmp_path)
    renderer = PreviewRenderer(PreviewSettings(method="Approx NN"), models_dir=tmp_path)
    assert renderer.render(torch.zeros(1, 4, 2, 2)).size == (16, 16)
    assert renderer.method_used == "TAESD"
    assert [note.code for note in renderer.notes] == ["preview_method_substituted"]


def test_without_taesd_weights_previews_fall_back_to_approx_cheap(tmp_path: Path) -> None:
    renderer = PreviewRenderer(PreviewSettings(method="Approx NN"), models_dir=tmp_path)
    assert renderer.render(torch.zeros(1, 4, 2, 3)).size == (3, 2)
    assert renderer.method_used == "Approx cheap"
    assert [note.code for note in renderer.notes] == ["preview_method_substituted", "preview_decoder_missing"]
    assert str(tmp_path / TAESD_FOLDER / "taesd_decoder.pth") in renderer.notes[1].message


def test_full_without_a_model_falls_back_with_a_note() -> None:
    renderer = PreviewRenderer(PreviewSettings(method="Full"))
    renderer.render(torch.zeros(1, 4, 2, 2))
    assert renderer.method_used == "Approx cheap"
    assert [note.code for note in renderer.notes] == ["preview_method_substituted"]


def test_a_batch_is_drawn_as_a_grid_of_round_sqrt_rows_on_white() -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    images = [Image.new("RGB", (4, 2), colour) for colour in colours]
    grid = image_grid(images)
    rows = round(math.sqrt(3))
    assert grid.size == (4 * math.ceil(3 / rows), 2 * rows)  # 2 columns, 2 rows
    assert [grid.getpixel((1, 1)), grid.getpixel((5, 1)), grid.getpixel((1, 3))] == colours
    assert grid.getpixel((5, 3)) == (255, 255, 255)


def test_encoding_is_png_when_small_and_bounded_when_not() -> None:
    small = encode_preview(Image.new("RGB", (8, 8), (10, 20, 30)))
    assert small.mime == "image/png"
    assert Image.open(io.BytesIO(small.data)).getpixel((0, 0)) == (10, 20, 30)

    noise = Image.frombytes("RGB", (1024, 768), torch.randint(0, 256, (1024 * 768 * 3,), dtype=torch.uint8).numpy())
    big = encode_preview(noise, max_bytes=64 * 1024)
    assert big.mime == "image/jpeg"
    assert len(big.data) <= 64 * 1024
    assert max(big.width, big.height) <= 512
    assert big.width / big.height == pytest.approx(1024 / 768, rel=0.02)
    assert Image.open(io.BytesIO(big.data)).size == (big.width, big.height)


def test_full_previews_are_the_models_own_vae_decode(tiny_model: LoadedModel) -> None:
    latent = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    renderer = PreviewRenderer(PreviewSettings(method="Full", grid=False), model=tiny_model)
    image = renderer.render(latent)
    assert renderer.method_used == "Full"
    assert renderer.notes == []
    expected = decode_latent(tiny_model, latent[:1])
    assert image.size == expected.size == (4 * tiny_model.vae_scale_factor, 4 * tiny_model.vae_scale_factor)
    assert image.tobytes() == expected.tobytes()
