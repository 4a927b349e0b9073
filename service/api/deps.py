"""FastAPI dependencies as ``Annotated`` aliases, so routes stay one-liners."""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from adapters.errors import AuthenticationError
from service.api.serving_admin import AdminService
from service.api.serving_openai import OpenAIServing
from service.api.serving_predict import PredictService
from service.auth import Tenant
from service.state import ServiceState, ServingComponents

# auto_error=False: a missing key is our AuthenticationError (401, right body), not FastAPI's.
_bearer = HTTPBearer(auto_error=False,
                     description="A tenant API key (or one from LORASWAP_API_KEYS).")
_admin_bearer = HTTPBearer(auto_error=False, scheme_name="AdminToken",
                           description="The admin token (LORASWAP_ADMIN_TOKEN).")


def get_state(request: Request) -> ServiceState:
    """The app's state object."""
    state: ServiceState = request.app.state.loraswap
    return state


def get_components(state: Annotated[ServiceState, Depends(get_state)]) -> ServingComponents:
    """The serving components; 503 while the model loads."""
    return state.ready()


def get_predict_service(
    components: Annotated[ServingComponents, Depends(get_components)],
) -> PredictService:
    """The native predict service."""
    return components.predict


def get_openai_serving(
    components: Annotated[ServingComponents, Depends(get_components)],
) -> OpenAIServing:
    """The OpenAI-compatible serving class."""
    return components.openai


def get_tenant(
    state: Annotated[ServiceState, Depends(get_state)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Tenant | None:
    """The caller's tenant; None when auth is off; 401 for a missing or wrong key."""
    return state.authenticator.authenticate(credentials.credentials if credentials else None)


def require_admin(
    state: Annotated[ServiceState, Depends(get_state)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_admin_bearer)],
) -> None:
    """401 unless the request carries the admin token (open only in dev mode without one)."""
    configured = state.settings.admin_token
    if configured is None:
        return  # Settings.check_secure allowed this: dev mode
    if credentials is None:
        raise AuthenticationError(
            "missing admin token: send 'Authorization: Bearer <LORASWAP_ADMIN_TOKEN>'")
    presented = hashlib.sha256(credentials.credentials.encode("utf-8")).digest()
    expected = hashlib.sha256(configured.get_secret_value().encode("utf-8")).digest()
    if not hmac.compare_digest(presented, expected):
        raise AuthenticationError("invalid admin token")


def get_admin_service(state: Annotated[ServiceState, Depends(get_state)]) -> AdminService:
    """The admin service; 503 until the base model (and so the registry) is ready."""
    return state.ready().admin


StateDep = Annotated[ServiceState, Depends(get_state)]
ComponentsDep = Annotated[ServingComponents, Depends(get_components)]
PredictServiceDep = Annotated[PredictService, Depends(get_predict_service)]
OpenAIServingDep = Annotated[OpenAIServing, Depends(get_openai_serving)]
TenantDep = Annotated[Tenant | None, Depends(get_tenant)]
AdminServiceDep = Annotated[AdminService, Depends(get_admin_service)]
