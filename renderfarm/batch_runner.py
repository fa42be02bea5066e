"""Running a manifest's batch end to end: submit, watch, download as items finish, resume, summarise.

    from renderfarm import Client
    from renderfarm.batch_runner import run_batch

    with Client() as farm:
        report = run_batch(farm, "sweep.yaml", Path("out"))
    print(report.counts, report.sheet_path)

The output folder holds everything, so it is also the resume state:

    out/.renderfarm-batch.json      the batch id and the manifest's sha256 (a changed manifest is a new batch)
    out/items/<task id>/            result-0.png, overlay-0.png, mask-0.png, and job.json (the final snapshot)
    out/inputs/                     copies of the input pictures and masks, for the sheet
    out/results.json                the results manifest: every item's state, inputs and output files
    out/index.html                  the contact sheet

`job.json` is written last, after every picture of the item is downloaded and checked, so an item with one is
done. Re-running skips done items by task id; when all are done it sends nothing to the farm at all. Submitting
again is harmless anyway: the batch id makes `POST /v1/batches` create-or-get.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO
from urllib.parse import quote

from renderfarm._requests import file_sha256, folder_name, write_atomically
from renderfarm._types import Batch, Job, JobState
from renderfarm.client import Client
from renderfarm.contact_sheet import SheetRow, axis_label, write_contact_sheet
from renderfarm.manifest import Manifest, ManifestItem, load_manifest
from renderfarm.progress import BatchProgress

__all__ = ["BatchReport", "BatchRunError", "ProgressBar", "run_batch"]

ProgressBar = BatchProgress  # the name it had before it moved to renderfarm/progress.py

STATE_FILE: Final = ".renderfarm-batch.json"
ITEMS_DIR: Final = "items"
INPUTS_DIR: Final = "inputs"
RESULTS_FILE: Final = "results.json"
SHEET_FILE: Final = "index.html"
JOB_FILE: Final = "job.json"
MIN_POLL_S: Final = 0.5  # seconds between status reads of a small batch
MAX_POLL_S: Final = 5.0  # ... and of a huge one (each read of finished items costs the farm a page per 1,000)


class BatchRunError(RuntimeError):
    """The batch cannot be run as the manifest describes it (the farm disagrees about its items)."""


@dataclass(frozen=True)
class BatchReport:
    """What a run did: `counts` by state of the whole batch at the end, whether it `submitted` anything, how many
    files it `downloaded` (0 on a re-run of a finished batch) and how many items were `skipped` as already done."""

    batch_id: str
    out: Path
    total: int
    counts: Mapping[str, int]
    submitted: bool
    downloaded: int
    skipped: int
    elapsed_s: float
    results_path: Path
    sheet_path: Path
    complete: bool = True
    failed: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "out": str(self.out),
            "total": self.total,
            "counts": dict(self.counts),
            "complete": self.complete,
            "submitted": self.submitted,
            "downloaded": self.downloaded,
            "skipped": self.skipped,
            "failed": list(self.failed),
            "elapsed_s": round(self.elapsed_s, 2),
            "results": str(self.results_path),
            "contact_sheet": str(self.sheet_path),
        }


# --------------------------------------------------------------------------------------------------------------
# The output folder


def item_folder(out: Path, task_id: str) -> Path:
    """`out/items/<task id>` (see `folder_name`)."""
    return out / ITEMS_DIR / folder_name(task_id)


def read_done(out: Path, task_id: str) -> Job | None:
    """The item's final snapshot if it is done (its `job.json` exists and names a finished job), else None."""
    try:
        data = json.loads((item_folder(out, task_id) / JOB_FILE).read_text(encoding="utf-8"))
        job = Job.from_dict(data)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return job if job.is_finished and job.task_id == task_id else None


def _choose_batch_id(manifest: Manifest, out: Path, explicit: str | None) -> str:
    """The batch id: given, else the manifest's, else the one this folder's last run used for the same manifest,
    else a new one (recorded, so an interrupted run resumes the same batch)."""
    state_path = out / STATE_FILE
    chosen = explicit or manifest.batch_id
    if chosen is None:
        try:
            state = json.loads(state_path.read_text(encoding="utf-8"))
            if state.get("manifest_sha256") == manifest.digest:
                chosen = str(state["batch_id"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    chosen = str(uuid.UUID(chosen)) if chosen else str(uuid.uuid4())
    state = {"batch_id": chosen, "manifest": str(manifest.path.resolve()), "manifest_sha256": manifest.digest}
    write_atomically(state_path, json.dumps(state, indent=2).encode())
    return chosen


# --------------------------------------------------------------------------------------------------------------
# Running


@dataclass
class _Run:
    client: Client
    out: Path
    items: list[ManifestItem]
    task_ids: list[str]
    done: dict[str, Job]
    downloaded: int = 0

    def finish(self, job: Job) -> None:
        """Download a finished item's pictures (checked), then record it as done."""
        folder = item_folder(self.out, job.task_id)
        if job.state is JobState.SUCCEEDED:
            before = {artifact.filename: file_sha256(folder / artifact.filename) for artifact in job.artifacts}
            self.client.download(job, folder)
            self.downloaded += sum(1 for a in job.artifacts if before.get(a.filename) != a.sha256)
        # Last: its presence means "done" to a resumed run.
        write_atomically(folder / JOB_FILE, json.dumps(dict(job.raw), indent=2).encode())
        self.done[job.task_id] = job


def run_batch(
    client: Client,
    manifest: Manifest | str | Path,
    out: Path,
    *,
    batch_id: str | None = None,
    progress: TextIO | None = sys.stderr,
    poll_interval_s: float | None = None,
    timeout_s: float | None = None,
    on_poll: Callable[[Batch], None] | None = None,
) -> BatchReport:
    """Submit the manifest's batch (unless every item is done already), show progress, download each item as it
    finishes, and write the results manifest and the contact sheet. Interrupting it (Ctrl-C) leaves the farm
    working; running it again resumes.

    `progress`: where the progress bar goes (None: nowhere). `timeout_s`: stop waiting after this many seconds
    (the report then has `complete=False`). `on_poll` sees every status read (for tests and dashboards).
    Raises ManifestError, BatchRunError, and the client's errors.
    """
    started = time.monotonic()
    loaded = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    out.mkdir(parents=True, exist_ok=True)
    chosen = _choose_batch_id(loaded, out, batch_id)
    items = loaded.items()
    task_ids = [item.task_id or f"{chosen}-{item.index}" for item in items]
    if len(set(task_ids)) != len(task_ids):
        raise BatchRunError("the manifest names one task id twice")
    done = {task_id: job for task_id in task_ids if (job := read_done(out, task_id)) is not None}
    run = _Run(client, out, items, task_ids, done)
    skipped = len(done)
    submitted = False
    complete = True
    bar = BatchProgress(progress, len(items))
    try:
        if len(done) < len(task_ids):
            created = client.submit_batch(batch_id=chosen, **loaded.submit_arguments())
            submitted = True
            if list(created.task_ids) != task_ids:
                raise BatchRunError(
                    f"the farm's batch {chosen} has other items than this manifest ({len(created.task_ids)} vs "
                    f"{len(task_ids)}); was the manifest edited? Delete {out / STATE_FILE} to start a new batch"
                )
            complete = _watch(run, chosen, bar, poll_interval_s, timeout_s, on_poll, started)
    finally:
        bar.close()
        results_path, sheet_path = write_outputs(run, loaded, chosen)
    counts = {state.value: 0 for state in JobState}
    for task_id in task_ids:
        job = done.get(task_id)
        counts[job.state.value if job is not None else JobState.QUEUED.value] += 1
    failed = tuple(task_id for task_id in task_ids if task_id in done and done[task_id].state is JobState.FAILED)
    return BatchReport(
        batch_id=chosen,
        out=out,
        total=len(task_ids),
        counts=counts,
        submitted=submitted,
        downloaded=run.downloaded,
        skipped=skipped,
        elapsed_s=time.monotonic() - started,
        results_path=results_path,
        sheet_path=sheet_path,
        complete=complete and len(done) == len(task_ids),
        failed=failed,
    )


def _watch(
    run: _Run,
    batch_id: str,
    bar: BatchProgress,
    poll_interval_s: float | None,
    timeout_s: float | None,
    on_poll: Callable[[Batch], None] | None,
    started: float,
) -> bool:
    """Poll the batch until every item is done here; True when it is, False at the timeout."""
    interval = poll_interval_s or min(max(MIN_POLL_S, len(run.task_ids) / 2000), MAX_POLL_S)
    wanted = set(run.task_ids)
    seen_finished = -1
    while True:
        status = run.client.get_batch(batch_id, limit=1)
        if on_poll is not None:
            on_poll(status)
        counts = {state.value: count for state, count in status.counts.items()}
        bar.update(counts, status.jobs_per_s, status.eta_s)
        if status.finished != seen_finished:
            # Something finished since the last look: fetch the finished items not done here yet.
            for state in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELED):
                if not status.count(state):
                    continue
                for job in run.client.batch_items(batch_id, state=state):
                    if job.task_id in wanted and job.task_id not in run.done:
                        run.finish(job)
            seen_finished = status.finished
        if wanted <= run.done.keys():
            return True
        if status.is_finished:
            # Items the batch does not hold (a task id that existed before the batch): ask for each.
            for task_id in wanted - run.done.keys():
                job = run.client.wait(task_id, timeout=timeout_s)
                run.finish(job)
            return True
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            return False
        time.sleep(interval)


def job_page(base_url: str, task_id: str) -> str:
    """The job's page on the farm's dashboard."""
    return f"{base_url.rstrip('/')}/ui/jobs/{quote(task_id, safe='')}"


def _copy_input(value: Any, out: Path, copied: dict[str, str]) -> str | None:
    """A copy of a local input picture under out/inputs/ (relative path), or None for references."""
    if not isinstance(value, Path):
        return None
    key = str(value)
    if key not in copied:
        digest = file_sha256(value)
        if digest is None:
            return None
        target = out / INPUTS_DIR / f"{digest[:16]}{value.suffix.lower() or '.png'}"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(value, target)
        copied[key] = target.relative_to(out).as_posix()
    return copied[key]


def write_outputs(run: _Run, manifest: Manifest, batch_id: str) -> tuple[Path, Path]:
    """Write out/results.json and out/index.html from what is done so far; returns their paths."""
    out = run.out
    copied: dict[str, str] = {}
    entries: list[dict[str, Any]] = []
    rows: list[SheetRow] = []
    for item, task_id in zip(run.items, run.task_ids, strict=True):
        job = run.done.get(task_id)
        folder = item_folder(out, task_id)
        files: dict[str, list[str]] = {"result": [], "overlay": [], "mask": []}
        if job is not None:
            for artifact in job.artifacts:
                path = folder / artifact.filename
                if path.exists():
                    files.setdefault(artifact.kind, []).append(path.relative_to(out).as_posix())
        images = item.init_images
        input_copy = _copy_input(images[0], out, copied) if images else None
        mask_copy = _copy_input(item.mask, out, copied)
        state = job.state.value if job is not None else "pending"
        error = f"{job.error.code}: {job.error.message}" if job is not None and job.error is not None else None
        entries.append(
            {
                "index": item.index,
                "task_id": task_id,
                "state": state,
                "worker": job.worker if job is not None else None,
                "seeds": [a.seed for a in job.results] if job is not None else [],
                "prompt": item.fields.get("prompt", ""),
                "axes": {name: axis_label(value) for name, value in item.axes.items()},
                "inputs": {
                    "image": input_copy or (str(images[0]) if images else None),
                    "mask": mask_copy or (str(item.mask) if item.mask is not None else None),
                },
                "files": files,
                "error": error,
            }
        )
        rows.append(
            SheetRow(
                index=item.index,
                task_id=task_id,
                state=state,
                prompt=str(item.fields.get("prompt", "")),
                input=input_copy,
                mask=mask_copy or (files["mask"][0] if files["mask"] else None),
                overlays=tuple(files["overlay"]),
                results=tuple(files["result"]),
                error=error,
                axes={name: axis_label(value) for name, value in item.axes.items()},
                link=job_page(run.client.base_url, task_id),
            )
        )
    results = {"batch_id": batch_id, "manifest": str(manifest.path.resolve()), "items": entries}
    results_path = out / RESULTS_FILE
    write_atomically(results_path, json.dumps(results, indent=2).encode())
    grid = manifest.grid
    sheet_path = write_contact_sheet(
        out / SHEET_FILE,
        f"renderfarm batch {batch_id}",
        rows,
        axes=manifest.axis_names,
        xy=grid is not None and grid.mode == "product",
    )
    return results_path, sheet_path
