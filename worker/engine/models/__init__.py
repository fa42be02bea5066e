"""Stable Diffusion models for the engine: the loaded model (:mod:`.loaded`), loading it from a folder, a single
checkpoint file or the hub (:mod:`.loading`), and the tiny random-weight models built locally (:mod:`.tiny`).

Keeping models loaded across jobs is the farm's business: `worker.model_cache`.
"""

from __future__ import annotations

from worker.engine.models.loaded import (
    KIND_IN_CHANNELS,
    LoadedModel,
    ModelConfigMissing,
    ModelError,
    ModelFamily,
    ModelKind,
    ModelNotFound,
    VaeNaN,
)
from worker.engine.models.loading import LDM_UNET_PREFIX, load_model, pick_device, pick_dtype
from worker.engine.models.tiny import (
    SD1_SCHEDULER_CONFIG,
    TINY_MARKER,
    TINY_MODEL_NAMES,
    TINY_XL_NAMES,
    build_sd15_shaped_model,
    build_sdxl_shaped_model,
    build_tiny_model,
)

__all__ = [
    "KIND_IN_CHANNELS",
    "LDM_UNET_PREFIX",
    "SD1_SCHEDULER_CONFIG",
    "TINY_MARKER",
    "TINY_MODEL_NAMES",
    "TINY_XL_NAMES",
    "LoadedModel",
    "ModelConfigMissing",
    "ModelError",
    "ModelFamily",
    "ModelKind",
    "ModelNotFound",
    "VaeNaN",
    "build_sd15_shaped_model",
    "build_sdxl_shaped_model",
    "build_tiny_model",
    "load_model",
    "pick_device",
    "pick_dtype",
]
