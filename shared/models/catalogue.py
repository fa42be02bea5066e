"""One models folder's catalogue: checkpoints, LoRAs, VAEs, hypernetworks, scanned when first asked for and again on
`refresh_*`, with hashes kept in the data dir's hash cache. One per (models folder, data dir) in a process
(`model_files`), shared by every request and thread. Scanning reads files and may hash new ones: call it from a
worker thread, never on an event loop.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from shared.models.architecture import Architecture, checkpoint_architecture
from shared.models.checkpoints import Checkpoint, CheckpointIndex, checkpoint_named, scan_checkpoints
from shared.models.hashes import HASH_CACHE_FILE, HashCache
from shared.models.hypernetworks import scan_hypernetworks
from shared.models.loras import Lora, LoraIndex, lora_hash, scan_loras
from shared.models.vaes import Vae, resolve_sd_vae, scan_vaes

__all__ = ["ModelFiles", "model_files"]

_TINY_ARCHITECTURES = {
    "tiny": Architecture("sd", 32),
    "tiny-inpaint": Architecture("sd", 32),
    "tiny-edit": Architecture("sd", 32),
    "tiny-xl": Architecture("sdxl", None),
    "tiny-xl-inpaint": Architecture("sdxl", None),
}


class ModelFiles:
    def __init__(self, models_dir: Path | None, data_dir: Path | None) -> None:
        self.models_dir = models_dir
        self.hashes = HashCache(data_dir / HASH_CACHE_FILE if data_dir is not None else None)
        self._lock = threading.RLock()
        self._checkpoints: CheckpointIndex | None = None
        self._loras: LoraIndex | None = None
        self._vaes: list[Vae] | None = None

    # -- checkpoints ---------------------------------------------------------------------------------------------

    def checkpoints(self) -> CheckpointIndex:
        with self._lock:
            if self._checkpoints is None:
                self._checkpoints = CheckpointIndex(scan_checkpoints(self.models_dir, self.hashes))
            return self._checkpoints

    def refresh_checkpoints(self) -> CheckpointIndex:
        with self._lock:
            self._checkpoints = None
            return self.checkpoints()

    def resolve_checkpoint(self, name: str) -> Checkpoint | None:
        """The checkpoint any alias names; a name not found rescans once (a file added since) before None.

        Until the folder has been scanned, a canonical name is looked up alone (`checkpoint_named`): resolving
        one job's model must not hash every checkpoint of the folder first."""
        with self._lock:
            scanned = self._checkpoints is not None
        if not scanned:
            named = checkpoint_named(name.strip(), self.models_dir, self.hashes)
            if named is not None:
                return named
        found = self.checkpoints().resolve(name)
        return found if found is not None else self.refresh_checkpoints().resolve(name)

    def architecture(self, checkpoint: Checkpoint) -> Architecture:
        if checkpoint.kind == "tiny":
            return _TINY_ARCHITECTURES.get(checkpoint.name, Architecture(None))
        assert checkpoint.path is not None
        try:
            return checkpoint_architecture(checkpoint.path)
        except (OSError, ValueError):
            return Architecture(None)

    # -- LoRAs ---------------------------------------------------------------------------------------------------

    def loras(self) -> LoraIndex:
        with self._lock:
            if self._loras is None:
                self._loras = LoraIndex(scan_loras(self.models_dir))
            return self._loras

    def refresh_loras(self) -> LoraIndex:
        with self._lock:
            self._loras = None
            return self.loras()

    def find_lora(self, name: str) -> Lora | None:
        """The LoRA named `name` (or aliased); a name not found rescans once before None (the reference's rule)."""
        found = self.loras().find(name)
        return found if found is not None else self.refresh_loras().find(name)

    def lora_short_hash(self, lora: Lora) -> str:
        """The 12-hex `Lora hashes` value of `lora`."""
        return lora_hash(lora, self.hashes)

    # -- VAEs ----------------------------------------------------------------------------------------------------

    def vaes(self) -> list[Vae]:
        with self._lock:
            if self._vaes is None:
                self._vaes = scan_vaes(self.models_dir)
            return self._vaes

    def refresh_vaes(self) -> list[Vae]:
        with self._lock:
            self._vaes = None
            return self.vaes()

    def find_vae(self, name: str) -> Vae | None:
        for vaes in (self.vaes(), None):
            found = next((vae for vae in (vaes or self.refresh_vaes()) if vae.name == name), None)
            if found is not None or vaes is None:
                return found
        return None

    def vae_for(self, sd_vae: str, checkpoint: Checkpoint | None) -> Path | None:
        """The VAE file for option `sd_vae` on `checkpoint` (None: its own). Raises UnknownVae."""
        return resolve_sd_vae(sd_vae, checkpoint.path if checkpoint is not None else None, self.vaes())

    # -- hypernetworks -------------------------------------------------------------------------------------------

    def hypernetworks(self) -> list[dict[str, str]]:
        return scan_hypernetworks(self.models_dir)

    def listing(self) -> list[dict[str, Any]]:
        return [entry.listing() for entry in self.checkpoints().entries]


_registry: dict[tuple[Path | None, Path | None], ModelFiles] = {}
_registry_lock = threading.Lock()


def model_files(models_dir: Path | None, data_dir: Path | None) -> ModelFiles:
    """The process's catalogue of `models_dir` with its hash cache in `data_dir`."""
    key = (models_dir, data_dir)
    with _registry_lock:
        found = _registry.get(key)
        if found is None:
            found = _registry[key] = ModelFiles(models_dir, data_dir)
        return found
