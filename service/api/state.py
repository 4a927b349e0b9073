"""Everything one running service instance holds, built by the app factory."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from loraswap.adapters.store import ObjectStore
from loraswap.base_model.loading import BaseModelInfo
from loraswap.service.adapter_source import AdapterResolver
from loraswap.service.api.gate import RequestGate
from loraswap.service.api.pipeline import ServingPipeline
from loraswap.service.api.prompts import PromptBuilder
from loraswap.service.api.serving_admin import AdminService
from loraswap.service.api.serving_openai import OpenAIServing
from loraswap.service.api.serving_predict import PredictService
from loraswap.service.auth import Authenticator
from loraswap.service.drift.pipeline import DriftPipeline
from loraswap.service.drift.profiles import ProfileService
from loraswap.service.drift.retrain import RetrainService
from loraswap.service.engine.engine import LoraEngine
from loraswap.service.errors import NotReadyError
from loraswap.service.limits import TenantLimiter
from loraswap.service.metrics import ServiceMetrics
from loraswap.service.registry_sync import RegistryWatcher
from loraswap.service.settings import Settings
from loraswap.tenants.directory import TenantDirectory


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
