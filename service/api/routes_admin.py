"""Thin router for ``/admin``: tenants, keys and adapter versions. Admin token required."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Query, Response, UploadFile
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from loraswap.adapters.package import TaskKind
from loraswap.adapters.validation import ManifestDefaults
from loraswap.service.api.deps import AdminServiceDep, require_admin
from loraswap.service.api.gate import AdminRoute
from loraswap.service.api.protocol import error_responses
from loraswap.service.api.protocol_admin import (
    AdapterInfo,
    AdapterVersionInfo,
    CreateTenantRequest,
    ImportAdapterRequest,
    PromoteRequest,
    TenantInfo,
    TenantKey,
)
from loraswap.tenants.directory import TenantPolicy

ADMIN_ERRORS = error_responses(400, 401, 404, 409, 413, 422, 503)

EXPORT_QUERY = Query(description="Answer with a zip of the data being erased (its store "
                     "keys as paths) instead of 204. The data is erased either way: to keep "
                     "a copy safely, GET the export first.")
ZIP_ANSWER: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/zip": {}}, "description": "The exported data (zip)."}}

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)],
                   responses=ADMIN_ERRORS, route_class=AdminRoute)



@router.post("/tenants", status_code=201, response_model=TenantKey)
async def create_tenant(body: CreateTenantRequest, admin: AdminServiceDep) -> TenantKey:
    """Create a tenant; the answer holds its API key, shown this once."""
    return await admin.create_tenant(body)


@router.get("/tenants", response_model=list[TenantInfo])
async def list_tenants(admin: AdminServiceDep) -> list[TenantInfo]:
    """Every tenant with its policy."""
    return await admin.list_tenants()


@router.get("/tenants/{tenant}", response_model=TenantInfo)
async def get_tenant(tenant: str, admin: AdminServiceDep) -> TenantInfo:
    """One tenant."""
    return await admin.get_tenant(tenant)


@router.put("/tenants/{tenant}/policy", response_model=TenantInfo)
async def update_policy(tenant: str, body: TenantPolicy,
                        admin: AdminServiceDep) -> TenantInfo:
    """Replace the tenant's policy (base-model access, rate and concurrency limits)."""
    return await admin.update_policy(tenant, body)


@router.post("/tenants/{tenant}/keys/rotate", response_model=TenantKey)
async def rotate_key(tenant: str, admin: AdminServiceDep) -> TenantKey:
    """Issue a new API key; every older key of the tenant stops working."""
    return await admin.rotate_key(tenant)


def _zip(path: Path | None, name: str) -> Response:
    """The export file as the answer (deleted once sent), or 204 without one."""
    if path is None:
        return Response(status_code=204)
    return FileResponse(path, media_type="application/zip", filename=f"{name}.zip",
                        background=BackgroundTask(path.unlink, missing_ok=True))


@router.delete("/tenants/{tenant}", status_code=204, responses=ZIP_ANSWER)
async def delete_tenant(tenant: str, admin: AdminServiceDep,
                        export: Annotated[bool, EXPORT_QUERY] = False) -> Response:
    """Delete a tenant that owns no adapters, and erase its captured predictions, capture
    index, feedback and training data. A tenant created again under this name gets a new
    id and starts with none of it."""
    return _zip(await admin.delete_tenant(tenant, export), f"{tenant}-data")


@router.get("/tenants/{tenant}/data", responses=ZIP_ANSWER, response_class=FileResponse)
async def export_tenant_data(
        tenant: str, admin: AdminServiceDep,
        adapter: Annotated[str | None, Query(description="Only this adapter's.")] = None,
) -> Response:
    """Export the tenant's captured data: a zip of its captures, capture index, feedback
    and training data, each under its store key (and ``legacy-index.jsonl``: its lines of
    the earlier layouts that mixed tenants)."""
    return _zip(await admin.export_data(tenant, adapter), f"{tenant}-data")


@router.get("/adapters", response_model=list[AdapterInfo])
async def list_adapters(admin: AdminServiceDep,
                        tenant: Annotated[str | None, Query()] = None) -> list[AdapterInfo]:
    """Every adapter (optionally of one tenant) with versions and residency."""
    return await admin.list_adapters(tenant)


@router.get("/adapters/{tenant}/{name}", response_model=AdapterInfo)
async def get_adapter(tenant: str, name: str, admin: AdminServiceDep) -> AdapterInfo:
    """One adapter with all its versions."""
    return await admin.get_adapter(tenant, name)


@router.post("/adapters/{tenant}/{name}/versions", status_code=201,
             response_model=AdapterVersionInfo)
async def upload_version(
    tenant: str, name: str, admin: AdminServiceDep,
    files: Annotated[list[UploadFile], File(description="Package files, or one archive.")],
    activate: Annotated[bool | None, Form()] = None,
    task: Annotated[TaskKind | None, Form(
        description="Plain PEFT folder: the task (default: from task_type).")] = None,
    labels: Annotated[list[str] | None, Form(
        description="Plain PEFT folder: class names in head order, one field each.")] = None,
    ignore_base_name: Annotated[bool, Form(
        description="Plain PEFT folder: accept a base_model_name_or_path naming another "
                    "model (shapes are still checked).")] = False,
) -> AdapterVersionInfo:
    """Register a new version from uploaded package files (or a .tar.gz / .zip).

    The first version becomes active; later ones only with ``activate=true`` or a promote.
    Nothing is stored unless every validation rule passes. A plain PEFT folder (no
    ``loraswap.json``) gets a manifest built from its config plus ``task`` / ``labels``;
    the answer's ``inferred`` says how each field was decided.
    """
    # The gate capped the body at LORASWAP_MAX_UPLOAD_BYTES (plus multipart framing)
    # while it streamed in; validation checks the files' own sizes against it.
    parts = [(f.filename or "", f.file) for f in files]
    defaults = ManifestDefaults.from_caller(task, labels, ignore_base_name)
    return await admin.register_upload(tenant, name, parts, activate, defaults)


@router.post("/adapters/{tenant}/{name}/versions/import", status_code=201,
             response_model=AdapterVersionInfo)
async def import_version(tenant: str, name: str, body: ImportAdapterRequest,
                         admin: AdminServiceDep) -> AdapterVersionInfo:
    """Register a new version from a package in a store (file:// or s3://)."""
    return await admin.register_uri(tenant, name, body)


@router.post("/adapters/{tenant}/{name}/promote", response_model=AdapterInfo)
async def promote(tenant: str, name: str, body: PromoteRequest,
                  admin: AdminServiceDep) -> AdapterInfo:
    """Make a version active: new requests use it; running ones finish on theirs."""
    return await admin.promote(tenant, name, body.version)


@router.post("/adapters/{tenant}/{name}/rollback", response_model=AdapterInfo)
async def rollback(tenant: str, name: str, admin: AdminServiceDep) -> AdapterInfo:
    """Make the previously active version active again."""
    return await admin.rollback(tenant, name)


@router.put("/adapters/{tenant}/{name}/pin", response_model=AdapterInfo)
async def pin(tenant: str, name: str, admin: AdminServiceDep) -> AdapterInfo:
    """Keep the adapter's active version resident in an engine slot."""
    return await admin.set_pinned(tenant, name, True)


@router.delete("/adapters/{tenant}/{name}/pin", response_model=AdapterInfo)
async def unpin(tenant: str, name: str, admin: AdminServiceDep) -> AdapterInfo:
    """Let the adapter be evicted like any other."""
    return await admin.set_pinned(tenant, name, False)


@router.delete("/adapters/{tenant}/{name}/versions/{version}", status_code=204)
async def delete_version(tenant: str, name: str, version: int,
                         admin: AdminServiceDep) -> Response:
    """Delete a version; refused (409) while it is the active one."""
    await admin.delete_version(tenant, name, version)
    return Response(status_code=204)


@router.delete("/adapters/{tenant}/{name}", status_code=204, responses=ZIP_ANSWER)
async def delete_adapter(tenant: str, name: str, admin: AdminServiceDep,
                         export: Annotated[bool, EXPORT_QUERY] = False) -> Response:
    """Delete an adapter with every version, and erase its captured predictions, feedback
    and training data."""
    return _zip(await admin.delete_adapter(tenant, name, export), f"{tenant}-{name}-data")
