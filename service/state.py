"""Everything one running service instance holds, built by the app factory."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from adapters.base_model import BaseModelInfo
from adapters.store import ObjectStore
from adapters.tenants import TenantDirectory
from service.adapter_source import AdapterResolver
from service.api.gate import RequestGate
from service.api.pipeline import ServingPipeline
from service.api.prompts import PromptBuilder
from service.api.serving_admin import AdminService
from service.api.serving_openai import OpenAIServing
from service.api.serving_predict import PredictService
from service.auth import Authenticator
from service.drift.pipeline import DriftPipeline
from service.drift.profiles import ProfileService
from service.drift.retrain import RetrainService
from service.engine.engine import LoraEngine
from service.errors import NotReadyError
from service.limits import TenantLimiter
from service.metrics import ServiceMetrics
from service.registry_sync import RegistryWatcher
from service.settings import Settings


@dataclass
class ServingComponents:
    """What exists once the base model is loaded."""

    info: BaseModelInfo
    engine: LoraEngine
    resolver: AdapterResolver
    prompts: PromptBuilder
    pipeline: ServingPipeline
    predict: PredictService
    openai: OpenAIServing
    admin: AdminService
    watcher: RegistryWatcher
    drift: DriftPipeline | None = None  # LORASWAP_DRIFT_ENABLED (service/drift)
    retrain: RetrainService | None = None  # /admin/retrain (service/drift)
    profiles: ProfileService | None = None  # reference uploads (service/drift/profiles.py)


@dataclass
class ServiceState:
    """Per-app state (kept on ``app.state``; never module-level)."""

    settings: Settings
    metrics: ServiceMetrics
    store: ObjectStore
    tenants: TenantDirectory
    authenticator: Authenticator
    limiter: TenantLimiter
    gate: RequestGate
    status: Literal["loading", "ready", "failed"] = "loading"
    error: str | None = None
    components: ServingComponents | None = field(default=None)

    def ready(self) -> ServingComponents:
        """The serving components, or :class:`NotReadyError` (503) while loading."""
        if self.components is None:
            detail = f": {self.error}" if self.error else ""
            raise NotReadyError(f"the base model is {self.status}{detail}")
        return self.components
