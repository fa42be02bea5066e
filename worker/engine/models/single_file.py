"""What a single-file checkpoint is and which configs describe it, offline (docs/engine.md, "SDXL and single-file
checkpoints").

A single file holds weights only. The configs of its components come, in this order of preference, from:

1. `config=`: a local diffusers folder of the same architecture (as before);
2. the file's own safetensors metadata key `renderfarm.configs` (a JSON object of relative path → file text, the
   `*.json`/`*.txt` files of a diffusers folder): how the farm's tests export their tiny models, whose layer sizes
   no published config describes;
3. the configs shipped in this package (`configs/<family>/`), chosen by the checkpoint's keys:
   `conditioner.embedders.1.model.ln_final.weight` → SDXL (the UNet's input channels tell base 4 from inpaint 9),
   `cond_stage_model.model.` → SD 2.x, `cond_stage_model.transformer.` → SD 1.x. The tokenizers' vocabulary is
   built from the CLIP merge list (`clip_tokenizer`). SDXL refiners (only `conditioner.embedders.0.model.`) are
   refused.

SD 2.x v-prediction (768-v) cannot be told from the keys. The reference reads a `<stem>.yaml` beside the file; the
farm does too, only to refuse it: a yaml whose text sets `parameterization: "v"` makes the load fail with
`model_unsupported` (the engine samples epsilon-prediction models only); without a yaml the model is taken as
epsilon-prediction (SD 2.x base).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import torch

from worker.engine.models.loaded import ModelConfigMissing, ModelError, ModelFamily

__all__ = [
    "BUNDLED_CONFIGS",
    "EMBEDDED_CONFIGS_KEY",
    "checkpoint_family",
    "embedded_configs_folder",
    "refuse_v_prediction",
]

BUNDLED_CONFIGS: Final = Path(__file__).parent / "configs"
EMBEDDED_CONFIGS_KEY: Final = "renderfarm.configs"

SDXL_KEY: Final = "conditioner.embedders.1.model.ln_final.weight"
SDXL_REFINER_PREFIX: Final = "conditioner.embedders.0.model."
SD2_PREFIX: Final = "cond_stage_model.model."
SD1_PREFIX: Final = "cond_stage_model.transformer."

_V_PARAMETERIZATION: Final = re.compile(r"""^\s*parameterization\s*:\s*["']?v["']?\s*$""", re.MULTILINE)


def checkpoint_family(checkpoint: Mapping[str, torch.Tensor], source: str) -> ModelFamily:
    """The family of a checkpoint in the LDM/sgm key layout, from its keys. Raises ModelError (model_unsupported)
    for the SDXL refiner, ModelConfigMissing for keys of no known family."""
    if SDXL_KEY in checkpoint:
        return "sdxl"
    keys = list(checkpoint)
    if any(key.startswith(SDXL_REFINER_PREFIX) for key in keys):
        raise ModelError(f"{source}: an SDXL refiner checkpoint; refiners are not supported", code="model_unsupported")
    if any(key.startswith(SD2_PREFIX) for key in keys):
        return "sd2"
    if any(key.startswith(SD1_PREFIX) for key in keys):
        return "sd1"
    raise ModelConfigMissing(
        f"{source}: the checkpoint's text encoder keys match no supported architecture (SD 1.x "
        f"{SD1_PREFIX}*, SD 2.x {SD2_PREFIX}*, SDXL {SDXL_KEY}); pass config=<a local diffusers folder>"
    )


def refuse_v_prediction(path: Path) -> None:
    """Raise ModelError (model_unsupported) when `<stem>.yaml` beside the checkpoint declares v-prediction."""
    yaml = path.with_suffix(".yaml")
    if yaml.is_file() and _V_PARAMETERIZATION.search(yaml.read_text(encoding="utf-8", errors="replace")):
        raise ModelError(
            f"{path.name}: {yaml.name} declares a v-prediction model (parameterization: v); the engine renders "
            "epsilon-prediction models only",
            code="model_unsupported",
        )


def _embedded_files(path: Path) -> dict[str, str] | None:
    if path.suffix.lower() != ".safetensors":
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    text = metadata.get(EMBEDDED_CONFIGS_KEY)
    if text is None:
        return None
    try:
        files = json.loads(text)
    except ValueError as exc:
        raise ModelConfigMissing(f"{path.name}: its {EMBEDDED_CONFIGS_KEY} metadata is not JSON: {exc}") from exc
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise ModelConfigMissing(f"{path.name}: its {EMBEDDED_CONFIGS_KEY} metadata is not a path → text object")
    return {str(k): str(v) for k, v in files.items()}


def embedded_configs_folder(path: Path) -> Path | None:
    """A temporary folder holding the configs the file carries in its metadata (the caller removes it with
    `shutil.rmtree`), or None when it carries none."""
    files = _embedded_files(path)
    if files is None:
        return None
    folder = Path(tempfile.mkdtemp(prefix="renderfarm-configs-"))
    try:
        for relative, text in files.items():
            target = (folder / relative).resolve()
            if folder.resolve() not in target.parents:
                raise ModelConfigMissing(f"{path.name}: its embedded config path {relative!r} leaves the folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder
