"""What the farm refuses or warns about in prompts (docs/engine.md, "Prompt language", "Deliberate differences").

Refused (422 naming the field), where the reference would crash or the farm cannot honour the prompt:
- P2: an emphasis weight float() rejects, `(x:1..2)`; a prompt-editing step too large to be a number, `[a:b:1e999]`.
- P6: a `<lora:…>` / `<lyco:…>` tag whose arguments cannot be read (`<lora:x:abc>`, `<lora:te=1>`, `<lora:x:dyn=a>`),
  where the reference silently drops every LoRA of the prompt; P8: two tags of one network (the reference applies it
  twice). Unknown network names are the scheduler's check (it knows the model files).
- `<hypernet:…>` in the positive prompt: diffusers has no hypernetwork support (they need a custom attention
  processor), so the farm does not apply them.
Warned (the job's warnings), where the reference renders something other than what was probably meant:
- P3: `prompt_editing_ignored` (the editing grammar fails, so every `[a:b:n]` / `[a|b]` of that prompt is literal);
  `prompt_weight_from_suffix` (a trailing `:number` without AND becomes a CFG weight).
- P9: `extra_network_in_negative` (tags in the negative prompt are encoded as text).
- `extra_network_unknown`: a tag of another type in the positive prompt is removed and does nothing.
"""

from __future__ import annotations

from typing import Any

from shared.errors import FieldProblem
from shared.prompts.attention import WeightError, parse_prompt_attention
from shared.prompts.composable import and_parts, split_weight
from shared.prompts.editing import Alternate, Node, Scheduled, parse_schedule
from shared.prompts.extra_networks import (
    HYPERNET_TYPE,
    LORA_TYPES,
    LoraTagError,
    find_extra_networks,
    lora_requests,
    strip_extra_networks,
)

__all__ = ["prompt_problems", "prompt_warnings"]


def _branches(node: Scheduled | Alternate) -> list[tuple[Node, ...]]:
    if isinstance(node, Scheduled):
        return [node.before or (), node.after]
    return list(node.options)


def _text_choosing(nodes: list[Node] | tuple[Node, ...], k: int) -> str:
    """The text made by taking branch k (or the last, where there are fewer) at every edit and alternation."""
    parts: list[str] = []
    for node in nodes:
        if isinstance(node, str):
            parts.append(node)
        else:
            branches = _branches(node)
            parts.append(_text_choosing(branches[min(k, len(branches) - 1)], k))
    return "".join(parts)


def _most_branches(nodes: list[Node] | tuple[Node, ...]) -> int:
    most = 1
    for node in nodes:
        if not isinstance(node, str):
            branches = _branches(node)
            most = max(most, len(branches), *(_most_branches(branch) for branch in branches))
    return most


def _texts(nodes: list[Node]) -> list[str]:
    """Texts the prompt can produce at some step, such that every branch of every edit and alternation is in one of
    them: whatever the step count, a malformed branch is found (the reference fails only if that branch is reached,
    the farm refuses it in any case)."""
    return [_text_choosing(nodes, k) for k in range(_most_branches(nodes))]


def _whens(nodes: list[Node] | tuple[Node, ...]) -> list[str]:
    found: list[str] = []
    for node in nodes:
        if isinstance(node, Scheduled):
            found.append(node.when)
            found += _whens(node.before or ()) + _whens(node.after)
        elif isinstance(node, Alternate):
            for option in node.options:
                found += _whens(option)
    return found


def _part_problems(field: str, text: str) -> list[FieldProblem]:
    nodes = parse_schedule(text)
    problems: list[FieldProblem] = []
    if nodes is None:
        texts = [text]
    else:
        for when in _whens(nodes):
            if abs(float(when)) == float("inf"):
                problems.append(
                    FieldProblem(
                        field,
                        f"the prompt-editing step {when!r} is too large to be a number (the webui fails on it)",
                        "invalid_prompt",
                    )
                )
        texts = _texts(nodes)
    for variant in dict.fromkeys(texts):
        try:
            parse_prompt_attention(variant)
        except WeightError as error:
            problems.append(
                FieldProblem(
                    field,
                    f"the emphasis weight {error.weight!r} in {variant!r:.80} is not a number "
                    "(write (text:1.2); the webui fails on it)",
                    "invalid_prompt",
                )
            )
            break
    return problems


def prompt_problems(field: str, text: str, *, negative: bool | None = None) -> list[FieldProblem]:
    """What makes `text` unacceptable as the prompt in `field` (empty: acceptable). `negative` defaults to whether
    the field is `negative_prompt`: a negative prompt has no AND, weight suffix or extra-network tags."""
    is_negative = field == "negative_prompt" if negative is None else negative
    problems: list[FieldProblem] = []
    if is_negative:
        parts = [text]
    else:
        types = {tag.type for tag in find_extra_networks(text)}
        try:
            lora_requests(text)
        except LoraTagError as error:
            problems.append(FieldProblem(field, str(error), "invalid_lora_tag"))
        if HYPERNET_TYPE in types:
            problems.append(
                FieldProblem(
                    field,
                    "hypernetworks (<hypernet:…>) are not supported: diffusers has no equivalent; use a LoRA",
                    "unsupported",
                )
            )
        stripped, _ = strip_extra_networks(text)
        parts = [split_weight(part)[0] for part in and_parts(stripped)]
    for part in dict.fromkeys(parts):
        problems.extend(_part_problems(field, part))
    return problems


def _editing_ignored(field: str, text: str) -> dict[str, Any] | None:
    if parse_schedule(text) is not None or "[" not in text:
        return None
    return {
        "code": "prompt_editing_ignored",
        "field": field,
        "message": "prompt editing and alternation are off for this prompt, as in the webui: a '|' outside "
        "[a|b], or a backslash at the end, makes every [from:to:when] and [a|b] in it plain text (write \\| for a "
        "literal bar)",
    }


def prompt_warnings(prompt: str, negative_prompt: str) -> list[dict[str, Any]]:
    """The job's warnings about its prompts (see the module's docstring)."""
    warnings: list[dict[str, Any]] = []
    stripped, tags = strip_extra_networks(prompt)
    unknown = sorted({tag.type for tag in tags if tag.type not in (*LORA_TYPES, HYPERNET_TYPE)})
    if unknown:
        warnings.append(
            {
                "code": "extra_network_unknown",
                "field": "prompt",
                "message": f"extra-network tags of unknown type ({', '.join(unknown)}) are removed from the prompt "
                "and do nothing, as in the webui",
            }
        )
    parts = and_parts(stripped)
    texts: list[str] = []
    for part in parts:
        text, weight, had_suffix = split_weight(part)
        texts.append(text)
        if had_suffix and len(parts) == 1:
            warnings.append(
                {
                    "code": "prompt_weight_from_suffix",
                    "field": "prompt",
                    "message": f"the trailing ':{part.rsplit(':', 1)[1].strip()}' is read as the prompt's CFG weight "
                    f"({weight:g}), as the webui does, and removed from the text; end the prompt with another "
                    "character (a comma) to keep it as text",
                }
            )
    ignored = next((w for w in (_editing_ignored("prompt", t) for t in texts) if w), None)
    if ignored:
        warnings.append(ignored)
    ignored = _editing_ignored("negative_prompt", negative_prompt)
    if ignored:
        warnings.append(ignored)
    in_negative = find_extra_networks(negative_prompt)
    if in_negative:
        warnings.append(
            {
                "code": "extra_network_in_negative",
                "field": "negative_prompt",
                "message": "extra-network tags in the negative prompt are not applied; as in the webui they are "
                f"encoded as plain text ({', '.join(tag.text for tag in in_negative)})",
            }
        )
    return warnings
