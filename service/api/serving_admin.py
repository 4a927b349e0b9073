"""The admin API's logic: tenants and keys, adapter versions, promote/rollback, pins.

Store and registry calls are blocking (filesystem or S3): they run in worker threads so
the event loop keeps serving inference while an upload is validated and stored.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TypeVar

from loraswap.adapters.archive import extract_upload, write_uploaded_files
from loraswap.adapters.registry import AdapterRecord, AdapterRegistry, AdapterVersion
from loraswap.adapters.validation import ManifestDefaults, ValidationLimits
from loraswap.core.errors import (
    AdapterValidationError,
    ConflictError,
    InvalidRequestError,
    PayloadTooLargeError,
)
from loraswap.core.identity import Version
from loraswap.jobs.tenant_data import TenantData
from loraswap.service.api.protocol_admin import (
    AdapterInfo,
    AdapterVersionInfo,
    CreateTenantRequest,
    ImportAdapterRequest,
    Residency,
    TenantInfo,
    TenantKey,
)
from loraswap.service.engine.engine import LoraEngine
from loraswap.service.metrics import ServiceMetrics
from loraswap.service.registry_sync import RegistryWatcher
from loraswap.tenants.directory import TenantDirectory, TenantPolicy, TenantRecord

logger = logging.getLogger(__name__)

T = TypeVar("T")
# Told that a tenant's data (``owner``; one ``adapter``'s, or all) is being erased, so the
# capture writer drops what it holds of it.
ForgetData = Callable[[str, str | None], None]
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")


def version_info(version: AdapterVersion, active: int | None) -> AdapterVersionInfo:
    """The admin view of one version."""
    m = version.manifest
    return AdapterVersionInfo(
        version=version.key.version, active=version.version == active, task=m.task,
        labels=m.labels, attention=m.attention, text_split=m.text_split,
        base_model=m.base_model.model_dump(),
        lora=m.lora.model_dump(), metrics=m.metrics, files=m.files, created_at=m.created_at,
        inferred=m.inferred,
    )


class AdminService:
    """Operations behind ``/admin``; one per app, built when the model is loaded."""

    def __init__(self, tenants: TenantDirectory, registry: AdapterRegistry, engine: LoraEngine,
                 limits: ValidationLimits, metrics: ServiceMetrics,
                 watcher: RegistryWatcher, forget: ForgetData = lambda owner, adapter: None,
                 ) -> None:
        """``forget`` is told before a tenant's or an adapter's data is erased."""
        self.tenants = tenants
        self.data = TenantData(registry.store)
        self.forget = forget
        self.registry = registry
        self.engine = engine
        self.limits = limits
        self.metrics = metrics
        self.watcher = watcher

    @staticmethod
    async def _blocking(call: Callable[[], T]) -> T:
        return await asyncio.to_thread(call)

    # ---- tenants -------------------------------------------------------------------------

    def _tenant_info(self, record: TenantRecord, counts: dict[str, int]) -> TenantInfo:
        return TenantInfo(
            name=record.name, id=record.id, created_at=record.created_at,
            policy=record.policy,
            keys=len(record.key_digests), adapters=counts.get(record.name, 0),
        )

    async def create_tenant(self, body: CreateTenantRequest) -> TenantKey:
        """Create a tenant and its first API key (returned once)."""
        record, key = await self._blocking(
            lambda: self.tenants.create(body.name, body.policy))
        logger.info("tenant %s created", record.name)
        return TenantKey(tenant=self._tenant_info(record, {}), api_key=key)

    async def list_tenants(self) -> list[TenantInfo]:
        """Every tenant with its policy and counts."""
        records, counts = await self._blocking(
            lambda: (self.tenants.list(), self.registry.tenants_with_adapters()))
        return [self._tenant_info(r, counts) for r in records]

    async def get_tenant(self, name: str) -> TenantInfo:
        """One tenant (404 naming it when absent)."""
        record, counts = await self._blocking(
            lambda: (self.tenants.get(name), self.registry.tenants_with_adapters()))
        return self._tenant_info(record, counts)

    async def update_policy(self, name: str, body: TenantPolicy) -> TenantInfo:
        """Replace a tenant's policy; replicas apply it within the refresh interval."""
        record = await self._blocking(lambda: self.tenants.update_policy(name, body))
        counts = await self._blocking(self.registry.tenants_with_adapters)
        return self._tenant_info(record, counts)

    async def rotate_key(self, name: str) -> TenantKey:
        """A new key for the tenant; every older key stops working."""
        key = await self._blocking(lambda: self.tenants.rotate_key(name))
        logger.info("tenant %s: API key rotated", name)
        return TenantKey(tenant=await self.get_tenant(name), api_key=key)

    async def delete_tenant(self, name: str, export: bool = False) -> Path | None:
        """Delete a tenant that owns no adapters (409 naming them otherwise), then erase its
        captured data (captures, capture index, feedback, training data). With ``export``,
        the data is first written to a zip file, returned (the caller sends and deletes
        it). The record goes first: a tenant created again under the name has a new data
        owner whatever happens to the erasure (the sweep finishes a failed one)."""
        record = await self._blocking(lambda: self.tenants.get(name))  # 404 if unknown
        records = await self._blocking(lambda: self.registry.list(name))
        if records:
            names = ", ".join(f"{r.tenant}/{r.name}" for r in records)
            raise ConflictError(
                f"tenant {name!r} still owns adapters ({names}); delete them first")
        archive = await self._blocking(
            lambda: self.data.export_to_temp(record.data_owner, name)) if export else None
        await self._blocking(lambda: self.tenants.delete(name))
        erased = await self._erase(record.data_owner, name, None)
        logger.info("tenant %s deleted (%d data objects erased)", name, erased)
        return archive

    async def _erase(self, owner: str, tenant: str, adapter: str | None) -> int:
        self.forget(owner, adapter)
        return await self._blocking(lambda: self.data.erase(owner, tenant, adapter))

    async def export_data(self, name: str, adapter: str | None = None) -> Path:
        """A zip file of the tenant's captured data (``adapter``'s, or all), every object
        under its store key; the caller sends and deletes it."""
        record = await self._blocking(lambda: self.tenants.get(name))
        if adapter is not None:
            await self._blocking(lambda: self.registry.get(name, adapter))
        return await self._blocking(
            lambda: self.data.export_to_temp(record.data_owner, name, adapter))

    # ---- adapters ------------------------------------------------------------------------

    async def _residency(self, record: AdapterRecord) -> Residency:
        resident = self.engine.residency()
        return Residency(
            in_slot=sorted((k.version for k in resident.in_slots if k.ref == record.ref),
                           key=lambda v: v.number),
            in_host_memory=sorted((k.version for k in resident.in_host_memory
                                   if k.ref == record.ref), key=lambda v: v.number),
        )

    async def adapter_info(self, record: AdapterRecord) -> AdapterInfo:
        """The admin view of an adapter on this replica."""
        return AdapterInfo(
            tenant=record.tenant, name=record.name,
            active_version=None if record.active_key is None else record.active_key.version,
            pinned=record.pinned, residency=await self._residency(record),
            versions=[version_info(v, record.active) for v in record.versions],
        )

    async def get_adapter(self, tenant: str, name: str) -> AdapterInfo:
        """One adapter with all its versions."""
        return await self.adapter_info(await self._blocking(lambda: self.registry.get(tenant,
                                                                                       name)))

    async def list_adapters(self, tenant: str | None) -> list[AdapterInfo]:
        """Every adapter (of ``tenant`` if given)."""
        if tenant is not None:
            await self._blocking(lambda: self.tenants.get(tenant))  # 404 for an unknown one
        records = await self._blocking(lambda: self.registry.list(tenant))
        return [await self.adapter_info(r) for r in records]

    async def register_upload(self, tenant: str, name: str,
                              files: list[tuple[str, BinaryIO]], activate: bool | None,
                              defaults: ManifestDefaults | None = None,
                              ) -> AdapterVersionInfo:
        """Validate and store uploaded package files (or one archive) as a new version.

        ``defaults`` (task, labels) complete a plain PEFT folder's manifest."""
        if not files:
            raise InvalidRequestError("no files uploaded: send the package files (or one "
                                      ".tar.gz/.zip archive) as multipart field 'files'")
        return await self._blocking(
            lambda: self._counting_rejections(
                lambda: self._register_files(tenant, name, files, activate, defaults)))

    def _counting_rejections(self, register: Callable[[], AdapterVersion]) -> AdapterVersionInfo:
        try:
            version = register()
        except (AdapterValidationError, PayloadTooLargeError) as exc:
            self.metrics.adapter_rejected(exc.code)
            raise
        return self._registered(version)

    def _register_files(self, tenant: str, name: str, files: list[tuple[str, BinaryIO]],
                        activate: bool | None,
                        defaults: ManifestDefaults | None) -> AdapterVersion:
        self.tenants.get(tenant)  # 404 for an unknown tenant before reading anything
        with tempfile.TemporaryDirectory(prefix="loraswap-upload-") as tmp:
            staged = Path(tmp) / "package"
            staged.mkdir()
            if len(files) == 1 and files[0][0].lower().endswith(ARCHIVE_SUFFIXES):
                # Unpacked from the spooled upload itself: an archive is not copied twice.
                extract_upload(files[0][1], staged, self.limits)
            else:
                write_uploaded_files(files, staged, self.limits)
            return self.registry.register(tenant, name, staged, activate=activate,
                                          manifest_defaults=defaults)

    async def register_uri(self, tenant: str, name: str,
                           body: ImportAdapterRequest) -> AdapterVersionInfo:
        """Validate and store a package read from a store URI."""
        def run() -> AdapterVersion:
            self.tenants.get(tenant)
            return self.registry.register_from_uri(
                tenant, name, body.source_uri, activate=body.activate,
                manifest_defaults=ManifestDefaults.from_caller(body.task, body.labels,
                                                               body.ignore_base_name))
        return await self._blocking(lambda: self._counting_rejections(run))

    def _registered(self, version: AdapterVersion) -> AdapterVersionInfo:
        self.metrics.adapter_registered(version.tenant)
        record = self.registry.get(version.tenant, version.name)
        logger.info("registered %s/%s v%d (active v%s)", version.tenant, version.name,
                    version.version, record.active)
        return version_info(version, record.active)

    async def promote(self, tenant: str, name: str, version: Version) -> AdapterInfo:
        """Make ``version`` active; new requests get it, running ones finish on theirs."""
        record = await self._blocking(
            lambda: self.registry.promote(tenant, name, version.number))
        self.metrics.adapter_promoted(tenant, "promote")
        await self.watcher.apply_pin(record)  # a pin follows the promotion
        logger.info("promoted %s/%s to v%s", tenant, name, version)
        return await self.adapter_info(record)

    async def rollback(self, tenant: str, name: str) -> AdapterInfo:
        """Return to the previously active version."""
        record = await self._blocking(lambda: self.registry.rollback(tenant, name))
        self.metrics.adapter_promoted(tenant, "rollback")
        await self.watcher.apply_pin(record)
        logger.info("rolled %s/%s back to v%s", tenant, name, record.active)
        return await self.adapter_info(record)

    async def set_pinned(self, tenant: str, name: str, pinned: bool) -> AdapterInfo:
        """Pin (keep resident) or unpin an adapter."""
        record = await self._blocking(lambda: self.registry.set_pinned(tenant, name, pinned))
        await self.watcher.apply_pin(record)
        return await self.adapter_info(record)

    async def delete_version(self, tenant: str, name: str, version: int) -> None:
        """Delete one version (409 while it is active)."""
        await self._blocking(lambda: self.registry.delete_version(tenant, name, version))

    async def delete_adapter(self, tenant: str, name: str, export: bool = False,
                             ) -> Path | None:
        """Delete an adapter and all its versions, then erase its captures, feedback and
        training data (first exported to a zip file, returned, with ``export``)."""
        await self._blocking(lambda: self.registry.get(tenant, name))  # 404 if unknown
        owner = await self._blocking(lambda: self.tenants.get(tenant).data_owner)
        archive = await self._blocking(
            lambda: self.data.export_to_temp(owner, tenant, name)) if export else None
        await self._blocking(lambda: self.registry.delete_adapter(tenant, name))
        erased = await self._erase(owner, tenant, name)
        logger.info("adapter %s/%s deleted (%d data objects erased)", tenant, name, erased)
        return archive
