"""Thin routers of drift: ``POST /v1/feedback`` and the ``/admin/retrain`` routes."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends

from adapters.errors import NotReadyError
from service.api.deps import ComponentsDep, TenantDep, require_admin
from service.api.protocol import ErrorResponse
from service.drift.feedback import FeedbackRequest, FeedbackResponse
from service.drift.pipeline import DriftPipeline
from service.state import ServingComponents

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 404, 409, 503)
}

router = APIRouter(responses=ERRORS)


def get_drift(components: ComponentsDep) -> DriftPipeline:
    """The drift pipeline; 503 naming the setting when drift is off."""
    return require_drift(components)


def require_drift(components: ServingComponents) -> DriftPipeline:
    """The drift pipeline of ``components``, or 503 when drift monitoring is off."""
    if components.drift is None:
        raise NotReadyError("drift monitoring is off: set LORASWAP_DRIFT_ENABLED=true")
    return components.drift


DriftDep = Annotated[DriftPipeline, Depends(get_drift)]


@router.post("/v1/feedback", response_model=FeedbackResponse, tags=["feedback"])
async def feedback(body: FeedbackRequest, tenant: TenantDep,
                   drift: DriftDep) -> FeedbackResponse:
    """Ground truth for a captured prediction: ``label`` (seq-cls) or ``text`` (causal-lm)."""
    caller = tenant.name if tenant is not None else None
    if tenant is not None and caller is None:  # a static operator key owns no predictions
        caller = ""
    return await asyncio.to_thread(drift.feedback.record, body, caller)


admin_router = APIRouter(prefix="/admin", tags=["admin"], responses=ERRORS,
                         dependencies=[Depends(require_admin)])
