"""worker/engine/models/ and worker/model_cache.py: the tiny offline models, loading from folders, checkpoint files
and names, and the cache."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
import torch

from shared.errors import InputError
from tests.ldm_export import export_single_file
from worker.deps import WorkerDeps, WorkerStats
from worker.engine.models import (
    KIND_IN_CHANNELS,
    SD1_SCHEDULER_CONFIG,
    TINY_MARKER,
    LoadedModel,
    ModelConfigMissing,
    ModelError,
    ModelKind,
    ModelNotFound,
    build_tiny_model,
    load_model,
    pick_device,
    pick_dtype,
)
from worker.model_cache import ModelCache, default_models_dir
from worker.status import JobStatus, status_provider

KINDS: tuple[ModelKind, ...] = ("img2img", "inpaint", "edit")


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[ModelKind, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {kind: build_tiny_model(root / kind, kind=kind) for kind in KINDS}


@pytest.fixture(scope="module")
def tiny(tiny_folders: dict[ModelKind, Path]) -> LoadedModel:
    return load_model(tiny_folders["img2img"], device="cpu")


def _empty_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    # huggingface_hub reads its cache location at import time; its functions look this attribute up per call.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))


def _weights(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.safetensors"))}


# ----------------------------------------------------------------------------------------------------------------
# Building


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_builds_as_a_diffusers_folder_and_loads_back(
    tiny_folders: dict[ModelKind, Path], kind: ModelKind
) -> None:
    folder = tiny_folders[kind]
    index = json.loads((folder / "model_index.json").read_text())
    expected_class = {
        "img2img": "StableDiffusionPipeline",
        "inpaint": "StableDiffusionInpaintPipeline",
        "edit": "StableDiffusionInstructPix2PixPipeline",
    }[kind]
    assert index["_class_name"] == expected_class
    assert index["safety_checker"] == [None, None]

    model = load_model(folder, device="cpu")

    assert model.kind == kind
    assert model.in_channels == KIND_IN_CHANNELS[kind]
    assert model.device == torch.device("cpu")
    assert model.dtype == torch.float32
    assert model.vae_scale_factor == 8
    assert model.latent_scale_factor == pytest.approx(0.18215)
    assert model.name == folder.name
    unet_file = folder / "unet" / "diffusion_pytorch_model.safetensors"
    assert model.model_hash == hashlib.sha256(unet_file.read_bytes()).hexdigest()[:10]
    assert model.infotext_fields() == {"Model hash": model.model_hash, "Model": folder.name}
    parameter_bytes = sum(
        p.numel() * p.element_size() for m in (model.unet, model.vae, model.text_encoder) for p in m.parameters()
    )
    assert parameter_bytes <= model.memory_bytes < 20_000_000  # tiny: a few MB
    assert not model.unet.training
    assert not any(p.requires_grad for p in model.unet.parameters())


def test_builds_with_the_same_seed_are_byte_identical(tmp_path: Path) -> None:
    first = build_tiny_model(tmp_path / "a", seed=7)
    second = build_tiny_model(tmp_path / "b", seed=7)
    other_seed = build_tiny_model(tmp_path / "c", seed=8)

    assert len(_weights(first)) == 3  # unet, vae, text_encoder
    assert _weights(first) == _weights(second)
    assert _weights(first) != _weights(other_seed)


def test_build_is_idempotent_and_replaces_another_kind(tmp_path: Path) -> None:
    folder = build_tiny_model(tmp_path / "m")
    marker = folder / TINY_MARKER
    written = marker.stat().st_mtime_ns

    assert build_tiny_model(folder) == folder
    assert marker.stat().st_mtime_ns == written  # not rebuilt

    build_tiny_model(folder, kind="inpaint")
    assert json.loads(marker.read_text())["kind"] == "inpaint"
    assert json.loads((folder / "unet" / "config.json").read_text())["in_channels"] == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no staging folders left behind


def test_build_refuses_to_overwrite_a_folder_it_did_not_build(tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")

    with pytest.raises(ModelError, match="refusing to overwrite"):
        build_tiny_model(foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_scheduler_config_has_sd1_sigma_range(tiny: LoadedModel) -> None:
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    config = tiny.scheduler_config
    for key, value in SD1_SCHEDULER_CONFIG.items():
        assert config[key] == value
    scheduler = EulerDiscreteScheduler.from_config(config)
    sigmas = ((1 - scheduler.alphas_cumprod) / scheduler.alphas_cumprod) ** 0.5
    assert float(sigmas[0]) == pytest.approx(0.0292, abs=1e-4)
    assert float(sigmas[-1]) == pytest.approx(14.6146, abs=1e-3)
    assert DDIMScheduler.from_config(config).config.clip_sample is False


def test_sd15_shaped_architecture_has_sd15_parameter_counts() -> None:
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from transformers import CLIPTextModel

    from worker.engine.models.tiny import _SD15, _text_config, _unet_config

    # On the meta device: the shapes without allocating 4 GB.
    with torch.device("meta"):
        unet = UNet2DConditionModel(**_unet_config(_SD15, "img2img"))
        vae = AutoencoderKL(**_SD15.vae)
        text_encoder = CLIPTextModel(_text_config(_SD15))

    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    # The published sizes of runwayml/stable-diffusion-v1-5.
    assert count(unet) == 859_520_964
    assert count(vae) == 83_653_863
    assert count(text_encoder) == 123_060_480


# ----------------------------------------------------------------------------------------------------------------
# Text


def test_any_prompt_tokenizes_to_77_tokens(tiny: LoadedModel) -> None:
    prompts = ["a cat", "ünïcödé 猫 🐱 — “quotes”\ttabs\nnewlines", "", "word " * 200]
    ids = tiny.tokenize(prompts)
    bos, eos = tiny.tokenizer.bos_token_id, tiny.tokenizer.eos_token_id

    assert ids.shape == (4, 77)
    assert ids.dtype == torch.long
    assert (ids[:, 0] == bos).all()
    for row in ids:
        end = int((row == eos).nonzero()[0])
        assert (row[1:end] < bos).all()  # every character became byte tokens, nothing unknown
    assert int((ids[1] == eos).nonzero()[0]) > 20  # multi-byte characters: several tokens each
    assert int((ids[2] == eos).nonzero()[0]) == 1  # empty prompt: BOS, EOS, padding
    assert ids[3, -1] == eos  # a long prompt is truncated, still closed by EOS
    assert tiny.text_encoder.config.bos_token_id == bos
    assert tiny.text_encoder.config.eos_token_id == eos


def test_encode_prompt_shape_and_clip_skip(tiny: LoadedModel) -> None:
    last = tiny.encode_prompt(["a cat", "a dog"])
    skipped = tiny.encode_prompt(["a cat", "a dog"], clip_skip=2)

    assert last.shape == (2, 77, 32)
    assert last.dtype == torch.float32
    assert torch.isfinite(last).all()
    assert not torch.equal(last, skipped)
    # clip_skip as A1111: the hidden state n layers from the end, through the final layer norm.
    with torch.no_grad():
        outputs = tiny.text_encoder(input_ids=tiny.tokenize(["a cat", "a dog"]), output_hidden_states=True)
        expected = tiny.text_encoder.final_layer_norm(outputs.hidden_states[-2])
    torch.testing.assert_close(skipped, expected)


@pytest.mark.parametrize("clip_skip", [0, 6])
def test_clip_skip_out_of_range_is_an_input_error(tiny: LoadedModel, clip_skip: int) -> None:
    with pytest.raises(InputError, match="between 1 and 5") as caught:
        tiny.encode_prompt(["a cat"], clip_skip=clip_skip)
    assert caught.value.field == "clip_skip"


# ----------------------------------------------------------------------------------------------------------------
# VAE


def test_vae_round_trip_shapes_with_the_8x_factor(tiny: LoadedModel) -> None:
    torch.manual_seed(0)
    images = torch.rand(2, 3, 64, 48) * 2 - 1

    latents = tiny.vae_encode(images, generator=torch.Generator().manual_seed(1))
    decoded = tiny.vae_decode(latents)

    assert latents.shape == (2, 4, 8, 6)
    assert decoded.shape == (2, 3, 64, 48)
    assert torch.isfinite(latents).all()
    assert torch.isfinite(decoded).all()
    again = tiny.vae_encode(images, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(latents, again)  # the posterior sample follows the generator


def test_vae_mode_has_no_scale_factor(tiny: LoadedModel) -> None:
    images = torch.zeros(1, 3, 32, 32)

    mean_scaled = tiny.vae_encode(images, sample=False)
    mode = tiny.vae_encode_mode(images)

    torch.testing.assert_close(mean_scaled, mode * 0.18215)


@pytest.mark.parametrize("kind", KINDS)
def test_random_vae_gives_finite_values(tiny_folders: dict[ModelKind, Path], kind: ModelKind) -> None:
    model = load_model(tiny_folders[kind], device="cpu")
    torch.manual_seed(0)
    latents = model.vae_encode(torch.rand(1, 3, 64, 64) * 2 - 1)
    assert torch.isfinite(latents).all()
    assert torch.isfinite(model.vae_decode(torch.randn(1, 4, 8, 8))).all()


# ----------------------------------------------------------------------------------------------------------------
# Single-file checkpoints and names


def test_single_file_checkpoint_loads_with_a_local_config(tmp_path: Path, tiny_folders: dict[ModelKind, Path]) -> None:
    checkpoint = export_single_file(tiny_folders["inpaint"], tmp_path / "models" / "my-inpaint.safetensors")

    # The config folder is an img2img model of the same architecture: the checkpoint decides the UNet's channels.
    model = load_model(checkpoint, device="cpu", config=tiny_folders["img2img"])
    reference = load_model(tiny_folders["inpaint"], device="cpu")

    assert model.kind == "inpaint"
    assert model.name == "my-inpaint"
    assert model.model_hash == hashlib.sha256(checkpoint.read_bytes()).hexdigest()[:10]
    for component in ("unet", "vae", "text_encoder"):
        loaded = getattr(model, component).state_dict()
        expected = getattr(reference, component).state_dict()
        assert loaded.keys() == expected.keys()
        for key, value in expected.items():
            assert torch.equal(loaded[key], value), f"{component}.{key}"


def test_single_file_name_is_found_in_the_models_folder(tmp_path: Path, tiny_folders: dict[ModelKind, Path]) -> None:
    export_single_file(tiny_folders["edit"], tmp_path / "models" / "pix2pix.safetensors")

    model = load_model("pix2pix", device="cpu", models_dir=tmp_path / "models", config=tiny_folders["img2img"])

    assert model.kind == "edit"
    assert model.name == "pix2pix"


def test_single_file_without_config_offline_is_a_clear_error(
    tmp_path: Path, tiny_folders: dict[ModelKind, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = export_single_file(tiny_folders["img2img"], tmp_path / "model.safetensors")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _empty_hub_cache(tmp_path, monkeypatch)

    with pytest.raises(ModelConfigMissing, match=r"model\.safetensors.*config="):
        load_model(checkpoint, device="cpu")


def test_tiny_names_build_into_the_tiny_folder(tmp_path: Path) -> None:
    model = load_model("tiny-edit", device="cpu", tiny_dir=tmp_path)

    assert model.kind == "edit"
    assert model.name == "tiny-edit"
    assert (tmp_path / "tiny-edit" / TINY_MARKER).is_file()


def test_default_models_dir_follows_the_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RENDERFARM_DATA_DIR", str(tmp_path))
    assert default_models_dir() == tmp_path / "models"


def test_unknown_model_name_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match=r"unknown model 'no-such-model'.*tiny") as caught:
        load_model("no-such-model", device="cpu", models_dir=tmp_path)
    assert caught.value.code == "model_not_found"


def test_hub_id_offline_and_not_cached_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _empty_hub_cache(tmp_path, monkeypatch)

    with pytest.raises(ModelNotFound, match=r"someone/some-model.*HF_HUB_OFFLINE"):
        load_model("someone/some-model", device="cpu")


def test_a_file_that_is_no_checkpoint_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelError, match="not a checkpoint file"):
        load_model(tmp_path / "notes.txt", device="cpu")


# ----------------------------------------------------------------------------------------------------------------
# Devices


def test_pick_dtype() -> None:
    assert pick_dtype("cpu") == torch.float32
    assert pick_dtype("cuda") == torch.float16
    assert pick_dtype("mps") == torch.float16
    assert pick_dtype("cpu", "bf16") == torch.bfloat16
    assert pick_dtype("cuda", "fp32") == torch.float32
    with pytest.raises(ValueError, match="fp16 is not supported on the CPU"):
        pick_dtype("cpu", "fp16")


def test_pick_device() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else None
    if expected is None and not torch.backends.mps.is_available():
        assert pick_device() == torch.device("cpu")


# ----------------------------------------------------------------------------------------------------------------
# The cache


class _CountingLoader:
    """Loads the tiny models by kind name and counts the loads."""

    def __init__(self, folders: dict[ModelKind, Path]) -> None:
        self.folders = folders
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, name: str) -> LoadedModel:
        with self.lock:
            self.calls.append(name)
        return load_model(self.folders[name], device="cpu")  # type: ignore[index]


def test_model_cache_evicts_least_recently_used_by_memory(tiny_folders: dict[ModelKind, Path]) -> None:
    loader = _CountingLoader(tiny_folders)
    size = load_model(tiny_folders["inpaint"], device="cpu").memory_bytes
    cache = ModelCache(max_bytes=int(size * 2.5), loader=loader)  # room for two tiny models

    first = cache.get("img2img")
    cache.get("inpaint")
    assert cache.get("img2img") is first  # a hit, and now the most recently used
    cache.get("edit")  # evicts inpaint, the least recently used

    assert cache.names() == ["img2img", "edit"]
    assert loader.calls == ["img2img", "inpaint", "edit"]
    assert cache.total_bytes <= cache.max_bytes
    cache.get("inpaint")
    assert loader.calls[-1] == "inpaint"
    assert "img2img" not in cache


def test_model_cache_keeps_a_model_larger_than_the_budget_alone(tiny_folders: dict[ModelKind, Path]) -> None:
    cache = ModelCache(max_bytes=1, loader=_CountingLoader(tiny_folders))

    cache.get("img2img")
    model = cache.get("edit")

    assert cache.names() == ["edit"]
    assert model.kind == "edit"


def test_model_cache_loads_once_under_concurrent_gets(tiny_folders: dict[ModelKind, Path]) -> None:
    loader = _CountingLoader(tiny_folders)
    cache = ModelCache(max_bytes=1 << 30, loader=loader)
    results: list[LoadedModel] = []

    threads = [threading.Thread(target=lambda: results.append(cache.get("img2img"))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert loader.calls == ["img2img"]
    assert len({id(model) for model in results}) == 1


def test_model_cache_failed_load_caches_nothing(tmp_path: Path) -> None:
    cache = ModelCache(max_bytes=1 << 30, loader=lambda name: load_model(name, device="cpu", models_dir=tmp_path))

    with pytest.raises(ModelNotFound):
        cache.get("missing")
    assert len(cache) == 0


# ----------------------------------------------------------------------------------------------------------------
# The folder is a real diffusers model


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "pipeline_name"),
    [
        ("img2img", "StableDiffusionImg2ImgPipeline"),
        ("inpaint", "StableDiffusionInpaintPipeline"),
        ("edit", "StableDiffusionInstructPix2PixPipeline"),
    ],
)
def test_diffusers_pipelines_run_on_the_tiny_folders(
    tiny_folders: dict[ModelKind, Path], kind: ModelKind, pipeline_name: str
) -> None:
    import diffusers
    from PIL import Image

    pipeline = getattr(diffusers, pipeline_name).from_pretrained(tiny_folders[kind])
    pipeline.set_progress_bar_config(disable=True)
    image = Image.new("RGB", (64, 64), (200, 80, 40))
    extras: dict[str, dict[str, object]] = {
        "img2img": {"strength": 1.0},
        # The inpainting pipeline sizes its output from the UNet's sample_size unless told.
        "inpaint": {"strength": 1.0, "mask_image": Image.new("L", (64, 64), 255), "height": 64, "width": 64},
        "edit": {},
    }
    extra = extras[kind]

    result = pipeline(
        "a cat",
        image=image,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
        **extra,
    )

    assert result.images.shape == (1, 64, 64, 3)
    assert (result.images >= 0).all()
    assert (result.images <= 1).all()


def test_model_cache_names_never_wait_for_a_load(tiny_folders: dict[ModelKind, Path]) -> None:
    """The announcer's heartbeat lists the loaded models (worker/status.py) while a job may be loading another one:
    `names()` answers at once with what is loaded, and the worker status lists it."""
    counting = _CountingLoader(tiny_folders)
    release = threading.Event()
    loading = threading.Event()

    def slow_loader(name: str) -> LoadedModel:
        if name == "edit":
            loading.set()
            assert release.wait(60.0)
        return counting(name)

    cache = ModelCache(max_bytes=1 << 30, loader=slow_loader)
    cache.get("img2img")
    stats = WorkerStats()
    stats.record_oom()
    deps = cast(WorkerDeps, SimpleNamespace(models=cache, stats=stats, status=JobStatus()))
    status = status_provider(lambda: deps, "cpu")
    loader_thread = threading.Thread(target=cache.get, args=("edit",))
    loader_thread.start()
    try:
        assert loading.wait(60.0)
        answers: list[dict[str, object]] = []
        reader = threading.Thread(target=lambda: answers.append(status()))
        reader.start()
        reader.join(10.0)
        assert not reader.is_alive()  # it did not wait for the load
        assert answers[0]["loaded_models"] == ["img2img"]
        assert answers[0]["oom_count"] == 1
    finally:
        release.set()
        loader_thread.join()
    assert status()["loaded_models"] == ["img2img", "edit"]
