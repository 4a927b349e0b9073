"""FastAPI dependencies as ``Annotated`` aliases, so routes stay one-liners.

Callers are authenticated by the gate (:mod:`loraswap.service.api.gate`) before the body is read;
these dependencies hand its result to the routes and declare the bearer schemes for the
OpenAPI documentation. They are coroutines: FastAPI runs a plain ``def`` dependency on its
thread pool, a thread hop per dependency per request, which under load waits for the GIL
behind the engine thread (measured in docs/reliability.md, "Overload").
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from loraswap.service.api.serving_admin import AdminService
from loraswap.service.api.serving_openai import OpenAIServing
from loraswap.service.api.serving_predict import PredictService
from loraswap.service.api.state import ServiceState, ServingComponents
from loraswap.service.auth import Tenant, check_admin_token, check_webhook_token

# auto_error=False: a missing key is our AuthenticationError (401, right body), not FastAPI's.
_bearer = HTTPBearer(auto_error=False,
                     description="A tenant API key (or one from LORASWAP_API_KEYS).")
_admin_bearer = HTTPBearer(auto_error=False, scheme_name="AdminToken",
                           description="The admin token (LORASWAP_ADMIN_TOKEN).")
_webhook_bearer = HTTPBearer(
    auto_error=False, scheme_name="RetrainWebhookToken",
    description="The retrain webhook token (LORASWAP_RETRAIN_WEBHOOK_TOKEN) or the admin token.")


_UNCHECKED = object()


async def get_state(request: Request) -> ServiceState:
    """The app's state object."""
    state: ServiceState = request.app.state.loraswap
    return state


async def get_components(state: Annotated[ServiceState, Depends(get_state)]) -> ServingComponents:
    """The serving components; 503 while the model loads."""
    return state.ready()


async def get_predict_service(
    components: Annotated[ServingComponents, Depends(get_components)],
) -> PredictService:
    """The native predict service."""
    return components.predict


async def get_openai_serving(
    components: Annotated[ServingComponents, Depends(get_components)],
) -> OpenAIServing:
    """The OpenAI-compatible serving class."""
    return components.openai


async def get_tenant(
    request: Request,
    state: Annotated[ServiceState, Depends(get_state)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Tenant | None:
    """The caller's tenant, as the gate authenticated it (None when auth is off)."""
    tenant: object = getattr(request.state, "tenant", _UNCHECKED)  # the gate's result
    if tenant is None or isinstance(tenant, Tenant):
        return tenant
    # Not gated (a route outside the gated route classes): a tenant lookup may read the store.
    return await asyncio.to_thread(state.authenticator.authenticate,
                                   credentials.credentials if credentials else None)


async def require_admin(
    state: Annotated[ServiceState, Depends(get_state)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_admin_bearer)],
) -> None:
    """401 unless the request carries the admin token (open only in dev mode without one).

    The gate checked it before the body was read; checking again costs two hashes and
    keeps a route that forgot its route class closed."""
    configured = state.settings.admin_token
    check_admin_token(configured.get_secret_value() if configured else None,
                      credentials.credentials if credentials else None)


async def require_webhook(
    state: Annotated[ServiceState, Depends(get_state)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_webhook_bearer)],
) -> None:
    """401 unless the request carries the retrain webhook's token or the admin token."""
    admin, webhook = state.settings.admin_token, state.settings.retrain_webhook_token
    check_webhook_token(admin.get_secret_value() if admin else None,
                        webhook.get_secret_value() if webhook else None,
                        credentials.credentials if credentials else None)


async def get_admin_service(state: Annotated[ServiceState, Depends(get_state)]) -> AdminService:
    """The admin service; 503 until the base model (and so the registry) is ready."""
    return state.ready().admin


StateDep = Annotated[ServiceState, Depends(get_state)]
ComponentsDep = Annotated[ServingComponents, Depends(get_components)]
PredictServiceDep = Annotated[PredictService, Depends(get_predict_service)]
OpenAIServingDep = Annotated[OpenAIServing, Depends(get_openai_serving)]
TenantDep = Annotated[Tenant | None, Depends(get_tenant)]
AdminServiceDep = Annotated[AdminService, Depends(get_admin_service)]
