"""Submission-time checks of the model files a job names (docs/engine.md "Model files"; proposals P6, P15, P19).

Every door (`POST /v1/jobs`, A1111's img2img, a batch's children) passes through `scheduler.admission.admit`,
which calls `check_model_files`:

- the model (`model`, else `override_settings.sd_model_checkpoint`) in any form of prompts-and-models.md §8.2
  (title, name, stem, hashes…) is replaced by its canonical name (the checkpoint's `name`: `sub/x.safetensors`, a
  diffusers folder's name, a tiny model's name); a name the farm does not know is a 422 naming the field. The farm's
  default model (RENDERFARM_MODEL) is always known, even when it is a hub id. A scheduler without
  RENDERFARM_MODELS_DIR cannot see the workers' files: it resolves the tiny models' aliases and lets other names
  through unchanged (the job gets `no_worker_serves_model` when no live worker consumes its queue). A name that is
  not in the scheduler's folder but that a live worker announces is known too;
- `override_settings.sd_vae`: "Automatic", "None", or the file name of a VAE the farm has; otherwise a 422 naming
  `override_settings.sd_vae` (the reference warns and uses the checkpoint's own VAE);
- `<lora:NAME…>` / `<lyco:NAME…>` in the positive prompt: NAME (a file name or alias) must be a LoRA the farm has,
  and its keys must fit the job's model (an SDXL LoRA on an SD 1.x model, or keys matching no layer at all, are
  refused); otherwise a 422 naming `prompt` (the reference drops the LoRA silently).

Blocking (it reads the models folder, hashes new files): runs in the admission's worker thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scheduler.deps import Services
from shared.errors import FieldProblem, InputError
from shared.job.spec import OWN_VAE_VALUES, Img2ImgJob
from shared.models.architecture import lora_architecture, lora_mismatch
from shared.models.catalogue import ModelFiles, model_files
from shared.models.checkpoints import Checkpoint, split_title
from shared.models.vaes import UnknownVae
from shared.prompts.extra_networks import LORA_TYPES, find_extra_networks

__all__ = ["catalogue_of", "check_model_files", "lora_problems", "resolve_model_name", "vae_problem"]

MAX_NAMES_SHOWN = 8


def catalogue_of(services: Services) -> ModelFiles:
    """The scheduler's catalogue of RENDERFARM_MODELS_DIR (hashes cached under the data dir)."""
    return model_files(services.settings.models_dir, services.settings.data_dir)


def _known_names(files: ModelFiles) -> str:
    names = [entry.name for entry in files.checkpoints().entries]
    shown = ", ".join(names[:MAX_NAMES_SHOWN]) + (", …" if len(names) > MAX_NAMES_SHOWN else "")
    return f"GET /sdapi/v1/sd-models lists them: {shown}"


def resolve_model_name(services: Services, name: str, field: str) -> tuple[str, Checkpoint | None]:
    """The canonical name of model `name` and its checkpoint (None for a name only the workers can tell: the default
    model when it is no file, any name when the scheduler has no models folder). Raises InputError naming `field`."""
    files = catalogue_of(services)
    entry = files.resolve_checkpoint(name)
    if entry is not None:
        return entry.name, entry
    if name == services.settings.model:
        return name, None
    announced = _announced_as(split_title(name)[0], services.workers.loadable_models())
    if announced is not None:
        # A model a live worker serves from its own folder (scheduler.worker_registry): the workers' announcements
        # are the registry's other half.
        return announced, None
    if services.settings.models_dir is None:
        # The workers' folders are not visible here, and the announcements cannot tell a typo from a model whose
        # workers are scaled to zero: the name passes as it was before titles were resolved (the title's hash
        # dropped), so its queue is the one the workers serving that name consume; `no_worker_serves_model` warns
        # when no live worker consumes it. A cluster gets its 422s by mounting the models folder on the scheduler.
        return split_title(name)[0], None
    raise InputError(
        f"no model {name[:200]!r} in the farm's models folder (a title, name, file stem or hash); "
        + _known_names(files),
        code="unknown_model",
        field=field,
    )


def _announced_as(name: str, announced: frozenset[str]) -> str | None:
    """The announced canonical name that `name` is, or is the file stem of (`x` for `sub/x.safetensors`), or None."""
    if name in announced:
        return name
    return next((model for model in sorted(announced) if Path(model).stem == name), None)


def _default_checkpoint(services: Services) -> Checkpoint | None:
    return catalogue_of(services).resolve_checkpoint(services.settings.model)


def vae_problem(files: ModelFiles, value: str, checkpoint: Checkpoint | None, field: str) -> FieldProblem | None:
    try:
        files.vae_for(value, checkpoint)
    except UnknownVae as exc:
        names = [vae.name for vae in files.vaes()][:MAX_NAMES_SHOWN]
        where = "names" if checkpoint is None or value in exc.args else f"checkpoint's {checkpoint.stem}.json names"
        return FieldProblem(
            field,
            f"sd_vae {where} VAE {exc.args[0]!r:.200}, which the farm does not have: use "
            f"{' or '.join(OWN_VAE_VALUES)} or a file name GET /sdapi/v1/sd-vae lists ({', '.join(names) or 'none'})",
            "unknown_vae",
        )
    return None


def lora_problems(files: ModelFiles, prompt: str, checkpoint: Checkpoint | None, field: str) -> list[FieldProblem]:
    """One problem per LoRA tag of `prompt` that names no LoRA, or a LoRA that fits no layer of `checkpoint`."""
    problems: list[FieldProblem] = []
    architecture = files.architecture(checkpoint) if checkpoint is not None else None
    for tag in find_extra_networks(prompt):
        if tag.type not in LORA_TYPES or not tag.positional:
            continue  # a first item that is named is the argument parser's problem (shared/prompts/checks.py)
        name = tag.positional[0]
        lora = files.find_lora(name)
        if lora is None:
            problems.append(
                FieldProblem(
                    field,
                    f"{tag.text[:200]}: no LoRA named {name[:200]!r} (a file name without extension, or its "
                    "ss_output_name alias; GET /sdapi/v1/loras lists them)",
                    "unknown_lora",
                )
            )
            continue
        if architecture is None:
            continue
        try:
            mismatch = lora_mismatch(lora_architecture(lora.path), architecture)
        except (OSError, ValueError) as exc:
            mismatch = f"its file cannot be read ({exc})"
        if mismatch is not None:
            problems.append(
                FieldProblem(
                    field,
                    f"{tag.text[:200]}: LoRA {lora.name!r} matches no layer of the model: {mismatch}",
                    "lora_matches_no_layer",
                )
            )
    return problems


def check_model_files(services: Services, job: Img2ImgJob, field_prefix: str = "") -> Img2ImgJob:
    """`job` with its model's canonical name, after checking its VAE and LoRA names (module docstring). Raises
    InputError (422) naming `{field_prefix}<field>`."""
    files = catalogue_of(services)
    update: dict[str, Any] = {}
    checkpoint: Checkpoint | None
    name = job.resolved_model
    if name is not None:
        field = "model" if job.model is not None else "override_settings.sd_model_checkpoint"
        canonical, checkpoint = resolve_model_name(services, name, field_prefix + field)
        if job.model is not None:
            if canonical != job.model:
                update["model"] = canonical
                if "sd_model_checkpoint" in job.override_settings:
                    update["override_settings"] = {**job.override_settings, "sd_model_checkpoint": canonical}
        elif canonical != name:
            update["override_settings"] = {**job.override_settings, "sd_model_checkpoint": canonical}
    else:
        checkpoint = _default_checkpoint(services)
    problems: list[FieldProblem] = []
    sd_vae = job.override_settings.get("sd_vae")
    if isinstance(sd_vae, str):
        problem = vae_problem(files, sd_vae, checkpoint, f"{field_prefix}override_settings.sd_vae")
        if problem is not None:
            problems.append(problem)
    problems += lora_problems(files, job.prompt, checkpoint, f"{field_prefix}prompt")
    if problems:
        raise InputError.from_problems(problems)
    return job.model_copy(update=update) if update else job
