"""The A1111 "infotext": the generation parameters written into every PNG's `parameters` chunk.

Format (what the webui writes and what its "PNG info" tab and clients parse back):

    <prompt>
    Negative prompt: <negative prompt>
    Steps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 1, Size: 512x512, ...

Values with a comma, colon or newline are JSON-quoted; None values are dropped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

# The order in which the reference writes its keys (semantics §4 "Infotext keys"); extra generation params follow.
LEADING_KEYS: tuple[str, ...] = (
    "Steps",
    "Sampler",
    "Schedule type",
    "CFG scale",
    "Image CFG scale",
    "Seed",
    "Face restoration",
    "Size",
    "Model hash",
    "Model",
    "VAE hash",
    "VAE",
    "Variation seed",
    "Variation seed strength",
    "Seed resize from",
    "Denoising strength",
    "Conditional mask weight",
    "Clip skip",
    "ENSD",
    "Init image hash",
    "RNG",
    "Tiling",
)


def format_value(value: object) -> str:
    """Render one value as the webui does: integral floats without ".0", awkward strings JSON-quoted."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value)
    if any(char in text for char in ",:\n"):
        return json.dumps(text, ensure_ascii=False)
    return text


def create_infotext(
    prompt: str,
    negative_prompt: str,
    leading: Mapping[str, object],
    extra: Mapping[str, object],
    trailing: Mapping[str, object] | None = None,
) -> str:
    """The infotext of one image. `leading` is keyed by LEADING_KEYS, `extra` keeps its own order."""
    params: dict[str, object] = {key: leading[key] for key in LEADING_KEYS if leading.get(key) is not None}
    params.update((key, value) for key, value in extra.items() if value is not None)
    params.update((key, value) for key, value in (trailing or {}).items() if value is not None)
    line = ", ".join(f"{key}: {format_value(value)}" for key, value in params.items())
    negative = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{line}".strip()


def parse_infotext(text: str) -> tuple[str, str, dict[str, str]]:
    """Split an infotext into (prompt, negative prompt, parameters). Used by tests and the A1111 routes."""
    lines = text.strip().split("\n")
    params_line = lines.pop() if lines and ": " in lines[-1] and "Steps: " in lines[-1] else ""
    negative_lines: list[str] = []
    prompt_lines: list[str] = []
    for line in lines:
        if negative_lines or line.startswith("Negative prompt: "):
            negative_lines.append(line.removeprefix("Negative prompt: "))
        else:
            prompt_lines.append(line)
    params: dict[str, str] = {}
    for key, value in _split_params(params_line):
        params[key] = value
    return "\n".join(prompt_lines), "\n".join(negative_lines), params


def _split_params(line: str) -> list[tuple[str, str]]:
    """Split `k: v, k: "v, with comma", ...`; a quoted value is JSON and may hold commas and colons."""
    pairs: list[tuple[str, str]] = []
    for match in _PARAM_RE.finditer(line):
        key, value = match.group(1).strip(), match.group(2).strip()
        if value.startswith('"'):
            value = json.loads(value)
        pairs.append((key, value))
    return pairs


# A key (words, spaces, dashes, slashes), ": ", then a JSON string or anything up to the next comma.
_PARAM_RE = re.compile(r'\s*([\w][\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')
