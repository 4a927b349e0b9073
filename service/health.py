"""Probes (``/healthz``, ``/readyz``, ``/metrics``: each defined once, served on the API port
and the metrics listener alike), the detailed view for operators, and the wiring of
the lifecycle (drain gate, gateway gauges, separate metrics listener) into an app.

``/readyz`` answers ready or not and why in one word, plus the model settings in effect
(never the base model's path, never an adapter name): it is open, for probes. What it used
to show (resident adapters, queue figures, the model folder) is at ``GET /admin/status``,
behind the admin token.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from loraswap.service.api.deps import StateDep, require_admin
from loraswap.service.api.gate import AdminRoute
from loraswap.service.api.state import ServiceState
from loraswap.service.auth import check_metrics_token
from loraswap.service.gateway_metrics import GatewayCollector
from loraswap.service.lifecycle import DrainGate, Lifecycle
from loraswap.service.settings import Settings

# Model facts safe to show anyone: no path (it names the operator's file system).
PUBLIC_MODEL_FIELDS = ("name", "quantization", "weight_format", "compute_dtype", "device")


class PublicReadiness(BaseModel):
    """Body of ``/readyz``: ready or not, and the model settings in effect."""

    ready: bool
    status: str = Field(description="ready | loading | failed | pinning | draining")
    model: dict[str, Any] | None = None


class AdminStatus(PublicReadiness):
    """Body of ``GET /admin/status``: everything an operator needs to see."""

    error: str | None = None
    draining: bool = False
    in_flight: int = 0
    pins_pending: list[str] = Field(default_factory=list)
    engine: dict[str, Any] | None = None
    adapters_available: list[str] = Field(default_factory=list)


def get_lifecycle(request: Request) -> Lifecycle:
    """The app's lifecycle object."""
    lifecycle: Lifecycle = request.app.state.lifecycle
    return lifecycle


probe_router = APIRouter(tags=["health"])
admin_status_router = APIRouter(prefix="/admin", tags=["admin"],
                                dependencies=[Depends(require_admin)], route_class=AdminRoute)


@probe_router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up (it may still be loading the model)."""
    return {"status": "ok"}


@probe_router.get("/metrics", response_class=Response)
async def metrics(state: StateDep, request: Request) -> Response:
    """Prometheus text exposition. On the API port it needs the metrics token or the admin
    token (outside dev mode): it names every tenant and adapter. The separate metrics
    listener (LORASWAP_METRICS_PORT), reachable only where the network allows, needs none."""
    if not getattr(request.app.state, "metrics_listener", False):
        settings = state.settings
        header = request.headers.get("authorization", "")
        scheme, _, presented = header.partition(" ")
        check_metrics_token(
            settings.admin_token.get_secret_value() if settings.admin_token else None,
            settings.metrics_token.get_secret_value() if settings.metrics_token else None,
            presented.strip() if scheme.lower() == "bearer" else None)
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")


@probe_router.get("/readyz", response_model=PublicReadiness,
                  responses={503: {"model": PublicReadiness}})
async def readyz(state: StateDep, request: Request) -> JSONResponse:
    """200 when this replica should get traffic: model loaded, pinned adapters resident,
    not draining. No tenant data."""
    readiness = get_lifecycle(request).readiness(state)
    model = None
    if state.components is not None:
        info = state.components.info.as_dict()
        model = {key: info[key] for key in PUBLIC_MODEL_FIELDS}
    body = PublicReadiness(ready=readiness.ready, status=readiness.status, model=model)
    return JSONResponse(body.model_dump(), status_code=200 if readiness.ready else 503)


@admin_status_router.get("/status", response_model=AdminStatus)
async def admin_status(state: StateDep, request: Request) -> AdminStatus:
    """Readiness with the detail: model (with its path), engine residency and queue,
    pinned adapters not resident yet, development adapters."""
    lifecycle = get_lifecycle(request)
    readiness = lifecycle.readiness(state)
    body = AdminStatus(ready=readiness.ready, status=readiness.status, error=state.error,
                       draining=lifecycle.draining, in_flight=lifecycle.in_flight,
                       )
    if state.components is not None:
        body.adapters_available = state.components.resolver.names()
        body.model = state.components.info.as_dict()
        body.engine = state.components.engine.stats()
        body.pins_pending = state.components.watcher.pins_pending()
    return body


@admin_status_router.post("/drain", response_model=AdminStatus)
async def start_drain(state: StateDep, request: Request) -> AdminStatus:
    """Take this replica out of service: readiness false, new requests 503 with
    ``Retry-After``; requests already running finish. The process stays up."""
    get_lifecycle(request).begin_drain()
    return await admin_status(state, request)


@admin_status_router.delete("/drain", response_model=AdminStatus)
async def cancel_drain(state: StateDep, request: Request) -> AdminStatus:
    """Put this replica back in service (ready again once its pinned adapters are
    resident); 409 while a SIGTERM drain is running."""
    get_lifecycle(request).cancel_drain()
    return await admin_status(state, request)


def build_metrics_app(state: ServiceState, lifecycle: Lifecycle) -> FastAPI:
    """The separate metrics listener: ``/metrics`` and the probes (the same router as the
    API port's), nothing else."""
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    app.state.loraswap = state
    app.state.metrics_listener = True  # /metrics without a token: the network guards it
    app.state.lifecycle = lifecycle
    app.include_router(probe_router)
    return app


def install_lifecycle(app: FastAPI, state: ServiceState, settings: Settings) -> Lifecycle:
    """Add readiness, drain, the admin status view and the gateway gauges to ``app``.

    Call before the app's own routers, so this ``/readyz`` is the one served.
    """
    lifecycle = Lifecycle(settings.drain_seconds)
    app.state.lifecycle = lifecycle
    app.add_middleware(DrainGate, lifecycle=lifecycle,
                       metrics_elsewhere=settings.metrics_port is not None)
    app.include_router(probe_router)
    app.include_router(admin_status_router)
    state.metrics.registry.register(GatewayCollector(
        lambda: state.components.engine if state.components is not None else None,
        settings.max_loras))
    return lifecycle
