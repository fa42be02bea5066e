"""The worker's temporary LoRA file lookup (worker/lora_files.py; prompts-and-models.md §3.3)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from worker.lora_files import find_lora_file


def write(path: Path, alias: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"lora_unet_x.alpha": torch.tensor(1.0)}
    if path.suffix == ".safetensors":
        save_file(tensors, str(path), metadata={"ss_output_name": alias} if alias else None)
    else:
        torch.save(tensors, path)
    return path


def test_names_are_stems_found_recursively_in_both_folders(tmp_path: Path) -> None:
    a = write(tmp_path / "Lora" / "deep" / "er" / "a.safetensors")
    b = write(tmp_path / "LyCORIS" / "b.pt")
    write(tmp_path / "Lora" / "notes.txt")
    assert find_lora_file(tmp_path, "a") == a
    assert find_lora_file(tmp_path, "b") == b
    assert find_lora_file(tmp_path, "notes") is None
    assert find_lora_file(tmp_path, "A") is None  # case-sensitive
    assert find_lora_file(None, "a") is None


def test_a_later_file_with_the_same_stem_wins(tmp_path: Path) -> None:
    write(tmp_path / "Lora" / "x.safetensors")
    later = write(tmp_path / "LyCORIS" / "x.ckpt")
    assert find_lora_file(tmp_path, "x") == later


def test_aliases_from_metadata_unless_they_collide(tmp_path: Path) -> None:
    styled = write(tmp_path / "Lora" / "file1.safetensors", alias="my style")
    write(tmp_path / "Lora" / "file2.safetensors", alias="file1")  # collides with a name: forbidden
    write(tmp_path / "Lora" / "file3.safetensors", alias="None")
    assert find_lora_file(tmp_path, "my style") == styled
    assert find_lora_file(tmp_path, "file1") == styled  # the name, not file2's alias
    assert find_lora_file(tmp_path, "None") is None


def test_new_files_are_found_without_a_refresh(tmp_path: Path) -> None:
    assert find_lora_file(tmp_path, "fresh") is None
    fresh = write(tmp_path / "Lora" / "fresh.safetensors")
    assert find_lora_file(tmp_path, "fresh") == fresh
