"""App factory: builds the FastAPI app; the lifespan loads the model in the background."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI

from loraswap.adapters.registry import AdapterRegistry
from loraswap.adapters.store import ObjectStore, ObservedStore, open_store
from loraswap.adapters.validation import ValidationLimits
from loraswap.base_model.fingerprint import BaseModelFingerprint
from loraswap.base_model.loading import LoadedBaseModel, load_base_model
from loraswap.jobs.tenant_data import TenantData
from loraswap.service.adapter_source import LocalAdapterDirectory, RegistryAdapterSource
from loraswap.service.api.errors import install_error_handlers
from loraswap.service.api.gate import RequestGate, dev_hosts
from loraswap.service.api.metrics_middleware import RequestMetrics
from loraswap.service.api.pipeline import RequestLimits, ServingPipeline
from loraswap.service.api.prompts import PromptBuilder, PromptLimits
from loraswap.service.api.routes import predict_router
from loraswap.service.api.routes_admin import router as admin_router
from loraswap.service.api.routes_drift import admin_router as drift_admin_router
from loraswap.service.api.routes_drift import router as drift_router
from loraswap.service.api.routes_drift import upload_router as training_data_router
from loraswap.service.api.routes_drift import webhook_router
from loraswap.service.api.routes_openai import router as openai_router
from loraswap.service.api.serving_admin import AdminService
from loraswap.service.api.serving_openai import OpenAIServing
from loraswap.service.api.serving_predict import PredictService
from loraswap.service.api.state import ServiceState, ServingComponents
from loraswap.service.auth import TenantAuthenticator, log_auth_mode
from loraswap.service.drift.pipeline import build_drift, build_profiles, build_retrain
from loraswap.service.drift.retention import RetentionSweeper
from loraswap.service.engine.engine import EngineConfig, LoraEngine
from loraswap.service.engine.engine_thread import EngineThread
from loraswap.service.fault_hooks import arm_fault_hook
from loraswap.service.health import install_lifecycle
from loraswap.service.limits import TenantLimiter
from loraswap.service.metrics import ServiceMetrics
from loraswap.service.registry_sync import RegistryWatcher
from loraswap.service.settings import Settings
from loraswap.tenants.directory import TenantDirectory

logger = logging.getLogger(__name__)

ModelLoader = Callable[[Settings], LoadedBaseModel]


def load_from_settings(settings: Settings) -> LoadedBaseModel:
    """Load the base model the settings name (the default loader)."""
    return load_base_model(settings.base_model, settings.quantization, settings.device)


def build_registry(settings: Settings, store: ObjectStore,
                   loaded: LoadedBaseModel) -> AdapterRegistry:
    """The adapter registry, validating uploads against the loaded base model."""
    base = BaseModelFingerprint.from_loaded(loaded.info, loaded.model.config.to_dict())
    limits = ValidationLimits(max_rank=settings.max_lora_rank,
                              max_upload_bytes=settings.max_upload_bytes)
    return AdapterRegistry(store, base, limits, settings.adapter_cache_dir,
                           refresh_seconds=settings.registry_refresh_seconds,
                           import_roots=settings.import_roots)  # hardening: item 13


def build_components(settings: Settings, loaded: LoadedBaseModel, state: ServiceState,
                     thread: EngineThread) -> ServingComponents:
    """Everything that serves requests, built once, in order, around a loaded base model:
    registry → resolver → engine → pipeline → the API services."""
    registry = build_registry(settings, state.store, loaded)
    resolver = RegistryAdapterSource(registry, LocalAdapterDirectory(settings.adapter_dir))
    engine = LoraEngine(
        loaded.model, loaded.tokenizer,
        EngineConfig(
            max_loras=settings.max_loras, max_lora_rank=settings.max_lora_rank,
            max_cpu_loras=settings.max_cpu_loras, max_batch_size=settings.max_batch_size,
            max_model_len=settings.max_model_len, max_prefill_tokens=settings.max_prefill_tokens,
            max_queue=settings.max_queue, max_queue_per_tenant=settings.max_queue_per_tenant,
            kv_cache_bytes=settings.kv_cache_bytes, prefix_cache=settings.prefix_cache,
            prefill_tokens_per_decode=settings.prefill_tokens_per_decode,
        ),
        state.metrics, thread,
    )
    prompts = PromptBuilder(loaded.tokenizer, PromptLimits(
        max_input_tokens=settings.max_input_tokens, max_model_len=settings.max_model_len,
        max_new_tokens=settings.max_new_tokens_limit,
    ))
    pipeline = ServingPipeline(
        engine=engine, resolver=resolver, limiter=state.limiter, metrics=state.metrics,
        limits=RequestLimits(max_inputs=settings.max_inputs_per_request))
    # Drift monitoring, capture and feedback (service/drift): off unless enabled.
    drift = (build_drift(settings, registry, state.tenants, state.metrics.registry)
             if settings.drift_enabled else None)
    # Pins and gauges need not be fresher than active versions: twice the refresh interval.
    watcher = RegistryWatcher(registry, resolver, engine, state.metrics,
                              interval=max(1.0, 2 * settings.registry_refresh_seconds))
    return ServingComponents(
        info=loaded.info, engine=engine, resolver=resolver, prompts=prompts, pipeline=pipeline,
        predict=PredictService(pipeline, prompts, sink=drift),
        openai=OpenAIServing(pipeline, prompts, loaded.info.name, sink=drift),
        admin=AdminService(state.tenants, registry, engine, registry.limits, state.metrics,
                           watcher, forget=drift.capture.forget if drift is not None
                           else lambda owner, adapter: None),
        watcher=watcher, drift=drift, retrain=build_retrain(
            settings, registry, drift, state.metrics.registry),
        profiles=build_profiles(settings, registry),
    )


async def _load(settings: Settings, state: ServiceState, loader: ModelLoader,
                thread: EngineThread) -> None:
    # The model is loaded on the engine thread: all torch work stays on one thread.
    try:
        loaded = await thread.run(lambda: loader(settings))
        components = await thread.run(lambda: build_components(settings, loaded, state, thread))
        components.engine.start()
        if components.drift is not None:
            components.drift.start()
    except Exception as exc:
        state.status, state.error = "failed", str(exc)
        logger.exception("loading the base model failed")
        return
    state.components, state.status = components, "ready"
    info = loaded.info
    logger.info(
        "ready: model=%s quantization=%s weights=%s compute_dtype=%s device=%s "
        "memory=%.1f MiB load=%.1fs",
        info.name, info.quantization, info.weight_format, info.compute_dtype, info.device,
        info.memory_bytes / 2**20, info.load_seconds,
    )
    await components.watcher.run()  # until the lifespan cancels this task at shutdown


def build_state(settings: Settings) -> ServiceState:
    """What the app holds before the model loads: metrics, store, tenants, auth, limits."""
    metrics = ServiceMetrics()
    store = ObservedStore(arm_fault_hook(open_store(settings.store_uri), settings), metrics)
    tenants = TenantDirectory(store, refresh_seconds=settings.registry_refresh_seconds)
    authenticator = TenantAuthenticator(
        tenants, (k.get_secret_value() for k in settings.api_keys),
        required=settings.auth_required)
    admin_token = settings.admin_token.get_secret_value() if settings.admin_token else None
    return ServiceState(
        settings=settings, metrics=metrics, store=store, tenants=tenants,
        authenticator=authenticator, limiter=TenantLimiter(),
        gate=RequestGate(
            authenticator=authenticator, admin_token=admin_token,
            dev_hosts=dev_hosts(admin_token is None, settings.host),
            max_json_bytes=settings.max_request_bytes,
            max_upload_bytes=settings.max_upload_bytes,
            webhook_token=(settings.retrain_webhook_token.get_secret_value()
                           if settings.retrain_webhook_token else None)),
    )


def make_lifespan(state: ServiceState, loader: ModelLoader,
                  ) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    """The lifespan: start the engine thread and load the model in the background; at
    shutdown stop loading, the tokenizer and drift threads, then the engine thread."""
    settings = state.settings

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log_auth_mode(state.authenticator)
        if settings.admin_token is None:
            logger.warning("dev mode: the /admin API is open to anyone who can reach it "
                           "(set LORASWAP_ADMIN_TOKEN for production)")
        thread = EngineThread(settings.threads)
        thread.start()
        loading = asyncio.create_task(_load(settings, state, loader, thread))
        sweeping = asyncio.create_task(RetentionSweeper(
            TenantData(state.store), state.tenants,
            retention_days=settings.capture_retention_days,
            interval_seconds=settings.capture_sweep_seconds).run())
        try:
            yield
        finally:
            for task in (loading, sweeping):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if state.components is not None:
                state.components.pipeline.close()
                if state.components.drift is not None:
                    await asyncio.to_thread(state.components.drift.stop)
            await asyncio.to_thread(thread.stop)

    return lifespan


def create_app(settings: Settings, *, loader: ModelLoader = load_from_settings) -> FastAPI:
    """Build the app. Nothing is loaded until the lifespan starts.

    Refuses (:class:`ConfigurationError`) an empty or placeholder admin token outside dev
    mode.
    """
    settings.check_secure()
    state = build_state(settings)
    app = FastAPI(title="loraswap", version="0.1.0", lifespan=make_lifespan(state, loader),
                  description="Many tenants' LoRA adapters on one resident base model.")
    app.state.loraswap = state
    install_error_handlers(app)
    install_lifecycle(app, state, settings)  # probes, /metrics, drain, gateway gauges
    app.include_router(predict_router)
    app.include_router(openai_router)
    app.include_router(admin_router)
    app.include_router(drift_router)  # /v1/feedback
    app.include_router(webhook_router)  # POST /admin/retrain (its own token)
    app.include_router(drift_admin_router)  # /admin/retrain/…, /admin/drift
    # /admin/training-data and /admin/adapters/…/reference/{file}
    app.include_router(training_data_router)
    app.add_middleware(RequestMetrics, metrics=state.metrics)
    return app
