"""Thin routers for health, metrics and the native predict API."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from loraswap.service.api.deps import PredictServiceDep, StateDep, TenantDep
from loraswap.service.api.gate import NativeRoute
from loraswap.service.api.protocol import ErrorResponse, PredictRequest, PredictResponse

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 403, 404, 413, 422, 429, 503)
}

router = APIRouter()
predict_router = APIRouter(route_class=NativeRoute)


@router.get("/healthz", tags=["health"])
async def healthz() -> dict[str, str]:
    """The process is up (it may still be loading the model)."""
    return {"status": "ok"}


# /readyz lives in service/health.py (no tenant data; the detail is GET /admin/status).


@router.get("/metrics", tags=["health"], response_class=Response)
async def metrics(state: StateDep) -> Response:
    """Prometheus text exposition."""
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")


@predict_router.post("/v1/predict", response_model=PredictResponse, tags=["predict"],
                     responses={**ERROR_RESPONSES, 200: {"content": {"text/event-stream": {}}}})
async def predict(body: PredictRequest, request: Request, tenant: TenantDep,
                  service: PredictServiceDep) -> BaseModel | StreamingResponse:
    """Answer with the named adapter (or the base); ``stream`` answers with SSE.

    ``adapter`` is ``tenant/name`` for a registered adapter (its active version), or a
    development adapter's name.
    """
    return await service.predict(body, request, tenant)
