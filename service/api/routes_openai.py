"""Thin router for the OpenAI-compatible API: ``/v1/models``, completions, chat completions."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from loraswap.service.api.deps import OpenAIServingDep, TenantDep
from loraswap.service.api.gate import OpenAIRoute
from loraswap.service.api.protocol_openai import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
)

OPENAI_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"description": "OpenAI error body: {error: {message, type, param, code}}"}
    for status in (400, 401, 403, 404, 413, 429, 503)
}
STREAM: dict[int | str, dict[str, Any]] = {200: {"content": {"text/event-stream": {}}}}

router = APIRouter(prefix="/v1", tags=["openai"], route_class=OpenAIRoute)


@router.get("/models", response_model=ModelList, responses=OPENAI_ERRORS)
async def list_models(tenant: TenantDep, service: OpenAIServingDep) -> ModelList:
    """The base model and every adapter the caller may use, as OpenAI models."""
    return await service.list_models(tenant)


@router.get("/models/{model:path}", response_model=ModelCard, responses=OPENAI_ERRORS)
async def retrieve_model(model: str, tenant: TenantDep, service: OpenAIServingDep) -> ModelCard:
    """One model of the list; 404 naming it if there is none."""
    return await service.model_card(model, tenant)


@router.post("/completions", response_model=CompletionResponse,
             responses={**OPENAI_ERRORS, **STREAM})
async def completions(body: CompletionRequest, request: Request, tenant: TenantDep,
                      service: OpenAIServingDep) -> BaseModel | StreamingResponse:
    """Complete raw text prompts with an adapter (or the base model)."""
    return await service.completion(body, request, tenant)


@router.post("/chat/completions", response_model=ChatCompletionResponse,
             responses={**OPENAI_ERRORS, **STREAM})
async def chat_completions(body: ChatCompletionRequest, request: Request, tenant: TenantDep,
                           service: OpenAIServingDep) -> BaseModel | StreamingResponse:
    """Answer a conversation (base model chat template) with an adapter (or the base)."""
    return await service.chat(body, request, tenant)
