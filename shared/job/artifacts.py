"""What a job leaves behind: its artifact kinds, in the order the API lists them."""

from __future__ import annotations

from typing import Final, Literal, get_args

#: A render's picture, the picture pasted over the original (inpainting), and the mask the worker used.
ArtifactKind = Literal["result", "overlay", "mask"]
ARTIFACT_KINDS: Final[tuple[str, ...]] = get_args(ArtifactKind)
