"""The default size limits a job is admitted under (the farm's settings may change each; see `shared.config`)."""

from __future__ import annotations

DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096  # pixels of one decoded input image (a 16-megapixel picture)
DEFAULT_MAX_INLINE_IMAGE_BYTES = 4 * 1024 * 1024  # bytes of one base64-decoded inline image
DEFAULT_MAX_BATCH_SIZE = 16  # images per sampling batch of one job
DEFAULT_MAX_N_ITER = 64  # batches per job
