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
# Written after the extra generation params, last on the line.
TRAILING_KEYS: tuple[str, ...] = ("Version", "User")


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
    """Split an infotext into (prompt, negative prompt, parameters).

    The parameter line is the last line when it has `Steps: `; a quoted value is a JSON string (taken as plain text
    when it is not valid JSON, as infotexts edited by hand sometimes are). Used by tests and the A1111 routes.
    """
    lines = text.strip().split("\n")
    params_line = lines.pop() if lines and "Steps: " in lines[-1] else ""
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    for line in lines:
        if negative_lines:
            negative_lines.append(line)
        elif line.startswith("Negative prompt:"):
            negative_lines.append(line.removeprefix("Negative prompt:").lstrip())
        else:
            prompt_lines.append(line)
    params: dict[str, str] = {}
    for match in _PARAM_RE.finditer(params_line):
        key, value = match.group(1).strip(), match.group(2).strip()
        if value.startswith('"'):
            try:
                value = json.loads(value)
            except ValueError:
                value = value.strip('"')
        params[key] = value
    return "\n".join(prompt_lines), "\n".join(negative_lines), params


# One `key: value` of the parameter line: a key (words, spaces and a few marks), then a JSON string or anything up
# to the next comma.
_PARAM_RE = re.compile(r'\s*([\w][\w \-/+().]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')
