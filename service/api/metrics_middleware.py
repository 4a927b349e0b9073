"""Counts every HTTP request by route, status and adapter (pure ASGI, not BaseHTTPMiddleware,
so the ASGI channel reaches the routes untouched and disconnects are seen)."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loraswap.service.metrics import ServiceMetrics

NO_ADAPTER = "-"
"""The label of requests that resolved no adapter (refused, unknown, not inference)."""


class RequestMetrics:
    """ASGI middleware observing each request's latency and status.

    The adapter label is only ever a name the pipeline resolved (``request.state.adapter``
    is set after resolution), never the raw string a client sent: label values stay valid
    and bounded by the registered adapters.
    """

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            route = scope.get("route")
            adapter = scope.get("state", {}).get("adapter", NO_ADAPTER)
            self._metrics.observe_request(str(getattr(route, "path", "unmatched")), status,
                                          str(adapter), time.perf_counter() - started)
