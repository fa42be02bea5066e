"""Textual-inversion embedding files without torch: formats, layouts, the folder, the loaded/skipped registry and
model widths (docs/engine.md "Textual-inversion embeddings"). The worker's torch side is
`worker/engine/embeddings/`; the scheduler's `/sdapi/v1/embeddings` listing uses this package alone."""

from shared.embeddings.folder import EMBEDDINGS_FOLDER, FolderScanner, embedding_files, embedding_name, file_sha256
from shared.embeddings.layout import MAX_VECTORS, EmbeddingFormatError, Layout, TensorOps, read_layout
from shared.embeddings.reading import EmbeddingInfo, read_embedding_info
from shared.embeddings.registry import Registry
from shared.embeddings.widths import text_encoder_width

__all__ = [
    "EMBEDDINGS_FOLDER",
    "MAX_VECTORS",
    "EmbeddingFormatError",
    "EmbeddingInfo",
    "FolderScanner",
    "Layout",
    "Registry",
    "TensorOps",
    "embedding_files",
    "embedding_name",
    "file_sha256",
    "read_embedding_info",
    "read_layout",
    "text_encoder_width",
]
