"""Request and response bodies of the admin API (``/admin``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from loraswap.adapters.package import SAFE_NAME, AttentionMode, TaskKind, TextSplit
from loraswap.tenants.directory import MAX_REQUESTS_PER_SECOND, MIN_REQUESTS_PER_SECOND


class TenantPolicyBody(BaseModel):
    """What a tenant may do, and how much of it."""

    model_config = ConfigDict(extra="forbid")

    allow_base_model: bool = Field(default=True, description="May call the base model.")
    requests_per_second: float | None = Field(
        default=None, ge=MIN_REQUESTS_PER_SECOND, le=MAX_REQUESTS_PER_SECOND,
        description="Sustained request rate per replica (0.001 to 10^6); null: no limit.")
    max_concurrent: int | None = Field(
        default=None, ge=1, description="Requests in flight per replica; null: no limit.")
    capture: Literal["off", "all"] | Annotated[float, Field(ge=0, le=1)] = Field(
        default="off", description="Prediction capture for feedback and retraining: "
        "\"off\", \"all\", or the share captured (0..1).")


class CreateTenantRequest(BaseModel):
    """Body of ``POST /admin/tenants``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=SAFE_NAME.pattern, description="Tenant id used in tenant/name.")
    policy: TenantPolicyBody = Field(default_factory=TenantPolicyBody)


class TenantInfo(BaseModel):
    """A tenant as the admin sees it (never its keys)."""

    name: str
    created_at: datetime
    policy: TenantPolicyBody
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

    version: int = Field(ge=1)


class AdapterVersionInfo(BaseModel):
    """One immutable version of an adapter, from its manifest."""

    version: int
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

    in_slot: list[int] = Field(description="Versions in engine slots.")
    in_host_memory: list[int] = Field(description="Versions decoded in host memory.")


class AdapterInfo(BaseModel):
    """An adapter with its versions, active version, pin and residency."""

    tenant: str
    name: str
    active_version: int | None
    pinned: bool
    versions: list[AdapterVersionInfo]
    residency: Residency
