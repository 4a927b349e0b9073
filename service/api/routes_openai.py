"""Thin router for the OpenAI-compatible API: ``/v1/models``, completions, chat completions."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from service.api.deps import OpenAIServingDep, TenantDep
from service.api.disconnect import until_disconnect
from service.api.protocol_openai import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
)
from service.api.serving_openai import PreparedOpenAI

OPENAI_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"description": "OpenAI error body: {error: {message, type, param, code}}"}
    for status in (400, 401, 404, 413, 429, 503)
}
STREAM: dict[int | str, dict[str, Any]] = {200: {"content": {"text/event-stream": {}}}}

router = APIRouter(prefix="/v1", tags=["openai"])


async def _answer(prepared: PreparedOpenAI, request: Request, stream: bool | None,
                  ) -> CompletionResponse | ChatCompletionResponse | StreamingResponse:
    request.state.adapter = prepared.target.label
    if stream:
        return StreamingResponse(prepared.sse(request), media_type="text/event-stream")
    return await until_disconnect(request, prepared.collect())


@router.get("/models", response_model=ModelList, responses=OPENAI_ERRORS)
async def list_models(tenant: TenantDep, service: OpenAIServingDep) -> ModelList:
    """The base model and every adapter the caller may use, as OpenAI models."""
    # Every key sees every adapter until tenants own adapters (registry issue).
    return await service.list_models()


@router.get("/models/{model}", response_model=ModelCard, responses=OPENAI_ERRORS)
async def retrieve_model(model: str, tenant: TenantDep, service: OpenAIServingDep) -> ModelCard:
    """One model of the list; 404 naming it if there is none."""
    return await service.model_card(model)


@router.post("/completions", response_model=CompletionResponse,
             responses={**OPENAI_ERRORS, **STREAM})
async def completions(body: CompletionRequest, request: Request, tenant: TenantDep,
                      service: OpenAIServingDep,
                      ) -> CompletionResponse | ChatCompletionResponse | StreamingResponse:
    """Complete raw text prompts with an adapter (or the base model)."""
    prepared = await service.prepare_completion(body, tenant=tenant)
    return await _answer(prepared, request, body.stream)


@router.post("/chat/completions", response_model=ChatCompletionResponse,
             responses={**OPENAI_ERRORS, **STREAM})
async def chat_completions(body: ChatCompletionRequest, request: Request, tenant: TenantDep,
                           service: OpenAIServingDep,
                           ) -> CompletionResponse | ChatCompletionResponse | StreamingResponse:
    """Answer a conversation (base model chat template) with an adapter (or the base)."""
    prepared = await service.prepare_chat(body, tenant=tenant)
    return await _answer(prepared, request, body.stream)
