"""What a job leaves behind: its artifact kinds, in the order the API lists them."""

from __future__ import annotations

from typing import Final

#: A render's picture, the picture pasted over the original (inpainting), and the mask the worker used.
ARTIFACT_KINDS: Final[tuple[str, ...]] = ("result", "overlay", "mask")
