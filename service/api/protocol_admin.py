"""Request and response bodies of the admin API (``/admin``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from loraswap.adapters.package import AttentionMode, TaskKind, TextSplit
from loraswap.core.identity import SAFE_NAME, Version
from loraswap.tenants.directory import TenantPolicy


class CreateTenantRequest(BaseModel):
    """Body of ``POST /admin/tenants``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=SAFE_NAME.pattern, description="Tenant id used in tenant/name.")
    policy: TenantPolicy = Field(default_factory=TenantPolicy)


class TenantInfo(BaseModel):
    """A tenant as the admin sees it (never its keys)."""

    name: str
    id: str | None = Field(default=None, description="Immutable id minted at creation: "
                           "a tenant created again under this name gets another (and none "
                           "of this one's captured data).")
    created_at: datetime
    policy: TenantPolicy
    keys: int = Field(description="Number of valid API keys.")
    adapters: int = Field(description="Registered adapters.")


class TenantKey(BaseModel):
    """A new API key. It is shown exactly once: only its hash is stored."""

    tenant: TenantInfo
    api_key: str


class ImportAdapterRequest(BaseModel):
    """Body of ``POST /admin/adapters/{tenant}/{name}/versions/import``."""

    model_config = ConfigDict(extra="forbid")

    source_uri: str = Field(description="file:///folder or s3://bucket/prefix of a package.")
    activate: bool | None = Field(
        default=None, description="Make it active; null: only if no version is active yet.")
    # For a plain PEFT folder (no loraswap.json); see docs/adapter-format.md.
    task: TaskKind | None = Field(
        default=None, description="Plain PEFT folder: the task (default: from task_type).")
    labels: list[str] | None = Field(
        default=None, description="Plain PEFT folder: class names in head order (seq-cls, "
                                  "token-cls).")
    ignore_base_name: bool = Field(
        default=False, description="Plain PEFT folder: accept a base_model_name_or_path "
                                   "that names another model (shapes are still checked).")


class PromoteRequest(BaseModel):
    """Body of ``POST /admin/adapters/{tenant}/{name}/promote``."""

    model_config = ConfigDict(extra="forbid")

    version: Version = Field(description="A registry version number (3 or \"3\").")


class AdapterVersionInfo(BaseModel):
    """One immutable version of an adapter, from its manifest."""

    version: Version
    active: bool
    task: TaskKind
    labels: list[str] | None
    attention: AttentionMode
    text_split: TextSplit
    base_model: dict[str, str]
    lora: dict[str, Any]
    metrics: dict[str, float]
    files: dict[str, str]
    created_at: datetime
    inferred: dict[str, str] | None = Field(
        default=None, description="Plain PEFT folder: how loraswap decided each manifest "
                                  "field (field -> origin); null for a package with a manifest.")


class Residency(BaseModel):
    """Where this replica holds the adapter right now."""

    in_slot: list[Version] = Field(description="Versions in engine slots.")
    in_host_memory: list[Version] = Field(description="Versions decoded in host memory.")


class AdapterInfo(BaseModel):
    """An adapter with its versions, active version, pin and residency."""

    tenant: str
    name: str
    active_version: Version | None
    pinned: bool
    versions: list[AdapterVersionInfo]
    residency: Residency
