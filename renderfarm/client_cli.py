"""The command line's client commands: talk to a farm over HTTP with the SDK (no server code is imported).

    renderfarm submit cat.png --prompt "a cat in a hat" --mask mask.png --set steps=20 --set seed=7 --out out/
                                         # --out: out/<task id>/result-0.png ... (one folder per job)
    renderfarm status TASK_ID            renderfarm wait TASK_ID --timeout 600
    renderfarm cancel TASK_ID            renderfarm ls --state running
    renderfarm download TASK_ID --out out/
    renderfarm batch sweep.yaml --out out/sweep    # progress bar, downloads, results.json, index.html; resumable

Every command takes `--url` (default RENDERFARM_URL), `--token` (default RENDERFARM_TOKEN) and `--json` (one JSON
document on stdout for scripts; progress and messages go to stderr). Exit codes: 0 success, 1 the job or batch did
not succeed (or the farm refused the request), 2 bad usage, 3 the farm could not be reached, 130 interrupted.

`register(subparsers)` adds the commands to the `renderfarm` parser; each sets `handler(args, settings) -> int`
like the other commands (the settings are not used: a client's configuration is its flags and environment).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from renderfarm._errors import APIError, RenderfarmError, TransportError
from renderfarm._job import Job, JobState, WaitTimeout
from renderfarm._requests import folder_name, is_reference
from renderfarm._transport import resolve_url
from renderfarm.client import Client
from renderfarm.progress import JobProgress

__all__ = ["register"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNREACHABLE: Final = 3
EXIT_INTERRUPTED: Final = 130
_ERRNO: Final = re.compile(r"\[Errno -?\d+\] ")

Handler = Callable[[argparse.Namespace, Client], int]


# --------------------------------------------------------------------------------------------------------------
# Output


def _emit_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def _progress_text(job: Job) -> str:
    if job.state is JobState.RUNNING and job.total_steps:
        text = f"{job.progress:.0%} (step {job.step}/{job.total_steps})"
        return text + (f", ETA {job.eta_s:.0f}s" if job.eta_s is not None else "")
    if job.state is JobState.QUEUED and job.queue_position is not None:
        return f"position {job.queue_position} in the queue"
    return ""


def _describe(job: Job) -> str:
    parts = [f"{job.task_id}  {job.state.value}"]
    progress = _progress_text(job)
    if progress:
        parts.append(progress)
    if job.worker:
        parts.append(f"worker {job.worker}")
    if job.error is not None:
        parts.append(f"error {job.error.code}: {job.error.message}")
    if job.artifacts:
        parts.append(f"{len(job.results)} result(s)")
    return "  ".join(parts)


def _exit_for(job: Job) -> int:
    return EXIT_OK if job.state is not JobState.FAILED and job.state is not JobState.CANCELED else EXIT_FAILED


# --------------------------------------------------------------------------------------------------------------
# Arguments


def _field_value(text: str) -> tuple[str, Any]:
    """`field=value` of --set; the value as JSON when it reads as JSON (7, 0.5, true, [1,2]), else as text."""
    name, sep, raw = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"--set wants field=value, not {text!r}")
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    return name.strip(), value


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=None,
        help="the farm's address, e.g. 127.0.0.1:7860 or https://farm.example (default: RENDERFARM_URL, else "
        "http://127.0.0.1:7860; no scheme means http://)",
    )
    parser.add_argument("--token", default=None, help="API token (default: RENDERFARM_TOKEN)")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout, for scripts")


def register(subparsers: Any) -> None:
    """Add submit, status, wait, cancel, ls, events, download and batch to the `renderfarm` command's subparsers."""
    submit = _command(subparsers, "submit", _submit, "submit one img2img / inpainting job")
    submit.add_argument("image", help="the init picture (a path, or asset:<sha256>)")
    submit.add_argument("--prompt", default=None, help="what to render (default: the farm's, empty)")
    submit.add_argument("--negative-prompt", default=None, help="what to keep out of the picture")
    submit.add_argument("--mask", default=None, help="inpainting mask (white: repaint)")
    submit.add_argument("--task-id", default=None, help="your id for the job (default: a new one)")
    submit.add_argument(
        "--set",
        dest="fields",
        action="append",
        type=_field_value,
        default=[],
        metavar="FIELD=VALUE",
        help="any job field, repeatable: --set steps=20 --set denoising_strength=0.6",
    )
    submit.add_argument("--wait", action="store_true", help="wait until it finishes, showing its progress")
    submit.add_argument(
        "--out", default=None, help="download the results into OUT/<task id>/ (implies --wait)", metavar="OUT"
    )
    submit.add_argument("--timeout", type=float, default=None, help="seconds to wait at most")

    _command(subparsers, "status", _status, "a job's state and progress").add_argument(
        "task_id", help="the job's task id"
    )

    wait = _command(subparsers, "wait", _wait, "wait until a job finishes")
    wait.add_argument("task_id", help="the job's task id")
    wait.add_argument("--timeout", type=float, default=None, help="seconds to wait at most")

    cancel = _command(subparsers, "cancel", _cancel, "cancel a job (queued: at once; running: at its next step)")
    cancel.add_argument("task_id", help="the job's task id")

    ls = _command(subparsers, "ls", _ls, "list your jobs, newest first")
    ls.add_argument(
        "--state", choices=[state.value for state in JobState], default=None, help="only the jobs in this state"
    )
    ls.add_argument("--batch", default=None, help="only the jobs of this batch id")
    ls.add_argument("--limit", type=int, default=50, help="at most this many (default 50; 0: all)")

    events = _command(subparsers, "events", _events, "your job and batch events, oldest first, one JSON per line")
    events.add_argument("--after", default=None, help="the cursor of the last event you have (default: the first)")
    events.add_argument("--follow", action="store_true", help="keep waiting for new events (Ctrl-C ends)")

    download = _command(subparsers, "download", _download, "download a job's results, overlays and masks")
    download.add_argument("task_id", help="the job's task id")
    download.add_argument("--out", required=True, help="folder to write into (OUT/<task id>/result-0.png ...)")

    batch = _command(
        subparsers,
        "batch",
        _batch,
        "run a manifest's batch: progress, downloads, results.json and a contact sheet (resumable)",
    )
    batch.add_argument("manifest", help="YAML, JSON or CSV manifest")
    batch.add_argument("--out", required=True, help="output folder (also the resume state)")
    batch.add_argument("--batch-id", default=None, help="a UUID for the batch (default: the manifest's, or new)")
    batch.add_argument("--timeout", type=float, default=None, help="seconds to wait at most")
    batch.add_argument("--poll", type=float, default=None, help="seconds between status reads (default: by size)")


def _command(subparsers: Any, name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
    """A client command's parser, with the flags every client command takes, run by `handler` through `_wrap`."""
    parser: argparse.ArgumentParser = subparsers.add_parser(name, help=help_text)
    _common(parser)
    parser.set_defaults(handler=_wrap(handler))
    return parser


def _wrap(handler: Handler) -> Callable[[argparse.Namespace, Any], int]:
    """The command's handler: opens the client, and turns the SDK's errors into a message and an exit code."""

    def run(args: argparse.Namespace, _settings: Any = None) -> int:
        try:
            with Client(args.url, token=args.token) as client:
                return handler(args, client)
        except KeyboardInterrupt:
            print("renderfarm: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except TransportError as exc:
            reason = _ERRNO.sub("", exc.message)  # "Connection refused", not "[Errno 111] Connection refused"
            print(
                f"renderfarm: {reason}; is the farm running at {resolve_url(args.url)}? (`renderfarm up` starts one "
                "here; --url or RENDERFARM_URL names another)",
                file=sys.stderr,
            )
            return EXIT_UNREACHABLE
        except WaitTimeout as exc:
            if args.json:
                _emit_json(dict(exc.job.raw))
            print(f"renderfarm: {exc.message}", file=sys.stderr)
            return EXIT_FAILED
        except APIError as exc:
            print(f"renderfarm: {exc}", file=sys.stderr)
            return EXIT_FAILED
        except OSError as exc:
            # "No such file or directory: out/x", not Python's "[Errno 2] ..."
            where = f": {exc.filename}" if exc.filename else ""
            print(f"renderfarm: {exc.strerror or exc}{where}", file=sys.stderr)
            return EXIT_USAGE
        except (RenderfarmError, ValueError) as exc:
            print(f"renderfarm: {exc}", file=sys.stderr)
            return EXIT_USAGE if isinstance(exc, ValueError) else EXIT_FAILED

    return run


# --------------------------------------------------------------------------------------------------------------
# The commands


def _waited(args: argparse.Namespace, client: Client, task_id: str) -> Job:
    """Wait for the job, showing its progress on stderr (a bar on a terminal, lines elsewhere; none with --json)."""
    with JobProgress(None if args.json else sys.stderr) as shown:
        return client.wait(task_id, timeout=args.timeout, on_update=shown.update)


def job_folder(out: Path, task_id: str) -> Path:
    """Where `--out` puts a job's files: its own folder, so that jobs never overwrite each other's result-0.png."""
    return out / folder_name(task_id)


def _check_input_files(**pictures: str | None) -> None:
    """A missing local picture named by its role (image, mask) before anything is sent to the farm."""
    for role, value in pictures.items():
        if value is None or is_reference(value):
            continue
        path = Path(value)
        if not path.is_file():
            problem = "is a folder, not a picture" if path.is_dir() else "does not exist"
            raise InputFileError(f"the {role} file {value} {problem}")


class InputFileError(ValueError):
    """A picture named on the command line cannot be read; the message says which one (image or mask)."""


def _finish(args: argparse.Namespace, client: Client, job: Job, out: str | None) -> int:
    paths: list[Path] = []
    if out is not None and job.state is JobState.SUCCEEDED:
        paths = client.download(job, job_folder(Path(out), job.task_id))
    if args.json:
        _emit_json({**dict(job.raw), "files": [str(path) for path in paths]} if out is not None else dict(job.raw))
    else:
        print(_describe(job))
        for path in paths:
            print(f"  {path}")
    return _exit_for(job)


def _submit(args: argparse.Namespace, client: Client) -> int:
    _check_input_files(image=args.image, mask=args.mask)
    fields = dict(args.fields)
    if args.prompt is not None:
        fields["prompt"] = args.prompt
    if args.negative_prompt is not None:
        fields["negative_prompt"] = args.negative_prompt
    job = client.submit(image=args.image, mask=args.mask, task_id=args.task_id, **fields)
    if not (args.wait or args.out):
        if args.json:
            _emit_json(dict(job.raw))
        else:
            print(_describe(job))
        return EXIT_OK
    if not args.json:
        print(f"submitted {job.task_id}", file=sys.stderr)
    return _finish(args, client, _waited(args, client, job.task_id), args.out)


def _status(args: argparse.Namespace, client: Client) -> int:
    job = client.get(args.task_id)
    if args.json:
        _emit_json(dict(job.raw))
    else:
        print(_describe(job))
    return EXIT_OK


def _wait(args: argparse.Namespace, client: Client) -> int:
    return _finish(args, client, _waited(args, client, args.task_id), None)


def _cancel(args: argparse.Namespace, client: Client) -> int:
    job = client.cancel(args.task_id)
    if args.json:
        _emit_json(dict(job.raw))
    else:
        cancel_pending = job.state is JobState.RUNNING
        print(_describe(job) + ("  (cancel requested: it stops at its next step)" if cancel_pending else ""))
    return EXIT_OK


def _ls(args: argparse.Namespace, client: Client) -> int:
    jobs: list[Job] = []
    for job in client.list(state=args.state, batch=args.batch, page_size=min(args.limit or 1000, 1000)):
        jobs.append(job)
        if args.limit and len(jobs) >= args.limit:
            break
    if args.json:
        _emit_json([dict(job.raw) for job in jobs])
        return EXIT_OK
    for job in jobs:
        created = job.created_at.strftime("%Y-%m-%d %H:%M:%S")
        print(f"{created}  {job.state.value:<9}  {job.task_id}  {_progress_text(job)}".rstrip())
    if not jobs:
        print("no jobs", file=sys.stderr)
    return EXIT_OK


def _events(args: argparse.Namespace, client: Client) -> int:
    # JSON lines whatever `--json` says: each event is a document, and `cursor` resumes after it.
    for event in client.events(after=args.after, follow=args.follow):
        print(json.dumps(event, separators=(",", ":"), ensure_ascii=False), flush=True)
    return EXIT_OK


def _download(args: argparse.Namespace, client: Client) -> int:
    paths = client.download(args.task_id, job_folder(Path(args.out), args.task_id))
    if args.json:
        _emit_json({"task_id": args.task_id, "files": [str(path) for path in paths]})
    else:
        for path in paths:
            print(path)
    return EXIT_OK


def _batch(args: argparse.Namespace, client: Client) -> int:
    from renderfarm.batch_runner import run_batch
    from renderfarm.manifest import ManifestError

    try:
        report = run_batch(
            client,
            Path(args.manifest),
            Path(args.out),
            batch_id=args.batch_id,
            progress=sys.stderr,
            poll_interval_s=args.poll,
            timeout_s=args.timeout,
        )
    except ManifestError as exc:
        print(f"renderfarm: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("renderfarm: interrupted; the farm keeps working, run the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.json:
        _emit_json(report.to_dict())
    else:
        counts = ", ".join(f"{count} {state}" for state, count in report.counts.items() if count)
        action = "submitted" if report.submitted else "nothing submitted (all done)"
        print(f"batch {report.batch_id}: {counts}; {action}; {report.downloaded} file(s) downloaded")
        print(f"results: {report.results_path}")
        print(f"contact sheet: {report.sheet_path}")
    if not report.complete:
        return EXIT_FAILED
    return EXIT_FAILED if report.failed else EXIT_OK
