"""``/v1/predict``: the native API over the shared generation service."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from adapters.errors import InvalidRequestError, LoraswapError
from service.api.generation import GenerationService, ResolvedTarget, SubmittedBatch
from service.api.prompts import PromptBuilder
from service.api.protocol import PredictOutput, PredictRequest, PredictResponse, Usage
from service.engine.requests import GenerationEvent


def _sse(event: str, payload: object) -> str:
    return f"event: {event}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n"


@dataclass
class PreparedPredict:
    """A validated, submitted predict request; consumed whole or as an event stream."""

    request_id: str
    target: ResolvedTarget
    batch: SubmittedBatch

    def response(self, results: list[GenerationEvent]) -> PredictResponse:
        """The JSON answer for finished results."""
        prompt = sum(r.prompt_tokens for r in results)
        completion = sum(r.completion_tokens for r in results)
        return PredictResponse(
            id=self.request_id, adapter=self.target.name,
            outputs=[
                PredictOutput(text=r.text, tokens=r.completion_tokens,
                              finish_reason="stop" if r.finish_reason == "stop" else "length")
                for r in results
            ],
            usage=Usage(prompt_tokens=prompt, completion_tokens=completion,
                        total_tokens=prompt + completion),
        )

    async def collect(self) -> PredictResponse:
        """Wait for every output."""
        return self.response(await self.batch.collect())

    async def sse(self) -> AsyncIterator[str]:
        """Server-sent events: ``token`` per chunk, then ``done`` with outputs and usage."""
        texts = ["" for _ in self.batch.streams]
        finals: list[GenerationEvent | None] = [None for _ in self.batch.streams]
        try:
            async for index, event in self.batch.events():
                texts[index] += event.text
                yield _sse("token", {"index": index, "text": event.text,
                                     "token_ids": list(event.token_ids)})
                if event.finished:
                    finals[index] = GenerationEvent(
                        text=texts[index], token_ids=(), finished=True,
                        finish_reason=event.finish_reason, prompt_tokens=event.prompt_tokens,
                        completion_tokens=event.completion_tokens)
        except LoraswapError as exc:
            yield _sse("error", {"error": {"code": exc.code, "message": exc.message}})
            return
        done = [f for f in finals if f is not None]
        yield _sse("done", self.response(done).model_dump())


class PredictService:
    """Validates predict requests, builds prompts and submits them to the engine."""

    def __init__(self, generation: GenerationService, prompts: PromptBuilder) -> None:
        self._generation = generation
        self._prompts = prompts

    async def prepare(self, body: PredictRequest, *, fairness_key: str) -> PreparedPredict:
        """Resolve the adapter, tokenize, check limits and submit; raises 4xx errors early."""
        if not body.inputs and not isinstance(body.inputs, str):
            raise InvalidRequestError("inputs must not be an empty list")
        if isinstance(body.inputs, str):
            prompts = [self._prompts.from_text(body.inputs, raw=body.raw)]
        elif body.inputs and all(isinstance(i, str) for i in body.inputs):
            prompts = [self._prompts.from_text(str(i), raw=body.raw) for i in body.inputs]
        else:
            messages = [m.model_dump() for m in body.inputs if not isinstance(m, str)]
            prompts = [self._prompts.from_messages(messages)]
        p = body.parameters
        params = [
            self._prompts.sampling(
                len(prompt), max_new_tokens=p.max_new_tokens, temperature=p.temperature,
                top_p=p.top_p, seed=p.seed, stop=p.stop, ignore_eos=p.ignore_eos)
            for prompt in prompts
        ]
        target = await self._generation.resolve(body.adapter)
        request_id = f"pred-{uuid.uuid4().hex[:24]}"
        batch = self._generation.submit(target, prompts, params, request_id=request_id,
                                        fairness_key=fairness_key or target.label)
        return PreparedPredict(request_id, target, batch)
