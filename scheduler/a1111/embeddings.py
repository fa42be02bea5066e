"""`GET /sdapi/v1/embeddings` and `POST /sdapi/v1/refresh-embeddings`: the embeddings in
`RENDERFARM_MODELS_DIR/embeddings` (or the webui's `<models>/../embeddings`, shared.models.layout), loaded or
skipped for the text encoder of the requested model (proposal P20; docs/engine.md "Textual-inversion embeddings").

The scheduler has no torch: it reads the files' structure with `shared/embeddings` (safetensors headers, torch
pickles through a restricted unpickler, images) and the model's text-encoder width from the tiny models' table, the
model's own files in RENDERFARM_MODELS_DIR, or a few known hub ids. The model is `?model=` when given, else the
tenant's `sd_model_checkpoint` option, else the farm's default model. Files are read again only when they change.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from shared.embeddings.folder import FolderScanner
from shared.embeddings.reading import EmbeddingInfo, read_embedding_info
from shared.embeddings.registry import Registry
from shared.embeddings.widths import text_encoder_width
from shared.errors import InputError
from shared.models.layout import embeddings_folder

__all__ = ["EmbeddingCatalogue", "catalogue_for"]


class EmbeddingCatalogue:
    """The embeddings folder of one models folder, read without torch and kept between requests."""

    def __init__(self, models_dir: Path | None) -> None:
        self.models_dir = models_dir
        self.folder = embeddings_folder(models_dir) if models_dir is not None else None
        self._scanner: FolderScanner[EmbeddingInfo] = FolderScanner(self.folder, read_embedding_info)

    def refresh(self) -> None:
        """Reread every file (the reference's forced reload)."""
        self._scanner.scan(force=True)

    def listing(self, model: str, *, field: str = "model") -> dict[str, Any]:
        """`{loaded, skipped, errors}` for `model`'s text encoder. Raises InputError naming `field` when there are
        embeddings and the model's width cannot be told."""
        scan = self._scanner.scan()
        if not any(f.value is not None or f.error is not None for f in scan.files):
            return {"loaded": {}, "skipped": {}, "errors": {}}
        width = text_encoder_width(model, self.models_dir)
        if width is None:
            raise InputError(
                f"the scheduler cannot tell the text-encoder width of model {model!r}: it is not a tiny model, not a "
                "diffusers folder or checkpoint in RENDERFARM_MODELS_DIR, nor a known hub id",
                code="model_width_unknown",
                field=field,
            )
        return Registry.build(scan.files, width, self.folder).listing()


_catalogues: dict[Path | None, EmbeddingCatalogue] = {}
_catalogues_lock = threading.Lock()


def catalogue_for(models_dir: Path | None) -> EmbeddingCatalogue:
    """The process's catalogue of `models_dir` (one per folder, so its cache serves every request)."""
    with _catalogues_lock:
        catalogue = _catalogues.get(models_dir)
        if catalogue is None:
            catalogue = _catalogues[models_dir] = EmbeddingCatalogue(models_dir)
        return catalogue
