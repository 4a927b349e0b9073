"""Process lifecycle for rolling updates and scale-in: readiness, SIGTERM drain, listeners.

Kubernetes stops a pod by removing it from its Services' endpoints and sending SIGTERM at
about the same time, so requests keep arriving for a moment after the signal. On SIGTERM
this process therefore keeps listening: ``/readyz`` turns 503, new requests get 503 with
``Retry-After`` (a client or the gateway retries them on another replica), requests already
accepted run to completion for at most ``LORASWAP_DRAIN_SECONDS``, and then the process
exits 0. A second SIGTERM or SIGINT stops at once.

Readiness also waits, at start-up, for the adapters pinned in the registry to be resident:
the registry on the shared store is the desired state, and a new or restarted pod must not
take traffic before it matches it. Once that was true, later pins do not flip readiness
(a new pin must not take the whole fleet out of its Services).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from types import FrameType
from typing import Any

import uvicorn
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loraswap.core.errors import ConflictError
from loraswap.service.api.errors import error_body, error_format_for
from loraswap.service.api.state import ServiceState

logger = logging.getLogger(__name__)

# Paths that probes and scrapers call: never refused while draining, never counted in flight.
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# The operator's drain switch answers while draining: it is how a drain is cancelled.
DRAIN_SWITCH_PATH = "/admin/drain"
RETRY_AFTER_SECONDS = 1


@dataclass(frozen=True)
class Readiness:
    """Whether this replica should receive traffic, and the one-word reason."""

    ready: bool
    status: str  # ready | loading | failed | pinning | draining


class Lifecycle:
    """Readiness and drain state of one process (kept on ``app.state``)."""

    def __init__(self, drain_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.drain_seconds = drain_seconds
        self._clock = clock
        self.draining = False
        self.exiting = False  # set by SIGTERM: the drain ends with the process
        self.warmed = False  # pinned adapters were resident once: readiness no longer waits
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def readiness(self, state: ServiceState) -> Readiness:
        """Ready once loaded and the registry's pinned adapters are resident; not while
        draining."""
        if self.draining:
            return Readiness(False, "draining")
        if state.components is None:
            return Readiness(False, state.status)
        if not self.warmed:
            watcher = state.components.watcher
            if not watcher.synced or watcher.pins_pending():
                return Readiness(False, "pinning")
            self.warmed = True
        return Readiness(True, "ready")

    def request_started(self) -> None:
        """Count a request accepted for work."""
        self.in_flight += 1
        self._idle.clear()

    def request_finished(self) -> None:
        """Count an accepted request as answered."""
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    def begin_drain(self) -> None:
        """Stop accepting work (readiness false, new requests 503)."""
        self.draining = True

    def cancel_drain(self) -> None:
        """Accept work again (readiness follows the usual rules). A drain started by SIGTERM
        cannot be cancelled: the process exits when it ends."""
        if self.exiting:
            raise ConflictError("this replica is shutting down (SIGTERM): its drain cannot "
                                "be cancelled")
        self.draining = False

    async def drain(self) -> float:
        """Refuse new work and wait for accepted requests, at most ``drain_seconds``;
        the seconds it took."""
        self.begin_drain()
        started = self._clock()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout=self.drain_seconds)
        return self._clock() - started


class DrainGate:
    """ASGI middleware: counts requests in flight, refuses new ones while draining, and keeps
    ``/metrics`` off the API port when a separate metrics listener serves it."""

    def __init__(self, app: ASGIApp, lifecycle: Lifecycle, *, metrics_elsewhere: bool) -> None:
        self.app = app
        self.lifecycle = lifecycle
        self.metrics_elsewhere = metrics_elsewhere

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Gate one HTTP request."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path == "/metrics" and self.metrics_elsewhere:
            response = JSONResponse(
                error_body(error_format_for(scope), 404, "not_found", "not found"), 404)
            await response(scope, receive, send)
            return
        if path in PROBE_PATHS or path == DRAIN_SWITCH_PATH:
            await self.app(scope, receive, send)
            return
        if self.lifecycle.draining:
            body = error_body(error_format_for(scope), 503, "draining",
                              "this replica is shutting down; retry (another replica answers)")
            response = JSONResponse(body, 503, headers={
                "Retry-After": str(RETRY_AFTER_SECONDS), "Connection": "close"})
            await response(scope, receive, send)
            return
        self.lifecycle.request_started()
        try:
            await self.app(scope, receive, self._closing_when_draining(send))
        finally:
            self.lifecycle.request_finished()

    def _closing_when_draining(self, send: Send) -> Send:
        """Answers sent while draining close their connection, so no client sends its next
        request on a keep-alive connection that the exiting server is about to drop."""

        async def send_with_close(message: Message) -> None:
            if message["type"] == "http.response.start" and self.lifecycle.draining:
                headers = [(k, v) for k, v in message.get("headers", [])
                           if k.lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        return send_with_close


class _DrainingServer(uvicorn.Server):
    """uvicorn server whose first SIGTERM/SIGINT drains before exiting (with status 0)."""

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle,
                 others: list[uvicorn.Server]) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle
        self.others = others  # listeners that stop with this one
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain: concurrent.futures.Future[None] | None = None

    async def serve(self, sockets: Any = None) -> None:
        """Serve until drained."""
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)
        for other in self.others:
            other.should_exit = True

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """First signal: drain. Second: stop now. Never re-raised, so the exit status is 0."""
        if self._drain is None and self._loop is not None and not self.should_exit:
            logger.info("signal %s: draining (at most %.0f s, %d requests in flight)",
                        signal.Signals(sig).name, self.lifecycle.drain_seconds,
                        self.lifecycle.in_flight)
            self.lifecycle.exiting = True
            self.lifecycle.begin_drain()
            self._drain = asyncio.run_coroutine_threadsafe(self._drain_then_exit(), self._loop)
            return
        self.should_exit = True
        self.force_exit = True

    async def _drain_then_exit(self) -> None:
        seconds = await self.lifecycle.drain()
        logger.info("drained in %.2f s (%d requests still in flight); exiting", seconds,
                    self.lifecycle.in_flight)
        self.should_exit = True


class _QuietServer(uvicorn.Server):
    """A second listener in the same process: the main server owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """Leave signal handling to the main server."""
        yield


@dataclass(frozen=True)
class Listeners:
    """Where ``serve`` listens."""

    host: str
    port: int
    metrics_port: int | None = None


def serve(app: Any, metrics_app: Any | None, lifecycle: Lifecycle, listeners: Listeners) -> None:
    """Run the API (and the metrics listener, when given) until SIGTERM has drained."""
    others: list[uvicorn.Server] = []
    if metrics_app is not None and listeners.metrics_port is not None:
        others.append(_QuietServer(uvicorn.Config(
            metrics_app, host=listeners.host, port=listeners.metrics_port, log_config=None,
            lifespan="off", access_log=False)))
    # The drain already waited for accepted requests; uvicorn's own wait is a backstop.
    main = _DrainingServer(uvicorn.Config(app, host=listeners.host, port=listeners.port,
                                          log_config=None, timeout_graceful_shutdown=5),
                           lifecycle, others)

    async def run_all() -> None:
        await asyncio.gather(main.serve(), *(other.serve() for other in others))

    asyncio.run(run_all())
