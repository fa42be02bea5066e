"""Extra-network tags `<type:args>` in a prompt (docs/engine.md, "Prompt language", "Extra-network tags")."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "HYPERNET_TYPE",
    "LORA_TYPES",
    "ExtraNetworkTag",
    "LoraRequest",
    "LoraTagError",
    "find_extra_networks",
    "lora_request",
    "lora_requests",
    "strip_extra_networks",
]

# TYPE = word characters, ARGS = one or more characters other than `>`.
_TAG = re.compile(r"<(\w+):([^>]+)>")

LORA_TYPES = ("lora", "lyco")  # one handler, two names
HYPERNET_TYPE = "hypernet"


@dataclass(frozen=True)
class ExtraNetworkTag:
    type: str
    positional: tuple[str, ...]
    named: tuple[tuple[str, str], ...]  # items with exactly one `=`: `te=0.5`
    text: str  # the tag as written
    start: int  # its position in the prompt


def _tag(match: re.Match[str]) -> ExtraNetworkTag:
    positional: list[str] = []
    named: list[tuple[str, str]] = []
    for item in match.group(2).split(":"):
        parts = item.split("=")
        if len(parts) == 2:
            named.append((parts[0], parts[1]))
        else:
            positional.append(item)
    return ExtraNetworkTag(match.group(1), tuple(positional), tuple(named), match.group(0), match.start())


def find_extra_networks(prompt: str) -> list[ExtraNetworkTag]:
    """Every tag of `prompt`, in order."""
    return [_tag(match) for match in _TAG.finditer(prompt)]


def strip_extra_networks(prompt: str) -> tuple[str, list[ExtraNetworkTag]]:
    """A positive prompt without its tags (each replaced by nothing; spaces and commas around it stay) and the tags.
    Negative prompts keep their tags as text (the reference encodes them literally)."""
    return _TAG.sub("", prompt), find_extra_networks(prompt)


# ----------------------------------------------------------------------------------------------------------------
# LoRA / LyCORIS tag arguments (prompts-and-models.md §3.2)


@dataclass(frozen=True)
class LoraRequest:
    """One `<lora:…>`/`<lyco:…>` tag, resolved: the network's name, its text-encoder and UNet multipliers, and the
    number of rank components to use (`dyn`; None = all). `label` is what the infotext's `Lora hashes` calls it: the
    name as written with `:` and `,` removed."""

    name: str
    te: float
    unet: float
    dyn: int | None
    text: str

    @property
    def label(self) -> str:
        return self.name.replace(":", "").replace(",", "")


class LoraTagError(ValueError):
    """A LoRA tag whose arguments the farm cannot read (the reference drops every LoRA of the prompt then)."""


_LORA_NAMED = ("te", "unet", "dyn")


def _multiplier(tag: ExtraNetworkTag, what: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise LoraTagError(f"{tag.text}: the {what} multiplier {text!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise LoraTagError(f"{tag.text}: the {what} multiplier {text!r} is not a finite number")
    return value


def _dyn(tag: ExtraNetworkTag, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise LoraTagError(f"{tag.text}: dyn {text!r} is not a whole number (the ranks to keep)") from None
    if value < 0:
        raise LoraTagError(f"{tag.text}: dyn {text!r} must not be negative")
    return value


def lora_request(tag: ExtraNetworkTag) -> LoraRequest:
    """The arguments of a `lora`/`lyco` tag: `NAME[:TE[:UNET[:DYN]]]` with named overrides `te=`, `unet=`, `dyn=`.
    TE defaults to 1, UNET to the resolved TE (`<lora:x:te=0.5>` is 0.5/0.5), DYN to none. Raises LoraTagError where
    the reference would fail inside activation and drop the prompt's LoRAs, and for what it would ignore (an unknown
    named argument, a fifth positional one): the farm refuses instead (P6)."""
    first_item = tag.text[len(tag.type) + 2 : -1].split(":")[0]
    if not tag.positional or not tag.positional[0] or first_item.count("=") == 1:
        raise LoraTagError(f"{tag.text}: the first argument must be the network's name")
    if len(tag.positional) > 4:
        raise LoraTagError(f"{tag.text}: too many arguments (name, te, unet, dyn at most)")
    named: dict[str, str] = {}
    for key, value in tag.named:
        if key not in _LORA_NAMED:
            raise LoraTagError(f"{tag.text}: unknown argument {key!r} (te=, unet= and dyn= are known)")
        named[key] = value  # the last of a repeated argument wins, as in the reference
    positional = tag.positional
    te = _multiplier(tag, "text-encoder", positional[1]) if len(positional) > 1 else 1.0
    te = _multiplier(tag, "text-encoder", named["te"]) if "te" in named else te
    unet = _multiplier(tag, "UNet", positional[2]) if len(positional) > 2 else te
    unet = _multiplier(tag, "UNet", named["unet"]) if "unet" in named else unet
    dyn = _dyn(tag, positional[3]) if len(positional) > 3 else None
    dyn = _dyn(tag, named["dyn"]) if "dyn" in named else dyn
    return LoraRequest(positional[0], te, unet, dyn, tag.text)


def lora_requests(prompt: str) -> list[LoraRequest]:
    """The LoRAs a positive prompt asks for, in prompt order (`lora` and `lyco` tags together). Raises LoraTagError
    for malformed arguments and for two tags of one name (the reference applies the network twice, P8)."""
    requests = [lora_request(tag) for tag in find_extra_networks(prompt) if tag.type in LORA_TYPES]
    seen: set[str] = set()
    for request in requests:
        if request.name in seen:
            raise LoraTagError(
                f"the network {request.name!r} is named by more than one tag; give it once (the webui would apply it "
                "twice, at the last tag's multipliers)"
            )
        seen.add(request.name)
    return requests
