"""Thin routers of drift: ``POST /v1/feedback``, the ``/admin/retrain`` routes, uploads
of training data and reference datasets, and the drift and profile views."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from loraswap.core.errors import PayloadTooLargeError
from loraswap.jobs.reference_data import (
    DEFAULT_MAX_ROWS,
    DEFAULT_TEXT_COLUMN,
    ReferenceColumns,
)
from loraswap.jobs.retrain_runs import RUN_ID
from loraswap.jobs.training_data import store_bytes
from loraswap.service.api.deps import (
    ComponentsDep,
    StateDep,
    TenantDep,
    require_admin,
    require_webhook,
)
from loraswap.service.api.gate import AdminRoute, AdminUploadRoute, NativeRoute, WebhookRoute
from loraswap.service.api.protocol import error_responses
from loraswap.service.api.state import ServingComponents
from loraswap.service.drift.feedback import FeedbackRequest, FeedbackResponse
from loraswap.service.drift.pipeline import DriftPipeline
from loraswap.service.drift.profiles import ProfileService
from loraswap.service.drift.retrain import AlertmanagerWebhook, RetrainService, WebhookAnswer
from loraswap.service.errors import FeatureDisabledError, NotReadyError

ERRORS = error_responses(400, 401, 404, 409, 413, 429, 503)

router = APIRouter(responses=ERRORS, route_class=NativeRoute)


async def get_drift(components: ComponentsDep) -> DriftPipeline:
    """The drift pipeline; 503 naming the setting when drift is off (a coroutine, as every
    dependency: no thread-pool hop per request)."""
    return require_drift(components)


def require_drift(components: ServingComponents) -> DriftPipeline:
    """The drift pipeline of ``components``, or 503 when drift monitoring is off."""
    if components.drift is None:
        raise FeatureDisabledError(
            "drift monitoring is off on this server: set LORASWAP_DRIFT_ENABLED=true")
    return components.drift


DriftDep = Annotated[DriftPipeline, Depends(get_drift)]


@router.post("/v1/feedback", response_model=FeedbackResponse, tags=["feedback"])
async def feedback(body: FeedbackRequest, tenant: TenantDep, drift: DriftDep,
                   state: StateDep) -> FeedbackResponse:
    """Ground truth for a captured prediction: ``label`` (seq-cls) or ``text`` (causal-lm).

    Within the tenant's rate and concurrency limits, like a prediction, and one of the
    replica's few feedback slots (a call may wait for a store write on a shared thread)."""
    # Captured predictions are of registered tenant adapters, which only their tenant's key
    # can call: an anonymous caller (dev mode without keys) or a static operator key owns
    # none of them, so it may give feedback on none.
    caller = tenant.name if tenant is not None and tenant.name else ""
    with state.limiter.admit(tenant), drift.feedback.slot(caller):
        return await asyncio.to_thread(drift.feedback.record, body, caller)


admin_router = APIRouter(prefix="/admin", tags=["admin"], responses=ERRORS,
                         dependencies=[Depends(require_admin)], route_class=AdminRoute)


async def get_retrain(components: ComponentsDep) -> RetrainService:
    """The retraining service."""
    if components.retrain is None:  # pragma: no cover - the app factory always builds it
        raise NotReadyError("retraining is not configured")
    return components.retrain


RetrainDep = Annotated[RetrainService, Depends(get_retrain)]


async def get_profiles(components: ComponentsDep) -> ProfileService:
    """The profiling service."""
    if components.profiles is None:  # pragma: no cover - the app factory always builds it
        raise NotReadyError("profiling is not configured")
    return components.profiles


ProfilesDep = Annotated[ProfileService, Depends(get_profiles)]


# Alertmanager's credential may post alerts and nothing else in /admin.
webhook_router = APIRouter(prefix="/admin", tags=["admin"], responses=ERRORS,
                           dependencies=[Depends(require_webhook)], route_class=WebhookRoute)


@webhook_router.post("/retrain", response_model=WebhookAnswer)
async def retrain_webhook(body: AlertmanagerWebhook, retrain: RetrainDep) -> WebhookAnswer:
    """Alertmanager's webhook (payload version 4): each new firing alert of a shipped
    retraining rule naming a registered ``tenant``/``adapter`` with a profile starts at
    most one run, within the caps (LORASWAP_RETRAIN_MAX_*). Takes the webhook token
    (LORASWAP_RETRAIN_WEBHOOK_TOKEN) or the admin token."""
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


@admin_router.post("/retrain/{run_id}/cancel")
async def cancel_run(run_id: str, retrain: RetrainDep) -> dict[str, Any]:
    """Cancel a queued or running run (404 unknown, 409 already ended): its adapter is
    freed at once, its Job or process stopped, and it registers nothing. (A path whose
    first part is not a run id is the manual start of an adapter named ``cancel``.)"""
    if not RUN_ID.fullmatch(run_id):
        return await start_run(run_id, "cancel", retrain)
    record = await asyncio.to_thread(retrain.cancel, run_id)
    return record.model_dump(mode="json")


@admin_router.post("/retrain/{tenant}/{name}", status_code=202)
async def start_run(tenant: str, name: str, retrain: RetrainDep) -> dict[str, Any]:
    """Start a run by hand (no cooldown; 409 while one runs for the adapter)."""
    record = await asyncio.to_thread(retrain.start_manual, tenant, name)
    return record.model_dump(mode="json")


# Its body is a data file (CSV, JSONL, Parquet…), not JSON: the upload limit applies.
upload_router = APIRouter(prefix="/admin", tags=["admin"], responses=ERRORS,
                          dependencies=[Depends(require_admin)], route_class=AdminUploadRoute)


async def read_body(request: Request, limit: int, what: str) -> bytes:
    """The request body, streamed in; 413 naming ``what`` once it passes ``limit``."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"{what} over {limit} bytes (LORASWAP_MAX_UPLOAD_BYTES)")
        chunks.append(chunk)
    return b"".join(chunks)


@upload_router.put("/training-data/{tenant}/{name}/{filename}")
async def upload_training_data(tenant: str, name: str, filename: str, request: Request,
                               state: StateDep) -> dict[str, str]:
    """Store a copy of an adapter's training data (``loraswap train --push`` sends it);
    the answer's ``key`` goes into the package manifest (``training.data_store``)."""
    # Only for an existing tenant: data stored under a deleted tenant's name would be found
    # by a tenant created again under it.
    await asyncio.to_thread(state.tenants.get, tenant)
    data = await read_body(request, state.settings.max_upload_bytes, "training data")
    key = await asyncio.to_thread(store_bytes, state.store, tenant, name, filename, data)
    return {"key": key}


@upload_router.put("/adapters/{tenant}/{name}/versions/{version}/reference/{filename}",
                   status_code=202)
async def upload_reference(
    tenant: str, name: str, version: int, filename: str, request: Request, state: StateDep,
    profiles: ProfilesDep,
    text_column: Annotated[str, Query(min_length=1, max_length=200, description=(
        "Column of the inputs (token-cls: a list of words, or a text)."))] = (
        DEFAULT_TEXT_COLUMN),
    label_column: Annotated[str | None, Query(min_length=1, max_length=200, description=(
        "Column of the labels (token-cls: tag lists; causal-lm: expected answers); "
        "default: 'label' when present, else the adapter's predictions."))] = None,
    max_rows: Annotated[int, Query(ge=1, le=100_000, description=(
        "Rows profiled (a larger file is sampled, seeded)."))] = DEFAULT_MAX_ROWS,
) -> dict[str, Any]:
    """Upload a reference dataset (CSV, TSV, JSON, JSONL or Parquet) for a version
    registered without ``profile.json`` and start the job that computes its profile;
    ``GET …/versions/{version}/profile`` shows the job."""
    data = await read_body(request, state.settings.max_upload_bytes, "reference dataset")
    columns = ReferenceColumns(text=text_column, label=label_column, max_rows=max_rows)
    job = await asyncio.to_thread(profiles.submit, tenant, name, version, filename, data,
                                  columns)
    return job.model_dump(mode="json")


@admin_router.get("/adapters/{tenant}/{name}/versions/{version}/profile")
async def profile_status(tenant: str, name: str, version: int,
                         profiles: ProfilesDep) -> dict[str, Any]:
    """Where the version's drift reference comes from (``package``, ``uploaded`` or
    none) and its latest profiling job (queued, running, done, failed with the reason)."""
    return await asyncio.to_thread(profiles.status, tenant, name, version)


@admin_router.get("/drift/{tenant}/{name}")
async def drift_view(tenant: str, name: str, drift: DriftDep) -> dict[str, Any]:
    """The tracked version's window, each score with its alarm level and whether it is in
    alarm, and the signals that are absent, with why. In a thread: a level not computed
    yet is simulated (up to a few seconds for the embedding)."""
    snapshot = await asyncio.to_thread(drift.monitor.snapshot, tenant, name)
    if snapshot is None:
        return {"tracked": False, "reason": "no traffic on the active version of "
                f"{tenant}/{name} since this replica started (or it is not a registered "
                "adapter)"}
    return {"tracked": True, **snapshot}
