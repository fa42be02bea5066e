"""LoRA and LyCORIS networks from `<lora:…>` tags, merged into a loaded model's weights with the reference's maths
(prompts-and-models.md §3; docs/engine.md, "LoRA and LyCORIS").

* `files`: reading a network file, its short hash (`Lora hashes`).
* `layers`: which model layer a file key names (kohya SD1/SD2/SDXL, sgm names, dotted diffusers/PEFT keys).
* `updates`: the weight update of each type (LoRA/LoCon, LoHa, LoKr, IA3, Full, Norm, GLoRA, OFT/BOFT, DoRA).
* `apply`: applying a set in prompt order and switching sets fast, restoring the original weights.
"""

from worker.engine.networks.apply import (
    AppliedNetworks,
    MatchedNetwork,
    activate_networks,
    deactivate_networks,
    match_network,
)
from worker.engine.networks.errors import (
    NetworkError,
    NetworkMatchesNothing,
    NetworkNotFound,
    NetworkShapeMismatch,
    NetworkUnreadable,
    NetworkUnsupported,
)
from worker.engine.networks.files import NETWORK_SUFFIXES, NetworkFile, read_network_file
from worker.engine.networks.layers import ModelLayers, TargetLayer

__all__ = [
    "NETWORK_SUFFIXES",
    "AppliedNetworks",
    "MatchedNetwork",
    "ModelLayers",
    "NetworkError",
    "NetworkFile",
    "NetworkMatchesNothing",
    "NetworkNotFound",
    "NetworkShapeMismatch",
    "NetworkUnreadable",
    "NetworkUnsupported",
    "TargetLayer",
    "activate_networks",
    "deactivate_networks",
    "match_network",
    "read_network_file",
]
