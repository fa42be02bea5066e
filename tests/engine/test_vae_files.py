"""External VAE files (docs/engine.md "VAE files"): a VAE file in LDM key names swapped in for one job, the infotext's
`VAE` / `VAE hash`, the checkpoint's own VAE restored exactly, strict loading, and the worker's name lookup."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shared.errors import InputError
from tests.engine.conftest import SEED, SIZE, STEPS, pixels
from tests.ldm_export import export_vae_file
from worker.engine.models import LoadedModel, build_tiny_model, load_model
from worker.engine.processing import Processed, StableDiffusionProcessingImg2Img, process_images
from worker.engine.vae_files import VaeFile, VaeFileInvalid, external_vae, load_vae_weights
from worker.vae_files import vae_file_for_job


@pytest.fixture(scope="module")
def other_vae_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model built with another seed: its VAE has the same shapes and other weights."""
    return build_tiny_model(tmp_path_factory.mktemp("other") / "tiny-seed-7", seed=7)


@pytest.fixture
def model(tiny_dir: Path) -> LoadedModel:
    return load_model("tiny", tiny_dir=tiny_dir, device="cpu", dtype=torch.float32)


def _render(model: LoadedModel, picture: Image.Image) -> Processed:
    p = StableDiffusionProcessingImg2Img(
        sd_model=model, prompt="a red cube", init_images=[picture], width=SIZE, height=SIZE, steps=STEPS, seed=SEED
    )
    return process_images(p)


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_vae_file_changes_the_render_and_the_own_vae_comes_back(
    model: LoadedModel, other_vae_folder: Path, tmp_path: Path, picture: Image.Image, suffix: str
) -> None:
    vae_path = export_vae_file(other_vae_folder, tmp_path / "VAE" / f"other-vae{suffix}")
    own_vae, own_weights = model.vae, _snapshot(model.vae)
    before = _render(model, picture)

    with external_vae(model, VaeFile.open(vae_path)):
        with_file = _render(model, picture)
        assert model.vae is not own_vae

    after = _render(model, picture)
    assert not np.array_equal(pixels(with_file.images[0]), pixels(before.images[0]))
    assert np.array_equal(pixels(after.images[0]), pixels(before.images[0]))
    assert model.vae is own_vae
    assert model.vae_file is None
    assert all(torch.equal(own_weights[k], v) for k, v in model.vae.state_dict().items())
    # The infotext names the file only while it is used.
    short_hash = hashlib.sha256(vae_path.read_bytes()).hexdigest()[:10]
    assert f"VAE hash: {short_hash}, VAE: other-vae{suffix}" in with_file.infotexts[0]
    assert "VAE" not in before.infotexts[0]
    assert "VAE" not in after.infotexts[0]


def test_vae_file_weights_are_the_other_models_vae(model: LoadedModel, other_vae_folder: Path, tmp_path: Path) -> None:
    vae_path = export_vae_file(other_vae_folder, tmp_path / "other.safetensors")
    expected = load_model(other_vae_folder, device="cpu", dtype=torch.float32).vae.state_dict()

    loaded = load_vae_weights(model, VaeFile.open(vae_path)).state_dict()

    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], v) for k, v in expected.items())


def test_own_vae_is_restored_when_the_render_fails(model: LoadedModel, other_vae_folder: Path, tmp_path: Path) -> None:
    vae_path = export_vae_file(other_vae_folder, tmp_path / "other.safetensors")
    own = model.vae
    with pytest.raises(RuntimeError, match="boom"), external_vae(model, VaeFile.open(vae_path)):
        raise RuntimeError("boom")
    assert model.vae is own
    assert model.vae_file is None


def test_vae_file_is_loaded_strictly(model: LoadedModel, other_vae_folder: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    good = export_vae_file(other_vae_folder, tmp_path / "good.safetensors")
    tensors = load_file(str(good))
    missing = dict(tensors)
    missing.pop("decoder.conv_out.weight")
    save_file(missing, str(tmp_path / "missing.safetensors"))
    save_file({**tensors, "decoder.extra.weight": torch.zeros(2)}, str(tmp_path / "extra.safetensors"))
    # EMA bookkeeping and loss weights are dropped, as the reference does.
    save_file(
        {**tensors, "model_ema.decay": torch.tensor(0.9), "loss.w": torch.zeros(1)}, str(tmp_path / "ok.safetensors")
    )

    for name in ("missing", "extra"):
        with pytest.raises(VaeFileInvalid) as refused:
            load_vae_weights(model, VaeFile.open(tmp_path / f"{name}.safetensors"))
        assert refused.value.code == "vae_file_invalid"
    load_vae_weights(model, VaeFile.open(tmp_path / "ok.safetensors"))
    with pytest.raises(VaeFileInvalid):
        VaeFile.open(tmp_path / "vae.bin")


def test_sd_vae_names_a_file_in_the_vae_folder(other_vae_folder: Path, tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    path = export_vae_file(other_vae_folder, models_dir / "VAE" / "sub" / "kl-f8.safetensors")

    found = vae_file_for_job({"sd_vae": "kl-f8.safetensors"}, "tiny", models_dir)
    assert found is not None
    assert found.path == path
    assert found.name == "kl-f8.safetensors"
    for own in ({}, {"sd_vae": "Automatic"}, {"sd_vae": "None"}):
        assert vae_file_for_job(own, "tiny", models_dir) is None  # tiny has no file for Automatic to match
    with pytest.raises(InputError) as unknown:
        vae_file_for_job({"sd_vae": "nope.safetensors"}, "tiny", models_dir)
    assert unknown.value.field == "override_settings.sd_vae"
    with pytest.raises(InputError):
        vae_file_for_job({"sd_vae": "../VAE/sub/kl-f8.safetensors"}, "tiny", models_dir)


def test_automatic_picks_the_vae_named_after_the_checkpoint(other_vae_folder: Path, tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    checkpoint = models_dir / "Stable-diffusion" / "mine.safetensors"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"only its name matters here")
    path = export_vae_file(other_vae_folder, models_dir / "VAE" / "mine.vae.safetensors")

    for automatic in ({}, {"sd_vae": "Automatic"}):
        found = vae_file_for_job(automatic, "mine.safetensors", models_dir)
        assert found is not None
        assert found.path == path
    assert vae_file_for_job({"sd_vae": "None"}, "mine.safetensors", models_dir) is None
