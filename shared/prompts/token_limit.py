"""The prompt length limit in CLIP tokens (issue 15, "Limits at the edge"; docs/reliability.md): the scheduler
refuses a prompt or negative prompt whose text the worker would encode is longer than the farm's
`max_prompt_tokens`, before any work (the character limit, `shared.job.spec.MAX_PROMPT_LENGTH`, comes first).

What is counted, in the order the worker reads a prompt (docs/engine.md, "Prompt language"):
- a positive prompt loses its extra-network tags and is split on AND, each part without its `:weight` suffix; each
  distinct part counts (the worker encodes each once);
- prompt editing and alternation: every branch counts, once, whatever the step that encodes it (so the count is
  an upper bound of what one step encodes, and exact for a prompt without `[a:b:n]` or `[a|b]`);
- emphasis brackets, explicit weights, escapes and BREAK are markup, not tokens; each emphasis segment is tokenized
  on its own, as the worker does.
Textual-inversion embeddings are counted as the tokens of their names (the scheduler does not know their vectors).
"""

from __future__ import annotations

from shared.errors import FieldProblem
from shared.prompts.attention import WeightError, parse_prompt_attention
from shared.prompts.bpe import count_tokens
from shared.prompts.composable import and_parts, split_weight
from shared.prompts.editing import Node, Scheduled, parse_schedule
from shared.prompts.extra_networks import strip_extra_networks
from shared.prompts.tokens import CHUNK_LENGTH

__all__ = ["encoded_texts", "prompt_token_count", "prompt_token_problems"]


def _every_branch(nodes: list[Node] | tuple[Node, ...]) -> str:
    """The text of `nodes` with every branch of every edit and alternation in it, branches apart by a space."""
    parts: list[str] = []
    for node in nodes:
        if isinstance(node, str):
            parts.append(node)
        else:
            branches = (node.before or (), node.after) if isinstance(node, Scheduled) else node.options
            parts.append(" ".join(_every_branch(branch) for branch in branches))
    return "".join(parts)


def encoded_texts(text: str, *, negative: bool) -> list[str]:
    """The pieces of text the worker tokenizes for `text` (see the module's docstring), each on its own."""
    if negative:
        parts = [text]
    else:
        stripped, _ = strip_extra_networks(text)
        parts = list(dict.fromkeys(split_weight(part)[0] for part in and_parts(stripped)))
    pieces: list[str] = []
    for part in parts:
        nodes = parse_schedule(part)
        whole = part if nodes is None else _every_branch(nodes)
        try:
            segments = parse_prompt_attention(whole)
        except WeightError:  # refused anyway (shared.prompts.checks); count the text as it is
            pieces.append(whole)
            continue
        pieces.extend(str(segment) for segment, weight in segments if not (segment == "BREAK" and weight == -1))
    return pieces


def prompt_token_count(text: str, *, negative: bool, stop_above: int | None = None) -> int:
    """CLIP tokens of what the worker encodes for `text`; with `stop_above`, counting stops once past it (the
    result is then more than `stop_above`, and may be less than the whole count)."""
    total = 0
    for piece in encoded_texts(text, negative=negative):
        remaining = None if stop_above is None else stop_above - total
        total += count_tokens(piece, stop_above=remaining)
        if stop_above is not None and total > stop_above:
            break
    return total


def prompt_token_problems(field: str, text: str, limit: int, *, negative: bool | None = None) -> list[FieldProblem]:
    """A problem naming `field` where `text` is more than `limit` tokens (empty: within it). `negative` defaults to
    whether the field is `negative_prompt`."""
    is_negative = field == "negative_prompt" if negative is None else negative
    if prompt_token_count(text, negative=is_negative, stop_above=limit) <= limit:
        return []
    return [
        FieldProblem(
            field,
            f"the prompt is longer than {limit} CLIP tokens ({limit // CHUNK_LENGTH} chunks of {CHUNK_LENGTH}), "
            "the farm's limit (its setting max_prompt_tokens); shorten it",
            "invalid_length",
        )
    ]
