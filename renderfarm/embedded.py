"""The embedded farm: the whole renderfarm in one process, with no servers (`renderfarm up`, `renderfarm demo`).

    settings (no RENDERFARM_REDIS_URL)
      -> `renderfarm db upgrade` (SQLite in the data folder unless RENDERFARM_DATABASE_URL says otherwise)
      -> one worker dependency set: database, storage, live status, model cache (the tiny model by default)
      -> one Celery app on kombu's `memory://` transport, with the render task registered
      -> the API (`scheduler.app.create_app`) on those same parts and that same app: its dispatcher publishes into
         the in-memory broker that the in-process worker consumes
      -> the in-process worker (`worker.embedded.start_embedded_worker`), warmed up before it consumes
      -> uvicorn, in the foreground (`serve`) or on a thread (`running_farm`, for the demo and the tests)

The API and the worker must share one live-status object (it lives in memory here: progress, cancel flags and
wake-ups only reach the other side through it) and one in-memory broker, which is why both halves are built here
from one set of parts instead of each from the settings.

The listening socket is bound before anything else, so the port is known (also when 0 asks for any free one) and
local download URLs can name it: unless RENDERFARM_PUBLIC_URL is set, it becomes `http://HOST:PORT`.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from shared.config import Settings, drop_api_secrets_from_environment
from shared.errors import ConfigError

if TYPE_CHECKING:
    import uvicorn
    from fastapi import FastAPI

    from worker.deps import WorkerDeps
    from worker.embedded import EmbeddedWorker

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "EmbeddedFarm",
    "bind_socket",
    "embedded_settings",
    "running_farm",
    "serve",
    "stop_signals_end_quietly",
]

log = logging.getLogger("renderfarm.embedded")

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 7860  # A1111's port, so its API clients find the farm where they look for the webui
SERVER_START_TIMEOUT_S: Final = 30.0  # seconds for uvicorn to run the app's start-up and listen
SERVER_STOP_TIMEOUT_S: Final = 60.0  # seconds for uvicorn to finish open requests and the app's shutdown
EMBEDDED_WORKER_NAME: Final = "embedded"


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free port).

    Raises ConfigError (code `cannot_listen`) when the address cannot be used, for example a port already taken.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port or --host",
            code="cannot_listen",
        ) from exc
    sock.set_inheritable(True)
    return sock


def _client_host(host: str) -> str:
    """The address a client on this machine uses to reach a server bound to `host`."""
    if host in ("0.0.0.0", ""):  # noqa: S104 - a comparison, not a bind
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def check_embedded(settings: Settings, host: str) -> None:
    """Refuse settings the embedded farm cannot run on, before anything is bound or built.

    Raises ConfigError in cluster mode (RENDERFARM_REDIS_URL is set: an in-memory broker there would hide the
    cluster's messages), for invalid settings, and when serving without tokens on a non-loopback address.
    """
    if not settings.embedded:
        raise ConfigError(
            "the embedded farm (renderfarm up / demo) runs without servers, but RENDERFARM_REDIS_URL is set; unset "
            "it, or run `renderfarm scheduler` and `renderfarm worker` for the cluster",
            field="RENDERFARM_REDIS_URL",
        )
    settings.check()
    settings.check_bind(host)


def embedded_settings(settings: Settings, host: str, port: int) -> Settings:
    """`settings` checked (`check_embedded`), with `public_url` pointing at host:port unless it was set, so that
    local download URLs name the port really served."""
    check_embedded(settings, host)
    if "public_url" in settings.model_fields_set:
        return settings
    return settings.model_copy(update={"public_url": f"http://{_client_host(host)}:{port}"})


@dataclass
class EmbeddedFarm:
    """A running embedded farm. `url` is where clients reach its API (e.g. `http://127.0.0.1:7860`)."""

    settings: Settings
    url: str
    app: FastAPI
    deps: WorkerDeps
    worker: EmbeddedWorker
    _closers: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def close(self) -> None:
        """Stop the worker (the job in progress finishes), then close the shared parts. Idempotent."""
        while self._closers:
            closer = self._closers.pop()
            try:
                closer()
            except Exception:  # the other parts must still be closed
                log.exception("closing a part of the embedded farm failed")


def build_farm(settings: Settings, *, warm: bool = True) -> EmbeddedFarm:
    """Migrate the database, build the shared parts, the API app and the in-process worker (started, warmed).

    `settings` must come from `embedded_settings`. The API app is not served yet (its lifespan starts the
    dispatcher and the reconciler when uvicorn starts it). Close the result with `close()`.
    """
    from scheduler.app import create_app
    from shared.db import upgrade
    from worker.embedded import start_embedded_worker
    from worker.tasks import build_worker_deps, create_worker_app

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)
    name = f"{EMBEDDED_WORKER_NAME}@{socket.gethostname()}"
    deps = build_worker_deps(settings, worker_name=name)
    closers: list[Callable[[], None]] = [deps.db.close, deps.storage.close, deps.live.close]
    try:
        celery_app = create_worker_app(settings, lambda: deps, warm=False)
        closers.append(celery_app.close)
        # One set of parts for both halves: the live status is in memory, so only a shared object carries
        # progress and cancel flags between them; the app is the worker's, so both use one in-memory broker.
        app = create_app(settings, celery_app=celery_app, live=deps.live, storage=deps.storage, db=deps.db)
        worker = start_embedded_worker(settings, celery_app, deps, warm=warm, hostname=name)
        closers.append(worker.stop)
    except BaseException:
        for closer in reversed(closers):
            with contextlib.suppress(Exception):
                closer()
        raise
    return EmbeddedFarm(settings=settings, url=settings.public_url, app=app, deps=deps, worker=worker, _closers=closers)


@contextlib.contextmanager
def stop_signals_end_quietly() -> Iterator[None]:
    """Make SIGINT and SIGTERM, once uvicorn has shut down gracefully on one, end the process normally.

    uvicorn (0.29+) raises the signal it caught again after its graceful shutdown, under the handlers that were in
    place before it ran: the default SIGTERM handler would kill the process before the worker and the database are
    closed, and SIGINT would become a KeyboardInterrupt traceback. Only for the main thread (where uvicorn handles
    signals at all).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _server(app: FastAPI, log_level: str) -> uvicorn.Server:
    from renderfarm.quiet import quiet_third_party
    from scheduler.serving import graceful_server
    from shared.redact import install_log_redaction

    server = graceful_server(app, log_level=log_level, lifespan="on")
    # uvicorn.Config set up its own loggers (the access log prints query strings: signed download URLs).
    install_log_redaction()
    quiet_third_party(log_level)  # again: uvicorn.Config has just set its loggers' levels
    return server


def serve(settings: Settings, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, log_level: str = "info") -> None:
    """`renderfarm up`: serve the embedded farm in the foreground until SIGINT or SIGTERM (uvicorn's handlers).

    Raises ConfigError for unusable settings or an address that cannot be used.
    """
    from shared.db import url_for_display

    check_embedded(settings, host)
    sock = bind_socket(host, port)
    bound_port = int(sock.getsockname()[1])
    try:
        farm_settings = embedded_settings(settings, host, bound_port)
        farm = build_farm(farm_settings)
        drop_api_secrets_from_environment()  # the API holds their digests; nothing this process starts needs them
        try:
            database = url_for_display(farm_settings.resolved_database_url)
            print(
                f"renderfarm up: serving {farm.url}, dashboard {farm.url}/ui/ (embedded: database {database}, "
                f"storage {farm_settings.resolved_storage_url}, model {farm_settings.model!r}, in-process worker); "
                "Ctrl-C stops it",
                flush=True,
            )
            with stop_signals_end_quietly():
                _server(farm.app, log_level).run(sockets=[sock])
        finally:
            farm.close()
    finally:
        sock.close()


@contextlib.contextmanager
def running_farm(
    settings: Settings, host: str = DEFAULT_HOST, port: int = 0, *, warm: bool = True, log_level: str = "warning"
) -> Iterator[EmbeddedFarm]:
    """The embedded farm served by uvicorn on a thread of this process, for as long as the block runs.

    `port` 0 picks a free one (see `EmbeddedFarm.url`). Returns once the API answers requests; on exit stops the
    server (open requests finish), then the worker. Raises ConfigError, or RuntimeError when the server
    does not start within SERVER_START_TIMEOUT_S.
    """
    check_embedded(settings, host)
    sock = bind_socket(host, port)
    try:
        farm_settings = embedded_settings(settings, host, int(sock.getsockname()[1]))
        farm = build_farm(farm_settings, warm=warm)
        try:
            server = _server(farm.app, log_level)
            failure: list[BaseException] = []

            def run() -> None:
                try:
                    server.run(sockets=[sock])
                except BaseException as exc:  # reported to the waiting caller below
                    failure.append(exc)

            thread = threading.Thread(target=run, name="rf-embedded-api", daemon=True)
            thread.start()
            _wait_started(server, thread, failure)
            try:
                yield farm
            finally:
                server.should_exit = True
                thread.join(SERVER_STOP_TIMEOUT_S)
                if thread.is_alive():
                    log.error("the embedded API server did not stop within %s s", SERVER_STOP_TIMEOUT_S)
        finally:
            farm.close()
    finally:
        sock.close()


def _wait_started(server: Any, thread: threading.Thread, failure: list[BaseException]) -> None:
    """Wait until uvicorn ran the app's start-up and listens (`server.started`); no fixed sleep decides it."""
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"the embedded API server did not start: {failure[0] if failure else 'it exited'}")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the embedded API server did not start within {SERVER_START_TIMEOUT_S} s")
        time.sleep(0.01)
