"""What the farm does with each field and setting an A1111 client may send: honour it, warn about it, or refuse it.

The farm's promise is that nothing is silently rendered differently from the webui (docs/api.md "What the farm
honours, warns about, or refuses", where the same table is written out with the reasons). This module is the one
home of that rule for `POST /sdapi/v1/img2img` and `POST /sdapi/v1/options`:

- every field of `Img2ImgRequest` has a `FieldRule` in `FIELD_RULES` (a test fails for a field without one, so a new
  field cannot be ignored by accident);
- a field whose value changes nothing (its default, false, empty) is always fine; a value that would change the
  render in the webui is refused (422 naming the field) when the farm cannot do it, or named in the job's
  `warnings` when the render is unaffected but something else the client asked for is not done;
- fields the reference does not have are named in an `unknown_field` warning. The reference ignores them (pydantic),
  so refusing them would break clients written for newer webuis or extensions; a warning keeps them working and
  still catches a misspelt field;
- `override_settings` keys: those of the job contract (`shared.job.spec.SUPPORTED_OVERRIDE_KEYS`) are honoured and
  checked by the spec; the webui options in `OPTION_RULES` that change a render are refused unless they hold their
  default; every other key is named in an `ignored_setting` warning.

Pure (no I/O): the routes call `review_request` before translating, and pass its warnings to admission.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from scheduler.a1111.schema import Img2ImgRequest
from scheduler.a1111.translate import INFOTEXT_KEYS_DESCRIPTIVE, INFOTEXT_KEYS_READ
from shared.errors import FieldProblem, InputError
from shared.infotext import parse_infotext
from shared.job.spec import SUPPORTED_OVERRIDE_KEYS
from shared.job.warnings import JobWarning, warning

MAX_NAMED = 20  # unknown fields or settings named one by one; the rest are counted in one more warning
MAX_NAME_CHARS = 64  # a name longer than this is cut in the warning


class Treatment(enum.Enum):
    HONOURED = "honoured"  # the farm does what the webui does with it
    NO_EFFECT = "no effect"  # the webui's API does nothing with it either, so the render is the same
    WARNED = "warned"  # accepted; a value that is not the default is named in the job's warnings
    REFUSED = "refused"  # a value that is not the default is a 422 naming the field


def _is_set(value: Any) -> bool:
    """True for a value that asks for something: not None, false, "", an empty list or object."""
    return value not in (None, False, "") and value != [] and value != {}


def _differs_from(*defaults: Any) -> Callable[[Any], bool]:
    """A test for "changes something": the value is set and none of `defaults` (None always counts as unset)."""

    def differs(value: Any) -> bool:
        if value is None:
            return False
        for default in defaults:
            if isinstance(default, float) and isinstance(value, int | float) and not isinstance(value, bool):
                if math.isclose(float(value), default):
                    return False
            elif value == default:
                return False
        return True

    return differs


@dataclass(frozen=True)
class FieldRule:
    """How one field is treated. `applies(value)` says whether the value asks for what the rule is about (for
    WARNED and REFUSED); `code` and `message` are the warning's or the 422's."""

    treatment: Treatment
    reason: str
    applies: Callable[[Any], bool] = _is_set
    code: str = ""
    message: str = ""


def _honoured(reason: str) -> FieldRule:
    return FieldRule(Treatment.HONOURED, reason)


def _no_effect(reason: str) -> FieldRule:
    return FieldRule(Treatment.NO_EFFECT, reason)


def _refused(message: str, applies: Callable[[Any], bool] = _is_set, code: str = "unsupported") -> FieldRule:
    return FieldRule(Treatment.REFUSED, message, applies, code, message)


def _warned(code: str, message: str, applies: Callable[[Any], bool] = _is_set) -> FieldRule:
    return FieldRule(Treatment.WARNED, message, applies, code, message)


_HONOURED_FIELDS = {
    "prompt": "rendered (prompt syntax: docs/engine.md)",
    "negative_prompt": "rendered",
    "styles": "must be empty: the farm keeps no style presets (the job contract refuses others, 422)",
    "seed": "honoured",
    "subseed": "honoured",
    "subseed_strength": "honoured",
    "seed_resize_from_h": "honoured",
    "seed_resize_from_w": "honoured",
    "sampler_name": "honoured; an unknown name is a 422 (the webui falls back to its first sampler)",
    "scheduler": "honoured; an unknown name is a 422",
    "batch_size": "honoured, up to the farm's limit",
    "n_iter": "honoured, up to the farm's limit",
    "steps": "honoured",
    "cfg_scale": "honoured",
    "width": "honoured (a multiple of 8, at least 64)",
    "height": "honoured (a multiple of 8, at least 64)",
    "eta": "honoured",
    "denoising_strength": "honoured",
    "override_settings": "each key by its own rule (OPTION_RULES, below)",
    "init_images": "honoured",
    "resize_mode": "honoured",
    "image_cfg_scale": "honoured for edit (InstructPix2Pix) models; ignored by other models, as in the webui",
    "mask": "honoured",
    "mask_blur_x": "honoured",
    "mask_blur_y": "honoured",
    "mask_blur": "honoured, with the webui's int-only quirk",
    "mask_round": "honoured",
    "inpainting_fill": "honoured",
    "inpaint_full_res": "honoured",
    "inpaint_full_res_padding": "honoured",
    "inpainting_mask_invert": "honoured",
    "initial_noise_multiplier": "honoured",
    "latent_mask": "honoured (an image reference like mask; the webui cannot decode it)",
    "force_task_id": "the job's task id; reusing one is create-or-get (a different request: 409)",
    "sampler_index": "honoured: the sampler when sampler_name is empty",
    "include_init_images": "honoured: init_images and mask are echoed in parameters only when true",
    "send_images": "honoured: false answers with no images",
    "save_images": "honoured as far as the answer goes: true puts a grid first when there are several images. "
    "Results are always kept in the farm's storage under the job, whatever the value (farm storage, "
    "not the webui's output folder)",
    "infotext": "honoured: its fields fill the fields not sent, as in the webui; parameters the farm does not apply "
    "are named in an ignored_infotext warning",
    "tiling": "honoured: circular padding of the UNet and VAE (null: the webui option `tiling`)",
    "s_min_uncond": 'honoured: negative guidance minimum sigma (docs/engine.md, "Prompt encoding")',
    "s_churn": 'honoured by the samplers that take it; a set webui option wins (docs/engine.md, "Sampler options")',
    "s_tmin": "honoured, as s_churn",
    "s_tmax": "honoured, as s_churn (0: no upper bound)",
    "s_noise": "honoured, as s_churn",
}


def _field_rules() -> dict[str, FieldRule]:
    rules: dict[str, FieldRule] = {name: _honoured(reason) for name, reason in _HONOURED_FIELDS.items()}
    rules.update(
        {
            "restore_faces": _refused("face restoration is not supported"),
            "do_not_save_samples": _no_effect(
                "the webui's API overwrites it with `not save_images`, so it does nothing there either"
            ),
            "do_not_save_grid": _no_effect(
                "the webui's API overwrites it with `not save_images`, so it does nothing there either"
            ),
            "override_settings_restore_afterwards": _warned(
                "not_kept",
                "false would keep the overrides as the server's settings in the webui; the farm applies "
                "override_settings to this job only (use POST /sdapi/v1/options to keep settings)",
                applies=lambda value: value is False,
            ),
            "refiner_checkpoint": _refused(
                "a refiner is not supported yet",
                applies=lambda value: _is_set(value) and str(value).strip() not in ("None", ""),
            ),
            "refiner_switch_at": _no_effect("only used with refiner_checkpoint, which is refused"),
            "disable_extra_networks": _refused(
                "disable_extra_networks=true is not supported: the farm applies the prompt's <lora:> tags; remove "
                "them from the prompt instead",
                applies=lambda value: value is True,
            ),
            "firstpass_image": _warned(
                "ignored_field",
                "is a txt2img hires-fix input; img2img ignores it (as the webui does)",
            ),
            "comments": _warned("ignored_field", "comments are not kept with the job"),
            "script_name": _refused(
                "the farm runs no webui scripts (the webui answers 422 for a script it does not have)",
                code="unknown_script",
            ),
            "script_args": _warned(
                "ignored_field", "script arguments do nothing without a script (script_name), as in the webui"
            ),
            "alwayson_scripts": _refused("the farm runs no webui scripts", code="unknown_script"),
        }
    )
    return rules


FIELD_RULES: dict[str, FieldRule] = _field_rules()


# ----------------------------------------------------------------------------------------------------------------
# override_settings keys


@dataclass(frozen=True)
class OptionRule:
    """A webui option the farm does not honour but that changes a render: a value other than `defaults` is a 422."""

    defaults: tuple[Any, ...]
    message: str

    def refuses(self, value: Any) -> bool:
        return _differs_from(*self.defaults)(value)


OPTION_RULES: dict[str, OptionRule] = {
    "sd_unet": OptionRule(("Automatic", "None"), "separate UNet files are not supported"),
    "upscaler_for_img2img": OptionRule(
        ("", "None", "Lanczos"), "img2img upscalers are not supported (resizing uses Lanczos, the webui's default)"
    ),
    "face_restoration": OptionRule((False,), "face restoration is not supported"),
    "token_merging_ratio": OptionRule((0.0,), "token merging is not supported"),
    "token_merging_ratio_img2img": OptionRule((0.0,), "token merging is not supported"),
    "sd_vae_encode_method": OptionRule(("Full",), "only the full VAE encodes (TAESD encoding is not supported)"),
    "sd_vae_decode_method": OptionRule(("Full",), "only the full VAE decodes (TAESD decoding is not supported)"),
    "sd_noise_schedule": OptionRule(("Default",), "the zero-terminal-SNR noise schedule is not supported"),
    "enable_quantization": OptionRule((False,), "sigma quantisation of K samplers is not supported"),
    "sd_hypernetwork": OptionRule(("None", ""), "hypernetworks are not supported yet"),
}

# Webui options that the translation honours as job fields (scheduler/a1111/translate.py): `tiling` is the default
# of the field of that name.
TRANSLATED_OPTIONS = ("tiling",)

# Options the job contract accepts but that do not change a render the way the webui's would: shared.job.warnings
# names them when they are set (initial_noise_multiplier) or the spec refuses them (none now: sd_vae is a VAE file
# name the scheduler checks against its models folder, scheduler/model_checks.py). samples_format is honoured: the
# results are stored in it (shared.output_formats).
CONTRACT_WARNED_OPTIONS = ("initial_noise_multiplier",)
CONTRACT_REFUSED_OPTIONS: tuple[str, ...] = ()


def _shown(name: str) -> str:
    """`name` as it may appear in a message: printable, at most MAX_NAME_CHARS (a warning is stored as JSON)."""
    shown = name if name.isprintable() else ascii(name)[1:-1]
    return shown if len(shown) <= MAX_NAME_CHARS else shown[: MAX_NAME_CHARS - 3] + "..."


def _named_warnings(names: Iterable[str], prefix: str, code: str, message: str, kind: str) -> list[JobWarning]:
    """One warning per name (up to MAX_NAMED), then one counting the rest."""
    found: list[JobWarning] = []
    names = list(names)
    for name in names[:MAX_NAMED]:
        found.append(warning(code, f"{prefix}{_shown(name)}", message))
    if len(names) > MAX_NAMED:
        found.append(warning(code, prefix.rstrip(".") or "body", f"and {len(names) - MAX_NAMED} more {kind}"))
    return found


def review_overrides(
    overrides: Mapping[str, Any], prefix: str = "override_settings.", *, translated: bool = True
) -> list[JobWarning]:
    """The warnings for webui options set in `overrides`; raises InputError (422) naming each refused one.

    Keys of the job contract are left to the spec (it checks their values and names them the same way).
    `translated`: whether the TRANSLATED_OPTIONS are used (a job's overrides) or not (the tenant's stored options)."""
    used = (*SUPPORTED_OVERRIDE_KEYS, *(TRANSLATED_OPTIONS if translated else ()))
    problems = [
        FieldProblem(f"{prefix}{key}", f"{rule.message} (got {value!r:.80})", "unsupported")
        for key, value in overrides.items()
        if key not in SUPPORTED_OVERRIDE_KEYS and (rule := OPTION_RULES.get(key)) is not None and rule.refuses(value)
    ]
    if problems:
        raise InputError.from_problems(problems)
    ignored = [key for key in overrides if key not in used and key not in OPTION_RULES]
    return _named_warnings(
        ignored,
        prefix,
        "ignored_setting",
        "is not a setting the farm applies; it was ignored",
        "settings the farm does not apply were ignored",
    )


# ----------------------------------------------------------------------------------------------------------------
# The request


def _script_problems(request: Img2ImgRequest) -> list[FieldProblem]:
    rule = FIELD_RULES["alwayson_scripts"]
    return [
        FieldProblem(f"alwayson_scripts.{name}", f"always-on script {name!r}: {rule.message}", rule.code)
        for name in map(_shown, request.alwayson_scripts)
    ]


def _infotext_warnings(request: Img2ImgRequest) -> list[JobWarning]:
    """One warning naming the keys of the request's infotext that the farm does not apply (the webui may have)."""
    if not request.infotext:
        return []
    params = parse_infotext(request.infotext)[2]
    unread = [key for key in params if key not in INFOTEXT_KEYS_READ and key not in INFOTEXT_KEYS_DESCRIPTIVE]
    if not unread:
        return []
    names = ", ".join(_shown(key) for key in unread[:MAX_NAMED])
    more = f" and {len(unread) - MAX_NAMED} more" if len(unread) > MAX_NAMED else ""
    return [warning("ignored_infotext", "infotext", f"these parameters were not applied: {names}{more}")]


def review_request(request: Img2ImgRequest) -> list[JobWarning]:
    """The admission warnings of an A1111 request; raises InputError (422) naming every refused field at once."""
    problems: list[FieldProblem] = []
    found: list[JobWarning] = []
    for name, rule in FIELD_RULES.items():
        if rule.treatment not in (Treatment.REFUSED, Treatment.WARNED) or name == "alwayson_scripts":
            continue
        value = getattr(request, name)
        if not rule.applies(value):
            continue
        if rule.treatment is Treatment.REFUSED:
            problems.append(FieldProblem(name, f"{rule.message} (got {value!r:.80})", rule.code))
        else:
            found.append(warning(rule.code, name, rule.message))
    problems.extend(_script_problems(request))
    try:
        found.extend(review_overrides(request.override_settings or {}))
    except InputError as exc:
        problems.extend(exc.problems)
    if problems:
        raise InputError.from_problems(problems)
    found.extend(
        _named_warnings(
            (request.model_extra or {}).keys(),
            "",
            "unknown_field",
            "is not a field of the webui's img2img request; it was ignored",
            "unknown fields were ignored",
        )
    )
    found.extend(_infotext_warnings(request))
    return found
