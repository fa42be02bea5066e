"""SDXL in the engine (docs/engine.md "SDXL and single-file checkpoints"): the two text encoders, the pooled vector,
the empty negative prompt, the size conditioning, CLIP skip, SDXL inpainting, the fp32 VAE and the NaN check — with
the tiny SDXL models `tiny-xl` and `tiny-xl-inpaint` (real diffusers modules, random weights)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from shared.embeddings.widths import TINY_TEXT_WIDTH
from tests.engine.conftest import SEED, SIZE, STEPS, make_mask, pixels
from worker.engine.conditioning.encoder import PromptEncoder
from worker.engine.conditioning.sdxl import SdxlPromptEncoder, sdxl_prompt_encoder
from worker.engine.embeddings import EmbeddingDatabase
from worker.engine.embeddings.database import model_tokenize, model_width
from worker.engine.models import TINY_MODEL_NAMES, LoadedModel, VaeNaN, load_model
from worker.engine.processing import Processed, StableDiffusionProcessingImg2Img, process_images


@pytest.fixture(scope="module")
def xl(tiny_dir: Path) -> LoadedModel:
    return load_model("tiny-xl", tiny_dir=tiny_dir, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def xl_inpaint(tiny_dir: Path) -> LoadedModel:
    return load_model("tiny-xl-inpaint", tiny_dir=tiny_dir, device="cpu", dtype=torch.float32)


def _render(
    model: LoadedModel, picture: Image.Image, **fields: Any
) -> tuple[StableDiffusionProcessingImg2Img, Processed]:
    values: dict[str, Any] = {
        "sd_model": model,
        "prompt": "a red cube on a table",
        "init_images": [picture],
        "width": SIZE,
        "height": SIZE,
        "steps": STEPS,
        "seed": SEED,
    }
    values.update(fields)
    p = StableDiffusionProcessingImg2Img(**values)
    return p, process_images(p)


class _UnetCalls:
    """Records the keyword arguments of every UNet call (a forward pre-hook, removed on exit)."""

    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        self.calls: list[dict[str, Any]] = []

    def __enter__(self) -> _UnetCalls:
        def record(module: torch.nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
            del module, args
            self.calls.append(kwargs)

        self._handle = self.model.unet.register_forward_pre_hook(record, with_kwargs=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()


def _diffusers_pipeline(model: LoadedModel) -> Any:
    from diffusers import StableDiffusionXLImg2ImgPipeline
    from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteScheduler

    return StableDiffusionXLImg2ImgPipeline(
        vae=model.vae,
        text_encoder=model.text_encoder,
        text_encoder_2=model.text_encoder_2,
        tokenizer=model.tokenizer,
        tokenizer_2=model.tokenizer_2,
        unet=model.unet,
        scheduler=EulerDiscreteScheduler(),
        requires_aesthetics_score=False,
    )


# ----------------------------------------------------------------------------------------------------------------
# The models


def test_tiny_xl_models_are_sdxl_shaped(xl: LoadedModel, xl_inpaint: LoadedModel) -> None:
    assert {"tiny-xl", "tiny-xl-inpaint"} <= set(TINY_MODEL_NAMES)
    for model, kind, channels in ((xl, "img2img", 4), (xl_inpaint, "inpaint", 9)):
        assert model.family == "sdxl"
        assert model.kind == kind
        assert model.in_channels == channels
        assert model.text_encoder_2 is not None
        assert model.tokenizer_2 is not None
        assert model.unet.config["addition_embed_type"] == "text_time"
        assert model.latent_scale_factor == pytest.approx(0.13025)
        # OpenCLIP bigG pads with "!" (id 0); CLIP-L with EOS.
        assert model.tokenizer_2.pad_token_id == 0
        assert model.tokenizer.pad_token_id == model.tokenizer.eos_token_id


# ----------------------------------------------------------------------------------------------------------------
# Conditioning


def test_conditioning_equals_diffusers_sdxl_encode_prompt(xl: LoadedModel) -> None:
    """Short prompts with no emphasis: the context is [CLIP-L penultimate ‖ bigG penultimate] and the pooled vector
    bigG's projected output, exactly what diffusers' SDXL pipeline computes (its defaults equal the reference's)."""
    encoder = sdxl_prompt_encoder(xl)
    context, pooled = encoder.encode_pooled(["a red cube", "a blue sphere"])
    expected = _diffusers_pipeline(xl).encode_prompt(
        ["a red cube", "a blue sphere"], device=torch.device("cpu"), do_classifier_free_guidance=False
    )
    assert context.shape == (2, 77, 32 + 64)
    assert pooled is not None
    assert pooled.shape == (2, 48)
    torch.testing.assert_close(context, expected[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(pooled, expected[2], rtol=0, atol=1e-6)


def test_pooled_vector_comes_from_the_first_chunk(xl: LoadedModel) -> None:
    encoder = sdxl_prompt_encoder(xl)
    long_prompt = "abcdefg " * 30  # 210 byte-level tokens (no merges in the tiny vocabulary): three chunks
    context, pooled = encoder.encode_pooled([long_prompt])
    assert context.shape == (1, 77 * 3, 96)
    # BOS + the first 75 tokens + EOS, padded with "!": the first chunk, as diffusers' truncating tokenizer makes it.
    first_chunk = _diffusers_pipeline(xl).encode_prompt(
        long_prompt, device=torch.device("cpu"), do_classifier_free_guidance=False
    )
    assert pooled is not None
    torch.testing.assert_close(pooled, first_chunk[2], rtol=0, atol=1e-6)
    torch.testing.assert_close(context[:, :77], first_chunk[0], rtol=0, atol=1e-6)


def test_each_encoder_takes_its_share_of_an_sdxl_embedding(xl: LoadedModel, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(3)
    clip_l, clip_g = torch.randn(2, 32, generator=generator), torch.randn(2, 64, generator=generator)
    folder = tmp_path / "embeddings"
    folder.mkdir()
    save_file({"clip_l": clip_l, "clip_g": clip_g}, str(folder / "xa.safetensors"))
    save_file({"clip_l": clip_l * 3, "clip_g": clip_g}, str(folder / "xb.safetensors"))  # only clip_l differs
    save_file({"clip_l": clip_l, "clip_g": clip_g * 3}, str(folder / "xc.safetensors"))  # only clip_g differs
    database = EmbeddingDatabase(folder, tokenize=model_tokenize(xl), width=model_width(xl))
    assert model_width(xl) == 96
    encoder = sdxl_prompt_encoder(xl, embeddings=database)

    a, b, c = (encoder.encode([f"photo of {name}"])[0] for name in ("xa", "xb", "xc"))

    assert set(encoder.used_embeddings) == {"xa", "xb", "xc"}
    # The scheduler's torch-free widths agree with the loaded model's.
    assert TINY_TEXT_WIDTH["tiny-xl"] == TINY_TEXT_WIDTH["tiny-xl-inpaint"] == model_width(xl)
    assert not torch.equal(a[:, :32], b[:, :32])
    assert torch.equal(a[:, 32:], b[:, 32:])
    assert torch.equal(a[:, :32], c[:, :32])
    assert not torch.equal(a[:, 32:], c[:, 32:])


def test_empty_negative_prompt_is_zeros_but_a_space_is_not(xl: LoadedModel, picture: Image.Image) -> None:
    contexts = {}
    for negative in ("", " "):
        with _UnetCalls(xl) as unet:
            _render(xl, picture, negative_prompt=negative, steps=2)
        call = unet.calls[0]
        # One UNet batch: the cond row, then the uncond row.
        contexts[negative] = call["encoder_hidden_states"][1], call["added_cond_kwargs"]["text_embeds"][1]
        assert call["encoder_hidden_states"][0].abs().sum() > 0
    empty_context, empty_pooled = contexts[""]
    space_context, space_pooled = contexts[" "]
    assert not empty_context.any()
    assert not empty_pooled.any()
    assert space_context.abs().sum() > 0
    assert space_pooled.abs().sum() > 0


def test_a_scheduled_negative_prompt_with_text_is_not_zeroed(xl: LoadedModel) -> None:
    """Only a negative whose every scheduled text is "" is zeroed: `[:blurry:2]` is "" for two steps, not after."""
    p = StableDiffusionProcessingImg2Img(sd_model=xl, prompt="a cube", negative_prompt="[:blurry:2]", steps=4)
    _cond, uncond = p.setup_conds(["a cube"], ["[:blurry:2]"])
    first, last = uncond.images[0][0], uncond.images[0][-1]
    assert first.cond.abs().sum() > 0
    assert last.cond.abs().sum() > 0
    assert first.pooled is not None
    assert first.pooled.abs().sum() > 0


def test_time_ids_are_the_processing_size_and_the_crop_options(xl: LoadedModel, picture: Image.Image) -> None:
    with _UnetCalls(xl) as unet:
        _render(xl, picture, width=64, height=48, steps=2)
    time_ids = unet.calls[0]["added_cond_kwargs"]["time_ids"]
    assert time_ids.tolist() == [[48.0, 64.0, 0.0, 0.0, 48.0, 64.0]] * 2

    with _UnetCalls(xl) as unet:
        _render(xl, picture, steps=2, override_settings={"sdxl_crop_top": 8, "sdxl_crop_left": 16})
    assert unet.calls[0]["added_cond_kwargs"]["time_ids"][0].tolist() == [64.0, 64.0, 8.0, 16.0, 64.0, 64.0]


def test_clip_skip_is_ignored_on_sdxl_with_a_warning(xl: LoadedModel, picture: Image.Image) -> None:
    _p, plain = _render(xl, picture)
    _p, skipped = _render(xl, picture, override_settings={"CLIP_stop_at_last_layers": 2})

    assert [w.code for w in skipped.warnings] == ["clip_skip_ignored"]
    assert "SDXL" in skipped.warnings[0].message
    assert np.array_equal(pixels(skipped.images[0]), pixels(plain.images[0]))
    assert "Clip skip: 2" in skipped.infotexts[0]
    assert plain.warnings == []


def test_prompt_editing_and_and_reach_both_encoders(xl: LoadedModel, picture: Image.Image) -> None:
    _p, plain = _render(xl, picture, prompt="a red cube")
    _p, edited = _render(xl, picture, prompt="a [red:blue:3] cube")
    _p, composed = _render(xl, picture, prompt="a red cube AND a cat")

    assert not np.array_equal(pixels(edited.images[0]), pixels(plain.images[0]))
    assert not np.array_equal(pixels(composed.images[0]), pixels(plain.images[0]))


def test_sdxl_encoder_types(xl: LoadedModel) -> None:
    p = StableDiffusionProcessingImg2Img(sd_model=xl, prompt="a cube")
    p.setup_conds(["a cube"], [""])
    assert isinstance(p.prompt_encoder, SdxlPromptEncoder)
    assert isinstance(p.prompt_encoder.clip_l, PromptEncoder)


# ----------------------------------------------------------------------------------------------------------------
# Renders


def test_tiny_xl_renders_and_is_reproducible(xl: LoadedModel, picture: Image.Image) -> None:
    _p, first = _render(xl, picture, negative_prompt="blurry")
    _p, second = _render(xl, picture, negative_prompt="blurry")

    assert first.images[0].size == (SIZE, SIZE)
    assert np.array_equal(pixels(first.images[0]), pixels(second.images[0]))
    assert pixels(first.images[0]).std() > 1  # a picture, not a flat fill
    assert "Model: tiny-xl," in first.infotexts[0]


def test_tiny_xl_inpaint_uses_the_rounded_mask_and_masked_latent(xl_inpaint: LoadedModel, picture: Image.Image) -> None:
    with _UnetCalls(xl_inpaint) as unet:
        p, processed = _render(xl_inpaint, picture, mask=make_mask(), mask_round=False, mask_blur=4, steps=2)

    sample = unet.calls[0]
    assert p.image_conditioning is not None
    mask_channel = p.image_conditioning[:, 0]
    # The pixel stage's mask is soft (blurred, not rounded); SDXL inpainting rounds it all the same.
    assert set(mask_channel.unique().tolist()) == {0.0, 1.0}
    assert p.image_conditioning.shape[1] == 5
    assert "Conditional mask weight: 1" in processed.infotexts[0]
    assert sample["added_cond_kwargs"]["text_embeds"].shape[-1] == 48
    # Outside the mask the picture is the original's (overlay paste-back).
    assert np.array_equal(pixels(processed.images[0])[:8, :8], pixels(picture)[:8, :8])


# ----------------------------------------------------------------------------------------------------------------
# VAE precision (proposal P13)


@pytest.fixture
def xl_bf16(tiny_dir: Path) -> LoadedModel:
    return load_model("tiny-xl", tiny_dir=tiny_dir, device="cpu", dtype=torch.bfloat16)


def test_sdxl_vae_runs_in_fp32_when_the_model_is_bf16(
    xl_bf16: LoadedModel, tiny_dir: Path, picture: Image.Image
) -> None:
    seen: list[torch.dtype] = []
    handle = xl_bf16.vae.decoder.register_forward_pre_hook(lambda _m, args: seen.append(args[0].dtype))
    encoder_handle = xl_bf16.vae.encoder.register_forward_pre_hook(lambda _m, args: seen.append(args[0].dtype))
    try:
        _p, processed = _render(xl_bf16, picture, steps=2)
    finally:
        handle.remove()
        encoder_handle.remove()

    assert xl_bf16.unet.dtype == torch.bfloat16
    assert xl_bf16.vae_dtype == torch.float32
    assert seen
    assert set(seen) == {torch.float32}
    assert processed.images[0].size == (SIZE, SIZE)
    # The SD 1.x tiny model's VAE stays in the model's dtype (only SDXL's force_upcast VAE is upcast).
    sd1 = load_model("tiny", tiny_dir=tiny_dir, device="cpu", dtype=torch.bfloat16)
    assert sd1.vae_dtype == torch.bfloat16


def test_nan_anywhere_in_the_decoded_picture_fails_the_job(xl_bf16: LoadedModel, picture: Image.Image) -> None:
    with torch.no_grad():
        bias = xl_bf16.vae.decoder.conv_out.bias
        assert bias is not None
        bias[2] = float("nan")  # only the blue channel: the first element of the output stays finite

    with pytest.raises(VaeNaN, match="NaN") as raised:
        _render(xl_bf16, picture, steps=2)
    assert raised.value.code == "vae_nan"
