"""The uvicorn server of the API: uvicorn's, with a graceful shutdown that ends the open event streams first.

uvicorn's shutdown closes the listening sockets, asks idle connections to close, then waits (at most
`timeout_graceful_shutdown`) for the responses in flight. An event stream is a response that lasts until its job
finishes, so that wait used to run out its whole timeout on every restart with a client following a job. Here the
streams are told to end as soon as no new connection can arrive (`scheduler/open_streams.py`); the timeout stays as
the bound for ordinary requests. Used by `renderfarm scheduler` and `renderfarm up`.
"""

from __future__ import annotations

import logging
import socket
from typing import Any, Final

import uvicorn
from fastapi import FastAPI

from scheduler.deps import Services

__all__ = ["GRACEFUL_SHUTDOWN_S", "graceful_server"]

log = logging.getLogger("scheduler.serving")

GRACEFUL_SHUTDOWN_S: Final = 10  # seconds requests in flight get to finish at shutdown (event streams end at once)


class _StreamEndingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, services: Services) -> None:
        super().__init__(config)
        self._services = services

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Stop accepting first (uvicorn does it again, harmlessly), so an ended stream's client cannot reconnect to
        # this process; then end the streams, then uvicorn's own graceful shutdown.
        for server in self.servers:
            server.close()
        ended = self._services.streams.end_all(self._services.live)
        if ended:
            log.info("shutting down: ended %d open event stream(s); their clients resume elsewhere", ended)
        await super().shutdown(sockets)


def graceful_server(app: FastAPI, **config: Any) -> uvicorn.Server:
    """A uvicorn server of the API `app` (made by `scheduler.app.create_app`) with `config` (uvicorn.Config's
    arguments; `timeout_graceful_shutdown` defaults to GRACEFUL_SHUTDOWN_S)."""
    config.setdefault("timeout_graceful_shutdown", GRACEFUL_SHUTDOWN_S)
    services: Services = app.state.services
    return _StreamEndingServer(uvicorn.Config(app, **config), services)
