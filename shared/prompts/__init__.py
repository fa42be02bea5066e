"""The prompt language of the webui (A1111 v1.10.1), pure Python: emphasis, prompt editing and alternation, AND,
BREAK, chunks of 75 with comma backtracking and embedding placeholders, extra-network tags, and the farm's checks.
The scheduler validates prompts with it; the worker encodes with it. See docs/engine.md, "Prompt language".

Function names follow the reference's so that a reader can map them.
"""

from shared.prompts.attention import WeightError, parse_prompt_attention
from shared.prompts.checks import prompt_problems, prompt_warnings
from shared.prompts.chunks import (
    EmbeddingLike,
    EmbeddingLookup,
    EmbeddingTooLong,
    PromptChunk,
    PromptChunkFix,
    empty_chunk,
    tokenize_line,
)
from shared.prompts.composable import get_multicond_prompt_list
from shared.prompts.editing import get_learned_conditioning_prompt_schedules
from shared.prompts.extra_networks import ExtraNetworkTag, find_extra_networks, strip_extra_networks
from shared.prompts.tokens import BOS, CHUNK_LENGTH, COMMA, COMMA_PADDING_BACKTRACK, EOS, OPEN_CLIP_PAD

__all__ = [
    "BOS",
    "CHUNK_LENGTH",
    "COMMA",
    "COMMA_PADDING_BACKTRACK",
    "EOS",
    "OPEN_CLIP_PAD",
    "EmbeddingLike",
    "EmbeddingLookup",
    "EmbeddingTooLong",
    "ExtraNetworkTag",
    "PromptChunk",
    "PromptChunkFix",
    "WeightError",
    "empty_chunk",
    "find_extra_networks",
    "get_learned_conditioning_prompt_schedules",
    "get_multicond_prompt_list",
    "parse_prompt_attention",
    "prompt_problems",
    "prompt_warnings",
    "strip_extra_networks",
    "tokenize_line",
]
