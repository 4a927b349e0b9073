"""Thin routers of drift: ``POST /v1/feedback`` and the ``/admin/retrain`` routes."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from adapters.errors import PayloadTooLargeError
from adapters.training_data import store_bytes
from service.api.deps import ComponentsDep, StateDep, TenantDep, require_admin
from service.api.gate import AdminRoute, AdminUploadRoute, NativeRoute
from service.api.protocol import ErrorResponse
from service.drift.feedback import FeedbackRequest, FeedbackResponse
from service.drift.pipeline import DriftPipeline
from service.drift.retrain import AlertmanagerWebhook, RetrainService, WebhookAnswer
from service.errors import FeatureDisabledError, NotReadyError
from service.state import ServingComponents

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 404, 409, 503)
}

router = APIRouter(responses=ERRORS, route_class=NativeRoute)


def get_drift(components: ComponentsDep) -> DriftPipeline:
    """The drift pipeline; 503 naming the setting when drift is off."""
    return require_drift(components)


def require_drift(components: ServingComponents) -> DriftPipeline:
    """The drift pipeline of ``components``, or 503 when drift monitoring is off."""
    if components.drift is None:
        raise FeatureDisabledError(
            "drift monitoring is off on this server: set LORASWAP_DRIFT_ENABLED=true")
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
                         dependencies=[Depends(require_admin)], route_class=AdminRoute)


def get_retrain(components: ComponentsDep) -> RetrainService:
    """The retraining service."""
    if components.retrain is None:  # pragma: no cover - the app factory always builds it
        raise NotReadyError("retraining is not configured")
    return components.retrain


RetrainDep = Annotated[RetrainService, Depends(get_retrain)]


@admin_router.post("/retrain", response_model=WebhookAnswer)
async def retrain_webhook(body: AlertmanagerWebhook, retrain: RetrainDep) -> WebhookAnswer:
    """Alertmanager's webhook (payload version 4): each new firing alert naming a
    ``tenant`` and ``adapter`` starts at most one run."""
    return await asyncio.to_thread(retrain.handle_webhook, body)


@admin_router.get("/retrain")
async def list_runs(retrain: RetrainDep) -> list[dict[str, Any]]:
    """Every retraining run, newest first."""
    return await asyncio.to_thread(retrain.list)


@admin_router.get("/retrain/{run_id}")
async def get_run(run_id: str, retrain: RetrainDep) -> dict[str, Any]:
    """One run: trigger, drift scores, data sizes, both evaluations, decision."""
    record = await asyncio.to_thread(retrain.runs.get, run_id)
    return record.model_dump(mode="json")


@admin_router.post("/retrain/{tenant}/{name}", status_code=202)
async def start_run(tenant: str, name: str, retrain: RetrainDep) -> dict[str, Any]:
    """Start a run by hand (no cooldown; 409 while one runs for the adapter)."""
    record = await asyncio.to_thread(retrain.start_manual, tenant, name)
    return record.model_dump(mode="json")


# Its body is a data file (CSV, JSONL, Parquet…), not JSON: the upload limit applies.
upload_router = APIRouter(prefix="/admin", tags=["admin"], responses=ERRORS,
                          dependencies=[Depends(require_admin)], route_class=AdminUploadRoute)


@upload_router.put("/training-data/{tenant}/{name}/{filename}")
async def upload_training_data(tenant: str, name: str, filename: str, request: Request,
                               state: StateDep) -> dict[str, str]:
    """Store a copy of an adapter's training data (``loraswap train --push`` sends it);
    the answer's ``key`` goes into the package manifest (``training.data_store``)."""
    limit = state.settings.max_upload_bytes
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"training data over {limit} bytes "
                                       "(LORASWAP_MAX_UPLOAD_BYTES)")
        chunks.append(chunk)
    key = await asyncio.to_thread(store_bytes, state.store, tenant, name, filename,
                                  b"".join(chunks))
    return {"key": key}


@admin_router.get("/drift/{tenant}/{name}")
async def drift_view(tenant: str, name: str, drift: DriftDep) -> dict[str, Any]:
    """The tracked version's window, scores and the signals that are absent, with why."""
    snapshot = drift.monitor.snapshot(tenant, name)
    if snapshot is None:
        return {"tracked": False, "reason": "no traffic on the active version of "
                f"{tenant}/{name} since this replica started (or it is not a registered "
                "adapter)"}
    return {"tracked": True, **snapshot}
