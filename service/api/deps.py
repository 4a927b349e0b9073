"""FastAPI dependencies as ``Annotated`` aliases, so routes stay one-liners."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.api.serving_predict import PredictService
from service.state import ServiceState, ServingComponents


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


StateDep = Annotated[ServiceState, Depends(get_state)]
ComponentsDep = Annotated[ServingComponents, Depends(get_components)]
PredictServiceDep = Annotated[PredictService, Depends(get_predict_service)]
