"""Why a job's LoRA / LyCORIS networks cannot be applied. All are permanent: the same job fails the same way again.

InputError (shared.errors)
└── NetworkNotFound        a tag names a network whose file this worker cannot find (field `prompt`)
PermanentError (shared.errors)
└── NetworkError           a network's file cannot be applied to this model
    ├── NetworkUnreadable      not a LoRA/LyCORIS file the farm can read
    ├── NetworkUnsupported     a layer whose keys fit no network type, or a type on a layer it cannot change
    ├── NetworkMatchesNothing  no key of the file names a layer of this model
    └── NetworkShapeMismatch   an update whose shape is not the layer's (P7; the reference skips that layer)
"""

from __future__ import annotations

from shared.errors import InputError, PermanentError

__all__ = [
    "NetworkError",
    "NetworkMatchesNothing",
    "NetworkNotFound",
    "NetworkShapeMismatch",
    "NetworkUnreadable",
    "NetworkUnsupported",
]


class NetworkNotFound(InputError, default_code="lora_not_found"):
    """A `<lora:NAME>` tag whose NAME is no file under the worker's Lora / LyCORIS folders."""


class NetworkError(PermanentError, default_code="lora_failed"):
    """A network file that cannot be applied to the job's model."""


class NetworkUnreadable(NetworkError, default_code="lora_unreadable"):
    """The file is no safetensors / torch pickle of tensors."""


class NetworkUnsupported(NetworkError, default_code="lora_unsupported"):
    """A layer whose keys fit none of the network types, or a type that cannot change that kind of layer."""


class NetworkMatchesNothing(NetworkError, default_code="lora_matches_no_layer"):
    """No key of the file names a layer of the model (a file for another architecture)."""


class NetworkShapeMismatch(NetworkError, default_code="lora_shape_mismatch"):
    """A layer update whose shape differs from the layer's weight (a file for another model size)."""
