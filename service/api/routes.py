"""Thin router for the native predict API (the probes and ``/metrics`` are in
``service/health.py``, beside the lifecycle they report)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from loraswap.service.api.deps import PredictServiceDep, TenantDep
from loraswap.service.api.gate import NativeRoute
from loraswap.service.api.protocol import ErrorResponse, PredictRequest, PredictResponse

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 403, 404, 413, 422, 429, 503)
}

predict_router = APIRouter(route_class=NativeRoute)


@predict_router.post("/v1/predict", response_model=PredictResponse, tags=["predict"],
                     responses={**ERROR_RESPONSES, 200: {"content": {"text/event-stream": {}}}})
async def predict(body: PredictRequest, request: Request, tenant: TenantDep,
                  service: PredictServiceDep) -> BaseModel | StreamingResponse:
    """Answer with the named adapter (or the base); ``stream`` answers with SSE.

    ``adapter`` is ``tenant/name`` for a registered adapter (its active version), or a
    development adapter's name.
    """
    return await service.predict(body, request, tenant)
