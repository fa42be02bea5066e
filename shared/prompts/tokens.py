"""Token ids and sizes of the OpenAI CLIP BPE vocabulary that the prompt language depends on, in one place."""

from __future__ import annotations

__all__ = ["BOS", "CHUNK_LENGTH", "COMMA", "COMMA_PADDING_BACKTRACK", "EOS", "OPEN_CLIP_PAD", "PLACEHOLDER"]

BOS = 49406  # <|startoftext|>: first token of every chunk
EOS = 49407  # <|endoftext|>: last token of every chunk, and the padding of OpenAI CLIP (SD1)
COMMA = 267  # ",</w>": where comma backtracking may cut a chunk
OPEN_CLIP_PAD = 0  # OpenCLIP encoders (SD2, SDXL's bigG) pad with 0 after the first EOS
PLACEHOLDER = 0  # the id standing in for each vector of a textual-inversion embedding (the fix carries the vectors)
CHUNK_LENGTH = 75  # tokens of prompt per chunk; BOS and EOS make it the encoder's 77
COMMA_PADDING_BACKTRACK = 20  # the webui option's default: look back at most this many tokens for a comma
