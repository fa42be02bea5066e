"""Single-file checkpoints offline (docs/engine.md "SDXL and single-file checkpoints"): the family read from the
keys, the configs shipped for the published SD 1.x / 2.x / SDXL layer sizes, the offline CLIP tokenizer, and the
tiny models written as single files (LDM / sgm key layout, configs carried in the metadata) loaded back with
HF_HUB_OFFLINE=1 and no `config=`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.engine.conftest import SEED, SIZE, pixels
from tests.ldm_export import export_sgm_single_file, export_single_file
from worker.engine.models import LoadedModel, ModelConfigMissing, ModelError, build_tiny_model, load_model
from worker.engine.models.clip_tokenizer import CLIP_VOCAB_SIZE, build_clip_tokenizer
from worker.engine.models.single_file import BUNDLED_CONFIGS, checkpoint_family
from worker.engine.processing import StableDiffusionProcessingImg2Img, process_images


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))


def _sd2_shaped_folder(tiny_folder: Path, target: Path) -> Path:
    """The tiny SD 1.x model with an OpenCLIP-style (GELU) text encoder: what the loader takes for SD 2.x."""
    shutil.copytree(tiny_folder, target)
    config_file = target / "text_encoder" / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config_file.write_text(json.dumps({**config, "hidden_act": "gelu"}), encoding="utf-8")
    return target


def _assert_same_weights(loaded: LoadedModel, reference: LoadedModel) -> None:
    components = ["unet", "vae", "text_encoder"] + (["text_encoder_2"] if reference.text_encoder_2 is not None else [])
    for component in components:
        got = getattr(loaded, component).state_dict()
        expected = getattr(reference, component).state_dict()
        assert got.keys() == expected.keys(), component
        for key, value in expected.items():
            assert torch.equal(got[key], value), f"{component}.{key}"


def _render(model: LoadedModel, picture: Image.Image) -> np.ndarray:
    p = StableDiffusionProcessingImg2Img(
        sd_model=model,
        prompt="a red cube",
        init_images=[picture],
        width=SIZE,
        height=SIZE,
        steps=3,
        seed=SEED,
    )
    return pixels(process_images(p).images[0])


@pytest.mark.parametrize("name", ["tiny", "tiny-sd2", "tiny-xl", "tiny-xl-inpaint"])
def test_single_file_loads_offline_without_config(
    name: str, tiny_dir: Path, tmp_path: Path, picture: Image.Image
) -> None:
    if name == "tiny-sd2":
        folder = _sd2_shaped_folder(build_tiny_model(tiny_dir / "tiny"), tmp_path / "tiny-sd2")
        family = "sd2"
    else:
        folder = build_tiny_model(
            tiny_dir / name, kind="inpaint" if "inpaint" in name else "img2img", sdxl="xl" in name
        )
        family = "sdxl" if "xl" in name else "sd1"
    checkpoint = export_sgm_single_file(folder, tmp_path / "models" / f"{name}-file.safetensors")

    loaded = load_model(checkpoint, device="cpu", dtype=torch.float32)
    reference = load_model(folder, device="cpu", dtype=torch.float32)

    assert loaded.family == reference.family == family
    assert loaded.kind == reference.kind
    assert loaded.name == f"{name}-file"
    _assert_same_weights(loaded, reference)
    assert np.array_equal(_render(loaded, picture), _render(reference, picture))


def test_sgm_file_has_the_reference_key_layout(tiny_dir: Path, tmp_path: Path) -> None:
    from safetensors import safe_open

    folder = build_tiny_model(tiny_dir / "tiny-xl", sdxl=True)
    checkpoint = export_sgm_single_file(folder, tmp_path / "xl.safetensors")
    with safe_open(str(checkpoint), framework="pt") as handle:
        keys = set(handle.keys())

    assert "conditioner.embedders.1.model.ln_final.weight" in keys
    assert "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight" in keys
    assert "conditioner.embedders.0.transformer.text_model.encoder.layers.0.mlp.fc1.weight" in keys
    assert "model.diffusion_model.label_emb.0.0.weight" in keys
    assert "first_stage_model.decoder.conv_out.weight" in keys
    assert all(k.split(".")[0] in ("model", "conditioner", "first_stage_model") for k in keys)


def test_a_file_without_carried_configs_is_checked_against_the_shipped_ones(tiny_dir: Path, tmp_path: Path) -> None:
    """The tiny model's layer sizes are not SD 1.5's: the shipped configs do not fit, and the error says so."""
    checkpoint = export_single_file(build_tiny_model(tiny_dir / "tiny"), tmp_path / "plain.safetensors")

    with pytest.raises(ModelConfigMissing, match=r"plain\.safetensors.*32 channels.*shipped sd1 configs.*config="):
        load_model(checkpoint, device="cpu")


def test_config_argument_still_wins(tiny_dir: Path, tmp_path: Path) -> None:
    folder = build_tiny_model(tiny_dir / "tiny-xl", sdxl=True)
    checkpoint = export_sgm_single_file(folder, tmp_path / "xl.safetensors", carry_configs=False)

    model = load_model(checkpoint, device="cpu", config=folder)

    assert model.family == "sdxl"
    _assert_same_weights(model, load_model(folder, device="cpu"))


# ----------------------------------------------------------------------------------------------------------------
# The family from the keys; the shipped configs


def _keys(*names: str) -> dict[str, torch.Tensor]:
    return dict.fromkeys(names, torch.zeros(1))


def test_family_is_read_from_the_checkpoint_keys() -> None:
    assert checkpoint_family(_keys("conditioner.embedders.1.model.ln_final.weight"), "x") == "sdxl"
    assert checkpoint_family(_keys("cond_stage_model.model.token_embedding.weight"), "x") == "sd2"
    assert checkpoint_family(_keys("cond_stage_model.transformer.text_model.final_layer_norm.weight"), "x") == "sd1"
    with pytest.raises(ModelError, match="refiner") as refused:
        checkpoint_family(_keys("conditioner.embedders.0.model.ln_final.weight"), "x")
    assert refused.value.code == "model_unsupported"
    with pytest.raises(ModelConfigMissing):
        checkpoint_family(_keys("something.else"), "x")


def test_v_prediction_yaml_beside_an_sd2_file_is_refused(tiny_dir: Path, tmp_path: Path) -> None:
    folder = _sd2_shaped_folder(build_tiny_model(tiny_dir / "tiny"), tmp_path / "tiny-sd2")
    checkpoint = export_sgm_single_file(folder, tmp_path / "v-model.safetensors")
    (tmp_path / "v-model.yaml").write_text('model:\n  params:\n    parameterization: "v"\n', encoding="utf-8")

    with pytest.raises(ModelError, match="v-prediction") as refused:
        load_model(checkpoint, device="cpu")
    assert refused.value.code == "model_unsupported"


# The published models' parameter counts (UNet, VAE, text encoders), which the shipped configs must rebuild exactly.
_PUBLISHED_PARAMETERS = {
    ("sd1", "unet"): 859_520_964,
    ("sd2", "unet"): 865_910_724,
    ("sdxl", "unet"): 2_567_463_684,
    ("sd1", "vae"): 83_653_863,
    ("sdxl", "vae"): 83_653_863,
    ("sd1", "text_encoder"): 123_060_480,  # CLIP ViT-L/14
    ("sd2", "text_encoder"): 340_387_840,  # OpenCLIP ViT-H, 23 of its 24 blocks
    ("sdxl", "text_encoder"): 123_060_480,
    ("sdxl", "text_encoder_2"): 694_659_840,  # OpenCLIP ViT-bigG with its projection
}


@pytest.mark.parametrize(("family", "part"), sorted(_PUBLISHED_PARAMETERS))
def test_shipped_configs_rebuild_the_published_models(family: str, part: str) -> None:
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = json.loads((BUNDLED_CONFIGS / family / part / "config.json").read_text(encoding="utf-8"))
    with torch.device("meta"):
        if part == "unet":
            module: torch.nn.Module = UNet2DConditionModel.from_config(config)
        elif part == "vae":
            module = AutoencoderKL.from_config(config)
        else:
            model_class = CLIPTextModelWithProjection if part == "text_encoder_2" else CLIPTextModel
            module = model_class(CLIPTextConfig(**config))
    assert sum(p.numel() for p in module.parameters()) == _PUBLISHED_PARAMETERS[(family, part)]


def test_shipped_sdxl_vae_config_has_the_sdxl_scale_and_upcast() -> None:
    config = json.loads((BUNDLED_CONFIGS / "sdxl" / "vae" / "config.json").read_text(encoding="utf-8"))
    assert config["scaling_factor"] == 0.13025
    assert config["force_upcast"] is True


def test_offline_clip_tokenizer_has_the_real_vocabulary() -> None:
    sd1 = build_clip_tokenizer("<|endoftext|>")
    open_clip = build_clip_tokenizer("!")

    assert len(sd1.get_vocab()) == CLIP_VOCAB_SIZE
    # Ids every CLIP user knows: BOS 49406, EOS 49407, "a" 320, "photo" 1125, "," 267.
    assert sd1("a photo, a")["input_ids"] == [49406, 320, 1125, 267, 320, 49407]
    assert sd1.pad_token_id == 49407
    assert open_clip.pad_token_id == 0
    padded = open_clip("a", padding="max_length", max_length=5)["input_ids"]
    assert padded == [49406, 320, 49407, 0, 0]


def test_shipped_configs_mechanism_loads_an_sgm_file(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The path a real SDXL file takes, with the tiny model's layer sizes in place of the published ones: a configs
    folder laid out as the shipped ones (config.json files and tokenizer settings only — no model_index.json, no
    vocabulary), chosen by the checkpoint's keys, the tokenizers built from the CLIP merge list."""
    import worker.engine.models.loading as loading

    folder = build_tiny_model(tiny_dir / "tiny-xl", sdxl=True)
    shipped = tmp_path / "configs"
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        (shipped / "sdxl" / part).mkdir(parents=True)
        shutil.copy(folder / part / "config.json", shipped / "sdxl" / part / "config.json")
    (shipped / "sdxl" / "scheduler").mkdir()
    shutil.copy(folder / "scheduler" / "scheduler_config.json", shipped / "sdxl" / "scheduler")
    for part in ("tokenizer", "tokenizer_2"):
        shutil.copytree(BUNDLED_CONFIGS / "sdxl" / part, shipped / "sdxl" / part)
    assert not (BUNDLED_CONFIGS / "sdxl" / "model_index.json").exists()
    monkeypatch.setattr(loading, "BUNDLED_CONFIGS", shipped)
    checkpoint = export_sgm_single_file(folder, tmp_path / "xl.safetensors", carry_configs=False)

    model = load_model(checkpoint, device="cpu", dtype=torch.float32)

    assert model.family == "sdxl"
    _assert_same_weights(model, load_model(folder, device="cpu", dtype=torch.float32))
    assert model.tokenizer_2 is not None
    assert len(model.tokenizer_2.get_vocab()) == CLIP_VOCAB_SIZE
    assert model.tokenizer_2.pad_token_id == 0
    assert model.tokenizer.pad_token_id == 49407
