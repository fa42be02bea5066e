"""shared/models: the webui `models/` folder read without torch (docs/engine.md "Model files"), on real files
built in the test (tests/model_folders.py); hashes checked against hashlib."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import shared.models.hashes as hashes_module
from shared.models import TINY_NAMES, ModelFiles, find_lora_file, find_vae_file, servable_checkpoint_names
from shared.models.architecture import Architecture, checkpoint_architecture, lora_architecture, lora_mismatch
from shared.models.checkpoints import checkpoint_names
from shared.models.hashes import HASH_CACHE_FILE, HashCache, addnet_hash, legacy_hash
from shared.models.layout import embeddings_folder
from shared.models.loras import Lora, LoraIndex
from shared.models.tiny import tiny_sha256
from shared.models.vaes import UnknownVae, Vae, resolve_sd_vae
from tests.model_folders import STYLE_METADATA, TINY_CONTEXT, WebuiModels, build_webui_models
from worker.engine.models.tiny import TINY_MODEL_NAMES, build_tiny_model


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny", kind="img2img")


@pytest.fixture
def webui(tmp_path: Path, tiny_folder: Path) -> WebuiModels:
    return build_webui_models(tmp_path, tiny_folder)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- hashes ----------------------------------------------------------------------------------------------------


def test_legacy_hash_is_64k_at_1mib(tmp_path: Path) -> None:
    data = os.urandom(0x100000 + 0x10000 + 999)
    path = tmp_path / "big.ckpt"
    path.write_bytes(data)
    assert legacy_hash(path) == hashlib.sha256(data[0x100000 : 0x100000 + 0x10000]).hexdigest()[:8]


def test_addnet_hash_skips_the_safetensors_header(tmp_path: Path) -> None:
    path = tmp_path / "l.safetensors"
    save_file({"a.weight": torch.randn(3, 3)}, str(path), metadata={"k": "v"})
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    assert addnet_hash(path) == hashlib.sha256(raw[8 + size :]).hexdigest()
    # Changing the metadata keeps the hash (only the tensors count).
    other = tmp_path / "m.safetensors"
    save_file({"a.weight": _tensors_of(path)}, str(other), metadata={"k": "changed"})
    assert addnet_hash(other) == addnet_hash(path)
    pt = tmp_path / "l.pt"
    torch.save({"a": torch.zeros(2)}, pt)
    assert addnet_hash(pt) == sha(pt)


def _tensors_of(path: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(path))["a.weight"]


# -- the hash cache --------------------------------------------------------------------------------------------


def counting_digests(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every file read for a hash from now on."""
    reads: list[Path] = []
    real: Callable[..., str] = hashes_module._digest

    def digest(path: Path, *args: int | None) -> str:
        reads.append(path)
        return real(path, *args)

    monkeypatch.setattr(hashes_module, "_digest", digest)
    return reads


def test_a_second_scan_reads_no_file_even_in_a_new_process(
    webui: WebuiModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    reads = counting_digests(monkeypatch)
    first = ModelFiles(webui.root, data).checkpoints()
    assert webui.checkpoint in reads
    cache = json.loads((data / HASH_CACHE_FILE).read_text())["files"]
    entry = cache[str(webui.checkpoint.absolute())]
    info = webui.checkpoint.stat()
    assert (entry["size"], entry["mtime_ns"], entry["sha256"]) == (
        info.st_size,
        info.st_mtime_ns,
        sha(webui.checkpoint),
    )

    reads.clear()
    again = ModelFiles(webui.root, data).checkpoints()  # a fresh catalogue: only the cache file is read
    assert reads == []
    assert [e.sha256 for e in again.entries] == [e.sha256 for e in first.entries]

    # A file replaced in place (new mtime) is hashed again; the others are not.
    webui.checkpoint.write_bytes(webui.checkpoint.read_bytes() + b"\0")
    os.utime(webui.checkpoint, ns=(info.st_atime_ns, info.st_mtime_ns + 10**9))
    entry_after = ModelFiles(webui.root, data).resolve_checkpoint("x.safetensors")
    assert set(reads) == {webui.checkpoint}
    assert entry_after is not None
    assert entry_after.sha256 == sha(webui.checkpoint)


def test_the_names_a_worker_announces_are_the_listing_s_without_reading_a_file(
    webui: WebuiModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = counting_digests(monkeypatch)
    names = checkpoint_names(webui.root)
    assert reads == []
    assert names == [e.name for e in ModelFiles(webui.root, tmp_path / "data").checkpoints().entries]


def test_a_job_s_canonical_model_name_hashes_that_checkpoint_alone(
    webui: WebuiModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A worker with an empty hash cache renders its first job without reading every checkpoint of the folder.
    reads = counting_digests(monkeypatch)
    wanted = webui.sub_checkpoints[1]
    name = wanted.relative_to(webui.root / "Stable-diffusion").as_posix()
    found = ModelFiles(webui.root, tmp_path / "worker-data").resolve_checkpoint(name)
    assert set(reads) == {wanted}
    listed = ModelFiles(webui.root, tmp_path / "scheduler-data").checkpoints().resolve(name)
    assert found == listed
    # Any other alias still needs the whole index, and finds the same entry.
    assert listed is not None
    reads.clear()
    by_hash = ModelFiles(webui.root, tmp_path / "fresh-data").resolve_checkpoint(listed.shorthash)
    assert by_hash == listed
    assert len(set(reads)) > 1


def test_two_caches_on_one_file_keep_each_others_entries(tmp_path: Path) -> None:
    a_file, b_file = tmp_path / "a.bin", tmp_path / "b.bin"
    a_file.write_bytes(b"a")
    b_file.write_bytes(b"b")
    cache_path = tmp_path / "data" / HASH_CACHE_FILE
    one, two = HashCache(cache_path), HashCache(cache_path)  # two processes sharing the data dir
    one.get(a_file, "sha256", hashes_module.file_sha256)
    two.get(b_file, "sha256", hashes_module.file_sha256)
    files = json.loads(cache_path.read_text())["files"]
    assert files[str(a_file)]["sha256"] == sha(a_file)
    assert files[str(b_file)]["sha256"] == sha(b_file)
    assert not [p for p in cache_path.parent.iterdir() if p.suffix == ".tmp"]  # renamed into place
    cache_path.write_text("{not json")  # damaged: rebuilt, never fatal
    assert HashCache(cache_path).get(a_file, "sha256", hashes_module.file_sha256) == sha(a_file)


# -- checkpoints -----------------------------------------------------------------------------------------------


def test_checkpoints_identity_and_order(webui: WebuiModels, tmp_path: Path) -> None:
    index = ModelFiles(webui.root, tmp_path / "data").checkpoints()
    names = [e.name for e in index.entries]
    assert names == [*TINY_NAMES, "sub/m2.safetensors", "sub/m10.ckpt", "x.safetensors"]  # natural order
    x = index.resolve("x.safetensors")
    assert x is not None
    assert x.sha256 == sha(webui.checkpoint)
    assert x.listing() == {
        "title": f"x.safetensors [{sha(webui.checkpoint)[:10]}]",
        "model_name": "x",
        "hash": sha(webui.checkpoint)[:10],
        "sha256": sha(webui.checkpoint),
        "filename": str(webui.checkpoint),
        "config": str(webui.checkpoint.with_suffix(".yaml")),
    }
    sub = index.resolve("sub/m2.safetensors")
    assert sub is not None
    assert sub.model_name == "sub_m2"
    assert sub.config is None
    for tiny in TINY_NAMES:
        entry = index.resolve(tiny)
        assert entry is not None
        assert entry.sha256 == tiny_sha256(tiny)
        assert entry.filename == tiny


def test_every_alias_form_resolves_to_one_entry(webui: WebuiModels, tmp_path: Path) -> None:
    index = ModelFiles(webui.root, tmp_path / "data").checkpoints()
    digest = sha(webui.checkpoint)
    raw = webui.checkpoint.read_bytes()
    legacy = hashlib.sha256(raw[0x100000 : 0x100000 + 0x10000]).hexdigest()[:8]
    forms = [
        f"x.safetensors [{digest[:10]}]",  # title
        "x.safetensors",  # name
        "x",  # model_name and stem
        digest[:10],  # shorthash
        digest[:10].upper(),
        digest,  # sha256
        legacy,  # legacy hash
        f"x [{digest[:10]}]",  # stem [shorthash]
        f"x.safetensors [{legacy}]",  # name [legacy]
    ]
    for form in forms:
        entry = index.resolve(form)
        assert entry is not None, form
        assert entry.name == "x.safetensors", form
    sub = index.resolve("sub_m2")
    assert sub is not None
    assert sub.name == "sub/m2.safetensors"
    for unknown in ("y.safetensors", "x.safetensors [0123456789]", "0123456789", "X.SAFETENSORS", ""):
        assert index.resolve(unknown) is None, unknown


def test_the_flat_layout_still_lists_folders_and_files(tmp_path: Path, tiny_folder: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "linked-tiny").symlink_to(tiny_folder, target_is_directory=True)
    save_file({"cond_stage_model.transformer.x": torch.zeros(1)}, str(models / "flat.safetensors"))
    (models / "embeddings").mkdir()  # not a model
    (models / "VAE").mkdir()
    assert servable_checkpoint_names(models) == [*TINY_NAMES, "flat.safetensors", "linked-tiny"]
    folder = ModelFiles(models, None).resolve_checkpoint("linked-tiny")
    assert folder is not None
    assert folder.kind == "folder"
    unet_weights = sorted((tiny_folder / "unet").glob("*.safetensors"))
    assert folder.sha256 == hashlib.sha256(b"".join(p.read_bytes() for p in unet_weights)).hexdigest()
    assert ModelFiles(models, None).resolve_checkpoint("flat") is not None


def test_the_tiny_names_cover_the_workers_builder() -> None:
    assert set(TINY_MODEL_NAMES) <= set(TINY_NAMES)


def test_a_new_checkpoint_is_found_after_a_rescan(webui: WebuiModels, tmp_path: Path) -> None:
    files = ModelFiles(webui.root, None)
    assert files.checkpoints().resolve("new") is None
    save_file({"a": torch.zeros(1)}, str(webui.root / "Stable-diffusion" / "new.safetensors"))
    assert files.checkpoints().resolve("new") is None  # the scan is kept ...
    assert files.resolve_checkpoint("new") is not None  # ... until a name is not found


# -- LoRAs -----------------------------------------------------------------------------------------------------


def test_loras_names_aliases_and_metadata(webui: WebuiModels, tmp_path: Path) -> None:
    files = ModelFiles(webui.root, None)
    listing = {entry.name: entry.listing() for entry in files.loras().entries}
    assert list(listing) == ["old", "style", "nothing", "xl_only"]  # Lora/ then LyCORIS/
    assert listing["style"] == {
        "name": "style",
        "alias": "styleAlias",
        "path": str(webui.lora),
        "metadata": {**STYLE_METADATA, "ss_tag_frequency": {"set": {"red": 3}}},  # JSON strings decoded
    }
    assert listing["old"]["metadata"] == {}
    assert listing["old"]["alias"] == "old"
    assert find_lora_file("style", webui.root) == webui.lora
    assert find_lora_file("styleAlias", webui.root) == webui.lora
    assert find_lora_file("Style", webui.root) is None  # case-sensitive
    style = files.find_lora("style")
    assert style is not None
    raw = webui.lora.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    assert files.lora_short_hash(style) == hashlib.sha256(raw[8 + size :]).hexdigest()[:12]


def test_lora_aliases_that_collide_are_forbidden(tmp_path: Path) -> None:
    a = Lora("a", "shared", tmp_path / "a.safetensors")
    b = Lora("b", "shared", tmp_path / "b.safetensors")
    c = Lora("c", "a", tmp_path / "c.safetensors")  # alias = another file's name
    d = Lora("d", "none", tmp_path / "d.safetensors")
    index = LoraIndex([a, b, c, d])
    assert index.find("shared") is None
    assert index.find("a") is a
    assert index.find("c") is c
    assert index.find("none") is None
    assert index.find("d") is d


def test_an_unknown_lora_name_rescans_first(webui: WebuiModels) -> None:
    files = ModelFiles(webui.root, None)
    assert files.find_lora("fresh") is None
    (webui.root / "Lora" / "deep").mkdir()
    save_file(
        {"lora_unet_x.lora_down.weight": torch.zeros(1, 1)}, str(webui.root / "Lora" / "deep" / "fresh.safetensors")
    )
    assert files.find_lora("fresh") is not None


def test_lora_metadata_hash_wins(tmp_path: Path) -> None:
    path = tmp_path / "h.safetensors"
    save_file({"a": torch.zeros(1)}, str(path), metadata={"sshs_model_hash": "abcdef0123456789"})
    files = ModelFiles(tmp_path, None)
    lora = Lora("h", "h", path, {"sshs_model_hash": "abcdef0123456789"})
    assert files.lora_short_hash(lora) == "abcdef012345"


# -- VAEs ------------------------------------------------------------------------------------------------------


def test_vae_candidates_and_the_sd_vae_rule(webui: WebuiModels, tmp_path: Path) -> None:
    files = ModelFiles(webui.root, None)
    vaes = files.vaes()
    assert [v.listing() for v in vaes] == [
        {"model_name": "other.pt", "filename": str(webui.deep_vae)},
        {"model_name": "vae-ft-mse.safetensors", "filename": str(webui.vae)},
        {"model_name": "x.vae.safetensors", "filename": str(webui.beside_vae)},
    ]
    assert find_vae_file("vae-ft-mse.safetensors", webui.root) == webui.vae
    ckpt = webui.checkpoint
    assert resolve_sd_vae("vae-ft-mse.safetensors", ckpt, vaes) == webui.vae
    assert resolve_sd_vae("None", ckpt, vaes) is None
    assert resolve_sd_vae("Automatic", ckpt, vaes) == webui.beside_vae  # prefix of the checkpoint's name
    assert resolve_sd_vae("Automatic", None, vaes) is None
    with pytest.raises(UnknownVae):
        resolve_sd_vae("missing.pt", ckpt, vaes)
    # The checkpoint's user metadata picks for Automatic.
    ckpt.with_suffix(".json").write_text(json.dumps({"vae": "other.pt"}))
    assert resolve_sd_vae("Automatic", ckpt, vaes) == webui.deep_vae
    ckpt.with_suffix(".json").write_text(json.dumps({"vae": "None"}))
    assert resolve_sd_vae("Automatic", ckpt, vaes) is None
    # The prefix match is the reference's: `model.safetensors` also picks `model2.vae.pt`.
    prefix = [Vae("model2.vae.pt", tmp_path / "model2.vae.pt")]
    assert resolve_sd_vae("Automatic", tmp_path / "model.safetensors", prefix) == tmp_path / "model2.vae.pt"


def test_hypernetworks_and_embeddings_folders(webui: WebuiModels, tmp_path: Path) -> None:
    assert ModelFiles(webui.root, None).hypernetworks() == [{"name": "anime", "path": str(webui.hypernetwork)}]
    assert embeddings_folder(webui.root) == webui.root / "embeddings"  # neither exists: the farm's
    (webui.root.parent / "embeddings").mkdir()
    assert embeddings_folder(webui.root) == webui.root.parent / "embeddings"  # the webui's, beside models/
    (webui.root / "embeddings").mkdir()
    assert embeddings_folder(webui.root) == webui.root / "embeddings"


# -- architectures ---------------------------------------------------------------------------------------------


def test_architectures_from_keys(webui: WebuiModels, tiny_folder: Path) -> None:
    model = checkpoint_architecture(webui.checkpoint)
    assert model == Architecture("sd", TINY_CONTEXT)
    assert checkpoint_architecture(tiny_folder) == Architecture("sd", TINY_CONTEXT)
    assert checkpoint_architecture(webui.sub_checkpoints[1]) == Architecture("sd", None)  # a .ckpt's keys
    assert lora_mismatch(lora_architecture(webui.lora), model) is None
    assert lora_mismatch(lora_architecture(webui.pt_lora), model) is None
    assert "SDXL" in (lora_mismatch(lora_architecture(webui.sdxl_lora), model) or "")
    assert lora_architecture(webui.no_layer_lora) is None
    assert lora_mismatch(None, model) is not None
    sd2 = Architecture("sd", 1024)
    assert "1024" in (lora_mismatch(lora_architecture(webui.lora), sd2) or "")
