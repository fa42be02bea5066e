"""The default size limits a job is admitted under (the farm's settings may change each; see `shared.config`)."""

from __future__ import annotations

DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096  # pixels of one decoded input image (a 16-megapixel picture)
DEFAULT_MAX_INLINE_IMAGE_BYTES = 4 * 1024 * 1024  # bytes of one base64-decoded inline image
DEFAULT_MAX_BATCH_SIZE = 16  # images per sampling batch of one job
DEFAULT_MAX_N_ITER = 64  # batches per job
# CLIP tokens of a prompt and of a negative prompt (shared.prompts.token_limit): 40 chunks of 75. The webui has no
# limit; long prompts of several chunks are common, 40 is far past any real one, and it keeps a job's text
# conditioning (one encoder pass per chunk, per AND part) small beside the render.
DEFAULT_MAX_PROMPT_TOKENS = 40 * 75
