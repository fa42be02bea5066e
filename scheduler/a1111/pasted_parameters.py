"""An infotext parsed as the webui's paste parses it: the `parameters` of `POST /sdapi/v1/png-info`.

The reference (`parse_generation_parameters`, v1.10) returns the prompt, the negative prompt and each key's text, a
`WxH` value as `<key>-1` and `<key>-2`, and then fills in, for keys the infotext lacks, the values the webui
assumed when it wrote an infotext without them: hires-fix, inpainting, sampler-schedule and VAE keys among them, so
a client pasting the parameters back gets every field set. The farm answers the same, key for key, whether or not
it renders the feature a key belongs to (a parse of text, not a promise); written from that behaviour, not copied:

- the last line holds the parameters only when it has at least three `key: value` pairs (else it is prompt text);
  lines before "Negative prompt:" are the prompt, the rest the negative prompt, each line stripped;
- a value in double quotes is a JSON string (kept as it is when it is not one);
- `Hypernet` (with `Hypernet strength`, default 1.0) is appended to the prompt as a `<hypernet:…>` tag;
- an old `First pass size` moves to `Size` and the size to `Hires resize` (the old hires fix; a first pass of 0×0
  is the size scaled to 512² pixels, each side rounded up to a multiple of 64);
- `Emphasis: Original` only when a prompt uses emphasis; `Cache FP16 weight for LoRA: false` only with FP8 weights;
- an infotext of a webui version before 1.6.0, 1.7.0-225 or 1.8.0 gets the compatibility keys that version implied
  (`Old prompt editing timelines`, `Pad conds v0`, `Downcast alphas_cumprod`, `Refiner switch by sampling steps`).

The webui's prompt styles (`Styles array`) are not extracted: the farm has no styles (`/sdapi/v1/prompt-styles` is
empty), which is what the reference does with none saved.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Final

from shared.prompts.attention import parse_prompt_attention

__all__ = ["pasted_parameters"]

# `key: value` as the reference matches them: a key starting with a word character, then a quoted string or
# anything up to the next comma.
_PARAM: Final = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_IMAGE_SIZE: Final = re.compile(r"^(\d+)x(\d+)$")

# What the webui assumed for a key an infotext lacks, in the order it fills them in (before the old hires fix).
_BEFORE_OLD_HIRES: Final[tuple[tuple[str, Any], ...]] = (
    ("Hires sampler", "Use same sampler"),
    ("Hires schedule type", "Use same scheduler"),
    ("Hires checkpoint", "Use same checkpoint"),
    ("Hires prompt", ""),
    ("Hires negative prompt", ""),
    ("Mask mode", "Inpaint masked"),
    ("Masked content", "original"),
    ("Inpaint area", "Whole picture"),
    ("Masked area padding", 32),
)
_AFTER_OLD_HIRES: Final[tuple[tuple[str, Any], ...]] = (
    ("RNG", "GPU"),
    ("Schedule type", "Automatic"),
    ("Schedule max sigma", 0),
    ("Schedule min sigma", 0),
    ("Schedule rho", 0),
    ("VAE Encoder", "Full"),
    ("VAE Decoder", "Full"),
    ("FP8 weight", "Disable"),
)
OLD_FIRST_PASS_PIXELS: Final = 512 * 512

# The webui versions whose infotexts imply compatibility settings: (major, minor, patch, post-release number).
_V160: Final = (1, 6, 0, 0)
_V170_TSNR: Final = (1, 7, 0, 225)
_V180: Final = (1, 8, 0, 0)


def pasted_parameters(infotext: str) -> dict[str, Any]:
    """`infotext` parsed as the webui's paste does (see the module text)."""
    *lines, last = infotext.strip().split("\n")
    if len(_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt, negative = _prompts(lines)
    parsed: dict[str, Any] = {}
    for key, raw in _PARAM.findall(last):
        value = _unquote(raw)
        size = _IMAGE_SIZE.match(value)
        if size is not None:
            parsed[f"{key}-1"], parsed[f"{key}-2"] = size.group(1), size.group(2)
        else:
            parsed[key] = value
    parsed["Prompt"], parsed["Negative prompt"] = prompt, negative
    parsed.setdefault("Clip skip", "1")
    if "Hypernet" in parsed:
        parsed["Prompt"] += f"<hypernet:{parsed['Hypernet']}:{parsed.get('Hypernet strength', '1.0')}>"
    if "Hires resize-1" not in parsed:
        parsed["Hires resize-1"], parsed["Hires resize-2"] = 0, 0
    for key, value in _BEFORE_OLD_HIRES:
        parsed.setdefault(key, value)
    _old_hires_fix(parsed)
    for key, value in _AFTER_OLD_HIRES:
        parsed.setdefault(key, value)
    if "Cache FP16 weight for LoRA" not in parsed and parsed["FP8 weight"] != "Disable":
        parsed["Cache FP16 weight for LoRA"] = False
    if "Emphasis" not in parsed and _uses_emphasis(prompt, negative):
        parsed["Emphasis"] = "Original"
    parsed.setdefault("Refiner switch by sampling steps", False)
    _compatibility_keys(parsed)
    return parsed


def _prompts(lines: list[str]) -> tuple[str, str]:
    """Lines up to the first "Negative prompt:" are the prompt; that line (and any later one starting so) loses
    the label, and it and the rest are the negative prompt."""
    prompt: list[str] = []
    negative: list[str] = []
    in_negative = False
    for raw in lines:
        line = raw.strip()
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line.removeprefix("Negative prompt:").strip()
        (negative if in_negative else prompt).append(line)
    return "\n".join(prompt), "\n".join(negative)


def _unquote(value: str) -> str:
    if len(value) < 2 or value[0] != '"' or value[-1] != '"':
        return value
    try:
        unquoted = json.loads(value)
    except ValueError:
        return value
    return unquoted if isinstance(unquoted, str) else value


def _old_hires_fix(parsed: dict[str, Any]) -> None:
    """An infotext of the old hires fix names its first pass: that becomes `Size`, and its size `Hires resize`."""
    first_width, first_height = parsed.get("First pass size-1"), parsed.get("First pass size-2")
    if first_width is None or first_height is None:
        return
    width, height = int(parsed.get("Size-1", 512)), int(parsed.get("Size-2", 512))
    first_width, first_height = int(first_width), int(first_height)
    if first_width == 0 or first_height == 0:
        scale = math.sqrt(OLD_FIRST_PASS_PIXELS / (width * height))
        first_width, first_height = math.ceil(scale * width / 64) * 64, math.ceil(scale * height / 64) * 64
    parsed["Size-1"], parsed["Size-2"] = first_width, first_height
    parsed["Hires resize-1"], parsed["Hires resize-2"] = width, height


def _uses_emphasis(prompt: str, negative: str) -> bool:
    parts = parse_prompt_attention(prompt) + parse_prompt_attention(negative)
    return any(weight != 1.0 and text != "BREAK" for text, weight in parts)


def _compatibility_keys(parsed: dict[str, Any]) -> None:
    version = _webui_version(parsed.get("Version"))
    if version is None:
        return
    if version < _V160 and "[" in parsed.get("Prompt", ""):
        parsed["Old prompt editing timelines"] = True
    if version < _V160 and parsed.get("Sampler", "") in ("DDIM", "PLMS"):
        parsed["Pad conds v0"] = True
    if version < _V170_TSNR:
        parsed["Downcast alphas_cumprod"] = True
    if version < _V180 and parsed.get("Refiner"):
        parsed["Refiner switch by sampling steps"] = True


_VERSION: Final = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?(?:-(\d+|rc\d*|RC\d*))?$")


def _webui_version(text: object) -> tuple[int, int, int, int] | None:
    """A webui `Version` (`v1.7.0-225-g1234abc`, `1.10.1`, `1.8.0-RC`) as (major, minor, patch, commits after the
    tag; -1 for a release candidate), or None for another program's (the farm's own `renderfarm 0.1.0` included)."""
    if not isinstance(text, str):
        return None
    kept = re.match(r"([^-]+-[^-]+)-.*", text)  # the tag and the commit count, without the commit hash
    found = _VERSION.match(kept.group(1) if kept else text)
    if found is None:
        return None
    major, minor, patch, suffix = found.groups()
    after = -1 if suffix is not None and not suffix.isdigit() else int(suffix or 0)
    return int(major), int(minor), int(patch or 0), after
