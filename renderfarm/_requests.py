"""Building the farm's requests from what the caller gives, with no I/O: job bodies, image slots, batch bodies, and
the small file helpers of downloads. Shared by `Client` and `AsyncClient` through `renderfarm._flows`.

A job's task id lives in the URL (`PUT /v1/jobs/{task_id}`): `job_request` splits it from the job's fields, so the
body of a single job never carries it. A batch item names its own id inside the item (`force_task_id`, the form
`POST /v1/batches` takes), which `JobRequest.as_batch_item` writes.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import os
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeAlias
from urllib.parse import quote

from PIL import Image
from pydantic import BaseModel

from renderfarm._types import Grid

__all__ = [
    "ImageInput",
    "JobRequest",
    "JobSpec",
    "file_sha256",
    "image_bytes",
    "is_reference",
    "job_request",
    "write_atomically",
]

ImageInput: TypeAlias = Image.Image | str | os.PathLike[str] | bytes
"""A picture: a PIL image, a file path, the file's bytes, or a reference the farm has (`asset:<sha256>`, a URL)."""
JobSpec: TypeAlias = Mapping[str, Any] | BaseModel
"""A job's fields as a mapping (images may be any `ImageInput`), or a pydantic model of them (the job contract's
`Img2ImgJob`)."""

_REFERENCE_PREFIXES: Final = ("asset:", "s3://", "http://", "https://", "data:")
# Shorthands the SDK accepts for the API's field names, in job specs, manifests and grid axes.
SHORTHANDS: Final = {"image": "init_images", "task_id": "force_task_id"}
IMAGE_FIELDS: Final = ("init_images", "mask", "latent_mask")
_UNSAFE_NAME: Final = re.compile(r"[^A-Za-z0-9._-]")


def folder_name(task_id: str) -> str:
    """A job's folder name: its task id; ids with characters some file systems refuse get a hash suffix to stay
    unique."""
    safe = _UNSAFE_NAME.sub("_", task_id)
    if safe != task_id or safe in (".", ".."):
        safe += "-" + hashlib.sha256(task_id.encode()).hexdigest()[:8]
    return safe


def is_reference(value: object) -> bool:
    """True for a string the farm resolves itself (`asset:<sha256>`, a URL, inline data), as opposed to a path."""
    return isinstance(value, str) and value.startswith(_REFERENCE_PREFIXES)


def image_bytes(image: ImageInput) -> bytes:
    """The file bytes of a picture that must be uploaded: PNG for a PIL image, the file for a path, bytes as they
    are. Raises FileNotFoundError for a missing path, TypeError for anything else."""
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()
    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image)
    if isinstance(image, str | os.PathLike):
        return Path(image).read_bytes()
    raise TypeError(f"an image must be a PIL image, a path, bytes or an asset id, not {type(image).__name__}")


def open_image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@dataclass(frozen=True)
class JobRequest:
    """One job to create: the `task_id` the caller chose (None: the client mints one) and the job's `fields`, its
    images still as given (the client resolves them)."""

    task_id: str | None
    fields: dict[str, Any]

    def as_batch_item(self) -> dict[str, Any]:
        """The job as an item of `POST /v1/batches`, which reads an item's own task id from `force_task_id`."""
        if self.task_id is None:
            return dict(self.fields)
        return {**self.fields, "force_task_id": self.task_id}


def job_request(
    spec: JobSpec | None,
    *,
    image: ImageInput | Sequence[ImageInput] | None = None,
    mask: ImageInput | None = None,
    task_id: str | None = None,
    fields: Mapping[str, Any] | None = None,
) -> JobRequest:
    """The job's fields and its task id, apart. `image` (one picture or a list) sets `init_images`; an `image`,
    `task_id` or `force_task_id` key in `spec` or `fields` is taken as `init_images` / the task id. Raises
    ValueError when one thing is given twice, TypeError for a bad spec."""
    body: dict[str, Any] = {}
    if isinstance(spec, Mapping):
        body.update(spec)
    elif isinstance(spec, BaseModel):
        body.update(spec.model_dump(mode="json", exclude_unset=True))
    elif spec is not None:
        raise TypeError(f"a job spec must be a mapping of fields or an Img2ImgJob, not {type(spec).__name__}")
    body.update(fields or {})
    for shorthand, name in SHORTHANDS.items():
        if shorthand in body:
            if body.get(name) is not None:
                raise ValueError(f"give either {shorthand!r} or {name!r}, not both")
            body[name] = body.pop(shorthand)
    if image is not None:
        if body.get("init_images") is not None:
            raise ValueError("give the init images once: as image= or in the spec, not both")
        body["init_images"] = image
    if mask is not None:
        if body.get("mask") is not None:
            raise ValueError("give the mask once: as mask= or in the spec, not both")
        body["mask"] = mask
    named = body.pop("force_task_id", None)
    if task_id is not None and named not in (None, task_id):
        raise ValueError(f"task_id {task_id!r} differs from the spec's force_task_id {named!r}")
    if "init_images" in body:
        body["init_images"] = _as_image_list(body["init_images"])
    return JobRequest(task_id if task_id is not None else named, body)


def _as_image_list(value: Any) -> builtins.list[Any]:
    return builtins.list(value) if isinstance(value, list | tuple) else [value]


def image_slots(body: Mapping[str, Any]) -> Iterator[tuple[str, int | None, Any]]:
    """`(field, index, value)` of every image in a job body (`index` None for the single-image fields)."""
    for index, value in enumerate(body.get("init_images") or ()):
        yield "init_images", index, value
    for name in IMAGE_FIELDS[1:]:
        if body.get(name) is not None:
            yield name, None, body[name]


def set_slot(body: dict[str, Any], name: str, index: int | None, value: str) -> None:
    if index is None:
        body[name] = value
    else:
        body[name][index] = value


def grid_body_axes(grid: Grid) -> dict[str, builtins.list[Any]]:
    """The grid's axes as the API takes them: `image` becomes `init_images`, `task_id` becomes `force_task_id`."""
    axes: dict[str, builtins.list[Any]] = {}
    for name, values in grid.axes.items():
        key = SHORTHANDS.get(name, name)
        if key in axes:
            raise ValueError(f"the grid names {key!r} twice")
        axes[key] = builtins.list(values)
    return axes


def batch_skeleton(defaults: JobSpec | None, batch_id: str | None) -> dict[str, Any]:
    chosen = str(uuid.UUID(batch_id)) if batch_id else str(uuid.uuid4())
    return {"batch_id": chosen, "defaults": job_request(defaults).as_batch_item() if defaults is not None else {}}


def check_batch_body(body: Mapping[str, Any]) -> None:
    if ("jobs" in body) == ("grid" in body):
        raise ValueError("give either jobs (a list) or grid (a Grid), not both or neither")


def quoted(task_id: str) -> str:
    """The task id as a URL path segment (the id alphabet's `:()` stay as they are)."""
    return quote(task_id, safe=":()")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str | None:
    """The sha256 of a file, or None when it does not exist."""
    try:
        with path.open("rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except FileNotFoundError:
        return None


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename, so a crash never leaves half a picture under
    the final name (which a resumed download would take for done)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
    temporary.write_bytes(data)
    os.replace(temporary, path)


class PathDigests:
    """sha256 of input files by (path, size, mtime): a manifest of 10,000 jobs of one picture reads it once."""

    def __init__(self) -> None:
        self._known: dict[tuple[str, int, int], str] = {}

    def of(self, path: Path) -> str | None:
        stat = path.stat()
        return self._known.get((str(path.resolve()), stat.st_size, stat.st_mtime_ns))

    def remember(self, path: Path, digest: str) -> None:
        stat = path.stat()
        self._known[(str(path.resolve()), stat.st_size, stat.st_mtime_ns)] = digest
